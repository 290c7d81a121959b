"""A Spanish-speaking patient in Chromium, on a phone and at a desk: the SMS link (sent in Spanish because
the EHR says Spanish is her preferred language) opens the join page in Spanish in an English browser, the
language switcher takes her to French by keyboard alone, and the lobby and its script's words follow."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from playwright.async_api import ConsoleMessage, expect

from tests.browser.axe import assert_accessible
from tests.browser.conftest import OpenContext
from tests.conftest import Stack
from tests.notify.conftest import SmtpServer, smtp, stack_overrides  # noqa: F401 -- fixtures: SMTP + SMS sink
from tests.notify.helpers import invite, launch_handle

pytestmark = pytest.mark.browser

MAX_TABS = 12  # the switcher comes first on the page: French is a few Tab presses in


@pytest.mark.parametrize("profile", ["phone", "desktop"])
async def test_a_spanish_patients_sms_link_opens_in_spanish_and_switches_to_french_by_keyboard(
        stack: Stack, open_context: OpenContext, smtp: SmtpServer, profile: str) -> None:  # noqa: F811
    handle = await launch_handle(stack, patient="pat-2", encounter="enc-2")  # pat-2 prefers Spanish
    sent = await invite(stack, handle, channel="sms", role="patient")
    assert sent.status == 200, await sent.text()
    phone = await stack.browser.get(f"{stack.sandbox_url}/phone", headers={"Accept": "application/json"})
    [sms] = (await phone.json())["messages"]
    assert sms["body"].startswith("Su videoconsulta con ")
    link = sms["body"].rsplit(" ", 1)[1]

    context = await open_context(profile)  # Chromium's own language: English
    page = await context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and urlsplit(message.location.get("url", "")).path != "/favicon.ico":
            problems.append(f"console error: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    await page.goto(link)
    assert await page.get_attribute("html", "lang") == "es"
    await expect(page.get_by_role("heading", level=1)).to_have_text("Entre en su videoconsulta")
    switcher = page.get_by_role("navigation", name="Idioma")
    await expect(switcher.get_by_role("link", name="Español")).to_have_attribute("aria-current", "true")
    if profile == "phone":
        await assert_accessible(page)

    # Keyboard only: Tab to the French link, Enter.
    for _ in range(MAX_TABS):
        await page.keyboard.press("Tab")
        if await page.evaluate("() => document.activeElement?.getAttribute('lang')") == "fr":
            break
    else:
        pytest.fail("Tab never reached the French link")
    await page.keyboard.press("Enter")
    await expect(page.locator("html")).to_have_attribute("lang", "fr")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Rejoignez votre consultation vidéo")
    assert re.search(r"[?&]lang=fr(&|$)", page.url)

    await page.get_by_role("button", name="Aller en salle d'attente").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Salle d'attente")
    assert await page.get_attribute("html", "lang") == "fr"
    await expect(page.get_by_role("navigation", name="Langue").get_by_role("link", name="Français")).to_have_attribute(
        "aria-current", "true")
    await page.get_by_role("button", name="Continuer").click()  # the script's words are French too
    await expect(page.locator("#name-error")).to_have_text("Veuillez saisir votre nom.")
    assert problems == []
