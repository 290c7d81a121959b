"""Waiting-room chat across two gateway processes: a clinician on A and a patient (and guests) on B exchange
messages through the sealed relay; each arrives once at each of its receivers, and nothing of it lands in the
database or either process's log."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from gateway import joinlinks, participants
from presence.bus import RELAY_CHANNEL
from tests.cluster.test_two_gateways import (  # noqa: F401 -- cluster is a fixture
    TIMEOUT, Cluster, Gateway, _browser, _launch, _provider_view, _recv, _watching_and_waiting, cluster)
from tests.conftest import database_text

CANARY_OUT = "Quillfeather-canary-7b1e: how is the knee today?"
CANARY_BACK = "Zephyrina-canary-42c9: much better, thanks"


async def _chats(ws: aiohttp.ClientWebSocketResponse, want: int, quiet: float = 0.7) -> list[dict[str, Any]]:
    """The chat frames that arrive: `want` of them, then whatever else comes in a short quiet spell."""
    seen: list[dict[str, Any]] = []
    for _ in range(100):
        try:
            frame = await asyncio.wait_for(_recv(ws), TIMEOUT if len(seen) < want else quiet)
        except (TimeoutError, asyncio.TimeoutError):
            if len(seen) < want:
                raise AssertionError(f"only {len(seen)} of {want} chat messages arrived: {seen}") from None
            return seen
        if frame["type"] == "chat":
            seen.append(frame)
        elif frame["type"] == "error":
            raise AssertionError(f"error frame: {frame}")
    return seen


async def _answer(ws: aiohttp.ClientWebSocketResponse, req_id: int) -> dict[str, Any]:
    """The result or error frame answering request req_id (chat frames that pass by are skipped)."""
    for _ in range(50):
        frame = await _recv(ws)
        if frame.get("id") == req_id and frame["type"] in ("result", "error"):
            return frame
    raise AssertionError(f"request {req_id} was never answered")


async def _guest_in_lobby(cluster: Cluster, gateway: Gateway, visit_id: UUID) -> tuple[
        aiohttp.ClientSession, aiohttp.ClientWebSocketResponse, str]:
    """A new guest of the visit, joined by link on `gateway`, subscribed in its lobby: (browser, socket, id)."""
    conn = await asyncpg.connect(cluster.dsn)
    try:
        guest = await participants.add_guest(conn, visit_id, "interpreter")
        token = await joinlinks.issue_link(conn, joinlinks.JoinKeys.from_settings(gateway.settings), guest,
                                           visit_id, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    finally:
        await conn.close()
    browser = _browser(cluster)
    async with browser.post(f"{gateway.url}/join", data={"t": token}, headers={"Origin": gateway.url},
                            allow_redirects=False) as response:
        assert response.status == 303, f"{response.status}\n{gateway.tail()}"
    ws = await browser.ws_connect(f"{gateway.url}/ws", origin=gateway.url)
    await ws.send_json({"type": "auth", "id": 1, "where": "lobby"})
    auth = await _recv(ws)
    assert auth["type"] == "auth_ok" and auth["role"] == "guest", auth
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})
    for _ in range(50):
        if (await _recv(ws))["type"] == "snapshot":
            break
    return browser, ws, auth["participant"]


async def test_chat_goes_both_ways_across_processes_once_each_and_is_kept_nowhere(cluster: Cluster) -> None:
    # Anyone who can connect to the database may listen: what crosses it must be sealed.
    overheard: list[str] = []
    listener = await asyncpg.connect(cluster.dsn)
    await listener.add_listener(RELAY_CHANNEL, lambda _c, _pid, _channel, payload: overheard.append(payload))
    async with _browser(cluster) as provider_browser, _browser(cluster) as patient_browser:
        view, _snapshot, visit_id, lobby, patient = await _watching_and_waiting(
            cluster, provider_browser, patient_browser)
        # The clinician has the room open too (another tab, on process B): it sees the conversation as well.
        handle = await _launch(cluster, provider_browser, cluster.a)
        room_view, _auth, _snap = await _provider_view(provider_browser, cluster.b, handle)

        await view.send_json({"type": "chat", "id": 5, "to": patient["participant"], "text": CANARY_OUT})
        # The patient on B gets it once; the clinician's two pages each see it once (their own words, echoed).
        [got] = await _chats(lobby, 1)
        assert got["text"] == CANARY_OUT and got["role"] == "provider"
        assert got["participant"] == patient["participant"]
        assert len(await _chats(view, 1)) == 1
        assert len(await _chats(room_view, 1)) == 1

        # And back: the patient writes (control characters are taken out), to the clinicians only.
        await lobby.send_json({"type": "chat", "id": 6, "text": f"\u202e{CANARY_BACK}\x00\n"})
        [back] = await _chats(view, 1)
        assert back == {"type": "chat", "participant": patient["participant"], "from": patient["participant"],
                        "role": "patient", "text": CANARY_BACK}
        assert len(await _chats(room_view, 1)) == 1
        [echo] = await _chats(lobby, 1)
        assert echo["text"] == CANARY_BACK

        # Guests in the lobbies heard none of it, and cannot write to the patient or to each other (only to the
        # clinicians).
        other_browser, other, other_id = await _guest_in_lobby(cluster, cluster.a, visit_id)
        guest_browser, guest, guest_id = await _guest_in_lobby(cluster, cluster.b, visit_id)
        try:
            await guest.send_json({"type": "chat", "id": 7, "to": patient["participant"], "text": "psst"})
            assert (await _answer(guest, 7)) == {"type": "error", "id": 7, "code": "not_allowed"}
            await guest.send_json({"type": "chat", "id": 9, "to": other_id, "text": "psst"})
            assert (await _answer(guest, 9)) == {"type": "error", "id": 9, "code": "not_allowed"}
            await view.send_json({"type": "chat", "id": 8, "to": guest_id, "text": "Welcome, interpreter"})
            [to_guest] = await _chats(guest, 1)
            assert to_guest["participant"] == guest_id
            # The patient and the other guest never see the clinician's words to this guest.
            assert await _chats(lobby, 0) == []
            assert await _chats(other, 0) == []
        finally:
            for ws in (guest, other):
                await ws.close()
            for browser in (guest_browser, other_browser):
                await browser.close()
        for ws in (view, room_view, lobby):
            await ws.close()

    await listener.close()
    assert len(overheard) >= 3  # the three messages crossed the bus ...
    for payload in overheard:  # ... sealed: not in the notification, nor in its decoded bytes
        raw = base64.b64decode(payload)
        assert b"canary" not in raw and "canary" not in payload and b"interpreter" not in raw
    conn = await asyncpg.connect(cluster.dsn)
    try:
        _tables, dump = await database_text(conn)
    finally:
        await conn.close()
    logs = cluster.a.process.log.read_text(errors="replace") + cluster.b.process.log.read_text(errors="replace")
    for canary in ("Quillfeather-canary-7b1e", "Zephyrina-canary-42c9", "Welcome, interpreter"):
        assert canary not in dump, "a chat message landed in the database"
        assert canary not in logs, "a chat message landed in a gateway's log"


@pytest.mark.parametrize("who", ["provider", "patient"])
async def test_chat_is_rate_limited_per_participant(cluster: Cluster, who: str) -> None:
    async with _browser(cluster) as provider_browser, _browser(cluster) as patient_browser:
        view, _snapshot, _visit_id, lobby, patient = await _watching_and_waiting(
            cluster, provider_browser, patient_browser)
        sender = view if who == "provider" else lobby
        codes = []
        for n in range(12):
            await sender.send_json({"type": "chat", "id": 100 + n, "to": patient["participant"] if who == "provider"
                                    else None, "text": f"line {n}"})
            answer = await _answer(sender, 100 + n)
            codes.append(answer.get("code", "ok"))
        assert codes == ["ok"] * 10 + ["rate_limited"] * 2
        await view.close()
        await lobby.close()
