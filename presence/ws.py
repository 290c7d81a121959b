"""The presence websocket (docs/presence-protocol.md): authenticate first, then subscribe and act.

Once upgraded, a socket is answered only with frames: every request type has a schema and a handler in one
table (MESSAGES), a frame that fails its schema gets an error frame and the socket lives on, and a failure of
ours (the database away, a bug) becomes an error frame too, never an HTTP page written into the socket.
What a participant can make the gateway store is bounded (presence.limits), apart from the frame rate itself.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from aiohttp import WSMsgType, web

from gateway import clinic_queue, joinlinks, participants
from gateway.appkeys import DB, SETTINGS
from gateway.errors import QueueRefused
from gateway.meetings.builtin import ice_servers
from gateway.sessions import browser_keys, provider_identity

from . import eventlog, quality, visit_end
from . import queue as clinic_queue_socket
from .appkeys import ANNOUNCER, BUS, CHAT_BUDGET, HUB, LEASE, STORE_BUDGET
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
CHAT_MAX = 500  # characters of one chat message, after control characters are taken out
MAX_EVENT_ID = 2**63 - 1  # presence_events.id is a bigint
MAX_REQUEST_ID = 2**53  # ids a browser can hold exactly
_HANDLE = re.compile(r"[A-Za-z0-9_-]{1,128}")
SESSION_RECHECK = 5.0  # seconds: a participant socket's session is checked again before a frame after this long
SESSION_IDLE = 60.0  # seconds: ... and when the socket has sent nothing for this long
MOVED = json.dumps({"type": "session_moved"})
# The peer went away mid-send (a reload, the back button, a dropped network): an ordinary close.
_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class Identity:
    """Who an authenticated socket speaks for."""

    visit_id: UUID
    participant_id: UUID
    role: str
    fhir_user: str | None = None  # a clinician's EHR user id (what their clinic queue is drawn from)


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
    try:
        await ws.prepare(request)
    except _GONE:  # the page went away (reload, back) during the handshake
        log.debug("presence socket went away before its upgrade completed")
        return ws
    # From here on the answer is this socket: nothing may escape to the error middleware, whose HTML page
    # would be written into the upgraded connection.
    try:
        await _socket(request, ws)
    except _GONE:
        log.debug("presence socket went away mid-send")
    except Exception:
        log.exception("presence socket failed")
        if not ws.closed:
            with contextlib.suppress(*_GONE):
                await ws.close(code=1011, message=b"internal error")
    return ws


async def _socket(request: web.Request, ws: web.WebSocketResponse) -> None:
    app = request.app
    conn: Connection | None = None
    try:
        first = await _first_frame(ws)
        if first is None:
            return
        req_id = _request_id(first)
        try:
            identity, where = await _authenticate(request, first)
        except eventlog.UNAVAILABLE as exc:
            log.warning("presence socket refused: database unavailable (%s)", type(exc).__name__)
            await _error(ws, req_id, "database_unavailable")
            await ws.close(code=1013, message=b"try again later")
            return
        if identity is None:
            await _error(ws, req_id, "session_moved" if await _moved(request) else "auth_failed")
            await ws.close(code=4401, message=b"auth failed")
            return
        conn = Connection(ws, request.transport, identity.visit_id, identity.participant_id, identity.role, where)
        if where == "queue":
            try:
                opened = await _open_queue(app, conn, identity)
            except eventlog.UNAVAILABLE:
                opened = None
            if opened is None:
                await _error(ws, req_id, "database_unavailable")
                await ws.close(code=1013, message=b"try again later")
                conn = None
                return
            if not opened:
                await _error(ws, req_id, "auth_failed")
                await ws.close(code=4401, message=b"auth failed")
                conn = None
                return
        elif not await _opened(app, conn):
            # This process holds no lease right now (it was just written off): the browser comes back at once.
            await ws.close(code=RESTART_CODE, message=b"reconnect")
            return
        await ws.send_str(json.dumps({"type": "auth_ok", "id": req_id, "participant": str(conn.participant_id),
                                      "role": conn.role, "visit": str(conn.visit_id)}))
        if conn.role != "provider":
            await _tell_moved(app, conn)
        await _serve(app, conn, None if conn.role == "provider" else request)
    finally:
        if conn is not None and conn.where == "queue":
            clinic_queue_socket.stop(app, conn)  # a queue socket wrote no opening event: none to close
        elif conn is not None:
            app[HUB].remove(conn)
            await asyncio.shield(_closed(app, conn))


async def _error(ws: web.WebSocketResponse, req_id: int | None, code: str) -> None:
    await ws.send_str(json.dumps({"type": "error", "id": req_id, "code": code}))


async def _first_frame(ws: web.WebSocketResponse) -> dict[str, Any] | None:
    try:
        msg = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT)
    except TimeoutError:
        await ws.close(code=4408, message=b"auth timeout")
        return None
    frame = _parse(msg)
    if frame is None or frame.get("type") != "auth" or frame.get("where") not in (*ON_OPEN, "queue"):
        await ws.close(code=4400, message=b"auth expected")
        return None
    return frame


def _parse(msg: Any) -> dict[str, Any] | None:
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        frame = json.loads(msg.data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return None
    return frame if isinstance(frame, dict) and isinstance(frame.get("type"), str) else None


def _request_id(frame: dict[str, Any]) -> int | None:
    value = frame.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and -MAX_REQUEST_ID <= value <= MAX_REQUEST_ID:
        return value
    return None


async def _authenticate(request: web.Request, frame: dict[str, Any]) -> tuple[Identity | None, str]:
    where = str(frame["where"])
    handle = frame.get("provider")
    if handle is not None:
        # Checked before it reaches the database: a lone surrogate or a megabyte is not a handle.
        if where == "lobby" or not isinstance(handle, str) or not _HANDLE.fullmatch(handle):
            return None, where
        async with request.app[DB].acquire() as db:
            found = await provider_identity(db, handle, browser=browser_keys(request))
            if found is None:
                return None, where
            participant_id = await participants.provider_participant(db, found.visit_id, found.fhir_user)
        return Identity(found.visit_id, participant_id, "provider", found.fhir_user), where
    cookie = request.cookies.get(joinlinks.PARTICIPANT_COOKIE)
    if not cookie or where in ("view", "queue") or not _HANDLE.fullmatch(cookie):
        return None, where
    async with request.app[DB].acquire() as db:
        participant = await joinlinks.participant_for_session(db, cookie)
    if participant is None:
        return None, where
    return Identity(participant.visit_id, participant.id, participant.role), where


async def _moved(request: web.Request) -> bool:
    """Whether the socket's session ended because its link was opened on another device."""
    cookie = request.cookies.get(joinlinks.PARTICIPANT_COOKIE)
    if not cookie or not _HANDLE.fullmatch(cookie):
        return False
    try:
        async with request.app[DB].acquire() as db:
            return await joinlinks.session_moved(db, cookie)
    except eventlog.UNAVAILABLE:
        return False


async def _tell_moved(app: web.Application, conn: Connection) -> None:
    """A participant whose session just moved here: its old device's sockets (any process) hear of it."""
    try:
        async with app[DB].acquire() as db:
            if not await joinlinks.recently_moved(db, conn.participant_id):
                return
        await app[BUS].relay(conn.visit_id, MOVED, to=conn.participant_id)
    except Exception:  # the old device also learns on its next frame or request; the new one goes on
        log.exception("could not tell the other sockets of participant %s of a move", conn.participant_id)


async def _session_live(request: web.Request) -> bool:
    cookie = request.cookies.get(joinlinks.PARTICIPANT_COOKIE, "")
    async with request.app[DB].acquire() as db:
        return await joinlinks.participant_for_session(db, cookie) is not None


async def _open_queue(app: web.Application, conn: Connection, identity: Identity) -> bool:
    """Make conn a clinic queue's socket (presence.queue) for the clinician's launch; False if its visit is gone."""
    async with app[DB].acquire() as db:
        owner = await clinic_queue.queue_owner(db, identity.visit_id, identity.fhir_user, app[SETTINGS].time_zone)
    if owner is None:
        return False
    conn.queue = clinic_queue_socket.QueueWatch(owner)
    return True


async def _opened(app: web.Application, conn: Connection) -> bool:
    """Record the socket's opening event under this process's lease; False when there is no lease."""
    kind = ON_OPEN[conn.where]
    try:
        if not await app[LEASE].opened(conn, kind):
            return False
    except Exception:  # not an outage (that is kept and retried): the socket works, without its events
        log.exception("could not record %s for visit %s", kind, conn.visit_id)
        return True
    app[BUS].poke()
    return True


async def _closed(app: web.Application, conn: Connection) -> None:
    kind = ON_CLOSE[conn.where]
    try:
        if not await app[LEASE].closed(conn, kind):
            return
    except Exception:  # not lost: the lease's end (clean stop, or a sweep after a crash) writes it
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


async def _serve(app: web.Application, conn: Connection, session: web.Request | None = None) -> None:
    bucket = _Bucket()
    ws = conn.ws
    checked = time.monotonic()
    # A participant's socket is woken now and then even when silent, to check its session (below); a clinic
    # queue's, to read its list of visits again.
    wake = SESSION_IDLE if session is not None else clinic_queue_socket.QUEUE_REFRESH if conn.queue else None
    refreshed = time.monotonic()
    while True:
        try:
            msg = await ws.receive(timeout=wake)
        except TimeoutError:
            msg = None
        if conn.queue is not None and time.monotonic() - refreshed >= clinic_queue_socket.QUEUE_REFRESH:
            refreshed = time.monotonic()
            try:
                await clinic_queue_socket.refresh(app, conn)
            except eventlog.UNAVAILABLE:
                pass  # the next refresh tries again
            except QueueRefused:
                pass  # the organisation stopped sharing department queues: no new visits join
        if msg is not None:
            if msg.type != WSMsgType.TEXT:
                break
            if not bucket.take():
                await ws.close(code=1008, message=b"too many messages")
                break
        if session is not None and (msg is None or time.monotonic() - checked > SESSION_RECHECK):
            # A participant's session can end while its socket is open (the link opened on another device,
            # or revoked): its frames stop counting then, and it stops hearing the visit, whatever its page
            # does with the news.
            checked = time.monotonic()
            with contextlib.suppress(*eventlog.UNAVAILABLE):
                if not await _session_live(session):
                    await _error(ws, None, "session_moved" if await _moved(session) else "auth_failed")
                    await ws.close(code=4401, message=b"session ended")
                    break
        if msg is None:
            continue
        frame = _parse(msg)
        if frame is None:
            await _error(ws, None, "bad_frame")
            continue
        req_id = _request_id(frame)
        code = await _dispatch(app, conn, frame, req_id)
        if code is not None:
            await _error(ws, req_id, code)


async def _dispatch(app: web.Application, conn: Connection, frame: dict[str, Any], req_id: int | None) -> str | None:
    """Check a frame against its type's schema and run its handler; an error code, or None when answered."""
    spec = MESSAGES.get(frame["type"])
    if spec is None:
        return "unknown_type"
    try:
        if spec.roles is not None and conn.role not in spec.roles:
            raise Refusal("not_allowed")
        # A queue watches and admits; everything else belongs to a visit's own pages, and the reverse.
        if (conn.where == "queue") != (frame["type"] in QUEUE_ONLY) and frame["type"] not in QUEUE_TOO:
            raise Refusal("not_allowed")
        args = {name: check(frame.get(name)) for name, check in spec.fields.items()}
        answered = await spec.handler(app, conn, args, req_id)
    except Refusal as refusal:
        return refusal.code
    except eventlog.UNAVAILABLE as exc:
        log.warning("presence request %s refused: database unavailable (%s)", frame["type"], type(exc).__name__)
        return "database_unavailable"
    except _GONE:
        raise
    except Exception:  # a bug of ours: the page learns its request failed, the socket stays
        log.exception("presence request %s failed", frame["type"])
        return "server_error"
    if not answered:
        await conn.ws.send_str(json.dumps({"type": "result", "id": req_id}))
    return None


# --- schemas: each check returns the value the handler gets, or refuses with the code the page sees ---------


def _after(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_EVENT_ID:
        raise Refusal("bad_after")
    return value


def _participant(value: Any) -> UUID:
    if not isinstance(value, str) or len(value) > 36:
        raise Refusal("bad_participant")
    try:
        return UUID(value)
    except ValueError:
        raise Refusal("bad_participant") from None


def _display_name(value: Any) -> str:
    if not isinstance(value, str):
        raise Refusal("bad_display_name")
    # Control, format, surrogate and unassigned characters go: a lone surrogate cannot be encoded, and the
    # others hide or reorder what the clinician reads.
    text = "".join(ch for ch in value if unicodedata.category(ch)[0] != "C").strip()
    if not 1 <= len(text) <= 60:
        raise Refusal("bad_display_name")
    return text


def _optional_participant(value: Any) -> UUID | None:
    return None if value is None else _participant(value)


def _chat_text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 4 * CHAT_MAX:
        raise Refusal("bad_chat_text")
    # As display names, minus the joiner that holds emoji together; line breaks and tabs become spaces.
    text = "".join(" " if ch in "\t\n\r" else ch for ch in value
                   if ch in "\t\n\r\u200d" or unicodedata.category(ch)[0] != "C").strip()
    if not 1 <= len(text) <= CHAT_MAX:
        raise Refusal("bad_chat_text")
    return text


def _passed(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Refusal("bad_device_test")
    return value


CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
RELAY_STATES = frozenset({"ok", "failed", "not_offered", "unknown"})
MAX_RTT_MS = 600_000


def _flag(value: Any, code: str, *, optional: bool = False) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise Refusal(code)
    return value


def _millis(value: Any, code: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_RTT_MS:
        raise Refusal(code)
    return float(value)


def _device_result(value: Any) -> str | None:
    """A device test's result as JSON text to store, rebuilt from checked fields only (nothing a page typed)."""
    if value is None:
        return None  # a page that sends only `passed`
    if not isinstance(value, dict) or len(value) > 8:
        raise Refusal("bad_device_test")
    candidates = value.get("candidates")
    if not isinstance(candidates, list) or len(candidates) > len(CANDIDATE_TYPES) \
            or any(c not in CANDIDATE_TYPES for c in candidates if isinstance(c, str)) \
            or not all(isinstance(c, str) for c in candidates):
        raise Refusal("bad_device_test")
    relay = value.get("relay")
    if not isinstance(relay, str) or relay not in RELAY_STATES:
        raise Refusal("bad_device_test")
    rtt = _millis(value.get("rtt_ms"), "bad_device_test")
    result = {"camera": _flag(value.get("camera"), "bad_device_test"),
              "microphone": _flag(value.get("microphone"), "bad_device_test"),
              "speaker": _flag(value.get("speaker"), "bad_device_test", optional=True),
              "candidates": [c for c in CANDIDATE_TYPES if c in candidates],
              "relay": relay,
              "rtt": None if rtt is None else quality.rtt_bucket(rtt)}
    return json.dumps(result, separators=(",", ":"))


def _sample_rtt(value: Any) -> float | None:
    return _millis(value, "bad_quality")


def _loss(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise Refusal("bad_quality")
    return float(value)


def _signal_data(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Refusal("bad_signal")
    return value


# --- handlers: True when they answered the request themselves, False for a plain `result` ----------------


Handler = Callable[[web.Application, Connection, dict[str, Any], "int | None"], Awaitable[bool]]


async def _on_subscribe(app: web.Application, conn: Connection, args: dict[str, Any], req_id: int | None) -> bool:
    await _subscribe(app, conn, args["after"], req_id)
    return True


async def _on_ice(app: web.Application, conn: Connection, args: dict[str, Any], req_id: int | None) -> bool:
    # Fresh TURN credentials before the page's run out, so a connection started late in a long visit
    # (a rejoin, a recovery after a failure) can still be relayed; the lobby's device test checks the relay
    # with them before the call.
    if conn.where not in ("room", "lobby"):
        raise Refusal("not_in_room")
    servers = ice_servers(app[SETTINGS], str(conn.participant_id))
    await conn.ws.send_str(json.dumps({"type": "ice", "id": req_id, "servers": servers}))
    return True


async def _on_hello(app: web.Application, conn: Connection, args: dict[str, Any], req_id: int | None) -> bool:
    conn.display_name = args["display_name"]
    # Every process watching the visit keeps it (this one too, when its own notification comes back).
    await app[BUS].share_names(conn.visit_id, {conn.participant_id: args["display_name"]})
    return False


async def _on_device_test(app: web.Application, conn: Connection, args: dict[str, Any],
                          req_id: int | None) -> bool:
    kind = "device_test_passed" if args["passed"] else "device_test_failed"
    detail: str | None = args["result"]
    budget = app[STORE_BUDGET]
    if not budget.allows(conn.participant_id):
        raise Refusal("rate_limited")
    async with app[DB].acquire() as db:
        latest = await eventlog.latest_device_result(db, conn.participant_id)
    if latest is not None and latest[0] == kind and (
            detail is None or (latest[1] is not None and json.loads(latest[1]) == json.loads(detail))):
        return False  # the same result again: already stored
    if detail is None:
        await _store(app, conn, conn.participant_id, kind)
        return False
    await eventlog.record_device_test(app[DB], conn.visit_id, conn.participant_id, args["passed"], detail,
                                      app[ANNOUNCER])
    budget.spend(conn.participant_id)
    app[BUS].poke()
    return False


async def _on_quality(app: web.Application, conn: Connection, args: dict[str, Any], req_id: int | None) -> bool:
    # Counted into the visit's per-role summary (presence.quality); the store budget bounds how often.
    if conn.where != "room":
        raise Refusal("not_in_room")
    budget = app[STORE_BUDGET]
    if not budget.allows(conn.participant_id):
        raise Refusal("rate_limited")
    async with app[DB].acquire() as db:
        await quality.add_sample(db, conn.visit_id, conn.role, args["rtt_ms"], args["loss_pct"])
    budget.spend(conn.participant_id)
    return False


async def _on_provider_action(app: web.Application, conn: Connection, args: dict[str, Any],
                              req_id: int | None, kind: str) -> bool:
    target = args["participant"]
    budget = app[STORE_BUDGET]
    if not budget.allows(conn.participant_id):
        raise Refusal("rate_limited")
    async with app[DB].acquire() as db:
        participant = await participants.get_participant(db, target)
        # From a clinic queue: a patient or guest of any visit the queue watches (the clinician's own).
        mine = participant is not None and (
            clinic_queue_socket.watches(conn, participant.visit_id) if conn.where == "queue"
            else participant.visit_id == conn.visit_id)
        if participant is None or not mine or participant.role == "provider":
            raise Refusal("unknown_participant")
        if await participants.admission_state(db, target) == kind:
            return False  # admitted (denied, removed) already: nothing new to store
        if await visit_end.visit_end(db, participant.visit_id) is not None:
            raise Refusal("visit_ended")
    await _store(app, conn, target, kind, participant.visit_id)
    return False


def _provider_action(kind: str) -> Handler:
    async def handler(app: web.Application, conn: Connection, args: dict[str, Any], req_id: int | None) -> bool:
        return await _on_provider_action(app, conn, args, req_id, kind)

    return handler


async def _on_signal(app: web.Application, conn: Connection, args: dict[str, Any], req_id: int | None) -> bool:
    if conn.role != "provider":
        # Only someone in the room may reach the others' browsers; the lobby may not.
        async with app[DB].acquire() as db:
            if await participants.admission_state(db, conn.participant_id) != "admitted":
                raise Refusal("not_admitted")
    try:
        text = json.dumps({"type": "signal", "from": str(conn.participant_id), "data": args["data"]})
    except (ValueError, RecursionError):
        raise Refusal("bad_signal") from None
    try:
        await app[BUS].relay(conn.visit_id, text, to=args["to"])
    except RelayTooLarge:
        raise Refusal("signal_too_large") from None
    return False


async def _on_chat(app: web.Application, conn: Connection, args: dict[str, Any], req_id: int | None) -> bool:
    # A conversation is always between the clinicians and one patient or guest (its `participant`): a
    # clinician names whom they write to, a patient or guest writes to the clinicians and no one else.
    if not app[SETTINGS].waiting_chat:
        raise Refusal("chat_off")
    budget = app[CHAT_BUDGET]
    if not budget.allows(conn.participant_id):
        raise Refusal("rate_limited")
    target = args["to"]
    if conn.role == "provider" and target is None:
        raise Refusal("bad_participant")
    if target is not None:
        async with app[DB].acquire() as db:
            found = await participants.get_participant(db, target)
        if found is None or found.visit_id != conn.visit_id:
            raise Refusal("unknown_participant")
        if (found.role == "provider") != (conn.role != "provider"):
            raise Refusal("not_allowed")  # a guest to a guest, a clinician to a clinician
    thread = target if conn.role == "provider" else conn.participant_id
    assert thread is not None
    frame = json.dumps({"type": "chat", "participant": str(thread), "from": str(conn.participant_id),
                        "role": conn.role, "text": args["text"]})
    try:
        await app[BUS].relay_chat(conn.visit_id, thread, frame)
    except RelayTooLarge:
        raise Refusal("bad_chat_text") from None
    budget.spend(conn.participant_id)
    return False


async def _on_end_visit(app: web.Application, conn: Connection, args: dict[str, Any], req_id: int | None) -> bool:
    # Ending twice (two clinicians, a double click, a sweep at the same moment) is not an error: the first end
    # stands and everyone has been told of it.
    async with app[DB].acquire() as db:
        await visit_end.end_visit(db, conn.visit_id, "clinician", conn.participant_id)
    app[BUS].poke()
    return False


async def _on_subscribe_queue(app: web.Application, conn: Connection, args: dict[str, Any],
                              req_id: int | None) -> bool:
    if conn.queue.scope is not None:
        raise Refusal("already_subscribed")
    try:
        await clinic_queue_socket.subscribe(app, conn, args["scope"], req_id)
    except QueueRefused as exc:
        raise Refusal(exc.reason) from None
    return True


def _scope(value: Any) -> str:
    if value is None:
        return "own"
    if not isinstance(value, str) or value not in clinic_queue.SCOPES:
        raise Refusal("bad_scope")
    return value


async def _store(app: web.Application, conn: Connection, participant_id: UUID, kind: str,
                 visit_id: UUID | None = None) -> None:
    """Store an event a request asked for (the database away: refused, the page shows it), and count it.

    In conn's visit, or in visit_id (a clinic queue admits into the visits it watches).
    """
    await eventlog.record_event(app[DB], visit_id or conn.visit_id, participant_id, kind, app[ANNOUNCER])
    app[STORE_BUDGET].spend(conn.participant_id)
    app[BUS].poke()


@dataclass(frozen=True)
class MessageType:
    """A request type: who may send it, the fields it carries (each checked), and what it does."""

    handler: Handler
    fields: Mapping[str, Callable[[Any], Any]]
    roles: frozenset[str] | None = None  # None: anyone authenticated


_PARTICIPANTS = frozenset({"patient", "guest"})
MESSAGES: Mapping[str, MessageType] = {
    "subscribe": MessageType(_on_subscribe, {"after": _after}),
    "ice": MessageType(_on_ice, {}),
    "hello": MessageType(_on_hello, {"display_name": _display_name}, _PARTICIPANTS),
    "device_test": MessageType(_on_device_test, {"passed": _passed, "result": _device_result}, _PARTICIPANTS),
    "quality": MessageType(_on_quality, {"rtt_ms": _sample_rtt, "loss_pct": _loss}),
    **{name: MessageType(_provider_action(kind), {"participant": _participant}, frozenset({"provider"}))
       for name, kind in PROVIDER_ACTIONS.items()},
    "signal": MessageType(_on_signal, {"to": _participant, "data": _signal_data}),
    "chat": MessageType(_on_chat, {"to": _optional_participant, "text": _chat_text}),
    "end_visit": MessageType(_on_end_visit, {}, frozenset({"provider"})),
    "subscribe_queue": MessageType(_on_subscribe_queue, {"scope": _scope}, frozenset({"provider"})),
}
QUEUE_ONLY = frozenset({"subscribe_queue"})  # sent on a clinic queue's socket only
QUEUE_TOO = frozenset(PROVIDER_ACTIONS)  # sent on a visit's pages and on a queue


async def _subscribe(app: web.Application, conn: Connection, after: int | None, req_id: int | None) -> None:
    hub, bus = app[HUB], app[BUS]
    if conn.pending is None and not conn.ready:
        hub.add(conn)
    elif conn.ready:
        raise Refusal("already_subscribed")
    try:
        # Only what the bus has published, in order, comes from the database; later ones wait in pending.
        up_to = bus.position
        async with app[DB].acquire() as db:
            found = await eventlog.events_after(db, conn.visit_id, after or 0, up_to, SNAPSHOT_LIMIT)
            named = await participants.named_participants(db, conn.visit_id) if after is None else set()
    except BaseException:
        hub.remove(conn)  # not subscribed after all: the page may try again
        conn.pending = None
        raise
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

