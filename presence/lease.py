"""Which process holds which socket, so a process that dies does not leave its participants connected, and
so a socket that opens or closes while PostgreSQL is away still gets its event once it is back.

A socket's opening and closing events (lobby_entered/left, connected/disconnected) are written under this
process's lease, a row it renews every third of `presence_lease` seconds. A process killed with -9, out of
memory or cut off with its host writes no closing events; once its lease has lapsed, any other process (each
looks as often as it renews) writes them for it and ends the lease, so the provider sees "disconnected", the
room lets the tile go and write-back ends the participant's stretch. The database decides who writes each
closing event (presence.eventlog.append_held_event): never both, never neither.

A socket event that cannot be written because the database is away waits here, in memory and in order, and
is written once the database answers again, dated when it happened and under its idempotency key (so a retry
after a commit whose answer was lost writes nothing twice). While any wait, later ones queue behind them, so
a participant's events keep their order. Written late under the same lease, they obey the same rule: if the
lease lapsed meanwhile, the sweep wrote the closing events and the late ones are not written.

A process that finds its own lease gone (stalled, or cut off from the database, for longer than the lease)
has been written off: it closes its sockets with 1012 so their browsers reconnect, and takes a new lease.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from uuid import UUID

import asyncpg

import sql

from .announcer import Announcer
from .eventlog import UNAVAILABLE, append_held_event
from .hub import Connection

log = logging.getLogger(__name__)
Q = sql.queries("events")

RESTART_CODE = 1012  # "service restart": the browser reconnects, and its socket opens under the new lease
WRITE_TIMEOUT = 5.0  # a socket event's write that takes longer is kept and retried (the key makes that safe)
BACKLOG_LIMIT = 10_000  # socket events kept while the database is away (one per socket that closes meanwhile)
RETRY_MIN, RETRY_MAX = 0.2, 2.0
STOP_FLUSH = 5.0  # at a clean stop, how long to wait for the database to take the events still kept


@dataclass(frozen=True)
class HeldEvent:
    """A socket's opening or closing event, as it happened: written now, or later if the database is away."""

    process_id: UUID
    visit_id: UUID
    participant_id: UUID
    kind: str
    key: UUID
    at: dt.datetime


class ProcessLease:
    """This process's lease on its presence sockets, the events kept while the database is away, and the
    sweep of other processes' lapsed leases."""

    def __init__(self, pool: asyncpg.Pool, announcer: Announcer, seconds: float) -> None:
        self._pool = pool
        self._announcer = announcer
        self.seconds = seconds
        self.id = uuid.uuid4()
        self._held = False
        self._sockets: set[Connection] = set()
        self._task: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[bool]] = set()
        self._nudge = asyncio.Event()
        self._backlog: collections.deque[HeldEvent] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        # Plain counts for /metrics.
        self.swept_processes = 0
        self.swept_sockets = 0
        self.written_off = 0
        self.written_late = 0  # socket events written after the database came back
        self.lost = 0  # socket events dropped: the backlog was full, or the process stopped with the database away

    async def start(self) -> None:
        """Take the lease and start renewing it (and sweeping) every third of its length."""
        await self._take()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop renewing; write the events still kept, then the closing events this process's sockets still
        lack, and end the lease."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._closers:
            await asyncio.wait(list(self._closers), timeout=5)
        if self._backlog:
            self._start_flusher()
        if self._flusher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._flusher), STOP_FLUSH)
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._backlog:
            # Not lost for good: the lease lapses and another process (or the next start) writes the closings.
            self.lost += len(self._backlog)
            log.warning("stopping with %d socket event(s) not written: the database is away", len(self._backlog))
            self._backlog.clear()
        if self._held:
            try:
                left = await end_lease(self._pool, self.id, self._announcer)
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                # Not lost: the lease lapses and another process (or the next start) closes them.
                log.warning("could not end this process's presence lease (%s)", type(exc).__name__)
                return
            if left:
                log.info("wrote %d closing event(s) for sockets that did not close cleanly", left)

    async def opened(self, conn: Connection, kind: str) -> bool:
        """Record a socket's opening event under the lease (now, or once the database is back); False when
        there is no lease to hold it under."""
        if not self._held:
            return False
        holder = self.id
        event = HeldEvent(holder, conn.visit_id, conn.participant_id, kind, uuid.uuid4(), _now())
        written = await self._write_or_keep(event)
        if written is False:
            # Written off a moment ago: find out now rather than at the next renewal.
            self._nudge.set()
            return False
        if holder != self.id:
            # Written off while this was being written: that sweep counted it and wrote its closing event.
            return False
        conn.held_by = holder
        self._sockets.add(conn)
        return True

    async def closed(self, conn: Connection, kind: str) -> bool:
        """Record a socket's closing event (now, or once the database is back), unless its process's lease
        ended and the sweep wrote it; True when it was written or is kept to be written."""
        if conn.held_by is None or conn not in self._sockets:
            return False
        self._sockets.discard(conn)
        event = HeldEvent(conn.held_by, conn.visit_id, conn.participant_id, kind, uuid.uuid4(), _now())
        return await self._write_or_keep(event) is not False

    def kept(self) -> int:
        """Socket events waiting for the database."""
        return len(self._backlog)

    async def _write_or_keep(self, event: HeldEvent) -> bool | None:
        """True: written; False: not written (no lease); None: kept, to be written once the database answers."""
        if not self._backlog:
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    event_id = await self._write(event, late=False)
            except UNAVAILABLE as exc:
                log.warning("database away: keeping a %s event to write later (%s)", event.kind, type(exc).__name__)
            else:
                return event_id is not None
        if len(self._backlog) >= BACKLOG_LIMIT:
            self.lost += 1
            log.warning("dropped a %s event: %d socket events already wait for the database", event.kind,
                        len(self._backlog))
            return None
        self._backlog.append(event)
        self._start_flusher()
        return None

    async def _write(self, event: HeldEvent, late: bool) -> int | None:
        async with self._pool.acquire() as db:
            # Late: dated when it happened. On time: the database's now, like every other event.
            event_id = await append_held_event(db, event.process_id, event.visit_id, event.participant_id,
                                               event.kind, event.key, event.at if late else None)
        if event_id is not None:
            self._announcer.announce(event_id)
        return event_id

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Write the kept events in order, retrying while the database is away."""
        delay = RETRY_MIN
        while self._backlog:
            event = self._backlog[0]
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    event_id = await self._write(event, late=True)
            except UNAVAILABLE:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception:  # not an outage: retrying would never end, and the rest must not wait behind it
                log.exception("could not write a kept %s event; dropped", event.kind)
                self.lost += 1
                self._backlog.popleft()
                continue
            delay = RETRY_MIN
            self._backlog.popleft()
            if event_id is not None:
                self.written_late += 1
            elif event.process_id == self.id and self._held:
                # Its lease is gone (or it was written once already): let the renewal find out which.
                self._nudge.set()
        log.info("socket events kept while the database was away are written")

    def count(self) -> int:
        """Sockets open under this process's lease."""
        return len(self._sockets)

    async def sweep(self) -> int:
        """Renew this lease and close the sockets of lapsed ones; returns how many closing events were written."""
        if self._held:
            async with self._pool.acquire() as db:
                still = await renew_lease(db, self.id)
            if not still:
                await self._written_off()
        else:
            await self._take()
        swept = await close_lapsed(self._pool, self.seconds, self._announcer)
        written = 0
        for process, closing in swept:
            log.warning("presence lease of process %s lapsed: wrote %d closing event(s) for its sockets",
                        process, closing)
            written += closing
        self.swept_processes += len(swept)
        self.swept_sockets += written
        return written

    async def _take(self) -> None:
        async with self._pool.acquire() as db:
            await take_lease(db, self.id)
        self._held = True

    async def _written_off(self) -> None:
        self.written_off += 1
        orphaned, self._sockets = self._sockets, set()
        self._held = False
        log.warning("this process's presence lease lapsed (stalled or cut off from the database for over %ss); "
                    "closing its %d socket(s) so they reconnect", self.seconds, len(orphaned))
        for conn in orphaned:
            task = asyncio.create_task(conn.ws.close(code=RESTART_CODE, message=b"reconnect"))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)
        self.id = uuid.uuid4()
        await self._take()

    async def _run(self) -> None:
        wait = self.seconds / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), wait)
            self._nudge.clear()
            wait = self.seconds / 3
            try:
                await self.sweep()
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("presence lease: could not renew or sweep (%s); trying again", type(exc).__name__)
                # Soon, not in a third of the lease: it must be renewed before it lapses.
                wait = min(wait, 1.0)
            except Exception:  # never let the renewal die: the process would be written off while serving
                log.exception("presence lease: renewal failed; trying again")
                wait = min(wait, 1.0)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def take_lease(conn: asyncpg.Connection, process_id: UUID) -> None:
    """Start a process's lease on the sockets it will hold."""
    await conn.execute(Q["take_lease"], process_id)


async def renew_lease(conn: asyncpg.Connection, process_id: UUID) -> bool:
    """Renew a lease; False when it lapsed and was swept (the process was written off)."""
    return await conn.fetchval(Q["renew_lease"], process_id) is not None


async def close_lapsed(pool: asyncpg.Pool, lease_seconds: float, announcer: Announcer,
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


async def end_lease(pool: asyncpg.Pool, process_id: UUID, announcer: Announcer) -> int:
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
