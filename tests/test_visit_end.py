"""The clinician ends a visit over the presence socket: everyone is told, and the visit's links stop working."""
from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from uuid import UUID

import aiohttp

from gateway import joinlinks, participants
from gateway.appkeys import DB
from tests.conftest import Stack, browser_session, reason_code, recv_frame, recv_until

TIMEOUT = 10.0


async def _socket(stack: Stack, browser: aiohttp.ClientSession, auth: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
    ws = await browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await ws.send_json({"type": "auth", "id": 1, **auth})
    frame = await recv_frame(ws, TIMEOUT)
    assert frame["type"] == "auth_ok", frame
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})
    await recv_until(ws, "snapshot", timeout=TIMEOUT)
    return ws


async def _ended_event(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    for _ in range(50):
        frame = await recv_frame(ws, TIMEOUT)
        if frame["type"] == "event" and frame["kind"] == "visit_ended":
            return frame
    raise AssertionError("no visit_ended event")


async def _patient_link(stack: Stack, visit_id: UUID) -> tuple[UUID, str]:
    async with stack.gateway_app[DB].acquire() as conn:
        patient = await participants.patient_participant(conn, visit_id)
        token = await joinlinks.issue_link(conn, stack.gateway_app, patient, visit_id,
                                           dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    return patient, token


async def _join(stack: Stack, browser: aiohttp.ClientSession, token: str) -> aiohttp.ClientResponse:
    response = await browser.post(f"{stack.gateway_url}/join", data={"t": token},
                                  headers={"Origin": stack.gateway_url}, allow_redirects=False)
    await response.read()
    return response


async def test_the_clinician_ends_the_visit_and_everyone_is_told_and_links_stop_working(stack: Stack) -> None:
    handle = await stack.provider_handle()
    provider_ws = await _socket(stack, stack.browser, {"provider": handle, "where": "view"})
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id: UUID = await conn.fetchval("SELECT id FROM visits ORDER BY created_at DESC LIMIT 1")
    _patient, token = await _patient_link(stack, visit_id)
    async with browser_session(stack.gateway_url) as patient_browser:
        joined = await _join(stack, patient_browser, token)
        assert joined.status == 303, await joined.text()
        lobby_ws = await _socket(stack, patient_browser, {"where": "lobby"})

        # The patient may not end the visit; the clinician may.
        await lobby_ws.send_json({"type": "end_visit", "id": 7})
        refused = await recv_until(lobby_ws, "error", timeout=TIMEOUT)
        assert refused["code"] == "not_allowed"
        await provider_ws.send_json({"type": "end_visit", "id": 8})
        assert (await recv_until(provider_ws, "result", timeout=TIMEOUT))["id"] == 8

        assert (await _ended_event(provider_ws))["visit"] == str(visit_id)
        assert (await _ended_event(lobby_ws))["visit"] == str(visit_id)
        # Then the patient's socket is closed by the gateway; the clinician's stays to show the end.
        closing = await asyncio.wait_for(lobby_ws.receive(), TIMEOUT)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4410, closing
        # Nothing more can be done in it.
        await provider_ws.send_json({"type": "admit", "id": 10, "participant": str(_patient)})
        assert (await recv_until(provider_ws, "error", timeout=TIMEOUT))["code"] == "visit_ended"
        # Ending again changes nothing and is not an error.
        await provider_ws.send_json({"type": "end_visit", "id": 9})
        assert (await recv_until(provider_ws, "result", timeout=TIMEOUT))["id"] == 9

        # The patient's session no longer opens a socket, nor the lobby page.
        again = await patient_browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
        await again.send_json({"type": "auth", "id": 1, "where": "lobby"})
        assert (await recv_frame(again, TIMEOUT))["code"] == "auth_failed"
        await again.close()
        lobby = await patient_browser.get(f"{stack.gateway_url}/lobby", allow_redirects=False)
        assert lobby.status == 401, await lobby.text()
        await lobby_ws.close()
    # The link itself, in a fresh browser, says the visit has ended.
    async with browser_session(stack.gateway_url) as other:
        refused_page = await _join(stack, other, token)
        body = await refused_page.text()
        assert refused_page.status == 410, body
        assert reason_code(body) == "visit_ended"
        assert "This visit has ended" in body
    await provider_ws.close()
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT reason FROM visit_ends WHERE visit_id = $1", visit_id) == "clinician"


async def test_the_provider_view_records_when_the_appointment_window_ends(stack: Stack) -> None:
    handle = await stack.provider_handle()
    view = await stack.get(f"{stack.gateway_url}/provider/{handle}")
    assert view.status == 200, await view.text()
    from sandbox.appkeys import STORE

    store = stack.sandbox_app[STORE]
    reference = store.get("Encounter", "enc-1")["appointment"][0]["reference"]
    appointment = store.get("Appointment", reference.rsplit("/", 1)[1])
    async with stack.gateway_app[DB].acquire() as conn:
        window_end = await conn.fetchval("SELECT window_end FROM visits")
    assert window_end == dt.datetime.fromisoformat(appointment["end"])
