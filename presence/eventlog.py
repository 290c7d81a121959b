"""The presence event log: the one place events are written and read.

Events are appended in the caller's transaction; a notification carrying only the id goes out after
commit (presence.announcer), because a NOTIFY inside the writing transaction serialises every committing
writer on one lock. Readers that miss a notification catch up by id. A socket's opening and closing events
are written under the lease of the process holding the socket (record_held_event), so the closing events of
a process that died can be written for it exactly once (presence.lease), and each carries an idempotency
key, so one written late (the database was away) is written once however often it is retried.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import NamedTuple, Protocol
from uuid import UUID

import asyncpg

import sql

Q = sql.queries("events")


class Announcer(Protocol):
    """What announces events after their commit (presence.announcer.Announcer, which coalesces writers)."""

    def announce(self, event_id: int) -> None:
        """Note that this event is committed; a notification carrying it (or a later id) follows."""

EVENT_KINDS = frozenset({"lobby_entered", "device_test_passed", "device_test_failed", "admitted", "denied",
                         "connected", "disconnected", "left", "removed", "visit_ended"})
# Written when a socket opens or closes, under the lease of the process holding it (record_held_event).
SOCKET_KINDS = frozenset({"lobby_entered", "left", "connected", "disconnected"})
CHANNEL = "presence_events"

# What a database that is away (stopped, restarting, unreachable, cut off mid-statement) raises: the write may
# be tried again later. Anything else (a constraint, a bug) is not an outage and is not retried.
UNAVAILABLE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
               asyncpg.exceptions.OperatorInterventionError)


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
    detail: str | None = None  # a device test's result (JSON text the gateway built, see 0016), else None

    def to_json(self) -> str:
        """The wire form sent to subscribers (serialised once per event, for all of them).

        Built by hand: on the delivery path this ran at ~10-15 us an event with json.dumps, a third of a core
        at 30k events/s. Ids, UUIDs and timestamps need no escaping; the strings come from small
        vocabularies whose JSON literals are made once (anything else still goes through json.dumps).
        """
        participant = f'"{self.participant_id}"' if self.participant_id is not None else "null"
        return (f'{{"type":"event","id":{int(self.id)},"visit":"{self.visit_id}","participant":{participant},'
                f'"kind":{_json_text(self.kind)},"at":"{self.at.isoformat()}","role":{_json_text(self.role)},'
                f'"guest_kind":{_json_text(self.guest_kind)}'
                # The database holds only JSON objects the gateway built there (a CHECK, presence.ws).
                + (f',"detail":{self.detail}}}' if self.detail is not None else '}'))


# JSON literals of the event kinds, roles and guest kinds (the database allows no others).
_LITERALS = {value: json.dumps(value) for value in (
    *EVENT_KINDS, "provider", "patient", "guest", "interpreter", "family", "caregiver", "other")}


def _json_text(value: str | None) -> str:
    if value is None:
        return "null"
    literal = _LITERALS.get(value)
    return literal if literal is not None else json.dumps(value)


async def append_event(conn: asyncpg.Connection, visit_id: UUID, participant_id: UUID | None, kind: str) -> int:
    """Append an event in the caller's transaction; returns its id. Announce it once committed."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown presence event kind {kind!r}")
    row = await conn.fetchrow(Q["append_event"], visit_id, participant_id, kind, None, None, None)
    assert row is not None
    event_id: int = row["id"]
    return event_id


async def notify_after_commit(conn: asyncpg.Connection, event_id: int) -> None:
    """Tell other processes (ids only) that events up to event_id exist."""
    # Formatted, not bound: bind parameters would need the extended protocol, one statement per round trip.
    await conn.execute(Q["notify_events"].format(event_id=int(event_id)))


async def record_event(pool: asyncpg.Pool, visit_id: UUID, participant_id: UUID | None, kind: str,
                       announcer: Announcer | None = None) -> int:
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


async def append_held_event(conn: asyncpg.Connection, process_id: UUID, visit_id: UUID, participant_id: UUID,
                            kind: str, key: UUID, at: dt.datetime | None = None) -> int | None:
    """Append a socket's opening or closing event under a process's lease, once per key.

    None when it was not written: that process holds no lease any more (it was written off and its sockets'
    closing events were written for it, see presence.lease), or an event with this key was written already.
    """
    if kind not in SOCKET_KINDS:
        raise ValueError(f"{kind!r} is not a socket's opening or closing event")
    row = await conn.fetchrow(Q["append_event"], visit_id, participant_id, kind, process_id, at, key)
    return None if row is None else int(row["id"])


async def append_keyed_event(conn: asyncpg.Connection, visit_id: UUID, participant_id: UUID | None, kind: str,
                             key: UUID, at: dt.datetime | None = None) -> int | None:
    """Append an event that happened elsewhere (a Teams roster change), dated when it happened, once per key.

    None when an event with this key was written already (Graph sent the change again, or a reconciliation
    ran twice). Announce it once committed.
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown presence event kind {kind!r}")
    row = await conn.fetchrow(Q["append_event"], visit_id, participant_id, kind, None, at, key)
    return None if row is None else int(row["id"])


def _event(row: asyncpg.Record) -> PresenceEvent:
    # Positional (in the fields' order): keywords cost as much again as the tuple itself on the bus's path.
    return PresenceEvent(row["id"], row["visit_id"], row["participant_id"], row["kind"], row["at"], row["role"],
                         row["guest_kind"], row["detail"])


async def events_after(conn: asyncpg.Connection, visit_id: UUID, after_id: int, up_to: int,
                       limit: int = 1000) -> list[PresenceEvent]:
    """A visit's events with after_id < id <= up_to, oldest first."""
    return [_event(r) for r in await conn.fetch(Q["events_after"], visit_id, after_id, up_to, limit)]


async def events_of_visits(conn: asyncpg.Connection, visit_ids: list[UUID], up_to: int,
                           limit: int) -> list[PresenceEvent]:
    """The events of several visits with id <= up_to, oldest first (a clinic queue's snapshot)."""
    return [_event(r) for r in await conn.fetch(Q["events_of_visits"], visit_ids, up_to, limit)]


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


async def latest_device_test(conn: asyncpg.Connection, participant_id: UUID) -> str | None:
    """The participant's latest stored device test result (its event kind), or None."""
    kind: str | None = await conn.fetchval(Q["latest_device_test"], participant_id)
    return kind


async def latest_device_result(conn: asyncpg.Connection, participant_id: UUID) -> tuple[str, str | None] | None:
    """The participant's latest stored device test: its event kind and its result (JSON text), or None."""
    row = await conn.fetchrow(Q["latest_device_result"], participant_id)
    return None if row is None else (row["kind"], row["detail"])


async def record_device_test(pool: asyncpg.Pool, visit_id: UUID, participant_id: UUID, passed: bool,
                             detail: str, announcer: Announcer) -> int:
    """Append a device test's event with its result (JSON text built by presence.ws), then announce it."""
    kind = "device_test_passed" if passed else "device_test_failed"
    async with pool.acquire() as conn:
        event_id: int = await conn.fetchval(Q["append_device_test"], visit_id, participant_id, kind, detail)
    announcer.announce(event_id)
    return event_id


async def record_held_event(pool: asyncpg.Pool, process_id: UUID, visit_id: UUID, participant_id: UUID, kind: str,
                            announcer: Announcer) -> int | None:
    """Append a socket's opening or closing event under a process's lease now, then announce it.

    None when that process holds no lease any more (see append_held_event). Sockets write theirs through
    presence.lease, which keeps them while the database is away.
    """
    async with pool.acquire() as conn:
        event_id = await append_held_event(conn, process_id, visit_id, participant_id, kind, uuid.uuid4())
    if event_id is not None:
        announcer.announce(event_id)
    return event_id
