"""Which process holds which socket, so a process that dies does not leave its participants connected.

A socket's opening and closing events (lobby_entered/left, connected/disconnected) are written under this
process's lease, a row it renews every third of `presence_lease` seconds. A process killed with -9, out of
memory or cut off with its host writes no closing events; once its lease has lapsed, any other process (each
looks as often as it renews) writes them for it and ends the lease, so the provider sees "disconnected", the
room lets the tile go and write-back ends the participant's stretch. The database decides who writes each
closing event (gateway.events.record_held_event): never both, never neither.

A process that finds its own lease gone (stalled, or cut off from the database, for longer than the lease)
has been written off: it closes its sockets with 1012 so their browsers reconnect, and takes a new lease.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import asyncpg

from gateway import events

from .hub import Connection

log = logging.getLogger(__name__)

RESTART_CODE = 1012  # "service restart": the browser reconnects, and its socket opens under the new lease


class ProcessLease:
    """This process's lease on its presence sockets, and the sweep of other processes' lapsed leases."""

    def __init__(self, pool: asyncpg.Pool, announcer: events.Announcer, seconds: float) -> None:
        self._pool = pool
        self._announcer = announcer
        self.seconds = seconds
        self.id = uuid.uuid4()
        self._held = False
        self._sockets: set[Connection] = set()
        self._task: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[bool]] = set()
        self._nudge = asyncio.Event()
        # Plain counts for /metrics.
        self.swept_processes = 0
        self.swept_sockets = 0
        self.written_off = 0

    async def start(self) -> None:
        """Take the lease and start renewing it (and sweeping) every third of its length."""
        await self._take()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop renewing; write the closing events this process's sockets still lack and end the lease."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._closers:
            await asyncio.wait(list(self._closers), timeout=5)
        if self._held:
            try:
                left = await events.end_lease(self._pool, self.id, self._announcer)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Not lost: the lease lapses and another process (or the next start) closes them.
                log.warning("could not end this process's presence lease (%s)", type(exc).__name__)
                return
            if left:
                log.info("wrote %d closing event(s) for sockets that did not close cleanly", left)

    async def opened(self, conn: Connection, kind: str) -> int | None:
        """Record a socket's opening event under the lease; None when there is no lease to hold it under."""
        if not self._held:
            return None
        holder = self.id
        event_id = await events.record_held_event(self._pool, holder, conn.visit_id, conn.participant_id, kind,
                                                  self._announcer)
        if event_id is None:
            # Written off a moment ago: find out now rather than at the next renewal.
            self._nudge.set()
            return None
        if holder != self.id:
            # Written off while this was being written: that sweep counted it and wrote its closing event.
            return None
        conn.held_by = holder
        self._sockets.add(conn)
        return event_id

    async def closed(self, conn: Connection, kind: str) -> int | None:
        """Record a socket's closing event, unless its process's lease ended and the sweep wrote it."""
        if conn.held_by is None or conn not in self._sockets:
            return None
        self._sockets.discard(conn)
        return await events.record_held_event(self._pool, conn.held_by, conn.visit_id, conn.participant_id, kind,
                                              self._announcer)

    def count(self) -> int:
        """Sockets open under this process's lease."""
        return len(self._sockets)

    async def sweep(self) -> int:
        """Renew this lease and close the sockets of lapsed ones; returns how many closing events were written."""
        if self._held:
            async with self._pool.acquire() as db:
                still = await events.renew_lease(db, self.id)
            if not still:
                await self._written_off()
        else:
            await self._take()
        swept = await events.close_lapsed(self._pool, self.seconds, self._announcer)
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
            await events.take_lease(db, self.id)
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
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("presence lease: could not renew or sweep (%s); trying again", type(exc).__name__)
                # Soon, not in a third of the lease: it must be renewed before it lapses.
                wait = min(wait, 1.0)
            except Exception:  # never let the renewal die: the process would be written off while serving
                log.exception("presence lease: renewal failed; trying again")
                wait = min(wait, 1.0)
