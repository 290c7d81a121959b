"""The write-back outbox, its dead letters and the attempts audit: write-back's queries (sql/queries/writeback.sql),
each a small typed function taking a connection, so the caller (presence.writeback) decides the transaction."""
from __future__ import annotations

import json
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

import sql
from gateway.reasons import writeback_code

from .encounter_mapping import VisitEvent

Q = sql.queries("writeback")
STRATEGIES = ("fhir-r4-put", "fhir-r4-patch", "none")


class Claim(NamedTuple):
    """A visit claimed for one worker: its head row, and how many times it has been tried."""

    event_id: int
    visit_id: UUID
    attempts: int


class VisitLog(NamedTuple):
    """What write-back derives an Encounter from: the sealed Encounter id, the meeting provider, every event."""

    encounter_ref: bytes
    meeting_provider: str
    events: list[VisitEvent]


async def active_configurations(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The configurations whose events are written back now (id, FHIR base URL, client, strategy, scopes)."""
    return list(await conn.fetch(Q["active_configurations"]))


async def claim_visits(conn: asyncpg.Connection, configuration_id: int, limit: int, lease_seconds: float,
                       worker_id: UUID) -> list[Claim]:
    """Lease up to limit visits of a configuration to a worker, each through its oldest pending row."""
    rows = await conn.fetch(Q["claim_visits"], configuration_id, limit, lease_seconds, worker_id)
    return [Claim(r["event_id"], r["visit_id"], r["attempts"]) for r in rows]


def _detail(text: str | None) -> dict[str, Any] | None:
    # A device test's result (0016): a JSON object the gateway built; the mapping checks each value again.
    value = None if text is None else json.loads(text)
    return value if isinstance(value, dict) else None


async def visit_log(conn: asyncpg.Connection, visit_id: UUID) -> VisitLog | None:
    """A visit's Encounter reference, meeting provider and all its events (one round trip); None if no such visit."""
    rows = await conn.fetch(Q["visit_with_events"], visit_id)
    if not rows:
        return None
    events = [VisitEvent(r["id"], r["kind"], r["at"], r["participant_id"], r["role"], r["guest_kind"], r["fhir_user"],
                         _detail(r["detail"]))
              for r in rows if r["id"] is not None]
    return VisitLog(rows[0]["encounter_ref"], rows[0]["meeting_provider"], events)


async def finish_visit(conn: asyncpg.Connection, visit_id: UUID, up_to_event_id: int, configuration_id: int,
                       strategy: str, outcome: str, http_status: int | None, version_id: str | None,
                       duration_ms: int) -> None:
    """Mark a visit's rows up to an event done and record the attempt (one statement)."""
    await conn.execute(Q["finish_visit"], visit_id, up_to_event_id, configuration_id, strategy, outcome, http_status,
                       version_id, duration_ms)


async def retry_visit(conn: asyncpg.Connection, head_event_id: int, delay: float, reason: str) -> None:
    """Make a visit's head row claimable again after delay seconds, noting why."""
    await conn.execute(Q["retry_visit"], head_event_id, delay, reason)


async def release_visit(conn: asyncpg.Connection, head_event_id: int) -> None:
    """Give a claim back untouched (its attempt does not count)."""
    await conn.execute(Q["release_visit"], head_event_id)


async def release_mine(conn: asyncpg.Connection, worker_id: UUID) -> None:
    """Give back every visit a worker still holds (on shutdown)."""
    await conn.execute(Q["release_mine"], worker_id)


async def dead_letter_visit(conn: asyncpg.Connection, visit_id: UUID, up_to_event_id: int, reason: str) -> int:
    """Send a visit's pending rows up to an event to the dead letters; returns how many."""
    return len(await conn.fetch(Q["dead_letter_visit"], visit_id, up_to_event_id, reason))


async def record_attempt(conn: asyncpg.Connection, visit_id: UUID, configuration_id: int, up_to_event_id: int,
                         strategy: str, outcome: str, http_status: int | None, reason: str | None,
                         version_id: str | None, duration_ms: int, default_zone: str) -> None:
    """Append one attempt to the audit; a failed one (retry, dead, disabled) is also counted for the error
    report, by its reason's code (gateway.reasons.writeback_code), on today in the configuration's
    organisation's time zone, or default_zone (the gateway's, Settings.time_zone) when it has none."""
    code = writeback_code(reason) if reason else "other"
    await conn.execute(Q["record_attempt"], visit_id, configuration_id, up_to_event_id, strategy, outcome,
                       http_status, reason, version_id, duration_ms, code, default_zone)


async def disable(conn: asyncpg.Connection, configuration_id: int, reason: str) -> bool:
    """Turn a configuration's write-back off with its reason; False when it was off already."""
    return await conn.fetchval(Q["disable"], configuration_id, reason) is not None


async def set_strategy(conn: asyncpg.Connection, configuration_id: int, strategy: str) -> None:
    """Choose a configuration's write-back strategy; this also turns write-back back on."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown write-back strategy {strategy!r}")
    await conn.execute(Q["set_strategy"], configuration_id, strategy)


async def dead_letters(conn: asyncpg.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead-lettered events, with their reasons."""
    return [dict(r) for r in await conn.fetch(Q["dead_letters"], limit)]


async def backlog(conn: asyncpg.Connection, configuration_id: int) -> int:
    """How many events of a configuration wait to be written back."""
    value: int = await conn.fetchval(Q["backlog"], configuration_id)
    return value
