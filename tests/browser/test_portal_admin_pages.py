"""The admin's portal pages in real Chromium: the integration records (a value copied by keyboard, announced in
the polite status), the audit log and the members, each with no WCAG 2.1 A/AA violation."""
from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.browser.axe import assert_accessible
from tests.browser.portal_pages import sign_in
from tests.portal.conftest import (  # noqa: F401 -- fixtures
    ADMIN, ORG, Portal, extra_routes, portal, portal_settings,
)
from tests.portal.test_portal_admin import approved

pytestmark = pytest.mark.browser


async def test_the_records_audit_and_members_pages_work_by_keyboard_and_pass_axe(portal: Portal,  # noqa: F811
                                                                                 browser: Browser) -> None:
    config_id = await approved(portal, "epic")
    context = await browser.new_context(ignore_https_errors=True)  # the provider's certificate is the tests' own
    context.set_default_timeout(5_000)
    context.set_default_navigation_timeout(8_000)
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal.gateway_url)
    try:
        page = await context.new_page()
        await sign_in(page, portal.gateway_url, ORG, ADMIN)

        await page.goto(f"{portal.gateway_url}/portal/{ORG}/records")
        button = page.get_by_role("button", name="Copy Launch URL, Provider launch")
        await expect(button).to_be_visible()  # shown by the script; without it the values stay plain text
        await assert_accessible(page)
        await button.focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#copy-status")).to_have_text("Copied")
        assert await page.evaluate("() => navigator.clipboard.readText()") == f"{portal.gateway_url}/launch"
        await expect(page.locator(f"#c{config_id}-provider_launch-launch_url")).to_have_text(
            f"{portal.gateway_url}/launch")

        await page.goto(f"{portal.gateway_url}/portal/{ORG}/audit")
        await expect(page.locator("#audit")).to_contain_text("portal.sign_in")
        await assert_accessible(page)

        await page.goto(f"{portal.gateway_url}/portal/{ORG}/members")
        await expect(page.locator("#members")).to_contain_text(ADMIN.oid)
        await assert_accessible(page)

        await page.goto(f"{portal.gateway_url}/portal/{ORG}/teams")
        await expect(page.locator("#teams-unset")).to_be_visible()
        await assert_accessible(page)
    finally:
        await context.close()
