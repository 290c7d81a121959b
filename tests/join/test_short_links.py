"""Short join links (an opaque code found by its digest), moving a visit to another device, and a reloaded
lobby resuming its place: the server's side of issue 17's "phone first"."""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import math

import aiohttp
import pytest

from gateway import joinlinks
from gateway.appkeys import DB
from tests.conftest import Stack, database_text, reason_code, recv_frame, recv_until

from .conftest import Invite, get_page, issue, open_visit, post_join


async def _lobby_socket(stack: Stack, browser: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    """A lobby's presence socket, authenticated and subscribed as the lobby page does."""
    ws = await browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await ws.send_json({"type": "auth", "id": 1, "where": "lobby"})
    auth = await recv_frame(ws)
    assert auth["type"] == "auth_ok", auth
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})
    await recv_until(ws, "snapshot")
    return ws


async def _state(stack: Stack, browser: aiohttp.ClientSession) -> tuple[int, dict[str, object]]:
    response = await browser.get(f"{stack.gateway_url}/lobby/state")
    return response.status, await response.json()


async def test_a_new_link_is_a_short_base62_code_of_at_least_128_bits(stack: Stack, invite: Invite) -> None:
    assert len(invite.token) == joinlinks.CODE_LENGTH == 22
    assert set(invite.token) <= set(joinlinks.CODE_ALPHABET) and len(set(joinlinks.CODE_ALPHABET)) == 62
    assert joinlinks.CODE_LENGTH * math.log2(len(joinlinks.CODE_ALPHABET)) >= 128
    codes = {joinlinks.new_code() for _ in range(2000)}
    assert len(codes) == 2000  # no repeats; and every character of the alphabet turns up
    assert set("".join(codes)) == set(joinlinks.CODE_ALPHABET)
    url = joinlinks.keys_of(stack.gateway_app).link_url(invite.token)
    assert url == f"{stack.gateway_url}/j/{invite.token}"
    assert joinlinks.keys_of(stack.gateway_app).link_url(invite.token, {"lang": "es"}) == f"{url}?lang=es"


async def test_the_code_is_found_by_its_digest_and_kept_in_neither_database_nor_logs(
        stack: Stack, invite: Invite, other_browser: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    opened = await get_page(stack.browser, f"{stack.gateway_url}/j/{invite.token}")
    body = await opened.text()
    assert opened.status == 200, body
    assert 'method="post" action="/join"' in body and opened.headers["Cache-Control"] == "no-store"
    exchanged = await post_join(stack, stack.browser, invite.token)
    assert exchanged.status == 303 and exchanged.headers["Location"] == "/lobby"
    assert (await get_page(stack.browser, f"{stack.gateway_url}/lobby")).status == 200
    moved = await post_join(stack, other_browser, invite.token)
    assert moved.status == 303
    async with stack.gateway_app[DB].acquire() as conn:
        stored = await conn.fetchval("SELECT code_hash FROM join_links WHERE participant_id = $1",
                                     invite.participant_id)
        _tables, dump = await database_text(conn)
    assert stored == hashlib.sha256(invite.token.encode()).digest()
    ours = [r for r in caplog.records if not r.name.startswith("sandbox")]
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours)
    assert "/j/{code}" in logs  # the access log names the route, not the code
    for secret in (invite.token, exchanged.cookies[joinlinks.PARTICIPANT_COOKIE].value,
                   moved.cookies[joinlinks.PARTICIPANT_COOKIE].value):
        assert secret not in logs and secret not in dump


@pytest.mark.parametrize("code", ["0" * 22, "a" * 21, "a" * 23, "abc%00def", "Z" * 22 + "."])
async def test_an_unknown_or_malformed_code_is_refused(stack: Stack, invite: Invite, code: str) -> None:
    opened = await get_page(stack.browser, f"{stack.gateway_url}/j/{code}")
    assert 400 <= opened.status < 500
    exchanged = await post_join(stack, stack.browser, code)
    assert 400 <= exchanged.status < 500 and joinlinks.PARTICIPANT_COOKIE not in exchanged.cookies


async def test_a_revoked_code_is_refused_and_its_session_ends(stack: Stack, invite: Invite) -> None:
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    async with stack.gateway_app[DB].acquire() as conn:
        assert await joinlinks.revoke_link(conn, stack.gateway_app, invite.token)
        assert not await joinlinks.revoke_link(conn, stack.gateway_app, invite.token)
    opened = await get_page(stack.browser, f"{stack.gateway_url}/j/{invite.token}")
    assert opened.status == 410 and reason_code(await opened.text()) == "link_revoked"
    assert (await get_page(stack.browser, f"{stack.gateway_url}/lobby")).status == 401


async def test_a_code_past_its_expiry_is_expired(stack: Stack, invite: Invite) -> None:
    async with stack.gateway_app[DB].acquire() as conn:
        await conn.execute("UPDATE join_links SET expires_at = now() - interval '1 minute'")
    opened = await get_page(stack.browser, f"{stack.gateway_url}/j/{invite.token}")
    assert opened.status == 410 and reason_code(await opened.text()) == "link_expired"


async def test_a_signed_link_sent_before_codes_still_works_until_it_expires(stack: Stack,
                                                                           signed_invite: Invite) -> None:
    assert "." in signed_invite.token and not joinlinks.is_code(signed_invite.token)
    opened = await get_page(stack.browser, f"{stack.gateway_url}/join?t={signed_invite.token}")
    assert opened.status == 200, await opened.text()
    assert (await post_join(stack, stack.browser, signed_invite.token)).status == 303
    assert (await get_page(stack.browser, f"{stack.gateway_url}/lobby")).status == 200
    async with stack.gateway_app[DB].acquire() as conn:
        await conn.execute("UPDATE join_links SET expires_at = now() - interval '1 minute'")
    late = await get_page(stack.browser, f"{stack.gateway_url}/join?t={signed_invite.token}")
    assert late.status == 410 and reason_code(await late.text()) == "link_expired"


async def test_opening_the_link_on_another_device_moves_the_session_and_tells_the_old_one(
        stack: Stack, invite: Invite, other_browser: aiohttp.ClientSession) -> None:
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    old_socket = await _lobby_socket(stack, stack.browser)
    try:
        assert (await post_join(stack, other_browser, invite.token)).status == 303
        new_socket = await _lobby_socket(stack, other_browser)
        # The old device's open socket hears of it (relayed through the presence bus, whatever process).
        assert (await recv_until(old_socket, "session_moved"))["type"] == "session_moved"
        await new_socket.close()
    finally:
        await old_socket.close()
    # The new device has the same participant's place; the old one is refused, saying why.
    status, state = await _state(stack, other_browser)
    assert status == 200, state
    lobby = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    assert lobby.status == 401 and reason_code(await lobby.text()) == "session_moved"
    status, refused = await _state(stack, stack.browser)
    assert status == 401 and refused["error"] == "session_moved", refused
    again = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    try:
        await again.send_json({"type": "auth", "id": 1, "where": "lobby"})
        error = await recv_frame(again)
        assert error["type"] == "error" and error["code"] == "session_moved", error
        closed = await asyncio.wait_for(again.receive(), 5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and again.close_code == 4401
    finally:
        await again.close()
    async with stack.gateway_app[DB].acquire() as conn:
        participants = await conn.fetch("SELECT DISTINCT participant_id FROM participant_sessions")
    assert [r["participant_id"] for r in participants] == [invite.participant_id]


async def test_moving_back_and_forth_is_rate_limited(stack: Stack, invite: Invite,
                                                   other_browser: aiohttp.ClientSession) -> None:
    browsers = [stack.browser, other_browser]
    assert (await post_join(stack, browsers[0], invite.token)).status == 303
    for move in range(joinlinks.MAX_MOVES):
        response = await post_join(stack, browsers[(move + 1) % 2], invite.token)
        assert response.status == 303, (move, await response.text())
    holder = browsers[joinlinks.MAX_MOVES % 2]
    refused = await post_join(stack, browsers[(joinlinks.MAX_MOVES + 1) % 2], invite.token)
    body = await refused.text()
    assert refused.status == 409 and reason_code(body) == "link_in_use", body
    assert "wait a minute" in body
    # The device that holds the session keeps it, and may open its link again.
    assert (await get_page(holder, f"{stack.gateway_url}/lobby")).status == 200
    assert (await post_join(stack, holder, invite.token)).status == 303
    # A minute later (the window moved back here) another move is allowed again.
    async with stack.gateway_app[DB].acquire() as conn:
        await conn.execute("UPDATE join_links SET moves_since = now() - interval '2 minutes'")
    assert (await post_join(stack, browsers[(joinlinks.MAX_MOVES + 1) % 2], invite.token)).status == 303


async def test_a_reloaded_lobby_keeps_its_waiting_time_and_passed_device_test(stack: Stack, invite: Invite) -> None:
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    status, state = await _state(stack, stack.browser)
    assert status == 200 and state == {"waiting_since": None, "device_test_passed": False}, state
    first = await _lobby_socket(stack, stack.browser)
    await first.send_json({"type": "device_test", "id": 3, "passed": True})
    assert (await recv_until(first, "result"))["id"] == 3
    await first.close()  # the reload
    second = await _lobby_socket(stack, stack.browser)
    await second.close()
    async with stack.gateway_app[DB].acquire() as conn:
        entries = [r["at"] for r in await conn.fetch(
            "SELECT at FROM presence_events WHERE participant_id = $1 AND kind = 'lobby_entered' ORDER BY id",
            invite.participant_id)]
    assert len(entries) == 2
    status, state = await _state(stack, stack.browser)
    assert status == 200, state
    assert state["device_test_passed"] is True
    assert dt.datetime.fromisoformat(str(state["waiting_since"])) == entries[0]


async def test_a_new_wait_begins_after_the_clinician_decided(stack: Stack, invite: Invite) -> None:
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    visit_id, participant_id = invite.visit_id, invite.participant_id
    async with stack.gateway_app[DB].acquire() as conn:
        for kind in ("lobby_entered", "device_test_failed", "left", "removed", "lobby_entered"):
            await conn.execute("INSERT INTO presence_events (visit_id, participant_id, kind) VALUES ($1, $2, $3)",
                               visit_id, participant_id, kind)
        last = await conn.fetchval("SELECT max(at) FROM presence_events WHERE kind = 'lobby_entered'")
    status, state = await _state(stack, stack.browser)
    assert status == 200 and state["device_test_passed"] is False
    assert dt.datetime.fromisoformat(str(state["waiting_since"])) == last


async def test_lobby_state_without_a_session_is_refused(stack: Stack) -> None:
    status, body = await _state(stack, stack.browser)
    assert status == 401 and body["error"] == "session_expired", body


async def test_a_link_for_another_visit_is_not_moved_by_a_browser_of_this_one(
        stack: Stack, invite: Invite, other_browser: aiohttp.ClientSession) -> None:
    other_visit, other_participant = await open_visit(stack, encounter="enc-2")
    other_code = await issue(stack, other_participant, other_visit)
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    assert (await post_join(stack, other_browser, other_code)).status == 303
    # Each browser keeps its own visit.
    assert (await get_page(stack.browser, f"{stack.gateway_url}/lobby")).status == 200
    assert (await get_page(other_browser, f"{stack.gateway_url}/lobby")).status == 200


async def test_the_old_devices_open_socket_is_closed_at_its_next_frame(
        stack: Stack, invite: Invite, other_browser: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    from presence import ws as presence_ws

    monkeypatch.setattr(presence_ws, "SESSION_RECHECK", 0.0)  # checked before every frame, for the test
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    old_socket = await _lobby_socket(stack, stack.browser)
    try:
        await old_socket.send_json({"type": "hello", "id": 3, "display_name": "Alex"})
        assert (await recv_until(old_socket, "result"))["id"] == 3  # live: its frames count
        assert (await post_join(stack, other_browser, invite.token)).status == 303
        # The page ignores the news (or never got it): its next frame is refused and the socket closed.
        await old_socket.send_json({"type": "device_test", "id": 4, "passed": True})
        error = await recv_until(old_socket, "error")
        assert error["code"] == "session_moved", error
        closed = await asyncio.wait_for(old_socket.receive(), 5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and old_socket.close_code == 4401
    finally:
        await old_socket.close()
    async with stack.gateway_app[DB].acquire() as conn:
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM presence_events WHERE participant_id = $1",
                                                     invite.participant_id)]
    assert "device_test_passed" not in kinds


async def test_a_silent_old_socket_is_closed_too(stack: Stack, invite: Invite, other_browser: aiohttp.ClientSession,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from presence import ws as presence_ws

    monkeypatch.setattr(presence_ws, "SESSION_IDLE", 0.2)  # woken every 0.2 s rather than every minute
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    old_socket = await _lobby_socket(stack, stack.browser)
    try:
        await asyncio.sleep(0.6)  # a few wake-ups while the session is live: the socket carries on
        await old_socket.send_json({"type": "hello", "id": 3, "display_name": "Alex"})
        assert (await recv_until(old_socket, "result"))["id"] == 3
        assert (await post_join(stack, other_browser, invite.token)).status == 303
        error = await recv_until(old_socket, "error")  # without having sent anything
        assert error["code"] == "session_moved", error
        closed = await asyncio.wait_for(old_socket.receive(), 5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and old_socket.close_code == 4401
    finally:
        await old_socket.close()


async def test_a_portal_session_that_opened_the_link_moves_too(stack: Stack, other_browser: aiohttp.ClientSession) -> None:
    from .test_patient_launch import patient_launch

    response, _ = await stack.follow(
        f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={patient_launch(stack)}")
    assert response.status == 200, await response.text()
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id, participant_id = await conn.fetchrow("SELECT visit_id, participant_id FROM participant_sessions")
    code = await issue(stack, participant_id, visit_id)
    assert (await post_join(stack, stack.browser, code)).status == 303  # the portal's browser keeps its session
    assert (await post_join(stack, other_browser, code)).status == 303
    lobby = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    assert lobby.status == 401 and reason_code(await lobby.text()) == "session_moved"
    assert (await get_page(other_browser, f"{stack.gateway_url}/lobby")).status == 200
