"""The provider view inside the EHR renews its short-lived handle and keeps working: its URL (what the EHR
browser's history keeps) changes, its links follow, and a reconnect after the first handle ran out uses the
new one. The launch URL itself stops opening anything.
"""
from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, Frame, expect

from gateway.appkeys import DB
from gateway.security import token_hash
from presence.appkeys import HUB
from tests.browser.test_provider_launch_in_ehr import (_app_frame, _begin_visit, _expect_provider_view,
                                                       _patient_name, _schedule)
from tests.conftest import Stack

pytestmark = pytest.mark.browser

HANDLE_TTL = 3  # seconds: the page renews after 1 s


@pytest.fixture
def stack_overrides() -> Any:
    """This module's gateway gives provider pages handles that last a few seconds."""

    def overrides(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
        return dict(provider_handle_ttl=HANDLE_TTL)

    return overrides


def _handle(path: str) -> str:
    return path.split("/")[2]


async def _path_after(frame: Frame, old: str, seconds: float = 8.0) -> str:
    """The frame's URL path once it no longer is `old` (bounded)."""
    for _ in range(int(seconds * 10)):
        path: str = await frame.evaluate("location.pathname")
        if path != old:
            return path
        await asyncio.sleep(0.1)
    raise AssertionError(f"the provider view never renewed its handle (still {old})")


async def test_the_provider_view_renews_its_handle_and_reconnects_with_the_new_one(
        stack: Stack, context: BrowserContext) -> None:
    page = await context.new_page()
    refused: list[str] = []
    page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda e: refused.append(f"page error: {e}"))
    first_appointment = (await _schedule(page, stack))[0]
    await _begin_visit(page, first_appointment)
    launch_url = await _expect_provider_view(page, stack, _patient_name(stack, first_appointment))
    app = page.frame_locator("iframe#app")
    await expect(app.locator("#presence-status")).to_have_text("live")
    frame = await _app_frame(page)
    first = _handle(urlsplit(launch_url).path)

    # Renewed in place: no navigation (the patient banner is still the same document), a new URL.
    await frame.evaluate("document.body.dataset.sameDocument = 'yes'")
    renewed_path = await _path_after(frame, urlsplit(launch_url).path)
    second = _handle(renewed_path)
    assert second != first and renewed_path == f"/provider/{second}"
    assert await frame.evaluate("document.body.dataset.sameDocument") == "yes"
    await expect(app.locator("#join-video a")).to_have_attribute("href", f"/provider/{second}/room")

    # The first handle runs out; the page's socket drops. It comes back with the handle it holds now.
    async with stack.gateway_app[DB].acquire() as conn:
        await conn.execute("UPDATE provider_handles SET expires_at = now() - interval '1 second'"
                           " WHERE handle_hash = $1", token_hash(first))
    hub = stack.gateway_app[HUB]
    assert hub.count() == 1
    for visit_conns in list(hub._visits.values()):
        for conn in list(visit_conns):
            hub.drop(conn, "test: the network blinked")
    await expect(app.locator("#presence-status")).not_to_have_text("live", timeout=5_000)
    await expect(app.locator("#presence-status")).to_have_text("live", timeout=10_000)
    assert hub.count() == 1

    # The clinician's room page (in the iframe, as "Join the video" opens it: the browser key lives in the
    # iframe's partition) renews the same way, and its way back follows.
    await app.locator("#join-video a").click()
    await expect(app.locator("#room-back")).to_be_attached()
    room_path = await frame.evaluate("location.pathname")
    assert room_path.endswith("/room"), room_path
    renewed_room = await _path_after(frame, room_path)
    assert renewed_room.endswith("/room"), renewed_room
    await expect(app.locator("#room-back")).to_have_attribute("href", f"/provider/{_handle(renewed_room)}")
    assert [r for r in refused if "/provider/" in r] == [], refused

    # The launch URL, as the history keeps it, opens nothing any more, even in the browser that launched.
    answer = await frame.goto(launch_url)
    assert answer is not None and answer.status == 401
