"""Sending the join link from the provider view inside the sandbox EHR's iframe, in real Chromium: the
panel's script posts with fetch() (same origin, under the CSP) and shows the answer."""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, expect

from tests.conftest import Stack
from tests.notify.conftest import SmtpServer, smtp, stack_overrides  # noqa: F401 -- fixtures: SMTP + SMS sink

pytestmark = pytest.mark.browser

LAUNCH_TIMEOUT_MS = 8_000


async def test_clinician_emails_the_patient_and_invites_a_guest_from_the_ehr(
        stack: Stack, context: BrowserContext, smtp: SmtpServer) -> None:  # noqa: F811
    page = await context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and urlsplit(message.location.get("url", "")).path != "/favicon.ico":
            problems.append(f"console error: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    await page.goto(f"{stack.sandbox_url}/ehr/visit/appt-1?practitioner=prac-1")
    app = page.frame_locator("iframe#app")
    await expect(app.locator("#send-link")).to_be_visible(timeout=LAUNCH_TIMEOUT_MS)

    await app.get_by_role("button", name="Email the patient").click()
    await expect(app.locator("#send-link-message")).to_have_text(
        "Sent to the patient's email on file (a***@example.org).")
    assert [m.rcpt_tos for m in smtp.received] == [["alex.testpatient@example.org"]]

    await app.get_by_role("button", name="Copy the patient's link").click()
    link_field = app.locator("#send-link-url")
    await expect(link_field).to_be_visible()
    assert (await link_field.input_value()).startswith(f"{stack.gateway_url}/j/")

    await app.locator("#guest-kind").select_option("interpreter")
    await app.locator("#guest-channel").select_option("sms")
    await app.locator("#guest-address").fill("+44 20 7946 0958")
    await app.get_by_role("button", name="Invite the guest").click()
    await expect(app.locator("#send-link-message")).to_have_text("Sent to the guest's mobile number (*** ** 58).")
    await expect(app.locator("#guest-address")).to_have_value("")  # what was typed is not kept on the page
    assert problems == []
