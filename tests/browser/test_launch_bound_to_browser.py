"""A launch belongs to the browser that started it, in real Chromium with third-party cookies blocked.

A launch from the sandbox EHR runs in its iframe (gateway on 127.0.0.1, EHR on localhost: two sites). Then a
second launch's callback URL, caught before the iframe uses it, and the provider page URL are opened in a
second browser context: it gets neither the patient nor the Admit button, and the EHR gets no token call and no
FHIR read for it. A browser without the cookie is offered the launch again in a new window, which works; the
iframe's own launches work, on its partitioned cookie alone.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import pytest
from playwright.async_api import BrowserContext, expect

from sandbox.appkeys import OAUTH
from tests.browser.axe import assert_accessible
from tests.browser.test_provider_launch_in_ehr import (LAUNCH_TIMEOUT_MS, _app_frame, _begin_visit,
                                                       _expect_provider_view, _patient_name, _schedule)
from tests.browser.conftest import OpenContext
from tests.conftest import Stack

pytestmark = pytest.mark.browser

@pytest.fixture
def sandbox_calls() -> Iterator[list[str]]:
    """The sandbox EHR's requests ("GET /fhir/Patient/pat-1"), from its access log, as they happen."""
    calls: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.search(r'"([A-Z]+) (\S+) HTTP', record.getMessage())
            if found:
                calls.append(f"{found.group(1)} {urlsplit(found.group(2)).path}")

    logger = logging.getLogger("sandbox.access")
    recorder, level = Recorder(logging.INFO), logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    yield calls
    logger.removeHandler(recorder)
    logger.setLevel(level)


def _ehr_reads(calls: list[str]) -> list[str]:
    """Token calls and FHIR reads (discovery is public and harmless)."""
    return [c for c in calls if c == "POST /oauth/token" or
            (c.startswith("GET /fhir/") and "/.well-known/" not in c and not c.endswith("/metadata"))]


async def test_a_launch_and_its_provider_page_work_only_in_the_browser_that_started_them(
        stack: Stack, context: BrowserContext, open_context: OpenContext, sandbox_calls: list[str]) -> None:
    page = await context.new_page()
    appointment = (await _schedule(page, stack))[0]
    name = _patient_name(stack, appointment)
    await _begin_visit(page, appointment)
    # The launch in the EHR's iframe works, on the partitioned cookie the iframe keeps.
    provider_url = await _expect_provider_view(page, stack, name)
    frame = await _app_frame(page)

    # A second launch from the same iframe, stopped where the EHR sends the browser back with code and state:
    # the iframe asks /launch itself (so its cookie is the iframe's own), the EHR's answer is read here.
    launch_url = f"/launch?iss={stack.fhir_base}&launch={stack.new_launch()}"
    async with page.expect_response(lambda r: urlsplit(r.url).path == "/launch") as started:
        await frame.evaluate("url => fetch(url, {redirect: 'manual'}).then(r => r.type)", launch_url)
    authorize_url = (await started.value).headers["location"]
    async with aiohttp.ClientSession() as ehr_user, \
            ehr_user.get(authorize_url, allow_redirects=False) as authorize:
        callback_url = authorize.headers["Location"]
    assert urlsplit(callback_url).path == "/launch/callback"

    # The callback URL in another browser: refused, the EHR asked nothing, no patient on the page; what it
    # offers is the launch again in a window of its own.
    other = await open_context("desktop")
    stranger = await other.new_page()
    tokens, before = len(stack.sandbox_app[OAUTH].access_tokens), len(sandbox_calls)
    response = await stranger.goto(callback_url)
    assert response is not None and response.status == 400
    await expect(stranger.locator("#reason")).to_have_text("no_browser_cookie")
    assert await stranger.locator("#continue-new-window").get_attribute("target") == "_blank"
    assert name not in await stranger.content()
    assert len(stack.sandbox_app[OAUTH].access_tokens) == tokens and _ehr_reads(sandbox_calls[before:]) == []
    await assert_accessible(stranger)

    # The provider page URL in the other browser: refused, no patient, no Admit button, no FHIR read.
    response = await stranger.goto(provider_url)
    assert response is not None and response.status == 401
    await expect(stranger.locator("#reason")).to_have_text("session_expired")
    content = await stranger.content()
    assert name not in content and "Admit" not in content and 'id="participants"' not in content
    await assert_accessible(stranger)  # the error page
    assert _ehr_reads(sandbox_calls[before:]) == []
    assert await other.cookies(stack.gateway_url) == []

    # A window that cannot keep the cookie (here: a third browser, which never had it) goes on with the button:
    # the launch runs again, from the EHR's launch, in a top-level window of its own.
    third = await (await open_context("desktop")).new_page()
    await third.goto(callback_url)
    async with third.expect_popup() as opened:
        await third.locator("#continue-new-window").click()
    window = await opened.value
    await expect(window.locator("#patient-name")).to_have_text(name, timeout=LAUNCH_TIMEOUT_MS)
    assert urlsplit(window.url).path.startswith("/provider/") and window.url != provider_url
    assert len(stack.sandbox_app[OAUTH].access_tokens) == tokens + 1

    # In the iframe that started it, the same callback URL opens the visit: no other browser spent it.
    await frame.goto(callback_url)
    await _expect_provider_view(page, stack, name)
    assert len(stack.sandbox_app[OAUTH].access_tokens) == tokens + 2

    # The gateway's only cookie is its partitioned, host-only key (third-party cookies are blocked here).
    cookies = await context.cookies(stack.gateway_url)
    assert [c["name"].startswith("__Host-vg_browser_") for c in cookies] == [True], cookies
    assert cookies[0]["secure"] and cookies[0]["sameSite"] == "None" and cookies[0].get("partitionKey"), cookies
