"""A patient's lobby on a phone (Chromium at 390x844): a reload keeps the place and the waiting time and does
not repeat a passed device test; opening the link on a second phone moves the visit there and tells the first.

Fake camera and microphone; run inside a private network namespace:
    unshare -n sh -c 'ip link set lo up && exec .venv/bin/pytest tests/browser/test_lobby_reload_and_move.py -q'
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from uuid import UUID

import pytest
from playwright.async_api import BrowserContext, Page, expect

from gateway import joinlinks, participants
from gateway.appkeys import DB
from tests.browser.axe import assert_accessible
from tests.conftest import Stack

pytestmark = pytest.mark.browser

OpenContext = Callable[[str], Awaitable[BrowserContext]]
SEE_MS = 20_000  # generous for a loaded 2-core machine; nothing here asserts how fast


async def _events(stack: Stack, participant_id: UUID, kind: str) -> list[dt.datetime]:
    async with stack.gateway_app[DB].acquire() as conn:
        return [r["at"] for r in await conn.fetch(
            "SELECT at FROM presence_events WHERE participant_id = $1 AND kind = $2 ORDER BY id",
            participant_id, kind)]


async def _join_and_pass_device_test(page: Page, link: str, gateway_url: str, name: str,
                                     check: bool = False) -> None:
    await page.goto(link)
    if check:
        await assert_accessible(page)  # the join page with the organisation's header
    await page.locator("#join").click()
    await page.wait_for_url(f"{gateway_url}/lobby")
    await page.locator("#display-name").fill(name)
    await page.locator("#name-continue").click()
    ready = page.locator("#ready")
    await expect(ready).to_be_enabled(timeout=SEE_MS)
    await ready.click()
    await expect(page.locator("#step-wait")).to_be_visible(timeout=SEE_MS)
    await expect(page.locator("#waiting-since")).to_be_visible(timeout=SEE_MS)
    if check:
        await assert_accessible(page)  # the waiting step, with its time


async def test_reload_keeps_the_wait_and_another_phone_takes_the_visit_over(
        stack: Stack, open_context: OpenContext) -> None:
    # The clinician watches the visit from the EHR (its provider view in the EHR's iframe).
    clinician = await (await open_context("desktop")).new_page()
    await clinician.goto(f"{stack.sandbox_url}/ehr?practitioner=prac-1")
    await clinician.get_by_role("link", name="Begin virtual visit").first.click()
    view = clinician.frame_locator("#app")
    await expect(view.locator("#presence-status")).to_have_text("live", timeout=SEE_MS)
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id: UUID = await conn.fetchval("SELECT id FROM visits")
        participant_id = await participants.patient_participant(conn, visit_id)
        code = await joinlinks.issue_link(conn, stack.gateway_app, participant_id, visit_id,
                                          dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    link = joinlinks.keys_of(stack.gateway_app).link_url(code)

    first = await (await open_context("phone")).new_page()
    await _join_and_pass_device_test(first, link, stack.gateway_url, "Alex", check=True)
    since = first.locator("#waiting-since time")
    for _ in range(200):  # the device test's result is stored once the gateway answers
        if await _events(stack, participant_id, "device_test_passed"):
            break
        await first.wait_for_timeout(100)
    assert await _events(stack, participant_id, "device_test_passed")
    [entered] = await _events(stack, participant_id, "lobby_entered")
    assert dt.datetime.fromisoformat(str(await since.get_attribute("datetime"))) == entered
    row = view.locator(f'#participant-list li[data-participant="{participant_id}"]')
    await expect(row).to_contain_text("waiting since", timeout=SEE_MS)
    queued = str(await row.text_content())

    # A reload: straight back to the waiting step, the same "waiting since", no second device test. (The lobby
    # may send a fuller result once its connection check ends, so what counts is nothing new after the reload.)
    await first.wait_for_timeout(500)
    tested = len(await _events(stack, participant_id, "device_test_passed"))
    await first.reload()
    await expect(first.locator("#step-wait")).to_be_visible(timeout=SEE_MS)
    await expect(first.locator("#step-name")).to_be_hidden(timeout=SEE_MS)
    await expect(first.locator("#step-devices")).to_be_hidden(timeout=SEE_MS)
    await expect(since).to_have_attribute("datetime", entered.astimezone(dt.timezone.utc).isoformat(), timeout=SEE_MS)
    await expect(first.locator("#connection")).to_have_text("Connected to your visit.", timeout=SEE_MS)
    assert len(await _events(stack, participant_id, "device_test_passed")) == tested
    assert len(await _events(stack, participant_id, "lobby_entered")) == 2
    await expect(row).to_have_attribute("data-state", "waiting", timeout=SEE_MS)
    await expect(row).to_have_text(queued, timeout=SEE_MS)  # the clinician sees the same place and time

    # The same link on a second phone: the visit moves there, and the first phone says so.
    second = await (await open_context("phone")).new_page()
    await _join_and_pass_device_test(second, link, stack.gateway_url, "Alex")
    moved = first.locator("#moved")
    await expect(moved).to_be_visible(timeout=SEE_MS)
    await expect(moved).to_contain_text("You opened this visit on another device", timeout=SEE_MS)
    await assert_accessible(first)
    await expect(first.locator("#ready")).to_be_disabled(timeout=SEE_MS)
    # Same participant, same place in the queue: the wait still counts from the first phone's arrival.
    await expect(second.locator("#waiting-since time")).to_have_attribute(
        "datetime", entered.astimezone(dt.timezone.utc).isoformat(), timeout=SEE_MS)
    await expect(second.locator("#connection")).to_have_text("Connected to your visit.", timeout=SEE_MS)
    await expect(row).to_have_attribute("data-state", "waiting", timeout=SEE_MS)
    await expect(row).to_have_text(queued, timeout=SEE_MS)
    # The first phone's next request is refused, saying why.
    await first.goto(f"{stack.gateway_url}/lobby")
    await expect(first.locator("#reason")).to_have_text("session_moved", timeout=SEE_MS)


async def test_a_patient_from_the_portal_goes_straight_to_the_device_test_under_the_ehr_name(
        stack: Stack, open_context: OpenContext) -> None:
    phone = await (await open_context("phone")).new_page()
    await phone.goto(f"{stack.sandbox_url}/portal?patient=pat-1")
    await phone.locator('a[href^="/portal/visit/"]').first.click()
    await phone.wait_for_url(f"{stack.gateway_url}/lobby")
    await expect(phone.locator("#ehr-name")).to_have_text("Welcome, Alex Testpatient.", timeout=SEE_MS)
    await expect(phone.locator("#step-name")).to_be_hidden(timeout=SEE_MS)
    await expect(phone.locator("#step-devices")).to_be_visible(timeout=SEE_MS)
    ready = phone.locator("#ready")
    await expect(ready).to_be_enabled(timeout=SEE_MS)
    await ready.click()
    await expect(phone.locator("#waiting-since")).to_be_visible(timeout=SEE_MS)
