"""The built-in video room in real Chromium: a clinician and an admitted patient see each other.

Both browsers use Chromium's fake camera and microphone and talk peer to peer over loopback
(--allow-loopback-in-peer-connection); the pages signal over the gateway's presence websocket. Every wait is
bounded. Run them inside a network namespace with only loopback to prove nothing leaves the machine:
    unshare -n sh -c 'ip link set lo up && exec .venv/bin/pytest tests/browser/test_video_room.py -q'
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Page, expect

from gateway import joinlinks, participants
from gateway.appkeys import DB
from presence import eventlog
from presence.appkeys import HUB
from tests.browser.axe import assert_accessible
from tests.browser.conftest import carry_browser_keys
from tests.browser.keyboard import tab_through
from tests.conftest import Stack

pytestmark = pytest.mark.browser

OpenContext = Callable[[str], Awaitable[BrowserContext]]
MEDIA_TIMEOUT_MS = 20_000
MESH_TIMEOUT_MS = 30_000
SCREENSHOTS = Path("/tmp")

# True once the page has exactly `count` peers and each is connected and has decoded video frames.
ALL_PEERS_LIVE = """(count) => {
  const room = window.visitgateRoom;
  if (!room) return false;
  const peers = Object.values(room.peers);
  return peers.length === count && peers.every(p => p.connectionState === "connected" && p.framesDecoded > 0);
}"""

# The contrast of a tile's name with its own half-see-through ground laid over a white picture.
CAPTION_CONTRAST_ON_WHITE = """() => {
  const style = getComputedStyle(document.querySelector(".room-tile figcaption"));
  const rgba = (c) => { const v = c.match(/[\\d.]+/g).map(Number); return v.length === 3 ? [...v, 1] : v; };
  const [r, g, b, a] = rgba(style.backgroundColor);
  const ground = [r, g, b].map((x) => x * a + 255 * (1 - a));
  const lum = (rgb) => rgb.map((x) => x / 255).map((x) => x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4)
    .reduce((sum, x, i) => sum + x * [0.2126, 0.7152, 0.0722][i], 0);
  const [fg, bg] = [lum(rgba(style.color).slice(0, 3)), lum(ground)];
  return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
}"""


class Room:
    """Two sides of one visit: the clinician's room page and the admitted patient's."""

    def __init__(self, provider: Page, patient: Page, provider_id: str, patient_id: str) -> None:
        self.provider = provider
        self.patient = patient
        self.provider_id = provider_id
        self.patient_id = patient_id


def _watch(page: Page, problems: list[str], side: str) -> None:
    def on_console(message: ConsoleMessage) -> None:
        # The browser's own favicon request is not part of the page.
        if message.type == "error" and urlsplit(message.location.get("url", "")).path != "/favicon.ico":
            problems.append(f"{side}: console error: {message.text} at {message.location.get('url')}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"{side}: page error: {e}"))
    page.on("response", lambda r: problems.append(f"{side}: {r.status} {r.url}")
            if r.status >= 400 and urlsplit(r.url).path != "/favicon.ico" else None)


async def _launched_visit(stack: Stack) -> tuple[str, UUID, UUID]:
    """Launch the visit as the clinician: (provider view handle, visit, its patient participant)."""
    response, visited = await stack.launch()
    assert response.status == 200, await response.text()
    handle = urlsplit(visited[-1]).path.rsplit("/", 1)[1]
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id: UUID = await conn.fetchval("SELECT id FROM visits ORDER BY created_at LIMIT 1")
        patient_id = await participants.patient_participant(conn, visit_id)
    return handle, visit_id, patient_id


async def _open_room(stack: Stack, open_context: OpenContext, patient_profile: str,
                     problems: list[str]) -> Room:
    """Launch the visit as the clinician, give the patient an admitted session, open both room pages."""
    handle, visit_id, patient_id = await _launched_visit(stack)
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        # What the join-link exchange leaves behind: a browser session for the patient.
        session = await joinlinks.create_session(conn, patient_id, visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    for kind in ("lobby_entered", "admitted"):
        await eventlog.record_event(pool, visit_id, patient_id, kind)

    provider_ctx = await open_context("desktop")
    await carry_browser_keys(stack.browser, provider_ctx, stack.gateway_url)
    patient_ctx = await open_context(patient_profile)
    await patient_ctx.add_cookies([{"name": joinlinks.PARTICIPANT_COOKIE, "value": session.handle,
                                    "url": stack.gateway_url, "httpOnly": True, "sameSite": "Lax"}])
    provider = await provider_ctx.new_page()
    patient = await patient_ctx.new_page()
    _watch(provider, problems, "provider")
    _watch(patient, problems, "patient")
    await provider.goto(f"{stack.gateway_url}/provider/{handle}/room")
    await patient.goto(f"{stack.gateway_url}/room")
    assert urlsplit(patient.url).path == "/room", patient.url
    provider_id = await provider.evaluate("() => window.visitgateRoom.participant")
    assert await patient.evaluate("() => window.visitgateRoom.participant") == str(patient_id)
    return Room(provider, patient, provider_id, str(patient_id))


async def _both_live(room: Room) -> None:
    for page in (room.provider, room.patient):
        await page.wait_for_function(ALL_PEERS_LIVE, arg=1, timeout=MEDIA_TIMEOUT_MS)
    assert list(await room.provider.evaluate("() => Object.keys(window.visitgateRoom.peers)")) == [room.patient_id]
    assert list(await room.patient.evaluate("() => Object.keys(window.visitgateRoom.peers)")) == [room.provider_id]


async def _frames(page: Page, peer: str) -> int:
    value: int = await page.evaluate("(p) => window.visitgateRoom.peers[p].framesDecoded", peer)
    return value


async def _local_tracks(page: Page) -> dict[str, Any]:
    value: dict[str, Any] = await page.evaluate("""() => {
      const s = document.getElementById("room-local").srcObject;
      return {audio: s ? s.getAudioTracks().map(t => t.enabled) : null,
              video: s ? s.getVideoTracks().map(t => t.enabled) : null};
    }""")
    return value


@pytest.mark.parametrize("patient_profile", ["desktop", "phone"])
async def test_clinician_and_admitted_patient_see_each_other(
        stack: Stack, open_context: OpenContext, patient_profile: str) -> None:
    problems: list[str] = []
    room = await _open_room(stack, open_context, patient_profile, problems)
    await _both_live(room)
    # The clinician's arrival was said aloud to the patient; both rooms, video on, pass axe.
    await expect(room.patient.locator("#announce-polite")).to_have_text("Your clinician has joined the visit.")
    await assert_accessible(room.patient)
    await assert_accessible(room.provider)
    # axe cannot judge text on video: the names on the tiles stay readable (4.5:1) even on a white picture.
    for page in (room.patient, room.provider):
        assert await page.evaluate(CAPTION_CONTRAST_ON_WHITE) >= 4.5
        # Every control is reached by Tab, in the order shown, its focus visible (and so is anything else).
        controls = [stop for stop in await tab_through(page) if stop.startswith("room-")]
        assert controls == ["room-mute", "room-camera", "room-leave"] + (["room-back"] if page is room.provider else [])
    # Frames keep coming: the video is live, not one decoded frame.
    before = await _frames(room.patient, room.provider_id)
    await room.patient.wait_for_function(
        "([p, n]) => window.visitgateRoom.peers[p].framesDecoded > n + 10", arg=[room.provider_id, before],
        timeout=MEDIA_TIMEOUT_MS)
    if patient_profile == "phone":
        # The phone layout: the remote tile fills the width, our own picture is a small corner inset, and the
        # controls are on screen.
        boxes = await room.patient.evaluate("""() => {
          const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
          return {tile: box(document.querySelector(".room-tile")), local: box(document.getElementById("room-local")),
                  leave: box(document.getElementById("room-leave")), width: innerWidth, height: innerHeight,
                  scroll: document.documentElement.scrollWidth};
        }""")
        assert boxes["width"] == 390 and boxes["scroll"] <= 390, boxes
        tile, local, leave = boxes["tile"], boxes["local"], boxes["leave"]
        assert tile[2] > 350 and tile[3] > 300, boxes
        assert local[2] < 390 / 3 and local[0] + local[2] <= 390 and local[1] + local[3] <= boxes["height"], boxes
        assert leave[1] + leave[3] <= boxes["height"] and leave[3] >= 44, boxes
        await room.patient.screenshot(path=str(SCREENSHOTS / "visitgate-room-patient-phone.png"))
        await room.provider.screenshot(path=str(SCREENSHOTS / "visitgate-room-provider-desktop.png"))
    assert problems == []


async def test_mute_and_camera_off_disable_the_local_tracks(stack: Stack, open_context: OpenContext) -> None:
    problems: list[str] = []
    room = await _open_room(stack, open_context, "desktop", problems)
    await _both_live(room)
    patient = room.patient
    assert await _local_tracks(patient) == {"audio": [True], "video": [True]}

    await patient.get_by_role("button", name="Mute").click()
    assert await _local_tracks(patient) == {"audio": [False], "video": [True]}
    assert await patient.get_by_role("button", name="Unmute").get_attribute("aria-pressed") == "true"

    await patient.get_by_role("button", name="Camera off").click()
    assert await _local_tracks(patient) == {"audio": [False], "video": [False]}

    await patient.get_by_role("button", name="Unmute").click()
    await patient.get_by_role("button", name="Camera on").click()
    assert await _local_tracks(patient) == {"audio": [True], "video": [True]}
    # Muting never renegotiated or dropped the connection.
    await _both_live(room)
    assert problems == []


async def test_leave_closes_the_peer_on_the_other_side_and_rejoin_reconnects(
        stack: Stack, open_context: OpenContext) -> None:
    problems: list[str] = []
    room = await _open_room(stack, open_context, "desktop", problems)
    await _both_live(room)

    await room.patient.get_by_role("button", name="Leave").click()
    await room.provider.wait_for_function("() => Object.keys(window.visitgateRoom.peers).length === 0",
                                          timeout=5_000)
    assert await room.patient.evaluate("() => Object.keys(window.visitgateRoom.peers).length") == 0
    # Leaving turns the camera off.
    assert await _local_tracks(room.patient) == {"audio": None, "video": None}
    assert await room.provider.locator(".room-tile").count() == 0
    # The keyboard focus moved from the Leave button, now gone, to the Rejoin button that replaced it.
    await expect(room.patient.locator("#room-rejoin")).to_be_focused()
    await assert_accessible(room.patient)

    await room.patient.get_by_role("button", name="Rejoin").click()
    await _both_live(room)
    assert problems == []


async def test_a_lost_socket_reconnects_and_the_call_goes_on(stack: Stack, open_context: OpenContext) -> None:
    problems: list[str] = []
    room = await _open_room(stack, open_context, "desktop", problems)
    await _both_live(room)
    hub = stack.gateway_app[HUB]
    visit_id = next(iter({c.visit_id for v in hub._visits.values() for c in v}))  # noqa: SLF001 - test reach-in
    patient_sockets = [c for c in hub.connections(visit_id) if str(c.participant_id) == room.patient_id]
    assert len(patient_sockets) == 1
    before = await _frames(room.provider, room.patient_id)
    await patient_sockets[0].ws.close(code=1011, message=b"test: server went away")
    # The page resubscribes after the last event it saw, and the peer connection never dropped.
    await room.patient.wait_for_function(
        "() => window.visitgateRoom.socket === 'open' && window.visitgateRoom.status === 'in_call'",
        timeout=10_000)
    await room.provider.wait_for_function(
        "([p, n]) => window.visitgateRoom.peers[p] && window.visitgateRoom.peers[p].framesDecoded > n + 10",
        arg=[room.patient_id, before], timeout=MEDIA_TIMEOUT_MS)
    await _both_live(room)
    assert problems == []


async def test_a_reloaded_page_replaces_its_old_connection(stack: Stack, open_context: OpenContext) -> None:
    problems: list[str] = []
    room = await _open_room(stack, open_context, "desktop", problems)
    await _both_live(room)
    await room.provider.reload()
    # The patient drops the connection of the page that went away and connects to the new one.
    await _both_live(room)
    assert await room.patient.locator(".room-tile").count() == 1
    assert problems == []


async def test_three_people_form_a_mesh(stack: Stack, open_context: OpenContext) -> None:
    problems: list[str] = []
    room = await _open_room(stack, open_context, "phone", problems)
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        visit_id: UUID = await conn.fetchval("SELECT id FROM visits ORDER BY created_at LIMIT 1")
        guest_id = await participants.add_guest(conn, visit_id, "interpreter")
        session = await joinlinks.create_session(conn, guest_id, visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    await eventlog.record_event(pool, visit_id, guest_id, "admitted")
    guest_ctx = await open_context("desktop")
    await guest_ctx.add_cookies([{"name": joinlinks.PARTICIPANT_COOKIE, "value": session.handle,
                                  "url": stack.gateway_url, "httpOnly": True, "sameSite": "Lax"}])
    guest = await guest_ctx.new_page()
    _watch(guest, problems, "guest")
    await guest.goto(f"{stack.gateway_url}/room")
    for page in (room.provider, room.patient, guest):
        # Three browsers' fake cameras encode and decode on one machine: a longer, still bounded, wait.
        await page.wait_for_function(ALL_PEERS_LIVE, arg=2, timeout=MESH_TIMEOUT_MS)
    assert set(await guest.evaluate("() => Object.keys(window.visitgateRoom.peers)")) == {
        room.provider_id, room.patient_id}
    assert await room.patient.evaluate("() => document.getElementById('room-tiles').dataset.count") == "2"
    await room.patient.locator(".room-tile figcaption", has_text="Interpreter").wait_for()
    await room.patient.screenshot(path=str(SCREENSHOTS / "visitgate-room-patient-phone-three.png"))
    assert problems == []


async def test_the_clinician_is_told_the_room_is_full_before_admitting_one_more(
        stack: Stack, open_context: OpenContext) -> None:
    handle, visit_id, patient_id = await _launched_visit(stack)
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        guests = [await participants.add_guest(conn, visit_id, kind) for kind in ("interpreter", "family", "caregiver")]
    for guest in guests:  # with the clinician, four people: the mesh is full
        for kind in ("admitted", "connected"):
            await eventlog.record_event(pool, visit_id, guest, kind)
    await eventlog.record_event(pool, visit_id, patient_id, "lobby_entered")

    problems: list[str] = []
    provider_ctx = await open_context("desktop")
    await carry_browser_keys(stack.browser, provider_ctx, stack.gateway_url)
    page = await provider_ctx.new_page()
    _watch(page, problems, "provider")
    await page.goto(f"{stack.gateway_url}/provider/{handle}")
    full = page.locator("#room-full")
    await full.wait_for(state="visible", timeout=MEDIA_TIMEOUT_MS)
    assert "full (4 of 4)" in (await full.text_content() or "")
    assert await page.locator("#waiting-alert").is_visible()
    await assert_accessible(page)  # the provider view with its warnings and someone to admit

    # The interpreter drops out of the room: a place is free, and the warning goes without a reload.
    await eventlog.record_event(pool, visit_id, guests[0], "disconnected")
    await full.wait_for(state="hidden", timeout=MEDIA_TIMEOUT_MS)
    assert await page.locator("#waiting-alert").is_visible()
    assert not problems, problems
