"""Pages speak the browser's language: the template's words, `<html lang>` and the script strings of the i18n
block all come from the catalog of the language Accept-Language asks for (English when we have none of it)."""
from __future__ import annotations

import json
import re

import pytest

from launch.i18n import Catalogs
from launch.page_strings import LOBBY
from tests.conftest import Stack

from .conftest import Invite, post_join


def _i18n_block(body: str) -> dict[str, str]:
    found = re.search(r'<script type="application/json" id="i18n">(.*?)</script>', body, re.S)
    assert found is not None, body
    strings: dict[str, str] = json.loads(found.group(1))
    return strings


async def _lobby_in(stack: Stack, invite: Invite, accept_language: str) -> str:
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    response = await stack.browser.get(f"{stack.gateway_url}/lobby", headers={"Accept-Language": accept_language},
                                       allow_redirects=False)
    body = await response.text()
    assert response.status == 200, body
    return body


async def test_a_spanish_browser_gets_the_lobby_and_its_script_strings_in_spanish(
        stack: Stack, invite: Invite) -> None:
    body = await _lobby_in(stack, invite, "es-MX,es;q=0.9,en;q=0.5")
    assert '<html lang="es">' in body
    assert "<h1>Sala de espera</h1>" in body
    strings = _i18n_block(body)
    assert set(strings) == set(LOBBY)
    assert strings["waiting"] == "Su profesional de la salud le dejará entrar."
    assert strings["name_required"] == "Escriba su nombre."


async def test_a_browser_asking_for_a_language_we_lack_gets_english(stack: Stack, invite: Invite) -> None:
    body = await _lobby_in(stack, invite, "de-DE,de;q=0.9,ja;q=0.5")
    assert '<html lang="en">' in body
    assert "<h1>Waiting room</h1>" in body
    assert _i18n_block(body)["waiting"] == "Your clinician will let you in."


@pytest.mark.parametrize("header, expected", [
    ("es", "es"), ("es-419", "es"), ("fr-CA, es;q=0.5", "fr"), ("de-CH, es;q=0.5", "es"), ("en;q=0.2, es;q=0.8", "es"),
    ("es;q=0, en", "en"), ("", "en"), ("*", "en"), ("es;q=abc", "en"), ("\x00es", "en"),
    ("x" * 5000, "en"), (",".join(["zz"] * 500) + ",es", "en"),
])
def test_accept_language_picks_one_of_our_catalogs(header: str, expected: str) -> None:
    assert Catalogs.load().negotiate(header) == expected
