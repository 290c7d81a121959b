"""Visits' participants and the presence event log: the one place events are written and read.

Events are appended in the caller's transaction; a notification carrying only the id goes out after
commit (notify_after_commit), because a NOTIFY inside the writing transaction serialises every
committing writer on one lock. Readers that miss a notification catch up by id. A socket's opening and
closing events are written under the lease of the process holding the socket (record_held_event), so the
closing events of a process that died can be written for it exactly once (close_lapsed; presence.lease).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import NamedTuple
from uuid import UUID

import asyncpg

import sql

Q = sql.queries("events")

EVENT_KINDS = frozenset({"lobby_entered", "device_test_passed", "device_test_failed", "admitted", "denied",
                         "connected", "disconnected", "left", "removed", "visit_ended"})
# Written when a socket opens or closes, under the lease of the process holding it (record_held_event).
SOCKET_KINDS = frozenset({"lobby_entered", "left", "connected", "disconnected"})
CHANNEL = "presence_events"
log = logging.getLogger(__name__)


class PresenceEvent(NamedTuple):
    """One thing that happened in a visit.

    A NamedTuple: the bus makes one per event read, and a frozen dataclass took 3 us to make, a NamedTuple
    well under one.
    """

    id: int
    visit_id: UUID
    participant_id: UUID | None
    kind: str
    at: dt.datetime
    role: str | None
    guest_kind: str | None

    def to_json(self) -> str:
        """The wire form sent to subscribers (serialised once per event, for all of them).

        Built by hand: on the delivery path this ran at ~10-15 us an event with json.dumps, a third of a core
        at 30k events/s. Ids, UUIDs and timestamps need no escaping; the strings come from small
        vocabularies whose JSON literals are made once (anything else still goes through json.dumps).
        """
        participant = f'"{self.participant_id}"' if self.participant_id is not None else "null"
        return (f'{{"type":"event","id":{int(self.id)},"visit":"{self.visit_id}","participant":{participant},'
                f'"kind":{_json_text(self.kind)},"at":"{self.at.isoformat()}","role":{_json_text(self.role)},'
                f'"guest_kind":{_json_text(self.guest_kind)}}}')


# JSON literals of the event kinds, roles and guest kinds (the database allows no others).
_LITERALS = {value: json.dumps(value) for value in (
    *EVENT_KINDS, "provider", "patient", "guest", "interpreter", "family", "caregiver", "other")}


def _json_text(value: str | None) -> str:
    if value is None:
        return "null"
    literal = _LITERALS.get(value)
    return literal if literal is not None else json.dumps(value)


@dataclass(frozen=True)
class Participant:
    """Someone in a visit, known only by an opaque id and a role."""

    id: UUID
    visit_id: UUID
    role: str
    guest_kind: str | None
    fhir_user: str | None


async def append_event(conn: asyncpg.Connection, visit_id: UUID, participant_id: UUID | None, kind: str) -> int:
    """Append an event in the caller's transaction; returns its id. Call notify_after_commit once committed."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown presence event kind {kind!r}")
    row = await conn.fetchrow(Q["append_event"], visit_id, participant_id, kind, None)
    assert row is not None
    event_id: int = row["id"]
    return event_id


async def notify_after_commit(conn: asyncpg.Connection, event_id: int) -> None:
    """Tell other processes (ids only) that events up to event_id exist."""
    # Formatted, not bound: bind parameters would need the extended protocol, one statement per round trip.
    await conn.execute(Q["notify_events"].format(event_id=int(event_id)))


async def record_event(pool: asyncpg.Pool, visit_id: UUID, participant_id: UUID | None, kind: str,
                       announcer: "Announcer | None" = None) -> int:
    """Append one event (a single statement, so its own transaction), then announce it.

    With an announcer the notification is coalesced with other writers' (see Announcer); without one it
    is sent right away on the same connection.
    """
    async with pool.acquire() as conn:
        event_id = await append_event(conn, visit_id, participant_id, kind)
        if announcer is None:
            await notify_after_commit(conn, event_id)
    if announcer is not None:
        announcer.announce(event_id)
    return event_id



async def record_held_event(pool: asyncpg.Pool, process_id: UUID, visit_id: UUID, participant_id: UUID, kind: str,
                            announcer: "Announcer") -> int | None:
    """Append a socket's opening or closing event under a process's lease, then announce it.

    None when that process holds no lease any more: it was written off and its sockets' closing events
    were written for it (see close_lapsed), so this one must not be.
    """
    if kind not in SOCKET_KINDS:
        raise ValueError(f"{kind!r} is not a socket's opening or closing event")
    async with pool.acquire() as conn:
        row = await conn.fetchrow(Q["append_event"], visit_id, participant_id, kind, process_id)
    if row is None:
        return None
    event_id: int = row["id"]
    announcer.announce(event_id)
    return event_id


async def take_lease(conn: asyncpg.Connection, process_id: UUID) -> None:
    """Start a process's lease on the sockets it will hold."""
    await conn.execute(Q["take_lease"], process_id)


async def renew_lease(conn: asyncpg.Connection, process_id: UUID) -> bool:
    """Renew a lease; False when it lapsed and was swept (the process was written off)."""
    return await conn.fetchval(Q["renew_lease"], process_id) is not None


async def close_lapsed(pool: asyncpg.Pool, lease_seconds: float, announcer: "Announcer",
                       limit: int = 20) -> list[tuple[UUID, int]]:
    """Close the sockets of processes whose lease lapsed; returns (process, closing events written) each."""
    swept: list[tuple[UUID, int]] = []
    last = 0
    for _ in range(limit):
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(Q["lapsed_lease"], float(lease_seconds))
            if row is None:
                break
            ids = await _close_process(conn, row["id"], row["renewed_at"])
        swept.append((row["id"], len(ids)))
        last = max([last, *ids])
    if last:
        announcer.announce(last)
    return swept


async def end_lease(pool: asyncpg.Pool, process_id: UUID, announcer: "Announcer") -> int:
    """At a clean stop: write whatever closing events this process's sockets still lack, and drop the lease."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q["own_lease"], process_id)
        ids = [] if row is None else await _close_process(conn, process_id, row["renewed_at"])
    if ids:
        announcer.announce(max(ids))
    return len(ids)


async def _close_process(conn: asyncpg.Connection, process_id: UUID, last_known: dt.datetime) -> list[int]:
    # In the caller's transaction, which holds the lease row: the closing events and the lease's end commit together.
    ids = [r["id"] for r in await conn.fetch(Q["close_orphans"], process_id, last_known)]
    await conn.execute(Q["end_lease"], process_id)
    return ids

class Announcer:
    """Sends this process's event notifications, at most one at a time.

    Writes that commit while a notification is in flight ride on the next one, which carries the
    highest id: listeners read by id anyway, so one wake-up covers them all. This keeps NOTIFY (and its
    global queue lock) off each writer's path; measured at ~0.5x write throughput when every write
    sent its own.

    Every commit is followed by a notification sent after it, even when a higher id was announced
    already: ids are allocated before commit, so a lower id can commit after a higher one went out, and
    a listener waiting at that gap would otherwise only find it by polling.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._latest = 0
        self._due = False  # a commit was announced after the last notification was sent
        self.notifications = 0  # how many went out (for /metrics: writes per notification shows the coalescing)
        self._task: asyncio.Task[None] | None = None

    def announce(self, event_id: int) -> None:
        """Make sure a notification goes out after this moment (event_id has committed)."""
        self._latest = max(self._latest, event_id)
        self._due = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._due:
            self._due = False
            try:
                async with self._pool.acquire() as conn:
                    await notify_after_commit(conn, self._latest)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Listeners also catch up on their own every second, so a lost wake-up costs only latency.
                log.warning("could not announce events (%s)", type(exc).__name__)
                return
            self.notifications += 1

    async def close(self) -> None:
        """Let the last notification go out (for shutdown)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def _event(row: asyncpg.Record) -> PresenceEvent:
    # Positional (in the fields' order): keywords cost as much again as the tuple itself on the bus's path.
    return PresenceEvent(row["id"], row["visit_id"], row["participant_id"], row["kind"], row["at"], row["role"],
                         row["guest_kind"])


async def events_after(conn: asyncpg.Connection, visit_id: UUID, after_id: int, up_to: int,
                       limit: int = 1000) -> list[PresenceEvent]:
    """A visit's events with after_id < id <= up_to, oldest first."""
    return [_event(r) for r in await conn.fetch(Q["events_after"], visit_id, after_id, up_to, limit)]


async def all_events_after(conn: asyncpg.Connection, after_id: int, limit: int = 1000) -> list[PresenceEvent]:
    """Every visit's events after after_id, oldest first (for the bus catching up)."""
    return [_event(r) for r in await conn.fetch(Q["events_by_id_after"], after_id, limit)]


async def running_writers(conn: asyncpg.Connection) -> tuple[str, bool]:
    """A snapshot of the transactions running now (as text), and whether there are none."""
    row = await conn.fetchrow(Q["writers_snapshot"])
    assert row is not None
    return row["snapshot"], row["none_running"]


async def writers_finished(conn: asyncpg.Connection, snapshot: str) -> bool:
    """Whether every transaction running when the snapshot was taken has ended."""
    done: bool = await conn.fetchval(Q["writers_finished"], snapshot)
    return done


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


async def named_participants(conn: asyncpg.Connection, visit_id: UUID) -> set[UUID]:
    """The visit's patient and guests: the participants who give a display name."""
    return {r["id"] for r in await conn.fetch(Q["named_participants"], visit_id)}


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
