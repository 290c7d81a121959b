"""The knock inside the video room, in real Chromium: a clinician already in the room sees a patient arrive in
the lobby (the list, the tab title), talks with them over the waiting-room chat (text, never markup), and
admits them from the room. At a phone's size (390x844) and at a desktop's.

Fake camera and microphone; run inside a private network namespace so nothing leaves the machine:
    unshare -n sh -c 'ip link set lo up && exec .venv/bin/pytest tests/browser/test_room_knock.py -q'
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import pytest
from playwright.async_api import BrowserContext, expect

from gateway import joinlinks
from gateway.appkeys import DB
from tests.browser.axe import assert_accessible
from tests.browser.conftest import carry_browser_keys
from tests.browser.test_video_room import ALL_PEERS_LIVE, MESH_TIMEOUT_MS, _launched_visit
from tests.conftest import Stack

pytestmark = pytest.mark.browser

OpenContext = Callable[[str], Awaitable[BrowserContext]]
SEE_MS = 10_000
HOSTILE = '<img src=x onerror="window.pwned=1">'
# The desktop's notifications, recorded: headless Chromium shows none, and a hidden tab cannot be made by a test
# otherwise. Permission starts undecided, as in a browser that never asked.
NOTIFICATIONS = """
  window.shown = []; window.asked = 0; window.permission = "default"; window.tabHidden = false;
  window.Notification = class {
    constructor(title, options) { window.shown.push({title: title, body: options.body}); }
    static get permission() { return window.permission; }
    static requestPermission() { window.asked += 1; window.permission = "granted"; return Promise.resolve("granted"); }
    close() {}
  };
  Object.defineProperty(document, "hidden", {configurable: true, get: () => window.tabHidden});
"""


@pytest.mark.parametrize("clinician_profile", ["desktop", "phone"])
async def test_a_patient_knocking_shows_in_the_room_and_is_admitted_from_there(
        stack: Stack, open_context: OpenContext, clinician_profile: str) -> None:
    handle, visit_id, patient_id = await _launched_visit(stack)
    async with stack.gateway_app[DB].acquire() as conn:
        session = await joinlinks.create_session(conn, patient_id, visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    clinician_ctx = await open_context(clinician_profile)
    await carry_browser_keys(stack.browser, clinician_ctx, stack.gateway_url)
    await clinician_ctx.add_init_script(NOTIFICATIONS)
    room = await clinician_ctx.new_page()
    await room.goto(f"{stack.gateway_url}/provider/{handle}/room")
    title = await room.title()
    waiting_list = room.locator("#waiting-list")
    await expect(room.locator("#waiting-empty")).to_be_visible()
    await room.wait_for_function("() => window.visitgateWaiting && window.visitgateWaiting.live", timeout=SEE_MS)
    # Notifications only once the clinician asks for them with the button; the page never asks by itself.
    assert await room.evaluate("() => window.asked") == 0
    await room.get_by_role("button", name="Notify me when someone is waiting").click()
    await expect(room.locator("#knock-notify-status")).to_have_text("Notifications are on.")
    assert await room.evaluate("() => window.asked") == 1
    await room.evaluate("() => { window.tabHidden = true; }")  # the clinician looks at another tab

    # The patient comes into the lobby while the clinician is in the video.
    patient_ctx = await open_context("phone")
    await patient_ctx.add_cookies([{"name": joinlinks.PARTICIPANT_COOKIE, "value": session.handle,
                                    "url": stack.gateway_url, "httpOnly": True, "sameSite": "Lax"}])
    lobby = await patient_ctx.new_page()
    await lobby.goto(f"{stack.gateway_url}/lobby")
    await lobby.locator("#display-name").fill("Alex")
    await lobby.locator("#name-continue").click()

    row = waiting_list.locator(f'li[data-participant="{patient_id}"]')
    await expect(row).to_have_attribute("data-state", "waiting", timeout=SEE_MS)
    await expect(row).to_contain_text("Patient: Alex")
    await expect(room).to_have_title(f"(1) waiting — {title}")
    # A desktop notification while the page is hidden, naming the role only, never what the patient typed.
    assert await room.evaluate("() => window.shown") == [
        {"title": "Someone is waiting", "body": "Patient is waiting to be let in."}]
    await room.evaluate("() => { window.tabHidden = false; }")
    # The side panel: beside the video on a desktop, below it on a phone, never wider than the screen.
    boxes = await room.evaluate("""() => {
      const box = (el) => el.getBoundingClientRect();
      const video = box(document.getElementById("room")), side = box(document.getElementById("room-side"));
      return {video: [video.left, video.top, video.right, video.bottom],
              side: [side.left, side.top, side.right, side.bottom],
              width: innerWidth, scroll: document.documentElement.scrollWidth};
    }""")
    video, side = boxes["video"], boxes["side"]
    assert boxes["scroll"] <= boxes["width"], boxes
    if clinician_profile == "phone":
        assert side[1] >= video[3] - 1 and side[0] == 0, boxes
    else:
        assert side[0] >= video[2] - 1 and side[1] == 0, boxes

    # The waiting-room chat, both ways: what the patient types is shown as text, never run as markup.
    chat = room.locator("#chat")
    await expect(chat.locator("#chat-to")).to_have_value(str(patient_id))
    await lobby.locator("#chat-text").fill(HOSTILE)
    await lobby.locator("#chat [type=submit]").click()
    await expect(chat.locator("[role=log]")).to_contain_text(f"Patient: Alex: {HOSTILE}", timeout=SEE_MS)
    assert await chat.locator("[role=log] img").count() == 0
    assert await room.evaluate("() => window.pwned") is None
    await room.locator("#chat-text").fill("I will be with you in a minute.")
    await room.locator("#chat [type=submit]").click()
    await expect(lobby.locator("#chat [role=log]")).to_contain_text("Clinician: I will be with you in a minute.",
                                                                    timeout=SEE_MS)
    await expect(lobby.locator("#chat [role=log]")).to_contain_text(f"You: {HOSTILE}")
    assert await lobby.locator("#chat [role=log] img").count() == 0
    await room.screenshot(path=f"/tmp/visitgate-room-knock-{clinician_profile}.png")
    await lobby.screenshot(path="/tmp/visitgate-lobby-chat-phone.png", full_page=True)
    if clinician_profile == "desktop":
        await assert_accessible(room)
        await assert_accessible(lobby)

    # Admit from the room: the patient's lobby moves on to the room, the title goes back, the call starts.
    await row.get_by_role("button", name="Admit").click()
    await lobby.wait_for_url(f"{stack.gateway_url}/room", timeout=SEE_MS)
    await expect(room).to_have_title(title)
    await room.wait_for_function(ALL_PEERS_LIVE, arg=1, timeout=MESH_TIMEOUT_MS)


async def test_the_provider_view_lists_the_links_sent_and_revokes_one(stack: Stack, open_context: OpenContext) -> None:
    handle, _visit_id, _patient_id = await _launched_visit(stack)
    context = await open_context("desktop")
    await carry_browser_keys(stack.browser, context, stack.gateway_url)
    view = await context.new_page()
    problems: list[str] = []
    view.on("pageerror", lambda e: problems.append(str(e)))
    await view.goto(f"{stack.gateway_url}/provider/{handle}")
    await view.get_by_role("button", name="Copy the patient's link").click()
    item = view.locator("#invitations li")
    await expect(item).to_contain_text("Patient · link to copy · sent at", timeout=SEE_MS)
    await expect(item).to_contain_text("the link works")
    await item.get_by_role("button", name="Revoke").click()
    await expect(item).to_contain_text("the link no longer works", timeout=SEE_MS)
    await expect(view.locator("#send-link-message")).to_have_text("The link sent to the patient no longer works.")
    await item.get_by_role("button", name="Re-send").click()
    await expect(item).to_contain_text("the link works", timeout=SEE_MS)
    assert (await view.locator("#send-link-url").input_value()).startswith(f"{stack.gateway_url}/j/")
    await assert_accessible(view)  # the list, the chat and the notification button included
    assert problems == []
