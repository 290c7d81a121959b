"""Typed calls to sql/queries/launch.sql; each takes a connection so the caller owns the transaction."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

import asyncpg

import sql

Q = sql.queries("launch")


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


async def start_launch(conn: asyncpg.Connection, state_hash: bytes, iss: str,
                       ttl: int, audience: str = "provider") -> tuple[str, str, str] | None:
    """Keep a launch state when iss is an approved FHIR base URL: (client id, client auth, scopes), else None.

    audience says whose launch it is ("provider" from the EHR, "patient" from the portal).
    """
    row = await conn.fetchrow(Q["start_launch"], state_hash, iss, float(ttl), audience)
    return (row["client_id"], row["client_auth"], row["scopes"]) if row else None


async def take_launch_state(conn: asyncpg.Connection,
                            state_hash: bytes) -> tuple[bool, LaunchConfiguration] | None:
    """Consume a launch state (single use); returns (still fresh, its configuration) or None if unknown."""
    row = await conn.fetchrow(Q["take_launch_state"], state_hash)
    if row is None:
        return None
    return row["fresh"], LaunchConfiguration(
        id=row["id"], fhir_base_url=row["fhir_base_url"], client_id=row["client_id"],
        client_auth=row["client_auth"], client_secret=row["client_secret"], scopes=row["scopes"],
        meeting_provider=row["meeting_provider"], approved=row["status"] == "approved",
        audience=row["audience"])


async def find_or_create_visit_with_session(
        conn: asyncpg.Connection, *, configuration_id: int, encounter_key: bytes, encounter_ref: bytes,
        patient_ref: bytes | None, meeting_provider: str, session_hash: bytes, fhir_user: str | None,
        access_token: bytes, token_ttl: int, scopes: str, need_patient_banner: bool,
        smart_style_url: str | None, session_ttl: int, handle_hash: bytes,
        handle_ttl: int) -> tuple[UUID, str | None, str]:
    """The visit of an encounter (created if new), a provider session in it and the session's first URL
    handle: (visit id, meeting id, provider)."""
    row = await conn.fetchrow(
        Q["find_or_create_visit_with_session"], configuration_id, encounter_key, encounter_ref, patient_ref,
        meeting_provider, session_hash, fhir_user, access_token, float(token_ttl), scopes, need_patient_banner,
        smart_style_url, float(session_ttl), handle_hash, float(handle_ttl))
    assert row is not None
    return row["id"], row["meeting_id"], row["meeting_provider"]


async def find_or_create_visit(conn: asyncpg.Connection, *, configuration_id: int, encounter_key: bytes,
                               encounter_ref: bytes, patient_ref: bytes | None,
                               meeting_provider: str) -> tuple[UUID, str | None, str, bytes | None]:
    """The visit of an encounter, created if new: (visit id, meeting id, meeting provider, sealed patient)."""
    row = await conn.fetchrow(Q["find_or_create_visit"], configuration_id, encounter_key, encounter_ref,
                              patient_ref, meeting_provider)
    assert row is not None
    return row["id"], row["meeting_id"], row["meeting_provider"], row["patient_ref"]


async def set_meeting(conn: asyncpg.Connection, visit_id: UUID, meeting_id: str) -> str:
    """Name the visit's meeting unless another launch already did; returns the one that stands."""
    value: str = await conn.fetchval(Q["set_meeting"], visit_id, meeting_id)
    return value


async def get_provider_session(conn: asyncpg.Connection, handle_hash: bytes) -> ProviderSession | None:
    """The live provider session with this handle, or None."""
    row = await conn.fetchrow(Q["get_provider_session"], handle_hash)
    return ProviderSession(**dict(row)) if row else None


async def renew_provider_handle(conn: asyncpg.Connection, handle_hash: bytes, new_hash: bytes,
                                ttl: int) -> float | None:
    """Add a fresh handle to the session of a live one; its seconds to live, or None if the old one is not live."""
    value: float | None = await conn.fetchval(Q["renew_provider_handle"], handle_hash, new_hash, float(ttl))
    return value


async def purge_expired(conn: asyncpg.Connection) -> None:
    """Forget launch states, provider handles and provider sessions past their time."""
    await conn.execute(Q["purge_expired_states"])
    await conn.execute(Q["purge_expired_handles"])
    await conn.execute(Q["purge_expired_sessions"])
