"""TURN credentials stay fresh through a long visit: the room page says how long they last and its socket
hands out new ones."""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import pytest

from gateway.appkeys import DB
from presence import eventlog
from tests.conftest import Stack, recv_until
from tests.test_room import _config, _patient_session, _visit_id

TURN_URL = "turn:turn.example.org:3478?transport=udp"
TURN_SECRET = b"north-clinic-turn-secret"
TTL = 600


@pytest.fixture
def stack_overrides() -> Any:
    """This module's gateway offers a TURN server with short-lived credentials."""

    def overrides(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
        return dict(turn_urls=(TURN_URL,), turn_secret=TURN_SECRET, turn_ttl=TTL)

    return overrides


async def _room_socket(stack: Stack) -> aiohttp.ClientWebSocketResponse:
    """An admitted patient's room socket, authenticated."""
    await stack.provider_handle()
    patient = await _patient_session(stack)
    await eventlog.record_event(stack.gateway_app[DB], await _visit_id(stack), patient, "admitted")
    ws = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await ws.send_json({"type": "auth", "id": 1, "where": "room"})
    assert (await recv_until(ws, "auth_ok"))["role"] == "patient"
    return ws


def _expiry_of(server: dict[str, Any]) -> int:
    """The expiry coturn will read from a credential, after checking its HMAC as coturn does."""
    expected = base64.b64encode(hmac.new(TURN_SECRET, server["username"].encode(), hashlib.sha1).digest()).decode()
    assert server["credential"] == expected
    return int(server["username"].split(":", 1)[0])


async def test_room_page_says_how_long_its_turn_credentials_last(stack: Stack) -> None:
    await stack.provider_handle()
    patient = await _patient_session(stack)
    await eventlog.record_event(stack.gateway_app[DB], await _visit_id(stack), patient, "admitted")
    config = _config(await (await stack.get(f"{stack.gateway_url}/room")).text())
    assert config["ice_ttl"] == TTL
    servers = config["ice_servers"]
    assert isinstance(servers, list)
    (turn,) = servers
    assert turn["urls"] == [TURN_URL] and _expiry_of(turn) >= time.time() + TTL - 5


async def test_room_socket_hands_out_fresh_turn_credentials(stack: Stack) -> None:
    ws = await _room_socket(stack)
    await ws.send_json({"type": "ice", "id": 7})
    answer = await recv_until(ws, "ice")
    assert answer["id"] == 7
    (turn,) = answer["servers"]
    assert turn["urls"] == [TURN_URL] and _expiry_of(turn) >= time.time() + TTL - 5
    await ws.close()


async def test_only_a_room_socket_gets_turn_credentials(stack: Stack) -> None:
    handle = await stack.provider_handle()
    ws = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    await recv_until(ws, "auth_ok")
    await ws.send_json({"type": "ice", "id": 2})
    refused = await recv_until(ws, "error")
    assert refused == {"type": "error", "id": 2, "code": "not_in_room"}
    await ws.close()
