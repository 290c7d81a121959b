"""The clinician's clinic queue in Chromium, on a phone's screen and by keyboard: opened from the provider view,
it shows today's visits with their patients' names (read from the EHR now), a patient who joins appears as
waiting, the news is announced politely, and Admit (with the Enter key) lets them in.

Run inside a private network namespace so nothing leaves the machine:
    unshare -n sh -c 'ip link set lo up && exec .venv/bin/pytest tests/browser/test_clinic_queue.py -q'
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, expect

from gateway import joinlinks, participants
from gateway.appkeys import DB
from tests.browser.axe import assert_accessible
from tests.browser.conftest import carry_browser_keys
from tests.browser.keyboard import focus
from tests.conftest import Stack

pytestmark = pytest.mark.browser

OpenContext = Callable[[str], Awaitable[BrowserContext]]
SEE_MS = 10_000


async def _handle(stack: Stack, encounter: str, patient: str) -> str:
    response, visited = await stack.launch(stack.new_launch(encounter=encounter, patient=patient))
    assert response.status == 200, await response.text()
    return urlsplit(visited[-1]).path.rsplit("/", 1)[1]


async def test_a_patient_who_joins_shows_as_waiting_in_the_queue_and_is_admitted_from_it(
        stack: Stack, open_context: OpenContext) -> None:
    await _handle(stack, "enc-1", "pat-1")
    handle = await _handle(stack, "enc-2", "pat-2")
    async with stack.gateway_app[DB].acquire() as conn:
        visit = await conn.fetchval("SELECT visit_id FROM provider_sessions ORDER BY created_at DESC LIMIT 1")
        patient = await participants.patient_participant(conn, visit)
        session = await joinlinks.create_session(conn, patient, visit,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    clinician = await open_context("phone")
    await carry_browser_keys(stack.browser, clinician, stack.gateway_url)
    view = await clinician.new_page()
    await view.goto(f"{stack.gateway_url}/provider/{handle}")
    await view.get_by_role("link", name="Clinic queue: everyone waiting for you today").click()
    queue = view
    await expect(queue.locator("#queue-status")).to_have_text("live", timeout=SEE_MS)
    # Both of today's visits, named from the EHR, nobody there yet.
    others = queue.locator("#queue-other")
    await expect(others).to_contain_text("Alex Testpatient")
    await expect(others).to_contain_text("Bea Example")
    await expect(queue.locator("#waiting-empty")).to_be_visible()

    # The patient of the second visit joins from their phone.
    patient_ctx = await open_context("phone")
    await patient_ctx.add_cookies([{"name": joinlinks.PARTICIPANT_COOKIE, "value": session.handle,
                                    "url": stack.gateway_url, "httpOnly": True, "sameSite": "Lax"}])
    lobby = await patient_ctx.new_page()
    await lobby.goto(f"{stack.gateway_url}/lobby")
    await lobby.locator("#display-name").fill("Bea")
    await lobby.locator("#name-continue").click()

    row = queue.locator(f'#queue-waiting li[data-participant="{patient}"]')
    await expect(row).to_contain_text("Bea Example", timeout=SEE_MS)
    await expect(row.locator(".wait")).to_have_text("<1 min")
    await expect(queue.locator("#announce-polite")).to_have_text("Bea Example is waiting.")
    await expect(queue.locator("#waiting-empty")).to_be_hidden()
    await assert_accessible(queue)
    wide = await queue.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert wide, "the queue scrolls sideways on a phone"

    # By keyboard: Tab to the row's Admit, press Enter.
    for _ in range(20):
        await queue.keyboard.press("Tab")
        now = await focus(queue)
        assert now["name"] is None or now["visible"], now
        if await queue.evaluate("() => document.activeElement.getAttribute('aria-label')") == "Admit Bea Example":
            break
    else:
        raise AssertionError("Admit was not reached by keyboard")
    await queue.keyboard.press("Enter")
    await expect(queue.locator(f'#queue-in-visit li[data-participant="{patient}"]')).to_be_visible(timeout=SEE_MS)
    await expect(queue.locator("#waiting-empty")).to_be_visible()
    async with stack.gateway_app[DB].acquire() as conn:
        assert await participants.admission_state(conn, patient) == "admitted"
