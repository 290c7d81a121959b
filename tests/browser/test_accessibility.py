"""The pages as people who do not use a mouse, a screen or a normal zoom level meet them: the patient's journey
from the join link to the waiting room by keyboard alone with the focus always visible; admission and denial
said aloud through the page's live regions; and every patient page at 200% zoom (a 1280-pixel screen is 640 CSS
pixels wide; 400%, 320 pixels, too) and the provider view at 200% without sideways scrolling, and without motion
for someone who asked for less. axe checks each page on the way; the other browser tests check the pages they
reach (the provider view, both rooms, the refusals) and the clinician's arrival in the patient's room.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from uuid import UUID

import pytest
from playwright.async_api import Browser, BrowserContext, ViewportSize, expect

from gateway import joinlinks, participants
from gateway.appkeys import DB
from presence import eventlog
from tests.browser.axe import assert_accessible
from tests.browser.conftest import ACTION_TIMEOUT_MS, NAVIGATION_TIMEOUT_MS, carry_browser_keys
from tests.browser.keyboard import focus, press_until_focused
from tests.conftest import Stack

pytestmark = pytest.mark.browser

OpenContext = Callable[[str], Awaitable[BrowserContext]]
DEVICES_MS = 10_000  # camera, microphone and socket on a loaded 2-core machine
# A 1280x800 screen at 200% and at 400% zoom, in CSS pixels.
ZOOM_200: ViewportSize = {"width": 640, "height": 400}
ZOOM_400: ViewportSize = {"width": 320, "height": 200}

# Instagram's built-in browser on Android.
IN_APP_BROWSER = ("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Version/4.0 Chrome/130.0.0.0 Mobile Safari/537.36 Instagram 350.0.0.0.0 Android")

# Sideways scrolling, and visible things (controls, headings, text) cut off at either side of the viewport.
OVERFLOW = """() => {
  const root = document.documentElement;
  const width = root.clientWidth;
  const cut = [];
  for (const el of document.querySelectorAll("h1, h2, p, label, button, a, input, select, meter, video, li")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || el.closest(".visually-hidden")) continue;
    if (r.left < -0.5 || r.right > width + 0.5) cut.push(el.id || el.tagName);
  }
  return {scrollWidth: root.scrollWidth, clientWidth: width, cut};
}"""

# Everything that moves: elements (and their ::before/::after) with an animation or a transition that takes time.
MOVING = """() => {
  const moving = [];
  for (const el of document.querySelectorAll("*")) {
    for (const pseudo of [null, "::before", "::after"]) {
      const s = getComputedStyle(el, pseudo);
      const lasts = s.transitionDuration.split(",").some((d) => parseFloat(d) > 0);
      if (s.animationName !== "none" || lasts) moving.push((el.id || el.tagName) + (pseudo || ""));
    }
  }
  return moving;
}"""

# Hand each change of the page's live regions to window.visitgateHeard(region, text) (exposed by the test).
RECORD_ANNOUNCEMENTS = """() => {
  for (const id of ["announce-polite", "announce-assertive"]) {
    const region = document.getElementById(id);
    new MutationObserver(() => { if (region.textContent) window.visitgateHeard(id, region.textContent); })
      .observe(region, {childList: true, characterData: true, subtree: true});
  }
}"""

# Whether the page's style sheets say what to do for prefers-reduced-motion: reduce.
HAS_REDUCED_MOTION_RULE = """() => Array.from(document.styleSheets).some((sheet) =>
  Array.from(sheet.cssRules).some((rule) => rule instanceof CSSMediaRule
    && /prefers-reduced-motion:\\s*reduce/.test(rule.conditionText)))"""


async def _patient_link(stack: Stack) -> tuple[str, UUID, UUID, str]:
    """A launched visit's patient link, as the "Send the link" panel issues it: (link, visit, patient, the
    provider view's handle)."""
    handle = await stack.provider_handle()
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id: UUID = await conn.fetchval("SELECT id FROM visits")
        patient_id = await participants.patient_participant(conn, visit_id)
        token = await joinlinks.issue_link(conn, stack.gateway_app, patient_id, visit_id,
                                           dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    return joinlinks.keys_of(stack.gateway_app).link_url(token), visit_id, patient_id, handle


@pytest.mark.parametrize("profile", ["desktop", "phone"])
async def test_a_patient_reaches_the_waiting_room_by_keyboard_and_hears_denial_and_admission(
        stack: Stack, open_context: OpenContext, profile: str) -> None:
    link, visit_id, patient_id, _ = await _patient_link(stack)
    page = await (await open_context(profile)).new_page()

    # The link's page: Tab to its one button, Enter.
    await page.goto(link)
    await assert_accessible(page)
    await press_until_focused(page, "join")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{stack.gateway_url}/lobby")

    # The name: typed, Enter sends it; the focus follows to the device check's heading.
    await assert_accessible(page)
    await press_until_focused(page, "display-name")
    await page.keyboard.type("Alex")
    await page.keyboard.press("Enter")
    await expect(page.locator("#step-devices")).to_be_visible()
    assert (await focus(page))["id"] == "devices-title"

    # The device check: the test sound plays from the keyboard; "I'm ready" is reached forwards and, from the
    # last button, backwards.
    await expect(page.locator("#ready")).to_be_enabled(timeout=DEVICES_MS)
    await assert_accessible(page)
    await press_until_focused(page, "speaker-test")
    await page.keyboard.press("Space")
    await expect(page.locator("#speaker-status")).not_to_be_empty()
    await press_until_focused(page, "audio-only")
    await press_until_focused(page, "ready", key="Shift+Tab")
    await page.keyboard.press("Space")
    await expect(page.locator("#step-wait")).to_be_visible()
    assert (await focus(page))["id"] == "wait-title"
    await assert_accessible(page)

    # Turned away: said at once (assertive), and shown.
    await eventlog.record_event(stack.gateway_app[DB], visit_id, patient_id, "denied")
    await expect(page.locator("#announce-assertive")).to_have_text(
        "Your clinician could not let you in right now. Please contact your clinic.")
    await expect(page.locator("#denied")).to_be_visible()
    await assert_accessible(page)
    # Let in after all: said politely as the page moves on to the room (so what the region said is recorded as
    # it changes: the page is gone by the time the room shows).
    heard: list[tuple[str, str]] = []
    await page.expose_function("visitgateHeard", lambda region, text: heard.append((region, text)))
    await page.evaluate(RECORD_ANNOUNCEMENTS)
    await eventlog.record_event(stack.gateway_app[DB], visit_id, patient_id, "admitted")
    await page.wait_for_url(f"{stack.gateway_url}/room", timeout=NAVIGATION_TIMEOUT_MS)
    assert ("announce-polite", "You are being let in…") in heard, heard


async def test_pages_at_200_percent_zoom_scroll_only_downwards_and_do_not_move(
        stack: Stack, browser: Browser) -> None:
    link, visit_id, patient_id, handle = await _patient_link(stack)
    # 200% zoom on a 1280x800 screen lays the page out in 640x400 CSS pixels. The browser is one inside another
    # app, so the patient's pages also show their longest state: the guidance to open them in Safari or Chrome.
    context = await browser.new_context(viewport=ZOOM_200, reduced_motion="reduce", user_agent=IN_APP_BROWSER)
    try:
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        page = await context.new_page()

        async def fits(where: str, *, reflows_to_320: bool = True) -> None:
            found = await page.evaluate(OVERFLOW)
            assert found["scrollWidth"] <= found["clientWidth"] and not found["cut"], f"{where}: {found}"
            if reflows_to_320:  # and at 400% (WCAG 1.4.10's 320 CSS pixels) the patient's pages still do
                await page.set_viewport_size(ZOOM_400)
                found = await page.evaluate(OVERFLOW)
                await page.set_viewport_size(ZOOM_200)
                assert found["scrollWidth"] <= found["clientWidth"] and not found["cut"], f"{where} at 400%: {found}"
            assert await page.evaluate(HAS_REDUCED_MOTION_RULE), where
            assert await page.evaluate(MOVING) == [], where

        # Buttons do have a transition for everyone else: the check below is not vacuous.
        await page.goto(link)
        await page.emulate_media(reduced_motion="no-preference")
        assert "join" in await page.evaluate(MOVING)
        await page.emulate_media(reduced_motion="reduce")
        await expect(page.locator("#inapp")).to_be_visible()
        await fits("join")
        await assert_accessible(page)

        await page.goto(link + "x")  # a link that is not (or no longer) valid
        await expect(page.locator("#reason")).not_to_be_empty()
        await fits("refused link")

        await page.goto(link)
        await page.locator("#join").click()
        await page.wait_for_url(f"{stack.gateway_url}/lobby")
        await fits("lobby: name")
        await page.locator("#display-name").fill("Alex with a rather long name that has to wrap")
        await page.locator("#name-continue").click()
        await expect(page.locator("#ready")).to_be_enabled(timeout=DEVICES_MS)
        await fits("lobby: devices")
        await page.locator("#ready").click()
        await eventlog.record_event(stack.gateway_app[DB], visit_id, patient_id, "denied")
        await expect(page.locator("#denied")).to_be_visible()
        await fits("lobby: waiting, denied")

        await eventlog.record_event(stack.gateway_app[DB], visit_id, patient_id, "admitted")
        await page.wait_for_url(f"{stack.gateway_url}/room", timeout=NAVIGATION_TIMEOUT_MS)
        await expect(page.locator("#room-leave")).to_be_visible()
        await fits("room")
        # The room fills the screen: its controls must be on it, not below it.
        controls = await page.locator(".room-controls").bounding_box()
        assert controls is not None and controls["y"] + controls["height"] <= ZOOM_200["height"], controls
        await assert_accessible(page)

        # The clinician's provider view, zoomed the same way.
        await carry_browser_keys(stack.browser, context, stack.gateway_url)
        await page.goto(f"{stack.gateway_url}/provider/{handle}")
        await expect(page.locator(f'li[data-participant="{patient_id}"]')).to_be_visible()
        await fits("provider view", reflows_to_320=False)
    finally:
        await context.close()

