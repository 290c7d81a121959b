"""The whole visit in real Chromium: the patient follows a link on a phone, passes the device test and
waits; the clinician, in the EHR's iframe, sees them waiting, admits them, and both see each other.

Fake camera and microphone; run inside a private network namespace so ICE stays on loopback:
    unshare -n sh -c 'ip link set lo up && exec .venv/bin/pytest tests/browser/test_patient_journey.py -q'
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit
from uuid import UUID

import pytest
from playwright.async_api import BrowserContext, expect

from gateway import joinlinks, participants
from gateway.appkeys import DB
from presence import eventlog
from tests.browser.axe import assert_accessible
from tests.browser.test_video_room import ALL_PEERS_LIVE, MESH_TIMEOUT_MS
from tests.conftest import Stack

pytestmark = pytest.mark.browser

OpenContext = Callable[[str], Awaitable[BrowserContext]]
# Generous bounds for a loaded 2-core machine; the test asserts what happens, never how fast.
SEE_WAITING_MS = 10_000


async def test_link_lobby_device_test_admission_and_video_on_a_phone(stack: Stack, open_context: OpenContext) -> None:
    # The clinician opens the visit from the EHR schedule; the provider view runs in the EHR's iframe.
    clinician = await (await open_context("desktop")).new_page()
    await clinician.goto(f"{stack.sandbox_url}/ehr?practitioner=prac-1")
    await clinician.get_by_role("link", name="Begin virtual visit").first.click()
    view = clinician.frame_locator("#app")
    await expect(view.locator("#presence-status")).to_have_text("live", timeout=SEE_WAITING_MS)

    # The patient's link, as the "Send the link" panel would issue it.
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        visit_id: UUID = await conn.fetchval("SELECT id FROM visits")
        patient_id = await participants.patient_participant(conn, visit_id)
        token = await joinlinks.issue_link(conn, stack.gateway_app, patient_id, visit_id,
                                           dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    link = joinlinks.keys_of(stack.gateway_app).link_url(token)

    # The patient, on a phone: the link's page, its one button, then the lobby at a clean URL.
    phone = await (await open_context("phone")).new_page()
    await phone.goto(link)
    await assert_accessible(phone)
    await phone.locator("#join").click()
    await phone.wait_for_url(f"{stack.gateway_url}/lobby")
    assert token not in phone.url
    await phone.locator("#display-name").fill("Alex")
    await phone.locator("#name-continue").click()
    ready = phone.locator("#ready")
    await expect(ready).to_be_enabled(timeout=SEE_WAITING_MS)  # camera, microphone and socket all passed
    await ready.click()
    await expect(phone.locator("#step-wait")).to_be_visible()
    await assert_accessible(phone)

    # The clinician sees the patient waiting, with the time, and an alert.
    row = view.locator(f'#participant-list li[data-participant="{patient_id}"]')
    await expect(row).to_have_attribute("data-state", "waiting", timeout=SEE_WAITING_MS)
    await expect(row).to_contain_text("waiting since")
    await expect(row).to_contain_text("devices OK")
    await expect(view.locator("#waiting-alert")).to_be_visible()
    # The provider view, in the EHR's iframe, with someone to admit, passes axe.
    app = clinician.frame(url=lambda url: urlsplit(url).path.startswith("/provider/"))
    assert app is not None
    await assert_accessible(app)

    # One click admits; the patient's lobby moves on to the room by itself.
    await row.get_by_role("button", name="Admit").click()
    await phone.wait_for_url(f"{stack.gateway_url}/room", timeout=SEE_WAITING_MS)
    await view.locator("#join-video a").click()
    frame = await (await clinician.wait_for_selector("#app")).content_frame()
    assert frame is not None
    await frame.wait_for_url("**/room", timeout=SEE_WAITING_MS)
    await phone.wait_for_function(ALL_PEERS_LIVE, arg=1, timeout=MESH_TIMEOUT_MS)
    await frame.wait_for_function(ALL_PEERS_LIVE, arg=1, timeout=MESH_TIMEOUT_MS)
    await assert_accessible(phone)
    await assert_accessible(frame)

    # The patient never sees the clinician's personal details: the room calls them "Clinician".
    from sandbox.appkeys import STORE

    practitioner = stack.sandbox_app[STORE].get("Practitioner", "prac-1")
    assert practitioner is not None
    patient_sees = await phone.content()
    for name in practitioner["name"]:
        assert name["family"] not in patient_sees
    assert practitioner["id"] not in patient_sees

    async with pool.acquire() as conn:
        kinds = [e.kind for e in await eventlog.events_after(conn, visit_id, 0, 10**12)
                 if e.participant_id == patient_id]
    # The lobby may send its device result again, fuller, once its connection check ends: one or more passes,
    # then the admission, then the room.
    passed = [k for k in kinds[1:kinds.index("admitted")]]
    assert kinds[0] == "lobby_entered" and passed and set(passed) == {"device_test_passed"}, kinds
    assert "connected" in kinds[kinds.index("admitted"):]
