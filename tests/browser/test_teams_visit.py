"""A Teams visit in real Chromium: the clinician launches from the EHR, signs in to Microsoft 365 once in a
pop-up (Entra's pages refuse the EHR's iframe), the visit's meeting is made once, and the patient goes from the
link through our lobby and device test to the Teams join page (the Graph double's), where Teams' lobby holds them.

Run inside a private network namespace, like every browser test:
    unshare -n sh -c 'ip link set lo up && exec .venv/bin/pytest tests/browser/test_teams_visit.py -q'
"""
from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit
from uuid import UUID

import pytest
from playwright.async_api import Browser, expect

from gateway import joinlinks, participants
from gateway.appkeys import DB
from tests.browser.axe import assert_accessible
from tests.browser.conftest import ACTION_TIMEOUT_MS, NAVIGATION_TIMEOUT_MS, PROFILES
from tests.teams.conftest import TeamsVisit, teams_visit  # noqa: F401 (the fixture)
from tests.teams.graph_helpers import CLINICIAN_OID

pytestmark = pytest.mark.browser
SEE_MS = 10_000


async def test_teams_visit_sign_in_once_meeting_once_and_patient_to_the_teams_join(
        teams_visit: TeamsVisit, browser: Browser) -> None:  # noqa: F811
    stack, double = teams_visit.stack, teams_visit.double
    # The double's TLS comes from a test CA Chromium does not know; only its pages are on it.
    desktop = await browser.new_context(**PROFILES["desktop"], ignore_https_errors=True)
    phone_context = await browser.new_context(**PROFILES["phone"], ignore_https_errors=True)
    try:
        for ctx in (desktop, phone_context):
            ctx.set_default_timeout(ACTION_TIMEOUT_MS)
            ctx.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
        clinician = await desktop.new_page()
        await clinician.goto(f"{stack.sandbox_url}/ehr?practitioner=prac-1")
        await clinician.get_by_role("link", name="Begin virtual visit").first.click()
        view = clinician.frame_locator("#app")
        sign_in = view.locator("#teams-sign-in")
        await expect(sign_in).to_be_visible(timeout=SEE_MS)

        # The one-time sign-in, in a pop-up: pick the account; the pop-up closes and the view reloads.
        async with desktop.expect_page() as opened:
            await sign_in.click()
        popup = await opened.value
        await popup.get_by_role("button", name="Sign in as Dr Alex Example").click()
        await popup.wait_for_event("close", timeout=SEE_MS)
        join_teams = view.locator("#join-teams")
        await expect(join_teams).to_be_visible(timeout=SEE_MS)
        assert len(double.graph.meetings) == 1
        meeting = next(iter(double.graph.meetings.values()))
        assert meeting.organizer_oid == CLINICIAN_OID
        await expect(join_teams).to_have_attribute("href", meeting.join_web_url)
        app = clinician.frame(url=lambda url: urlsplit(url).path.startswith("/provider/"))
        assert app is not None
        await assert_accessible(app)
        assert await stack.gateway_app[DB].fetchval("SELECT count(*) FROM teams_links") == 1

        # The patient: the link, our lobby and device test, then (admitted) Teams' own join and lobby.
        async with stack.gateway_app[DB].acquire() as conn:
            visit_id: UUID = await conn.fetchval("SELECT id FROM visits")
            patient_id = await participants.patient_participant(conn, visit_id)
            token = await joinlinks.issue_link(conn, stack.gateway_app, patient_id, visit_id,
                                               dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
        phone = await phone_context.new_page()
        await phone.goto(joinlinks.keys_of(stack.gateway_app).link_url(token))
        await phone.locator("#join").click()
        await phone.wait_for_url(f"{stack.gateway_url}/lobby")
        await phone.locator("#display-name").fill("Alex")
        await phone.locator("#name-continue").click()
        ready = phone.locator("#ready")
        await expect(ready).to_be_enabled(timeout=SEE_MS)
        await ready.click()
        row = view.locator(f'#participant-list li[data-participant="{patient_id}"]')
        await expect(row).to_have_attribute("data-state", "waiting", timeout=SEE_MS)
        await row.get_by_role("button", name="Admit").click()
        await phone.wait_for_url(meeting.join_web_url, timeout=SEE_MS)
        await phone.locator("#name").fill("Alex")
        await phone.locator("#join").click()
        await expect(phone.locator("#state")).to_have_text("lobby")
        guest = next(p for p in meeting.participants.values() if p.role == "guest")
        await double.graph.admit(meeting.id, guest.id)
        await phone.reload()
        await expect(phone.locator("#state")).to_have_text("inMeeting")
        assert len(double.graph.meetings) == 1 and double.graph.create_calls >= 1
    finally:
        await phone_context.close()
        await desktop.close()
