"""Fixtures for the browser tests: Debian's Chromium driven by Playwright's async API.

The browser is always /usr/bin/chromium; Playwright's own browser download is never used. Each test gets
its own browser (Playwright's connection belongs to the test's event loop), launched headless with fake
camera and microphone so video pages can run without devices or permission prompts.

Third-party cookies: every context here comes from `browser.new_context()`, which in Chromium is an
off-the-record (incognito-like) profile, and Chromium blocks third-party cookies there whatever the
flags. In Chromium 156 the old phase-out switches (`--test-third-party-cookie-phaseout`, the
`ForceThirdPartyCookieBlockingEnabled` feature, CDP `Network.setCookieControls`) were measured to have no
effect, so they are not passed. test_third_party_cookies.py proves the blocking on every run.
"""
from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from gateway.sessions import BROWSER_COOKIE

CHROMIUM = "/usr/bin/chromium"

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
)

LAUNCH_TIMEOUT_MS = 20_000
# Every wait in a browser test is bounded by these unless it says otherwise.
ACTION_TIMEOUT_MS = 5_000
NAVIGATION_TIMEOUT_MS = 8_000

PROFILES: dict[str, dict[str, Any]] = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "screen": {"width": 390, "height": 844},
              "device_scale_factor": 3, "is_mobile": True, "has_touch": True},
}

OpenContext = Callable[[str], Awaitable[BrowserContext]]


async def carry_browser_keys(browser: aiohttp.ClientSession, context: BrowserContext, gateway_url: str) -> None:
    """Give a context the browser keys an HTTP client's launches got (tests that launch over HTTP and then open
    the provider pages in Chromium), so that to the gateway it is the browser that launched.

    Its pages are opened top-level, where a first-party cookie is what the launch would have left.
    """
    keys = [(cookie.key, cookie.value) for cookie in browser.cookie_jar if cookie.key.startswith(BROWSER_COOKIE)]
    assert keys, "the client has not launched"
    host = urlsplit(gateway_url).hostname
    # Domain and path rather than url: from a url Chromium makes a domain cookie, which `__Host-` forbids.
    await context.add_cookies([{"name": name, "value": value, "domain": host, "path": "/", "secure": True,
                                "httpOnly": True, "sameSite": "None"} for name, value in keys])


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium for one test."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS), timeout=LAUNCH_TIMEOUT_MS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def open_context(browser: Browser) -> AsyncIterator[OpenContext]:
    """Opens contexts of a profile in PROFILES ("desktop" or "phone"), all closed after the test. Each is
    off-the-record, so third-party cookies are blocked (see the module docstring)."""
    opened: list[BrowserContext] = []

    async def open_(profile: str) -> BrowserContext:
        ctx = await browser.new_context(**PROFILES[profile])
        opened.append(ctx)
        ctx.set_default_timeout(ACTION_TIMEOUT_MS)
        ctx.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
        return ctx

    try:
        yield open_
    finally:
        for ctx in reversed(opened):
            await ctx.close()


@pytest.fixture
async def context(open_context: OpenContext) -> BrowserContext:
    """A desktop-sized context."""
    return await open_context("desktop")


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    """A tab in the desktop context (closed with it)."""
    return await context.new_page()


@pytest.fixture
async def phone_context(open_context: OpenContext) -> BrowserContext:
    """A phone-sized touch context: 390x844 CSS pixels, mobile viewport, touch."""
    return await open_context("phone")
