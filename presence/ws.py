"""The presence websocket (docs/presence-protocol.md): authenticate first, then subscribe and act."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import unicodedata
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from aiohttp import WSMsgType, web

from gateway import events, joinlinks
from gateway.appkeys import ANNOUNCER, DB, SETTINGS
from gateway.meetings.builtin import ice_servers
from gateway.sessions import browser_keys, provider_identity

from .appkeys import BUS, HUB, LEASE
from .bus import RelayTooLarge
from .hub import Connection
from .lease import RESTART_CODE

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 5.0
MAX_FRAME = 16 * 1024
HEARTBEAT = 20.0
RATE_PER_SECOND = 20.0
RATE_BURST = 40.0
SNAPSHOT_LIMIT = 5000
ON_OPEN = {"lobby": "lobby_entered", "room": "connected", "view": "connected"}
ON_CLOSE = {"lobby": "left", "room": "disconnected", "view": "disconnected"}
PROVIDER_ACTIONS = {"admit": "admitted", "deny": "denied", "remove": "removed"}


@dataclass(frozen=True)
class Identity:
    """Who an authenticated socket speaks for."""

    visit_id: UUID
    participant_id: UUID
    role: str


class Refusal(Exception):
    """A frame we answer with an error code (and, for some, a close)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _allowed_origin(request: web.Request) -> bool:
    settings = request.app[SETTINGS]
    return request.headers.get("Origin") in {settings.public_url, *settings.frame_ancestors}


async def presence_socket(request: web.Request) -> web.StreamResponse:
    """GET /ws: one socket of a provider view, lobby or room."""
    if not _allowed_origin(request):
        log.info("refused a presence socket from a foreign origin")
        return web.json_response({"error": "origin_refused"}, status=403)
    ws = web.WebSocketResponse(compress=False, heartbeat=HEARTBEAT, max_msg_size=MAX_FRAME)
    if not ws.can_prepare(request).ok:
        return web.json_response({"error": "websocket_expected"}, status=400)
    await ws.prepare(request)
    app = request.app
    conn: Connection | None = None
    try:
        first = await _first_frame(ws)
        if first is None:
            return ws
        identity, where = await _authenticate(request, first)
        if identity is None:
            await ws.send_str(json.dumps({"type": "error", "id": first.get("id"), "code": "auth_failed"}))
            await ws.close(code=4401, message=b"auth failed")
            return ws
        conn = Connection(ws, request.transport, identity.visit_id, identity.participant_id, identity.role, where)
        if not await _opened(app, conn):
            # This process holds no lease right now (it was just written off): the browser comes back at once.
            await ws.close(code=RESTART_CODE, message=b"reconnect")
            return ws
        await ws.send_str(json.dumps({"type": "auth_ok", "id": first.get("id"), "participant": str(conn.participant_id),
                                      "role": conn.role, "visit": str(conn.visit_id)}))
        await _serve(app, conn)
    finally:
        if conn is not None:
            app[HUB].remove(conn)
            await asyncio.shield(_closed(app, conn))
    return ws


async def _first_frame(ws: web.WebSocketResponse) -> dict[str, Any] | None:
    try:
        msg = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT)
    except TimeoutError:
        await ws.close(code=4408, message=b"auth timeout")
        return None
    frame = _parse(msg)
    if frame is None or frame.get("type") != "auth" or frame.get("where") not in ON_OPEN:
        await ws.close(code=4400, message=b"auth expected")
        return None
    return frame


def _parse(msg: Any) -> dict[str, Any] | None:
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        frame = json.loads(msg.data)
    except ValueError:
        return None
    return frame if isinstance(frame, dict) and isinstance(frame.get("type"), str) else None


async def _authenticate(request: web.Request, frame: dict[str, Any]) -> tuple[Identity | None, str]:
    where = str(frame["where"])
    pool = request.app[DB]
    handle = frame.get("provider")
    async with pool.acquire() as db:
        if isinstance(handle, str):
            if where == "lobby":
                return None, where
            found = await provider_identity(db, handle, browser=browser_keys(request))
            if found is None:
                return None, where
            participant_id = await events.provider_participant(db, found.visit_id, found.fhir_user)
            return Identity(found.visit_id, participant_id, "provider"), where
        cookie = request.cookies.get(joinlinks.PARTICIPANT_COOKIE)
        if not cookie or where == "view":
            return None, where
        participant = await joinlinks.participant_for_session(db, cookie)
        if participant is None:
            return None, where
        return Identity(participant.visit_id, participant.id, participant.role), where


async def _opened(app: web.Application, conn: Connection) -> bool:
    """Record the socket's opening event under this process's lease; False when there is no lease."""
    kind = ON_OPEN[conn.where]
    try:
        if await app[LEASE].opened(conn, kind) is None:
            return False
    except Exception:  # the socket still works; neither its opening nor its closing event is written
        log.exception("could not record %s for visit %s", kind, conn.visit_id)
        return True
    app[BUS].poke()
    return True


async def _closed(app: web.Application, conn: Connection) -> None:
    kind = ON_CLOSE[conn.where]
    try:
        if await app[LEASE].closed(conn, kind) is None:
            return
    except Exception:  # not lost: the lease's end (clean stop, or a sweep after a crash) writes it
        log.exception("could not record %s for visit %s", kind, conn.visit_id)
        return
    app[BUS].poke()


async def _record(app: web.Application, conn: Connection, kind: str) -> None:
    try:
        await events.record_event(app[DB], conn.visit_id, conn.participant_id, kind, app[ANNOUNCER])
    except Exception:  # the socket's life must not hang on a failed write; the failure is logged
        log.exception("could not record %s for visit %s", kind, conn.visit_id)
        return
    app[BUS].poke()


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self) -> None:
        self.tokens = RATE_BURST
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(RATE_BURST, self.tokens + (now - self.at) * RATE_PER_SECOND)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


async def _serve(app: web.Application, conn: Connection) -> None:
    bucket = _Bucket()
    ws = conn.ws
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            break
        if not bucket.take():
            await ws.close(code=1008, message=b"too many messages")
            break
        frame = _parse(msg)
        if frame is None:
            await ws.send_str(json.dumps({"type": "error", "id": None, "code": "bad_frame"}))
            continue
        req_id = frame.get("id") if isinstance(frame.get("id"), int) else None
        try:
            answered = await _handle(app, conn, frame, req_id)
        except Refusal as refusal:
            await ws.send_str(json.dumps({"type": "error", "id": req_id, "code": refusal.code}))
            continue
        if not answered:
            await ws.send_str(json.dumps({"type": "result", "id": req_id}))


def _participant_arg(frame: dict[str, Any]) -> UUID:
    try:
        return UUID(str(frame.get("participant") or frame.get("to")))
    except ValueError:
        raise Refusal("bad_participant") from None


def _display_name(value: Any) -> str:
    if not isinstance(value, str):
        raise Refusal("bad_display_name")
    text = "".join(ch for ch in value if unicodedata.category(ch)[0] != "C").strip()
    if not 1 <= len(text) <= 60:
        raise Refusal("bad_display_name")
    return text


async def _handle(app: web.Application, conn: Connection, frame: dict[str, Any], req_id: int | None) -> bool:
    kind = frame["type"]
    bus = app[BUS]
    if kind == "subscribe":
        await _subscribe(app, conn, frame.get("after"), req_id)
        return True
    if kind == "ice":
        # Fresh TURN credentials before the page's run out, so a connection started late in a long visit
        # (a rejoin, a recovery after a failure) can still be relayed.
        if conn.where != "room":
            raise Refusal("not_in_room")
        servers = ice_servers(app[SETTINGS], str(conn.participant_id))
        await conn.ws.send_str(json.dumps({"type": "ice", "id": req_id, "servers": servers}))
        return True
    if kind == "hello" and conn.role != "provider":
        conn.display_name = _display_name(frame.get("display_name"))
        # Every process watching the visit keeps it (this one too, when its own notification comes back).
        await bus.share_names(conn.visit_id, {conn.participant_id: conn.display_name})
        return False
    if kind == "device_test" and conn.role != "provider":
        await _record(app, conn, "device_test_passed" if frame.get("passed") is True else "device_test_failed")
        return False
    if kind in PROVIDER_ACTIONS:
        if conn.role != "provider":
            raise Refusal("not_allowed")
        target = _participant_arg(frame)
        async with app[DB].acquire() as db:
            participant = await events.get_participant(db, target)
        if participant is None or participant.visit_id != conn.visit_id or participant.role == "provider":
            raise Refusal("unknown_participant")
        await events.record_event(app[DB], conn.visit_id, target, PROVIDER_ACTIONS[kind], app[ANNOUNCER])
        bus.poke()
        return False
    if kind == "signal":
        if conn.role != "provider":
            # Only someone in the room may reach the others' browsers; the lobby may not.
            async with app[DB].acquire() as db:
                if await events.admission_state(db, conn.participant_id) != "admitted":
                    raise Refusal("not_admitted")
        target = _participant_arg(frame)
        data = frame.get("data")
        if not isinstance(data, dict):
            raise Refusal("bad_signal")
        text = json.dumps({"type": "signal", "from": str(conn.participant_id), "data": data})
        try:
            await bus.relay(conn.visit_id, text, to=target)
        except RelayTooLarge:
            raise Refusal("signal_too_large") from None
        return False
    raise Refusal("unknown_type")


async def _subscribe(app: web.Application, conn: Connection, after: Any, req_id: int | None) -> None:
    if after is not None and (not isinstance(after, int) or isinstance(after, bool) or after < 0):
        raise Refusal("bad_after")
    hub, bus = app[HUB], app[BUS]
    if conn.pending is None and not conn.ready:
        hub.add(conn)
    elif conn.ready:
        raise Refusal("already_subscribed")
    # Only what the bus has published, in order, comes from the database; later ones wait in pending.
    up_to = bus.position
    async with app[DB].acquire() as db:
        found = await events.events_after(db, conn.visit_id, after or 0, up_to, SNAPSHOT_LIMIT)
        named = await events.named_participants(db, conn.visit_id) if after is None else set()
    floor = max(after or 0, up_to)
    if after is None:
        names = hub.display_names.get(conn.visit_id, {})
        await conn.ws.send_str(json.dumps({
            "type": "snapshot", "id": req_id, "last_id": floor,
            "events": [json.loads(e.to_json()) for e in found],
            "display_names": {str(k): v for k, v in names.items()}}))
        unnamed = named - names.keys()
    else:
        unnamed = set()
        for event in found:
            await conn.ws.send_str(event.to_json())
        await conn.ws.send_str(json.dumps({"type": "result", "id": req_id, "last_id": floor}))
    await hub.mark_ready(conn, floor)
    if unnamed:
        # Names live only in the memory of the processes watching the visit: one typed on another process (or
        # before this one started) is asked for, and arrives as a display_name frame now that conn is ready.
        await bus.ask_names(conn.visit_id)
