"""Sending the join link from the provider view inside the sandbox EHR's iframe, in real Chromium: the
panel's script posts with fetch() (same origin, under the CSP) and shows the answer."""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, expect

from tests.browser.axe import assert_accessible
from tests.conftest import Stack
from tests.notify.conftest import SmtpServer, smtp, stack_overrides  # noqa: F401 -- fixtures: SMTP + SMS sink

pytestmark = pytest.mark.browser

# The panel's "Copy the patient's link" as a plain form post, as a browser without the panel's script sends it.
POST_INVITE_FORM = """(url) => {
  const form = Object.assign(document.createElement("form"), {method: "post", action: url});
  for (const [name, value] of [["role", "patient"], ["channel", "copy"]]) {
    form.appendChild(Object.assign(document.createElement("input"), {type: "hidden", name, value}));
  }
  document.body.appendChild(form);
  form.submit();
}"""

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
    app_frame = page.frame(url=lambda url: urlsplit(url).path.startswith("/provider/"))
    assert app_frame is not None
    await assert_accessible(app_frame)  # the panel with its answer and the link to copy

    await app.locator("#guest-kind").select_option("interpreter")
    await app.locator("#guest-channel").select_option("sms")
    await app.locator("#guest-address").fill("+44 20 7946 0958")
    await app.get_by_role("button", name="Invite the guest").click()
    await expect(app.locator("#send-link-message")).to_have_text("Sent to the guest's mobile number (*** ** 58).")
    await expect(app.locator("#guest-address")).to_have_value("")  # what was typed is not kept on the page
    assert problems == []

    # Without the panel's script, the form's post answers with a page of its own: the link, ready to copy.
    await app_frame.evaluate(POST_INVITE_FORM, urlsplit(app_frame.url).path + "/invite")
    await expect(app.locator("#invite-link")).to_be_visible()
    await assert_accessible(app_frame)
