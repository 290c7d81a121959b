"""The standalone device test (GET /device-test), opened from MyChart before any visit: open to anyone, in the
patient's language, with nothing recorded and no TURN credentials on the page."""
from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest

from gateway.appkeys import DB
from launch.i18n import LOCALES
from launch.page_strings import DEVICE_TEST
from tests.conftest import Stack, database_text

HEADINGS = {"en": "Test your camera, microphone and speaker", "es": "Pruebe su cámara, micrófono y altavoz",
            "fr": "Testez votre caméra, votre micro et votre haut-parleur",
            "it": "Verifichi fotocamera, microfono e altoparlante",
            "pt": "Teste a sua câmera, microfone e alto-falante", "ru": "Проверьте камеру, микрофон и динамик"}


def _i18n_block(body: str) -> dict[str, str]:
    found = re.search(r'<script type="application/json" id="i18n">(.*?)</script>', body, re.S)
    assert found is not None, body
    strings: dict[str, str] = json.loads(found.group(1))
    return strings


@pytest.mark.parametrize("language", sorted(HEADINGS))
async def test_the_device_test_opens_without_a_visit_in_each_language_and_sets_no_cookie(
        stack: Stack, language: str) -> None:
    assert set(HEADINGS) == set(LOCALES)
    response = await stack.browser.get(f"{stack.gateway_url}/device-test", headers={"Accept-Language": language},
                                       allow_redirects=False)
    body = await response.text()
    assert response.status == 200, body
    assert f'<html lang="{language}">' in body
    assert f"<h1>{HEADINGS[language]}</h1>" in body
    strings = _i18n_block(body)
    assert set(strings) == set(DEVICE_TEST)
    if language != "en":
        assert strings["network_at_join"] != DEVICE_TEST["network_at_join"], strings
    assert "Set-Cookie" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    # The organisation's header and the language switcher, as on every patient page.
    assert 'id="organisation"' in body and 'hreflang="es"' in body
    # No inline script: the strict CSP holds (the i18n block is data, not code).
    inline = re.findall(r"<script(?![^>]*\b(?:src=|type=\"application/json\"))", body)
    assert inline == []


async def test_the_device_test_writes_nothing_to_the_database(stack: Stack) -> None:
    async with stack.gateway_app[DB].acquire() as conn:
        before = await database_text(conn)
    for _ in range(3):
        response = await stack.browser.get(f"{stack.gateway_url}/device-test")
        assert response.status == 200, await response.text()
    async with stack.gateway_app[DB].acquire() as conn:
        after = await database_text(conn)
    assert after == before


STUN_URL = "stun:stun.example.org:3478"
TURN_SECRET = b"north-clinic-turn-secret"


def _stun_and_turn(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
    return dict(stun_urls=(STUN_URL,), turn_urls=("turn:turn.example.org:3478",), turn_secret=TURN_SECRET)


@pytest.mark.parametrize("stack_overrides", [_stun_and_turn])
async def test_the_device_test_is_given_the_stun_servers_only_never_turn_credentials(stack: Stack) -> None:
    response = await stack.browser.get(f"{stack.gateway_url}/device-test")
    body = await response.text()
    assert response.status == 200, body
    found = re.search(r"data-stun='([^']*)'", body)
    assert found is not None, body
    assert json.loads(html.unescape(found.group(1))) == [STUN_URL]
    assert "turn.example.org" not in body and "credential" not in body


async def test_hostile_queries_and_headers_still_get_the_device_test_page(stack: Stack) -> None:
    for query, accept in (("?lang=%3Cscript%3E", "x" * 200), ("?lang=es&lang=fr&x=%E2%80%AE", ";;q=,*;q=nan"),
                          ("?stun=turn:evil.example", "es")):
        response = await stack.browser.get(f"{stack.gateway_url}/device-test{query}",
                                           headers={"Accept-Language": accept}, allow_redirects=False)
        body = await response.text()
        assert response.status == 200, body
        assert "<script>" not in body.replace('<script type="application/json" id="i18n">', "")
        assert "data-stun='[]'" in body  # the query names no server to the page
