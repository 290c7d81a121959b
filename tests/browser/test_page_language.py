"""A Spanish-speaking patient's lobby in Chromium: the page and the words its script shows (through
launch/static/i18n.js) come from the Spanish catalog."""
from __future__ import annotations

import datetime as dt
from uuid import UUID

import pytest
from playwright.async_api import Browser, expect

from gateway import joinlinks, participants
from gateway.appkeys import DB
from tests.browser.conftest import ACTION_TIMEOUT_MS, PROFILES
from tests.conftest import Stack

pytestmark = pytest.mark.browser


async def test_a_spanish_browser_gets_the_lobby_and_its_script_in_spanish(stack: Stack, browser: Browser) -> None:
    await stack.provider_handle()
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id: UUID = await conn.fetchval("SELECT id FROM visits ORDER BY created_at DESC LIMIT 1")
        patient = await participants.patient_participant(conn, visit_id)
        session = await joinlinks.create_session(conn, patient, visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    context = await browser.new_context(locale="es-ES", **PROFILES["phone"])  # Accept-Language: es-ES
    try:
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        await context.add_cookies([{"name": joinlinks.PARTICIPANT_COOKIE, "value": session.handle,
                                    "url": stack.gateway_url, "httpOnly": True, "sameSite": "Lax"}])
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        await page.goto(f"{stack.gateway_url}/lobby")
        assert await page.get_attribute("html", "lang") == "es"
        await expect(page.get_by_role("heading", level=1)).to_have_text("Sala de espera")
        await page.get_by_role("button", name="Continuar").click()
        await expect(page.locator("#name-error")).to_have_text("Escriba su nombre.")
        await page.get_by_label("Su nombre").fill("Ana")
        await page.get_by_role("button", name="Continuar").click()
        await expect(page.locator("#connection")).to_have_text("Conectado con su visita.")
        assert problems == []
    finally:
        await context.close()
