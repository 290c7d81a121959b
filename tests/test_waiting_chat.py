"""Waiting-room chat in one process: what the server refuses (chat turned off, empty or overlong text, a
clinician writing to nobody) and that the pages offer no chat when the organisation turned it off.
The two-process delivery and privacy test is tests/cluster/test_waiting_chat.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway import Settings
from tests.conftest import recv_frame, running_stack
from tests.test_presence_ws_edges import _patient_socket, _provider_socket

TIMEOUT = 5.0


async def _answer(ws: Any, req_id: int) -> dict[str, Any]:
    for _ in range(50):
        frame = await recv_frame(ws, TIMEOUT)
        if frame.get("id") == req_id and frame["type"] in ("result", "error"):
            return dict(frame)
    raise AssertionError(f"request {req_id} was never answered")


async def test_chat_turned_off_is_refused_and_the_pages_offer_none(database_url: str,
                                                                   signing_key_pem: bytes) -> None:
    async with running_stack(database_url, signing_key_pem, lambda _g, _s: {"waiting_chat": False}) as stack:
        view, visit_id, patient = await _provider_socket(stack)
        lobby = await _patient_socket(stack, visit_id, patient)
        await view.send_json({"type": "chat", "id": 3, "to": str(patient), "text": "hello"})
        assert await _answer(view, 3) == {"type": "error", "id": 3, "code": "chat_off"}
        await lobby.send_json({"type": "chat", "id": 4, "text": "hello"})
        assert await _answer(lobby, 4) == {"type": "error", "id": 4, "code": "chat_off"}
        handle = await stack.provider_handle()
        async with stack.browser.get(f"{stack.gateway_url}/provider/{handle}") as r:
            page = await r.text()
            assert r.status == 200, page
        assert 'data-chat="on"' not in page
        async with stack.browser.get(f"{stack.gateway_url}/lobby") as r:
            page = await r.text()
            assert r.status == 200, page
        assert 'data-chat="on"' not in page
        await view.close()
        await lobby.close()


async def test_chat_text_must_hold_1_to_500_characters(database_url: str, signing_key_pem: bytes) -> None:
    async with running_stack(database_url, signing_key_pem) as stack:
        view, visit_id, patient = await _provider_socket(stack)
        for n, text in enumerate(["", "   ", "\x00\u202e", "x" * 501, 42, None, ["hi"]]):
            await view.send_json({"type": "chat", "id": 10 + n, "to": str(patient), "text": text})
            assert await _answer(view, 10 + n) == {"type": "error", "id": 10 + n, "code": "bad_chat_text"}, text
        # Without saying to whom, a clinician's message goes nowhere.
        await view.send_json({"type": "chat", "id": 4, "text": "hello"})
        assert await _answer(view, 4) == {"type": "error", "id": 4, "code": "bad_participant"}
        await view.close()


async def test_chat_on_shows_on_the_pages(database_url: str, signing_key_pem: bytes, tmp_path: Path) -> None:
    async with running_stack(database_url, signing_key_pem) as stack:
        handle = await stack.provider_handle()
        async with stack.browser.get(f"{stack.gateway_url}/provider/{handle}") as r:
            page = await r.text()
            assert r.status == 200, page
        assert 'data-chat="on"' in page


def test_chat_is_on_unless_the_organisation_turns_it_off(signing_key_pem: bytes) -> None:
    env = {"VISITGATE_PUBLIC_URL": "https://visits.example.org", "VISITGATE_SECRET_KEY": "A" * 44,
           "VISITGATE_SIGNING_KEY": signing_key_pem.decode()}
    assert Settings.from_env(env).waiting_chat is True
    assert Settings.from_env({**env, "VISITGATE_WAITING_CHAT": ""}).waiting_chat is True
    assert Settings.from_env({**env, "VISITGATE_WAITING_CHAT": "off"}).waiting_chat is False
    assert Settings.from_env({**env, "VISITGATE_WAITING_CHAT": "on"}).waiting_chat is True
