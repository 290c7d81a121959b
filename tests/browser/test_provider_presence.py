"""The provider view in Chromium counts each participant's sockets: a patient is shown gone only when the
last of them closes, even when a gateway process that died has its sockets closed for it late."""
from __future__ import annotations

import uuid

import pytest
from playwright.async_api import BrowserContext, expect

from gateway import participants
from gateway.appkeys import DB
from presence import eventlog
from presence import lease as leases
from presence.appkeys import ANNOUNCER, LEASE
from tests.browser.axe import assert_accessible
from tests.browser.keyboard import tab_through
from tests.browser.conftest import carry_browser_keys
from tests.conftest import Stack

pytestmark = pytest.mark.browser


async def test_a_patient_whose_old_process_died_stays_in_the_visit_until_their_last_socket_closes(
        stack: Stack, context: BrowserContext) -> None:
    pool, announcer = stack.gateway_app[DB], stack.gateway_app[ANNOUNCER]
    handle = await stack.provider_handle()
    await carry_browser_keys(stack.browser, context, stack.gateway_url)
    page = await context.new_page()
    await page.goto(f"{stack.gateway_url}/provider/{handle}")
    await expect(page.locator("#presence-status")).to_have_text("live")
    async with pool.acquire() as conn:
        visit_id = await conn.fetchval("SELECT id FROM visits ORDER BY created_at DESC LIMIT 1")
        patient = await participants.patient_participant(conn, visit_id)
        guest = await participants.add_guest(conn, visit_id, "interpreter")
        died, alive = uuid.uuid4(), uuid.uuid4()
        await leases.take_lease(conn, died)
        await leases.take_lease(conn, alive)
    # The patient's room was on a process that then died; the browser reconnected to another one.
    await eventlog.record_held_event(pool, died, visit_id, patient, "connected", announcer)
    await eventlog.record_held_event(pool, alive, visit_id, patient, "connected", announcer)
    row = page.locator(f'li[data-participant="{patient}"]')
    await expect(row).to_have_attribute("data-state", "in_visit")

    # The dead process's lease lapses; this process writes its socket's `disconnected`.
    async with pool.acquire() as conn:
        await conn.execute("UPDATE presence_processes SET renewed_at = now() - interval '1 hour' WHERE id = $1", died)
    assert await stack.gateway_app[LEASE].sweep() == 1
    # Once an event written after that one shows, the page has seen it: the patient is still in the visit.
    await eventlog.record_held_event(pool, alive, visit_id, guest, "lobby_entered", announcer)
    await expect(page.locator(f'li[data-participant="{guest}"]')).to_have_attribute("data-state", "waiting")
    await expect(row).to_have_attribute("data-state", "in_visit")
    await expect(row.locator(".state")).to_contain_text("in the visit since")
    await assert_accessible(page)  # someone in the visit, someone waiting to be admitted
    stops = await tab_through(page)  # the focus shows on every control, Admit and Remove included
    assert {'button "Admit"', 'button "Remove"'} <= set(stops), stops

    # The socket the patient really has closes: now they are gone.
    await eventlog.record_held_event(pool, alive, visit_id, patient, "disconnected", announcer)
    await expect(row).to_have_attribute("data-state", "disconnected")
    await expect(row.locator(".state")).to_contain_text("disconnected at")
