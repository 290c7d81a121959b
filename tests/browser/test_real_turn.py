"""Video through a real TURN server: Debian's coturn, started by the test inside the private network namespace,
with the shared-secret credentials the gateway issues (VISITGATE_TURN_URLS, _SECRET, _TTL).

With VISITGATE_ICE_TRANSPORT_POLICY=relay a call connects only through coturn's relay, and survives the
credentials being refreshed (ICE restarts with the fresh ones); the clinician sees each participant's
connection quality. The lobby's device test finds the relay reachable, and the clinician reads the result in
the provider view; with a secret coturn does not know, the relay check fails and says so.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from gateway import joinlinks
from gateway.appkeys import DB
from presence import quality
from tests.browser.axe import assert_accessible
from tests.browser.conftest import carry_browser_keys
from tests.browser.coturn import Coturn, running_coturn
from tests.browser.test_video_room import OpenContext, _both_live, _frames, _launched_visit, _open_room, _watch
from tests.conftest import Stack

pytestmark = pytest.mark.browser

SECRET = b"coturn-static-auth-secret-for-tests"
TTL = 6  # seconds: each page asks for fresh credentials after 4.8 s
CHECK_TIMEOUT_MS = 25_000


@pytest.fixture
def gateway_turn_secret() -> bytes:
    """The secret the gateway signs TURN credentials with: coturn's own, unless a test says otherwise."""
    return SECRET


@pytest.fixture
async def coturn(tmp_path: Path) -> AsyncIterator[Coturn]:
    """coturn on 127.0.0.1, for this test only."""
    async with running_coturn(SECRET, tmp_path) as running:
        yield running


@pytest.fixture
def stack_overrides(coturn: Coturn, gateway_turn_secret: bytes) -> Any:
    """The gateway offers only coturn, credentials that last a few seconds, and every call through the relay."""

    def overrides(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
        return dict(turn_urls=(coturn.url,), turn_secret=gateway_turn_secret, turn_ttl=TTL,
                    ice_transport_policy="relay")

    return overrides


async def _local_candidate(page: Page, peer: str) -> Any:
    await page.wait_for_function("(p) => (window.visitgateQuality.peers[p] || {}).local", arg=peer, timeout=10_000)
    return await page.evaluate("(p) => window.visitgateQuality.peers[p].local", peer)


async def test_a_call_forced_through_coturn_connects_and_survives_a_credential_refresh(
        stack: Stack, open_context: OpenContext, coturn: Coturn) -> None:
    problems: list[str] = []
    room = await _open_room(stack, open_context, "phone", problems)
    await _both_live(room)
    # Through the relay, and only through it.
    assert await _local_candidate(room.provider, room.patient_id) == "relay"
    assert await _local_candidate(room.patient, room.provider_id) == "relay"
    # The credentials run out: both pages take fresh ones and restart ICE on the open connection.
    for page, other in ((room.provider, room.patient_id), (room.patient, room.provider_id)):
        await page.wait_for_function("() => window.visitgateRoom.iceRefreshes >= 1", timeout=15_000)
        await page.wait_for_function("(p) => window.visitgateRoom.peers[p].iceRestarts >= 1", arg=other,
                                     timeout=20_000)
    before = await _frames(room.patient, room.provider_id)
    await room.patient.wait_for_function(
        "([p, n]) => window.visitgateRoom.peers[p].framesDecoded > n + 10", arg=[room.provider_id, before],
        timeout=15_000)
    for page, other in ((room.provider, room.patient_id), (room.patient, room.provider_id)):
        assert await page.evaluate("(p) => window.visitgateRoom.peers[p].connectionState", other) == "connected"
    assert await _local_candidate(room.provider, room.patient_id) == "relay"
    # The clinician sees the patient's connection as a word, with the numbers for screen readers.
    badge = room.provider.locator(f'.room-tile[data-participant="{room.patient_id}"] .quality')
    await expect(badge).to_contain_text("connection", timeout=10_000)
    assert await badge.get_attribute("data-level") in ("good", "fair", "poor")
    await expect(badge.locator(".visually-hidden")).to_contain_text("round trip")
    assert await room.patient.locator(".quality").count() == 0  # the patient's room shows no indicators
    await assert_accessible(room.provider)
    # Each room page's sample goes into the visit's summary, one row per role.
    for page in (room.provider, room.patient):
        assert await page.evaluate("() => window.visitgateQuality.sampleNow()") is True
    async with stack.gateway_app[DB].acquire() as conn:
        for _ in range(50):  # bounded: the samples are stored within a few seconds
            visit_id = await conn.fetchval("SELECT id FROM visits LIMIT 1")
            summary = await quality.visit_quality(conn, visit_id)
            if len(summary) == 2:
                break
            await room.provider.wait_for_timeout(100)
    assert sorted(s.role for s in summary) == ["patient", "provider"], summary
    assert "ALLOCATE processed, success" in coturn.log.read_text()  # coturn did the relaying
    assert problems == []


async def _lobby(stack: Stack, open_context: OpenContext, problems: list[str],
                 profile: str = "phone") -> tuple[Page, str]:
    """The patient's lobby, name given, device test under way; and the clinician's provider view handle."""
    handle, visit_id, patient_id = await _launched_visit(stack)
    async with stack.gateway_app[DB].acquire() as conn:
        session = await joinlinks.create_session(conn, patient_id, visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    context = await open_context(profile)
    await context.add_cookies([{"name": joinlinks.PARTICIPANT_COOKIE, "value": session.handle,
                                "url": stack.gateway_url, "httpOnly": True, "sameSite": "Lax"}])
    page = await context.new_page()
    _watch(page, problems, "patient")
    await page.goto(f"{stack.gateway_url}/lobby")
    await page.get_by_label("Your name").fill("Alex")
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_function("() => window.visitgateConnectionCheck.state === 'done'", timeout=CHECK_TIMEOUT_MS)
    return page, handle


async def _stored_detail(stack: Stack) -> dict[str, Any]:
    async with stack.gateway_app[DB].acquire() as conn:
        for _ in range(50):  # bounded: stored within a few seconds of "I'm ready"
            text = await conn.fetchval("SELECT detail FROM presence_events WHERE detail IS NOT NULL "
                                       "ORDER BY id DESC LIMIT 1")
            if text is not None:
                found: dict[str, Any] = json.loads(text)
                return found
            await conn.execute("SELECT pg_sleep(0.1)")
    raise AssertionError("no device test result stored")


@pytest.mark.parametrize("profile", ["phone", "desktop"])
async def test_the_device_test_finds_the_relay_and_the_clinician_reads_the_result(
        stack: Stack, open_context: OpenContext, profile: str) -> None:
    problems: list[str] = []
    page, handle = await _lobby(stack, open_context, problems, profile)
    result = await page.evaluate("() => window.visitgateConnectionCheck.result")
    assert result["relay"] == "ok" and "relay" in result["candidates"], result
    assert isinstance(result["rtt_ms"], int), result
    await expect(page.locator("#network-status")).to_contain_text("ready for video")
    await page.get_by_role("button", name="Play test sound").click()
    await page.get_by_role("button", name="Yes").click(timeout=10_000)
    await expect(page.get_by_role("button", name="Yes")).to_have_attribute("aria-pressed", "true")
    await assert_accessible(page)
    await page.get_by_role("button", name="I'm ready").click()
    detail = await _stored_detail(stack)
    assert detail["relay"] == "ok" and detail["speaker"] is True and detail["camera"] is True, detail
    assert detail["rtt"] in quality.RTT_BUCKETS
    # The clinician's provider view says it.
    view_ctx = await open_context("desktop")
    await carry_browser_keys(stack.browser, view_ctx, stack.gateway_url)
    view = await view_ctx.new_page()
    _watch(view, problems, "provider")
    await view.goto(f"{stack.gateway_url}/provider/{handle}")
    await expect(view.locator("#participant-list .device-test")).to_contain_text("Connection: relay OK",
                                                                                 timeout=10_000)
    await assert_accessible(view)
    assert problems == []


@pytest.mark.parametrize("gateway_turn_secret", [b"not-the-secret-coturn-knows"])
async def test_the_device_test_says_so_when_the_relay_refuses_the_credentials(
        stack: Stack, open_context: OpenContext, coturn: Coturn) -> None:
    problems: list[str] = []
    page, handle = await _lobby(stack, open_context, problems)
    result = await page.evaluate("() => window.visitgateConnectionCheck.result")
    assert result["relay"] == "failed" and "relay" not in result["candidates"], result
    await expect(page.locator("#network-status")).to_contain_text("may block the video call")
    await page.get_by_role("button", name="I'm ready").click()
    detail = await _stored_detail(stack)
    assert detail["relay"] == "failed" and detail["rtt"] is None, detail
    assert "401" in coturn.log.read_text()  # coturn refused the credentials
    view_ctx = await open_context("phone")
    await carry_browser_keys(stack.browser, view_ctx, stack.gateway_url)
    view = await view_ctx.new_page()
    _watch(view, problems, "provider")
    await view.goto(f"{stack.gateway_url}/provider/{handle}")
    await expect(view.locator("#participant-list .device-test")).to_contain_text(
        "No relay: the call may not connect from this network", timeout=10_000)
    assert problems == []
