"""The in-process hub: which sockets watch which visit, and fan-out of events and relayed messages.

Each event is serialised once for all its receivers. A socket whose unsent bytes pile up past a bound is
dropped rather than waited for, so one slow phone never delays the others; its transport's write buffer
is the bounded send queue.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from aiohttp import web

from .eventlog import PresenceEvent

log = logging.getLogger(__name__)

# Below asyncio's default high-water mark (64 KiB), so a send never has to wait for a drain.
MAX_UNSENT_BYTES = 32 * 1024
VISIT_ENDED_CODE = 4410  # a participant's socket closed because its visit ended (docs/presence-protocol.md)
PENDING_LIMIT = 1000
SHUTDOWN_WAIT = 5.0


def text_frame(text: str) -> bytes:
    """A complete, unmasked, uncompressed websocket text frame (RFC 6455 section 5.2) holding text."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class Connection:
    """One authenticated socket subscribed (or about to be) to one visit."""

    __slots__ = ("ws", "transport", "visit_id", "participant_id", "role", "where", "floor", "ready", "pending", "closing",
                 "held_by", "display_name", "queue")

    def __init__(self, ws: web.WebSocketResponse, transport: Any, visit_id: UUID,
                 participant_id: UUID, role: str, where: str) -> None:
        self.ws = ws
        self.transport = transport
        self.visit_id = visit_id
        self.participant_id = participant_id
        self.role = role
        self.where = where
        self.floor = 0          # events with ids up to here were already sent (snapshot or replay)
        self.ready = False      # False while the snapshot is being read: live events wait in pending
        self.pending: list[tuple[int, str]] | None = None
        self.closing = False
        self.held_by: UUID | None = None  # the process lease its opening event was written under
        self.display_name: str | None = None  # what its patient or guest typed (memory only)
        # A clinic queue's socket (where == "queue"): its watch of several visits (presence.queue), each
        # subscribed here as a Connection of its own that shares this socket.
        self.queue: Any = None


class Hub:
    """Subscriptions of this process, by visit."""

    def __init__(self) -> None:
        self._visits: dict[UUID, set[Connection]] = {}
        self.display_names: dict[UUID, dict[UUID, str]] = {}
        self._closers: set[asyncio.Task[Any]] = set()
        # Set while any socket is subscribed: the bus reads promptly only when someone is watching.
        self.watched = asyncio.Event()

    def add(self, conn: Connection) -> None:
        """Start delivering the visit's events to conn (held back until mark_ready)."""
        conn.pending = []
        self._visits.setdefault(conn.visit_id, set()).add(conn)
        if conn.display_name is not None:
            # Its name may be new here (its notification not back yet): the others see it now, conn in its snapshot.
            self.learn_names(conn.visit_id, {conn.participant_id: conn.display_name})
        self.watched.set()

    def remove(self, conn: Connection) -> None:
        """Stop delivering to conn; safe to call twice."""
        subs = self._visits.get(conn.visit_id)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self._visits[conn.visit_id]
                self.display_names.pop(conn.visit_id, None)
                if not self._visits:
                    self.watched.clear()

    def connections(self, visit_id: UUID) -> Iterable[Connection]:
        """The sockets watching a visit in this process."""
        return tuple(self._visits.get(visit_id, ()))

    def count(self) -> int:
        """How many sockets are subscribed."""
        return sum(len(s) for s in self._visits.values())

    async def mark_ready(self, conn: Connection, floor: int) -> None:
        """The snapshot up to floor was sent: deliver what arrived meanwhile, then go live."""
        conn.floor = floor
        pending, conn.pending = conn.pending or [], None
        frames = []
        for event_id, text in pending:
            if event_id > conn.floor:
                conn.floor = event_id
                frames.append(text_frame(text))
        if frames:
            self._write(conn, b"".join(frames))
        conn.ready = True

    async def publish(self, event: PresenceEvent) -> None:
        """Deliver one event to every socket of its visit."""
        self.publish_many([event])

    def publish_many(self, events: list[PresenceEvent]) -> None:
        """Deliver events (in id order) to the sockets of their visits: each event is serialised and framed
        once for all its receivers, and each socket gets one write for the whole batch."""
        by_visit: dict[UUID, list[PresenceEvent]] = {}
        for event in events:
            if event.visit_id in self._visits:
                by_visit.setdefault(event.visit_id, []).append(event)
        for visit_id, visit_events in by_visit.items():
            texts = [(e.id, e.to_json()) for e in visit_events]
            frames = [text_frame(text) for _, text in texts]
            for conn in tuple(self._visits.get(visit_id, ())):
                if not conn.ready:
                    if conn.pending is not None and len(conn.pending) + len(texts) <= PENDING_LIMIT:
                        conn.pending.extend(texts)
                    else:
                        self.drop(conn, "backlog while subscribing")
                    continue
                if texts[0][0] > conn.floor:
                    chunk = frames if len(frames) > 1 else frames[0]
                else:
                    chunk = [f for (event_id, _), f in zip(texts, frames) if event_id > conn.floor]
                    if not chunk:
                        continue
                conn.floor = texts[-1][0]
                self._write(conn, chunk if isinstance(chunk, bytes) else b"".join(chunk))
            if any(e.kind == "visit_ended" for e in visit_events):
                self._visit_ended(visit_id)

    def learn_names(self, visit_id: UUID, names: dict[UUID, str]) -> None:
        """Keep display names for a visit watched here, and show the new or changed ones to its ready sockets."""
        if visit_id not in self._visits:
            return  # nobody here to show them to; a socket subscribing later asks again
        known = self.display_names.setdefault(visit_id, {})
        frames = []
        for participant, name in names.items():
            if known.get(participant) != name:
                known[participant] = name
                frames.append(text_frame(json.dumps({"type": "display_name", "participant": str(participant),
                                                     "display_name": name})))
        if frames:
            data = b"".join(frames)
            for conn in self.connections(visit_id):
                if conn.ready:
                    self._write(conn, data)

    async def relay(self, visit_id: UUID, text: str, to: UUID | None = None, providers: bool = False) -> None:
        """Deliver a relayed message to the visit's ready sockets (or only to one participant's, and with
        providers=True to the clinicians' too)."""
        frame = text_frame(text)
        for conn in self.connections(visit_id):
            # A clinic queue only watches presence: signalling and chat are for the visit's own pages.
            if conn.ready and conn.where != "queue" and (to is None or conn.participant_id == to or (providers and conn.role == "provider")):
                self._write(conn, frame)

    async def send(self, conn: Connection, text: str) -> None:
        """Send one message, or drop the socket if it cannot keep up."""
        self._write(conn, text_frame(text))

    def _write(self, conn: Connection, data: bytes) -> None:
        # Server frames are unmasked, so one framed message serves every receiver; writing it straight to
        # the transport skips three coroutine layers per receiver. A whole frame goes in one write, so it
        # never interleaves with aiohttp's own frames (pings, close).
        if conn.closing or conn.ws.closed:
            return
        transport: Any = conn.transport  # uvloop's transports are not asyncio.WriteTransport subclasses
        if transport is None or transport.is_closing():
            self.drop(conn, "gone")
            return
        if transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self.drop(conn, "slow consumer")
            return
        transport.write(data)

    def _visit_ended(self, visit_id: UUID) -> None:
        """Close the patients' and guests' sockets of an ended visit once its end is written to them (their
        sessions no longer authenticate; clinicians' views stay open to show the end)."""
        for conn in tuple(self._visits.get(visit_id, ())):
            # A socket still subscribing gets the event from its pending list and is left open: closing it here
            # would lose the event it has not been sent yet.
            if conn.role != "provider" and conn.ready and not conn.closing:
                conn.closing = True
                self.remove(conn)
                task = asyncio.create_task(conn.ws.close(code=VISIT_ENDED_CODE, message=b"visit ended"))
                self._closers.add(task)
                task.add_done_callback(self._closers.discard)

    def drop(self, conn: Connection, why: str) -> None:
        """Unsubscribe conn and close it with 1013 (try again later), without waiting for it."""
        if conn.closing:
            return
        conn.closing = True
        self.remove(conn)
        log.info("dropping presence socket of visit %s: %s", conn.visit_id, why)
        task = asyncio.create_task(conn.ws.close(code=1013, message=b"cannot keep up"))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def close_all(self) -> None:
        """Close every socket with 1001 (going away), for shutdown."""
        closing = []
        for subs in list(self._visits.values()):
            for conn in list(subs):
                conn.closing = True
                closing.append(conn.ws.close(code=1001, message=b"server shutdown"))
        self._visits.clear()
        # Bounded: a peer that never answers the close handshake must not hold up shutdown.
        done, stuck = await asyncio.wait([asyncio.ensure_future(c) for c in closing], timeout=SHUTDOWN_WAIT) \
            if closing else (set(), set())
        for task in stuck:
            task.cancel()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
