"""Usage figures kept as events arrive: one `visit_usage` row per visit, for the portal's usage report.

A follower reads the presence event log by id, like the webhook follower (presence.webhooks): one follower at a
time across every process (its position row is locked SKIP LOCKED), the rows it changes and its new position
written in one transaction, so each event counts exactly once however many processes run it; a gap in the ids
is passed only once every transaction that could still fill it has ended. The report then aggregates these rows
and never reads the event log (sql/queries/reports.sql).

What a row holds (no patient data: times, counts, opaque ids): when both sides were first connected (the
start), the newest disconnection (the duration runs to it), the first lobby entry of a patient or guest and
the first admission (the lobby wait), the most participants connected at once, the status (open; completed once
it ended having started; no-show when the patient never came; cancelled when it ended without starting though
the patient came). The row's counts of messages sent about the visit by SMS and email (`sms_sent`,
`email_sent`) are not the follower's: the senders add to them as they send (gateway.sent_counts), since a
reminder comes before any event of the visit and a late one after its last. The follower never writes them,
so its batch UPDATE cannot overwrite a count added after it read the row; it makes a row as the senders do.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

import sql

from . import eventlog

log = logging.getLogger(__name__)

Q = sql.queries("usage")
BATCH = 5000
POLL_INTERVAL = 1.0


@dataclass
class VisitUsage:
    """The figures of one visit, as the follower works them out."""

    visit_id: UUID
    status: str = "open"
    started_at: dt.datetime | None = None
    provider_first_at: dt.datetime | None = None
    others_first_at: dt.datetime | None = None
    last_left_at: dt.datetime | None = None
    lobby_first_at: dt.datetime | None = None
    admitted_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    attendees: int = 0
    present: dict[str, int] = field(default_factory=dict)
    last_event_id: int = 0

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> VisitUsage:
        """The stored state of a visit."""
        return cls(row["visit_id"], row["status"], row["started_at"], row["provider_first_at"],
                   row["others_first_at"], row["last_left_at"], row["lobby_first_at"], row["admitted_at"],
                   row["ended_at"], row["attendees"], json.loads(row["present"]) if row["present"] else {})

    def apply(self, event_id: int, kind: str, at: dt.datetime, participant: UUID | None, role: str | None,
              no_show: bool | None) -> None:
        """Count one event (events come in id order)."""
        self.last_event_id = event_id
        provider = role == "provider"
        if kind == "connected" and participant is not None:
            if provider:
                self.provider_first_at = _earliest(self.provider_first_at, at)
            elif role is not None:
                self.others_first_at = _earliest(self.others_first_at, at)
            if self.provider_first_at is not None and self.others_first_at is not None:
                self.started_at = max(self.provider_first_at, self.others_first_at)
            key = str(participant)
            self.present[key] = self.present.get(key, 0) + 1
            self.attendees = max(self.attendees, sum(1 for n in self.present.values() if n > 0))
        elif kind == "disconnected" and participant is not None:
            key = str(participant)
            left = self.present.get(key, 0) - 1
            if left > 0:
                self.present[key] = left
            else:
                self.present.pop(key, None)
            self.last_left_at = at if self.last_left_at is None else max(self.last_left_at, at)
        elif kind == "lobby_entered" and role is not None and not provider:
            self.lobby_first_at = _earliest(self.lobby_first_at, at)
        elif kind == "admitted" and role is not None and not provider:
            self.admitted_at = _earliest(self.admitted_at, at)
        elif kind == "visit_ended":
            self.ended_at = at
            self.status = "no_show" if no_show else "completed" if self.started_at is not None else "cancelled"

    @property
    def duration_s(self) -> float | None:
        """Seconds from the start to the newest disconnection, once there is one after the start."""
        if self.started_at is None or self.last_left_at is None or self.last_left_at < self.started_at:
            return None
        return (self.last_left_at - self.started_at).total_seconds()

    @property
    def lobby_wait_s(self) -> float | None:
        """Seconds from the first lobby entry to the first admission (none without both, in that order)."""
        if self.lobby_first_at is None or self.admitted_at is None or self.admitted_at < self.lobby_first_at:
            return None
        return (self.admitted_at - self.lobby_first_at).total_seconds()


def _earliest(known: dt.datetime | None, at: dt.datetime) -> dt.datetime:
    # Socket events written late (the database was away) carry when they happened: their ids may come after
    # newer events', so firsts are by time, not by id.
    return at if known is None or at < known else known


async def follow_once(conn: asyncpg.Connection, batch: int = BATCH) -> int | None:
    """Count the events after the follower's position; how many it passed (None: another follower is busy)."""
    async with conn.transaction():
        state = await conn.fetchrow(Q["lock_follower"])
        if state is None:
            return None
        last: int = state["last_id"]
        snap: str | None = state["gap_snapshot"]
        upto: int | None = state["gap_upto"]
        closed = snap is not None and await eventlog.writers_finished(conn, snap)
        rows = await conn.fetch(Q["events_after"], last, batch)
        start, gap, taken = last, False, []
        for row in rows:
            if row["id"] != last + 1 and not (closed and upto is not None and row["id"] <= upto):
                # An id missing before this one may still be written: stop here until every transaction that
                # was running now has ended (then what is still missing was rolled back).
                if snap is None or closed:
                    snap, _none = await eventlog.running_writers(conn)
                    upto = rows[-1]["id"]
                gap = True
                break
            taken.append(row)
            last = row["id"]
        if taken:
            await _count(conn, taken)
        if not gap:
            snap, upto = None, None
        if last != start or gap:
            await conn.execute(Q["move_follower"], last, snap, upto)
    return last - start


async def _count(conn: asyncpg.Connection, events: list[asyncpg.Record]) -> None:
    visit_ids = list(dict.fromkeys(e["visit_id"] for e in events))
    await conn.execute(Q["open_rows"], visit_ids)
    usage = {r["visit_id"]: VisitUsage.from_row(r) for r in await conn.fetch(Q["usage_rows"], visit_ids)}
    for e in events:
        usage[e["visit_id"]].apply(e["id"], e["kind"], e["at"], e["participant_id"], e["role"], e["no_show"])
    rows = list(usage.values())
    await conn.execute(
        Q["save_rows"], [u.visit_id for u in rows], [u.status for u in rows], [u.started_at for u in rows],
        [u.provider_first_at for u in rows], [u.others_first_at for u in rows], [u.last_left_at for u in rows],
        [u.lobby_first_at for u in rows], [u.admitted_at for u in rows], [u.ended_at for u in rows],
        [u.duration_s for u in rows], [u.lobby_wait_s for u in rows], [u.attendees for u in rows],
        [_present(u) for u in rows], [u.last_event_id for u in rows])


def _present(u: VisitUsage) -> str | None:
    # Nobody connected: nothing to carry (an ended visit whose sockets all closed keeps no state).
    return json.dumps(u.present, separators=(",", ":")) if u.present else None


async def catch_up(pool: asyncpg.Pool, batch: int = BATCH) -> int:
    """Follow until nothing is left to count now (or another follower holds the position); how many passed."""
    total = 0
    while True:
        async with pool.acquire() as conn:
            passed = await follow_once(conn, batch)
        if not passed:
            return total
        total += passed


class UsageFollower:
    """Runs the usage follower in this process (any number of processes may; one counts at a time)."""

    def __init__(self, pool: asyncpg.Pool, interval: float = POLL_INTERVAL) -> None:
        self._pool = pool
        self._interval = interval

    async def run(self) -> None:
        """Follow until cancelled; a database away, or a failure of ours, costs a round, not the loop."""
        while True:
            try:
                await catch_up(self._pool)
            except eventlog.UNAVAILABLE as exc:
                log.warning("usage follower: database unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("usage follower: a round failed")
            await asyncio.sleep(self._interval)

