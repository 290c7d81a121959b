"""The presence websocket answers hostile or broken frames with error frames and lives on; it never writes an
HTTP page into the upgraded socket (which a browser sees as 1002), and a browser that leaves is an ordinary
close, not an error in the log. What one participant can make the gateway store is bounded."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from uuid import UUID

import aiohttp
import pytest
from yarl import URL

from gateway import joinlinks, participants
from gateway.appkeys import DB
from presence.appkeys import HUB
from presence.writeback import set_strategy
from tests.conftest import Stack, recv_frame, recv_until

TIMEOUT = 5.0


async def _connect(stack: Stack) -> aiohttp.ClientWebSocketResponse:
    return await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)


async def _provider_socket(stack: Stack) -> tuple[aiohttp.ClientWebSocketResponse, UUID, UUID]:
    """A subscribed provider view: (socket, visit, the visit's patient)."""
    handle = await stack.provider_handle()
    ws = await _connect(stack)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    auth = await recv_frame(ws, TIMEOUT)
    assert auth["type"] == "auth_ok", auth
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})
    await recv_until(ws, "snapshot", timeout=TIMEOUT)
    visit_id = UUID(auth["visit"])
    async with stack.gateway_app[DB].acquire() as conn:
        patient = await participants.patient_participant(conn, visit_id)
    return ws, visit_id, patient


async def _patient_socket(stack: Stack, visit_id: UUID, patient: UUID) -> aiohttp.ClientWebSocketResponse:
    async with stack.gateway_app[DB].acquire() as conn:
        session = await joinlinks.create_session(conn, patient, visit_id, joinlinks.default_not_after())
    stack.browser.cookie_jar.update_cookies({joinlinks.PARTICIPANT_COOKIE: session.handle},
                                            response_url=URL(stack.gateway_url))
    lobby = await _connect(stack)
    await lobby.send_json({"type": "auth", "id": 1, "where": "lobby"})
    assert (await recv_frame(lobby, TIMEOUT))["type"] == "auth_ok"
    return lobby


async def _close_frame(ws: aiohttp.ClientWebSocketResponse) -> Any:
    for _ in range(50):
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return msg
    raise AssertionError("socket stayed open")


async def _still_alive(ws: aiohttp.ClientWebSocketResponse, req_id: int = 99) -> None:
    """The socket still answers a request (an unknown type, so nothing is stored)."""
    await ws.send_json({"type": "no_such_type", "id": req_id})
    answer = await recv_until(ws, "error", timeout=TIMEOUT)
    assert answer == {"type": "error", "id": req_id, "code": "unknown_type"}, answer


async def test_a_handle_with_a_lone_surrogate_is_refused_with_a_frame_not_a_page(stack: Stack) -> None:
    ws = await _connect(stack)
    # "\ud800" is valid JSON text, and a string Python cannot encode: it must not reach the database.
    await ws.send_str('{"type": "auth", "id": 1, "provider": "abc\\ud800", "where": "view"}')
    assert await recv_frame(ws, TIMEOUT) == {"type": "error", "id": 1, "code": "auth_failed"}
    msg = await _close_frame(ws)
    assert msg.data == 4401, msg


async def test_json_nested_5000_deep_gets_an_error_frame_and_the_socket_lives(stack: Stack) -> None:
    ws, _visit, _patient = await _provider_socket(stack)
    deep = '{"type": "signal", "id": 3, "data": ' + "[" * 5000 + "]" * 5000 + "}"
    await ws.send_str(deep)
    assert await recv_until(ws, "error", timeout=TIMEOUT) == {"type": "error", "id": None, "code": "bad_frame"}
    await _still_alive(ws)
    await ws.close()


async def test_json_nested_5000_deep_as_the_first_frame_closes_as_unauthenticated(stack: Stack) -> None:
    ws = await _connect(stack)
    await ws.send_str("[" * 5000 + "]" * 5000)
    msg = await _close_frame(ws)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4400, msg


@pytest.mark.parametrize("after", [2**63, -1, 1.5, True, "7"])
async def test_an_after_out_of_range_gets_bad_after_and_the_socket_can_subscribe_then(stack: Stack,
                                                                                      after: Any) -> None:
    handle = await stack.provider_handle()
    ws = await _connect(stack)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    assert (await recv_frame(ws, TIMEOUT))["type"] == "auth_ok"
    await ws.send_str(json.dumps({"type": "subscribe", "id": 2, "after": after}))
    assert await recv_until(ws, "error", timeout=TIMEOUT) == {"type": "error", "id": 2, "code": "bad_after"}
    await ws.send_json({"type": "subscribe", "id": 3, "after": 2**63 - 1})
    answer = await recv_until(ws, "result", timeout=TIMEOUT)
    assert answer["id"] == 3, answer
    await ws.close()


@pytest.mark.parametrize("frame, code", [
    ({"type": "admit", "participant": "not-a-uuid"}, "bad_participant"),
    ({"type": "admit", "participant": ["a"]}, "bad_participant"),
    ({"type": "admit", "participant": "\ud800"}, "bad_participant"),
    ({"type": "signal", "to": None, "data": {}}, "bad_participant"),
    ({"type": "device_test", "passed": True}, "not_allowed"),
    ({"type": "hello", "display_name": "Dr"}, "not_allowed"),
    ({"type": "ice"}, "not_in_room"),
])
async def test_a_frame_that_fails_its_schema_gets_its_code_and_the_socket_lives(stack: Stack, frame: dict[str, Any],
                                                                                  code: str) -> None:
    ws, _visit, _patient = await _provider_socket(stack)
    await ws.send_str(json.dumps({**frame, "id": 7}))
    assert await recv_until(ws, "error", timeout=TIMEOUT) == {"type": "error", "id": 7, "code": code}
    await _still_alive(ws)
    await ws.close()


async def test_a_failure_of_ours_in_a_request_is_an_error_frame_and_the_socket_lives(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import presence.ws

    async def broken(*_args: Any) -> bool:
        raise RuntimeError("a bug")

    ws, _visit, _patient = await _provider_socket(stack)
    monkeypatch.setitem(presence.ws.MESSAGES, "ice", presence.ws.MessageType(broken, {}))
    with caplog.at_level(logging.ERROR, logger="presence.ws"):
        await ws.send_json({"type": "ice", "id": 8})
        assert await recv_until(ws, "error", timeout=TIMEOUT) == {"type": "error", "id": 8, "code": "server_error"}
    assert any("presence request ice failed" in r.getMessage() for r in caplog.records)  # ours, and logged
    await _still_alive(ws)
    await ws.close()


async def _wait_unsubscribed(stack: Stack, visit_id: UUID) -> None:
    hub = stack.gateway_app[HUB]
    for _ in range(100):  # bounded: 10 s
        if not list(hub.connections(visit_id)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the socket is still subscribed")


async def test_a_browser_that_reloads_mid_subscribe_is_an_ordinary_close_not_an_error(
        stack: Stack, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from presence import eventlog

    ws, visit_id, patient = await _provider_socket(stack)
    read = eventlog.events_after

    async def slow_read(*args: Any) -> list[eventlog.PresenceEvent]:
        await asyncio.sleep(0.3)  # the page is gone before its snapshot is written
        return await read(*args)

    monkeypatch.setattr(eventlog, "events_after", slow_read)
    handle_socket = await _connect(stack)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            # A page going away: its TCP connection ends with no close frame, while the server still writes.
            gone = await _patient_socket(stack, visit_id, patient)
            await gone.send_json({"type": "subscribe", "id": 2, "after": None})
            await asyncio.sleep(0.1)  # the server is reading the snapshot
            assert gone._conn is not None
            gone._conn.transport.abort()  # type: ignore[union-attr]
        await ws.close()
        await handle_socket.close()
        await _wait_unsubscribed(stack, visit_id)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


async def _stored(stack: Stack, participant: UUID) -> tuple[int, int]:
    async with stack.gateway_app[DB].acquire() as conn:
        row = await conn.fetchrow(
            "SELECT count(*) AS events, count(o.event_id) AS outbox FROM presence_events e "
            "LEFT JOIN writeback_outbox o ON o.event_id = e.id "
            "WHERE e.participant_id = $1 AND e.kind LIKE 'device_test_%'", participant)
    assert row is not None
    return row["events"], row["outbox"]


async def test_a_flood_of_device_tests_stores_a_bounded_number_of_events_and_the_socket_lives(
        stack: Stack) -> None:
    from presence.limits import STORED_PER_MINUTE

    async with stack.gateway_app[DB].acquire() as conn:
        await set_strategy(conn, stack.configuration_id, "fhir-r4-put")  # so each stored event has an outbox row
    view, visit_id, patient = await _provider_socket(stack)
    lobby = await _patient_socket(stack, visit_id, patient)
    sent = 36  # two seconds' worth at 18 a second, inside the frame rate's burst: no close for this
    for n in range(sent):
        await lobby.send_json({"type": "device_test", "id": 100 + n, "passed": n % 2 == 0})
    answers: dict[int, dict[str, Any]] = {}
    for _ in range(sent * 3):  # bounded: every request is answered
        frame = await recv_frame(lobby, TIMEOUT)
        if frame["type"] in ("result", "error"):
            answers[frame["id"]] = frame
        if len(answers) == sent:
            break
    limited = [a for a in answers.values() if a["type"] == "error"]
    assert len(answers) == sent
    assert limited and all(a["code"] == "rate_limited" for a in limited), limited
    events, outbox = await _stored(stack, patient)
    assert events == STORED_PER_MINUTE == sent - len(limited), (events, len(limited))
    assert outbox == events
    await _still_alive(lobby)
    await lobby.close()
    await view.close()


async def test_the_same_device_test_result_again_is_not_stored_again(stack: Stack) -> None:
    view, visit_id, patient = await _provider_socket(stack)
    lobby = await _patient_socket(stack, visit_id, patient)
    for n in range(5):
        await lobby.send_json({"type": "device_test", "id": 10 + n, "passed": True})
        assert (await recv_until(lobby, "result", timeout=TIMEOUT))["id"] == 10 + n
    assert (await _stored(stack, patient))[0] == 1
    await lobby.close()
    await view.close()


async def test_admitting_an_admitted_patient_again_stores_nothing_new(stack: Stack) -> None:
    view, _visit, patient = await _provider_socket(stack)
    for n in range(4):
        await view.send_json({"type": "admit", "id": 10 + n, "participant": str(patient)})
        assert (await recv_until(view, "result", timeout=TIMEOUT))["id"] == 10 + n
    async with stack.gateway_app[DB].acquire() as conn:
        admitted = await conn.fetchval("SELECT count(*) FROM presence_events WHERE participant_id = $1 "
                                       "AND kind = 'admitted'", patient)
    assert admitted == 1
    await view.close()


async def test_a_page_that_goes_away_during_the_handshake_is_an_ordinary_close(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    import socket
    import struct

    url = URL(stack.gateway_url)
    request = (f"GET /ws HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nOrigin: {stack.gateway_url}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode()
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            reader, writer = await asyncio.open_connection(url.host, url.port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, as a tab closing
            writer.write(request)
            await writer.drain()
            writer.transport.abort()
        await asyncio.sleep(0.5)  # let the server meet the reset
        # The gateway still serves sockets.
        ws, _visit, _patient = await _provider_socket(stack)
        await ws.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
