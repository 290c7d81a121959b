"""Typed calls to sql/queries/launch.sql; each takes a connection so the caller owns the transaction."""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import NamedTuple
from uuid import UUID

import asyncpg

import sql
from gateway.near_miss import Iss, NearMiss, parse_bases
from gateway.reasons import code_or_other

Q = sql.queries("launch")
NEAR_MISSES_PER_DAY = 20  # distinct near-miss URLs kept per configuration and day
APPROVED_BASES_REFRESH = 10.0  # seconds an unknown `iss` may be compared with a stale list of approved URLs


@dataclass(frozen=True)
class LaunchConfiguration:
    """The approved configuration a launch state belongs to."""

    id: int
    fhir_base_url: str
    client_id: str
    client_auth: str
    client_secret: bytes | None
    scopes: str
    meeting_provider: str
    approved: bool
    audience: str = "provider"
    """Whose launch the state belonged to: "provider" or "patient"."""


@dataclass(frozen=True)
class ProviderSession:
    """A clinician's launch into a visit, with what the provider view needs (identifiers still sealed)."""

    visit_id: UUID
    fhir_user: str | None
    access_token: bytes
    token_expires_at: dt.datetime
    scopes: str
    need_patient_banner: bool
    smart_style_url: str | None
    encounter_ref: bytes
    patient_ref: bytes | None
    meeting_provider: str
    meeting_id: str | None
    fhir_base_url: str
    environment: str
    handle_expires_in: float
    """Seconds the handle the session was found by still works."""


@dataclass(frozen=True)
class TakenLaunch:
    """A launch state just consumed: whether it was still fresh, the browser it is bound to, its configuration."""

    fresh: bool
    browser_hash: bytes
    """sha256 of the browser key its /launch request carried (and the callback brought back)."""
    config: LaunchConfiguration
    department: str | None = None
    """The `department` the EHR put on the launch URL, if any."""


@dataclass(frozen=True)
class PendingLaunch:
    """A live launch state the callback's browser could not take: enough to start the launch again."""

    audience: str
    launch_ref: bytes | None
    """The EHR's `launch` value, sealed (None for a state made before migration 0009)."""
    fhir_base_url: str


class Visit(NamedTuple):
    """An encounter's visit as a launch finds or creates it."""

    id: UUID
    meeting_id: str | None
    meeting_provider: str
    patient_ref: bytes | None
    """The sealed Patient id the visit was first opened with."""


@dataclass(frozen=True)
class LaunchStart:
    """What `start_launch` found for an `iss`: its configuration's status and, when approved (and the state
    kept), how to authorize against it."""

    configuration_id: int
    status: str
    client_id: str
    client_auth: str
    scopes: str


async def start_launch(conn: asyncpg.Connection, state_hash: bytes, iss: str, ttl: int, audience: str,
                       browser_hash: bytes, launch_ref: bytes, department: str | None = None) -> LaunchStart | None:
    """Keep a launch state, bound to a browser, when iss is an approved FHIR base URL; answers the configuration
    of iss whatever its status (a state is kept only for "approved"), or None when no configuration has it.

    audience says whose launch it is ("provider" from the EHR, "patient" from the portal).
    """
    row = await conn.fetchrow(Q["start_launch"], state_hash, iss, float(ttl), audience, browser_hash, launch_ref,
                              department)
    return LaunchStart(row["id"], row["status"], row["client_id"], row["client_auth"], row["scopes"]) if row else None


async def count_launch_refusal(conn: asyncpg.Connection, configuration_id: int | None, reason: str,
                               default_zone: str) -> None:
    """Count one failed launch for the error report (per configuration, reason and day); a code that is not
    one of ours in shape is counted as "other". The day is today in the configuration's organisation's time
    zone, or default_zone (the gateway's, Settings.time_zone) when it has none or no organisation."""
    await conn.execute(Q["count_launch_refusal"], configuration_id, code_or_other(reason), default_zone)


async def note_near_miss(conn: asyncpg.Connection, miss: NearMiss, default_zone: str) -> None:
    """Keep a near miss's URL (as admins may see it) for its configuration's error report, once a day, within
    the day's cap; the day is the organisation's (default_zone: as count_launch_refusal)."""
    await conn.execute(Q["note_near_miss"], miss.configuration_id, miss.shown, miss.difference, NEAR_MISSES_PER_DAY,
                       default_zone)


class ApprovedBases:
    """The approved FHIR base URLs an unknown `iss` is compared with, re-read at most every `refresh` seconds:
    a flood of unknown `iss` costs the database one small read per interval, not one per launch."""

    def __init__(self, refresh: float = APPROVED_BASES_REFRESH) -> None:
        self._refresh = refresh
        self._bases: list[tuple[int, Iss]] = []
        self._read_at = -refresh

    async def current(self, pool: asyncpg.Pool) -> list[tuple[int, Iss]]:
        """(configuration id, FHIR base URL taken apart) of every approved configuration, at most `refresh`
        seconds old."""
        if time.monotonic() - self._read_at >= self._refresh:
            async with pool.acquire() as conn:
                rows = await conn.fetch(Q["approved_bases"])
            self._bases = parse_bases((r["id"], r["fhir_base_url"]) for r in rows)
            self._read_at = time.monotonic()
        return self._bases


async def take_launch_state(conn: asyncpg.Connection, state_hash: bytes,
                            browser_hashes: list[bytes]) -> TakenLaunch | None:
    """Consume a launch state (single use) bound to one of these browser keys, or None if there is none."""
    row = await conn.fetchrow(Q["take_launch_state"], state_hash, browser_hashes)
    if row is None:
        return None
    return TakenLaunch(row["fresh"], row["browser_hash"], LaunchConfiguration(
        id=row["id"], fhir_base_url=row["fhir_base_url"], client_id=row["client_id"],
        client_auth=row["client_auth"], client_secret=row["client_secret"], scopes=row["scopes"],
        meeting_provider=row["meeting_provider"], approved=row["status"] == "approved",
        audience=row["audience"]), row["department"])


async def pending_launch(conn: asyncpg.Connection, state_hash: bytes) -> PendingLaunch | None:
    """The live launch state of this hash, left where it is, or None."""
    row = await conn.fetchrow(Q["pending_launch"], state_hash)
    return PendingLaunch(row["audience"], row["launch_ref"], row["fhir_base_url"]) if row else None


async def find_or_create_visit(conn: asyncpg.Connection, *, configuration_id: int, encounter_key: bytes,
                               encounter_ref: bytes, patient_ref: bytes | None, meeting_provider: str,
                               department: str | None = None) -> Visit:
    """The visit of an encounter, created if new; the first department named stays with it."""
    row = await conn.fetchrow(Q["find_or_create_visit"], configuration_id, encounter_key, encounter_ref,
                              patient_ref, meeting_provider, department)
    assert row is not None
    return Visit(row["id"], row["meeting_id"], row["meeting_provider"], row["patient_ref"])


async def create_provider_session(
        conn: asyncpg.Connection, *, visit_id: UUID, session_hash: bytes, fhir_user: str | None,
        access_token: bytes, token_ttl: int, scopes: str, need_patient_banner: bool, smart_style_url: str | None,
        session_ttl: int, browser_hash: bytes, handle_hash: bytes, handle_ttl: int) -> None:
    """A clinician's session in a visit, bound to a browser, and the session's first URL handle."""
    await conn.execute(
        Q["create_provider_session"], session_hash, visit_id, fhir_user, access_token, float(token_ttl), scopes,
        need_patient_banner, smart_style_url, float(session_ttl), browser_hash, handle_hash, float(handle_ttl))


async def set_meeting(conn: asyncpg.Connection, visit_id: UUID, meeting_id: str) -> str:
    """Name the visit's meeting unless another launch already did; returns the one that stands."""
    value: str = await conn.fetchval(Q["set_meeting"], visit_id, meeting_id)
    return value


async def get_provider_session(conn: asyncpg.Connection, handle_hash: bytes,
                               browser_hashes: list[bytes]) -> ProviderSession | None:
    """The live provider session with this handle, bound to one of these browser keys, or None."""
    row = await conn.fetchrow(Q["get_provider_session"], handle_hash, browser_hashes)
    return ProviderSession(**dict(row)) if row else None


async def renew_provider_handle(conn: asyncpg.Connection, handle_hash: bytes, new_hash: bytes, ttl: int,
                                browser_hashes: list[bytes]) -> float | None:
    """Add a fresh handle to the session of a live one, in a browser holding one of these keys; its seconds to
    live, or None if the old one is not live there."""
    value: float | None = await conn.fetchval(Q["renew_provider_handle"], handle_hash, new_hash, float(ttl),
                                              browser_hashes)
    return value


async def purge_expired(conn: asyncpg.Connection) -> None:
    """Forget launch states, provider handles and provider sessions past their time."""
    await conn.execute(Q["purge_expired_states"])
    await conn.execute(Q["purge_expired_handles"])
    await conn.execute(Q["purge_expired_sessions"])
