"""Visits' participants and the presence event log: the one place events are written and read.

Events are appended in the caller's transaction; the notification goes out after commit, because a
NOTIFY inside the writing transaction serialises every committing writer on one lock. A process's
notifications carry its new events themselves, sealed (any role that can connect may NOTIFY), so
listeners deliver them without reading the table; a bare id is a plain wake-up. Readers that miss a
notification catch up by id.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from cryptography.exceptions import InvalidTag

import sql

from .security import Sealer

Q = sql.queries("events")

EVENT_KINDS = frozenset({"lobby_entered", "device_test_passed", "device_test_failed", "admitted", "denied",
                         "connected", "disconnected", "left", "removed", "visit_ended"})
CHANNEL = "presence_events"
BATCH_CONTEXT = "events"
# Raw bytes per notification: sealed (+28) and base64 (x4/3) they stay under NOTIFY's 8,000-byte payload limit.
BATCH_BYTES = 5600
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PresenceEvent:
    """One thing that happened in a visit."""

    id: int
    visit_id: UUID
    participant_id: UUID | None
    kind: str
    at: dt.datetime
    role: str | None
    guest_kind: str | None

    def to_json(self) -> str:
        """The wire form sent to subscribers (serialised once per event, for all of them)."""
        return json.dumps({
            "type": "event", "id": self.id, "visit": str(self.visit_id),
            "participant": str(self.participant_id) if self.participant_id else None,
            "kind": self.kind, "at": self.at.isoformat(), "role": self.role, "guest_kind": self.guest_kind,
        }, separators=(",", ":"))

    def wire(self) -> "WireEvent":
        """The event as the bus carries it."""
        return WireEvent(self.id, self.visit_id, self.to_json())


@dataclass(frozen=True)
class Participant:
    """Someone in a visit, known only by an opaque id and a role."""

    id: UUID
    visit_id: UUID
    role: str
    guest_kind: str | None
    fhir_user: str | None


async def append_event(conn: asyncpg.Connection, visit_id: UUID, participant_id: UUID | None,
                       kind: str) -> PresenceEvent:
    """Append an event in the caller's transaction; once committed, announce it (Announcer or notify_after_commit)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown presence event kind {kind!r}")
    row = await conn.fetchrow(Q["append_event"], visit_id, participant_id, kind)
    assert row is not None
    return _event(row)


async def notify_after_commit(conn: asyncpg.Connection, event_id: int) -> None:
    """Tell other processes (a bare id: a wake-up) that events up to event_id exist."""
    # Formatted, not bound: bind parameters would need the extended protocol, one statement per round trip.
    await conn.execute(Q["notify_events"].format(event_id=int(event_id)))


@dataclass(frozen=True)
class WireEvent:
    """An event as a listener gets it from a notification: enough to route it, and its wire text."""

    id: int
    visit_id: UUID
    text: str


def seal_batches(sealer: Sealer, events: list[PresenceEvent]) -> list[str]:
    """Notification payloads carrying events: lines of "id visit wire-text", sealed, each under the limit."""
    batches: list[str] = []
    lines: list[bytes] = []
    size = 0
    for event in events:
        line = f"{event.id} {event.visit_id} {event.to_json()}".encode()
        if lines and size + len(line) + 1 > BATCH_BYTES:
            batches.append(_seal(sealer, lines))
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
    if lines:
        batches.append(_seal(sealer, lines))
    return batches


def _seal(sealer: Sealer, lines: list[bytes]) -> str:
    return base64.b64encode(sealer.seal_bytes(b"\n".join(lines), BATCH_CONTEXT)).decode()


def open_batch(sealer: Sealer, payload: str) -> list[WireEvent] | None:
    """The events a notification carries, or None when it carries none we can trust (a bare wake-up, or
    something not sealed by us)."""
    if payload.isdigit():
        return None
    try:
        data = sealer.unseal_bytes(base64.b64decode(payload, validate=True), BATCH_CONTEXT)
        found = []
        for line in data.decode().split("\n"):
            event_id, visit, text = line.split(" ", 2)
            found.append(WireEvent(int(event_id), UUID(visit), text))
        return found
    except (ValueError, binascii.Error, InvalidTag):
        log.warning("ignored an unreadable event notification")
        return None


async def record_event(pool: asyncpg.Pool, visit_id: UUID, participant_id: UUID | None, kind: str,
                       announcer: "Announcer | None" = None) -> PresenceEvent:
    """Append one event (a single statement, so its own transaction), then announce it.

    With an announcer the event rides in a notification coalesced with other writers' (see Announcer);
    without one a bare wake-up is sent right away on the same connection.
    """
    async with pool.acquire() as conn:
        event = await append_event(conn, visit_id, participant_id, kind)
        if announcer is None:
            await notify_after_commit(conn, event.id)
    if announcer is not None:
        announcer.announce(event)
    return event


class Announcer:
    """Sends this process's event notifications, at most one round trip at a time.

    Events committed while a notification is in flight ride on the next one. This keeps NOTIFY (and its
    global queue lock) off each writer's path (measured at ~0.5x write throughput when every write sent
    its own), and the events inside spare every listener a read of the table.
    """

    def __init__(self, pool: asyncpg.Pool, sealer: Sealer) -> None:
        self._pool = pool
        self._sealer = sealer
        self._pending: list[PresenceEvent] = []
        self._task: asyncio.Task[None] | None = None

    def announce(self, event: PresenceEvent) -> None:
        """Make sure a notification carrying event goes out soon."""
        self._pending.append(event)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._pending:
            events, self._pending = self._pending, []
            try:
                async with self._pool.acquire() as conn:
                    await conn.execute(Q["notify_event_batches"], seal_batches(self._sealer, events))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Listeners also catch up on their own every second, so a lost notification costs only latency.
                log.warning("could not announce %d events (%s)", len(events), type(exc).__name__)

    async def close(self) -> None:
        """Let the last notification go out (for shutdown)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def _event(row: asyncpg.Record) -> PresenceEvent:
    return PresenceEvent(id=row["id"], visit_id=row["visit_id"], participant_id=row["participant_id"],
                         kind=row["kind"], at=row["at"], role=row["role"], guest_kind=row["guest_kind"])


async def events_after(conn: asyncpg.Connection, visit_id: UUID, after_id: int, up_to: int,
                       limit: int = 1000) -> list[PresenceEvent]:
    """A visit's events with after_id < id <= up_to, oldest first."""
    return [_event(r) for r in await conn.fetch(Q["events_after"], visit_id, after_id, up_to, limit)]


async def all_events_after(conn: asyncpg.Connection, after_id: int, limit: int = 1000) -> list[PresenceEvent]:
    """Every visit's events after after_id, oldest first (for the bus catching up)."""
    return [_event(r) for r in await conn.fetch(Q["events_by_id_after"], after_id, limit)]


async def last_event_id(conn: asyncpg.Connection) -> int:
    """The newest event id, or 0."""
    value: int = await conn.fetchval(Q["last_event_id"])
    return value


async def _ensure(conn: asyncpg.Connection, query: str, *args: object) -> UUID:
    # Two racing creators: the loser sees neither its own insert nor the winner's row; one retry does.
    for _ in range(2):
        value = await conn.fetchval(query, *args)
        if value is not None:
            return value  # type: ignore[no-any-return]
    raise RuntimeError("participant could not be created")


async def provider_participant(conn: asyncpg.Connection, visit_id: UUID, fhir_user: str | None) -> UUID:
    """The participant of this clinician in this visit, created on first use."""
    return await _ensure(conn, Q["ensure_provider_participant"], visit_id, fhir_user or "")


async def patient_participant(conn: asyncpg.Connection, visit_id: UUID) -> UUID:
    """The visit's patient participant, created on first use."""
    return await _ensure(conn, Q["ensure_patient_participant"], visit_id)


async def add_guest(conn: asyncpg.Connection, visit_id: UUID, guest_kind: str) -> UUID:
    """A new guest (interpreter, family member, ...) in the visit."""
    value: UUID = await conn.fetchval(Q["add_guest"], visit_id, guest_kind)
    return value


async def get_participant(conn: asyncpg.Connection, participant_id: UUID) -> Participant | None:
    """A participant by id."""
    row = await conn.fetchrow(Q["get_participant"], participant_id)
    return Participant(**dict(row)) if row else None


async def admission_state(conn: asyncpg.Connection, participant_id: UUID) -> str | None:
    """The participant's latest admission decision: "admitted", "denied", "removed", or None if none yet."""
    kind: str | None = await conn.fetchval(Q["admission_state"], participant_id)
    return kind
