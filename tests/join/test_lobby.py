"""The lobby page: served only with a session, its script's strings from the catalog, its files served
under our CSP, and a display name that never reaches the database."""
from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from gateway.appkeys import DB
from launch.page_strings import LOBBY
from tests.conftest import Stack, database_text

from .conftest import Invite, get_page, post_join

CANARY_NAME = "Wilhelminacanary Displayname"


async def _lobby(stack: Stack, invite: Invite) -> str:
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    response = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    body = await response.text()
    assert response.status == 200, body
    return body


async def test_lobby_script_gets_every_string_translated(stack: Stack, invite: Invite) -> None:
    body = await _lobby(stack, invite)
    blob = re.search(r'<script type="application/json" id="i18n">(.*?)</script>', body, re.S)
    assert blob is not None
    strings = json.loads(blob.group(1))
    assert set(strings) == set(LOBBY)
    assert all(strings.values())
    assert strings["waiting"] == "Your clinician will let you in."


async def test_lobby_asks_only_for_a_display_name_and_has_no_inline_code(stack: Stack, invite: Invite) -> None:
    body = await _lobby(stack, invite)
    inputs = re.findall(r"<input[^>]*>", body)
    # The waiting-room chat's message field (issue 17) is not a question about the patient.
    visible = [i for i in inputs if 'type="hidden"' not in i and 'id="copy-fallback"' not in i
               and 'id="chat-text"' not in i]
    assert len(visible) == 1 and 'id="display-name"' in visible[0]
    for needed in ("preview", "mic-level", "speaker-test", "audio-only", "ready", "inapp", "copy-link", "step-wait"):
        assert f'id="{needed}"' in body, needed
    assert "style=" not in body and re.search(r"<script(?![^>]*(src=|application/json))[^>]*>", body) is None
    assert 'data-room="/room"' in body


@pytest.mark.parametrize("path, kind", [("/static/launch/lobby.js", "javascript"),
                                        ("/static/launch/join.js", "javascript"),
                                        ("/static/launch/patient-common.js", "javascript"),
                                        ("/static/launch/presence-client.js", "javascript"),
                                        ("/static/launch/i18n.js", "javascript"),
                                        ("/static/launch/patient.css", "css")])
async def test_patient_page_files_are_served(stack: Stack, path: str, kind: str) -> None:
    response = await get_page(stack.browser, f"{stack.gateway_url}{path}")
    assert response.status == 200 and kind in response.headers["Content-Type"]


async def test_display_name_never_reaches_the_database(stack: Stack, invite: Invite) -> None:
    if not any(getattr(r, "canonical", None) == "/ws" for r in stack.gateway_app.router.resources()):
        pytest.skip("the presence websocket is not mounted")
    await _lobby(stack, invite)
    ws = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    try:
        await ws.send_json({"type": "auth", "id": 1, "where": "lobby"})
        auth = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        assert auth["type"] == "auth_ok" and auth["participant"] == str(invite.participant_id), auth
        await ws.send_json({"type": "hello", "id": 2, "display_name": CANARY_NAME})
        await ws.send_json({"type": "device_test", "id": 3, "passed": True})
        answered = set()
        for _ in range(20):
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            frame = json.loads(msg.data)
            if frame.get("type") in ("result", "error"):
                answered.add(frame["id"])
            if {2, 3} <= answered:
                break
    finally:
        await ws.close()
    async with stack.gateway_app[DB].acquire() as conn:
        _tables, dump = await database_text(conn)
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM presence_events ORDER BY id")]
    assert "lobby_entered" in kinds and "device_test_passed" in kinds
    dump = dump.lower()
    assert "wilhelminacanary" not in dump and invite.token not in dump
