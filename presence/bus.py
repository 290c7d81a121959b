"""The PostgreSQL bus: events and relayed messages cross gateway processes through LISTEN/NOTIFY.

Notifications carry only event ids; the bus reads the events themselves in id order and hands them to
the hub. A notification that is lost (the listening connection dropped) costs nothing: on reconnect the
bus catches up from the last id it published. Ids are allocated before commit, so a later id can become
visible before an earlier one: the bus waits at such a gap. A rolled-back insert leaves a gap forever, so
after GAP_WAIT the bus asks PostgreSQL whether any transaction that could still hold the missing id is
running (the writers of a snapshot taken then), and skips the gap only once they have all ended and a
read after that still lacks the id: a commit that takes seconds (a disk stall) is delivered, not lost.
Past GAP_GIVE_UP it skips anyway, with a warning, so a writer that never ends cannot stall presence. A process with no subscribed socket reads at most every
IDLE_READ seconds instead of on every notification: nobody is waiting, and every read takes time from the
database that the writers share.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
import zlib
from collections.abc import Coroutine
from typing import Any
from uuid import UUID

import asyncpg

from gateway.security import Sealer

from .eventlog import CHANNEL, all_events_after, last_event_id, running_writers, writers_finished
from .hub import Hub

log = logging.getLogger(__name__)

RELAY_CHANNEL = "presence_relay"
RELAY_MAX = 7900  # NOTIFY payloads must stay under 8000 bytes
GAP_WAIT = 0.5  # at a gap: wait this long before asking PostgreSQL about the writers that may hold the id
GAP_POLL = 0.05  # then look again this often (the missing event's own notification wakes us sooner)
GAP_GIVE_UP = 10.0
CATCH_UP = 1.0
IDLE_READ = 0.25
BATCH = 500


class RelayTooLarge(ValueError):
    """A relayed message does not fit in one notification."""


class PresenceBus:
    """Listens on PostgreSQL and feeds the hub; publishes relayed messages for other processes."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, hub: Hub, sealer: Sealer) -> None:
        self._pool = pool
        self._dsn = dsn
        self._hub = hub
        self._sealer = sealer
        self.position = 0
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._gap_since: float | None = None
        self._gap_snapshot: str | None = None  # pg_current_snapshot() once a gap outlived GAP_WAIT
        self._gap_writers_done = False  # every writer of that snapshot has ended: the next read decides
        self._behind = False  # the last read was a full batch: there is more to read at once
        self._tasks: list[asyncio.Task[None]] = []
        # Plain counts for /metrics (events per read shows how well live delivery batches).
        self.notices = 0
        self.reads = 0
        self.events_read = 0

    async def start(self) -> None:
        """Begin at the newest event (older ones are read by subscribers' snapshots) and start listening."""
        async with self._pool.acquire() as conn:
            self.position = await last_event_id(conn)
        self._tasks = [asyncio.create_task(self._listen_forever()), asyncio.create_task(self._drain_forever())]
        # Bounded wait so a broken database does not hang start-up; the listener keeps retrying.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 10)

    async def stop(self) -> None:
        """Cancel and await the bus's tasks."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def poke(self) -> None:
        """Look for new events now (a local write, a notification)."""
        self._wake.set()

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(CHANNEL, self._on_event_notice)
                await conn.add_listener(RELAY_CHANNEL, self._on_relay_notice)
                self._connected.set()
                delay = 0.1
                self.poke()  # catch up on whatever was written while we were not listening
                await lost.wait()
                log.warning("presence bus lost its database connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("presence bus cannot listen (%s); retrying in %.1fs", type(exc).__name__, delay)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(delay + random.uniform(0, delay / 2))
            delay = min(delay * 2, 5.0)

    def _on_event_notice(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.notices += 1
        self._wake.set()

    def _on_relay_notice(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = json.loads(zlib.decompress(self._sealer.unseal_bytes(base64.b64decode(payload), "relay")))
            visit_id = UUID(data["visit"])
            to = UUID(data["to"]) if data.get("to") else None
            text = data.get("text")
            providers = data.get("providers") is True
            names = {UUID(k): v for k, v in (data.get("names") or {}).items() if isinstance(v, str)}
            if text is not None and not isinstance(text, str):
                raise TypeError("text")
        except Exception:  # a foreign or corrupt payload is ignored, never fatal
            log.warning("ignored an unreadable relay notification")
            return
        if names:
            self._hub.learn_names(visit_id, names)
        if text is not None and self._hub.connections(visit_id):
            self._spawn(self._hub.relay(visit_id, text, to, providers))
        if data.get("ask") is True:
            # Someone here or in another process opened the visit without knowing every name: tell what we know.
            known = self._hub.display_names.get(visit_id)
            if known:
                self._spawn(self._tell_names(visit_id, dict(known)))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _tell_names(self, visit_id: UUID, names: dict[UUID, str]) -> None:
        try:
            await self.share_names(visit_id, names)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RelayTooLarge) as exc:
            log.warning("could not answer a question for display names (%s)", type(exc).__name__)

    async def relay(self, visit_id: UUID, text: str, to: UUID | None = None) -> None:
        """Send a message (sealed, never stored) to the visit's sockets in every process."""
        await self._publish({"visit": str(visit_id), "to": str(to) if to else None, "text": text})

    async def relay_chat(self, visit_id: UUID, participant_id: UUID, text: str) -> None:
        """Send a chat frame (sealed like every relayed message, never stored) to one patient's or guest's
        sockets and to the visit's clinicians, in every process."""
        await self._publish({"visit": str(visit_id), "to": str(participant_id), "text": text, "providers": True})

    async def share_names(self, visit_id: UUID, names: dict[UUID, str]) -> None:
        """Tell every process the display names of a visit's participants (kept in memory where it is watched)."""
        await self._publish({"visit": str(visit_id), "names": {str(k): v for k, v in names.items()}})

    async def ask_names(self, visit_id: UUID) -> None:
        """Ask every process for the display names it knows in a visit (the answers come as share_names)."""
        await self._publish({"visit": str(visit_id), "ask": True})

    async def _publish(self, message: dict[str, Any]) -> None:
        blob = self._sealer.seal_bytes(zlib.compress(json.dumps(message).encode()), "relay")
        payload = base64.b64encode(blob).decode()
        if len(payload) > RELAY_MAX:
            raise RelayTooLarge(len(payload))
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", RELAY_CHANNEL, payload)

    async def _drain_forever(self) -> None:
        while True:
            # A notification wakes us; without one we still look every CATCH_UP seconds, so a wake-up
            # lost anywhere (a failed NOTIFY, a dropped listener) costs latency, never an event.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), CATCH_UP)
            if not self._hub.watched.is_set() and not self._behind:
                # Nobody here to deliver to: let notifications pile up, unless a socket subscribes. (A
                # backlog is still read at full speed, so an idle process never falls behind for long.)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hub.watched.wait(), IDLE_READ)
            self._wake.clear()
            try:
                more = await self._drain_once()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("presence bus could not read events (%s)", type(exc).__name__)
                await asyncio.sleep(0.5)
                more = True
            if more:
                if self._gap_since is not None:
                    # The missing event's own notification ends this wait at once; else look again soon.
                    waited = time.monotonic() - self._gap_since
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 0.005 if waited < GAP_WAIT else GAP_POLL)
                self._wake.set()

    async def _drain_once(self) -> bool:
        """Publish events after position in id order; True when there may be more to read soon."""
        async with self._pool.acquire() as conn:
            events = await all_events_after(conn, self.position, BATCH)
            self.reads += 1
            self.events_read += len(events)
            ready = []
            gap = False
            for event in events:
                if event.id != self.position + 1:
                    if not await self._may_skip_gap(conn):
                        gap = True  # an earlier id may still commit: wait for it
                        break
                self._gap_since, self._gap_snapshot, self._gap_writers_done = None, None, False
                self.position = event.id
                ready.append(event)
        if ready:
            self._hub.publish_many(ready)
        self._behind = len(events) == BATCH
        return gap or self._behind

    async def _may_skip_gap(self, conn: asyncpg.Connection) -> bool:
        """Whether the ids missing before the next visible event can no longer commit (logged when skipped)."""
        now = time.monotonic()
        if self._gap_since is None:
            self._gap_since = now
        waited = now - self._gap_since
        if waited < GAP_WAIT:
            return False
        if self._gap_writers_done:
            # A read made after every possible writer had ended still lacks the ids: they were rolled back.
            log.info("presence bus skipping ids from %d (rolled back)", self.position + 1)
            return True
        if waited >= GAP_GIVE_UP:
            log.warning("presence bus skipping ids from %d after %.0fs: a transaction that may hold them is "
                        "still running", self.position + 1, waited)
            return True
        if self._gap_snapshot is None:
            # By now the writer holding the id (if any) has its transaction id: it is in this snapshot.
            self._gap_snapshot, self._gap_writers_done = await running_writers(conn)
        else:
            self._gap_writers_done = await writers_finished(conn, self._gap_snapshot)
        return False  # decided by the next read, made after this answer
