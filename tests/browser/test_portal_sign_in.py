"""The portal's sign-in in real Chromium, by keyboard: the landing page, the sandbox's OpenID provider (over
TLS with the tests' own CA, which this profile is told to accept), the `__Host-` cookies over
http://127.0.0.1 (a secure context to browsers), the portal home, and signing out through the page's form
(whose POST carries `Origin: null` under our no-referrer policy, so the CSRF check reads Sec-Fetch-Site)."""
from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.portal.conftest import (  # noqa: F401 -- fixtures
    ADMIN, ORG, Portal, extra_routes, portal, portal_settings,
)

pytestmark = pytest.mark.browser


async def test_an_admin_signs_in_by_keyboard_sees_the_home_and_signs_out(portal: Portal,  # noqa: F811
                                                                        browser: Browser) -> None:
    context = await browser.new_context(ignore_https_errors=True)  # the provider's certificate is the tests' own
    context.set_default_timeout(5_000)
    context.set_default_navigation_timeout(8_000)
    try:
        page = await context.new_page()
        await page.goto(f"{portal.gateway_url}/portal/{ORG}/sign-in")
        await page.keyboard.press("Tab")
        await expect(page.locator("#sign-in")).to_be_focused()
        await page.keyboard.press("Enter")
        await page.get_by_label("User name").fill(ADMIN.username)
        await page.get_by_label("Password").fill(ADMIN.password)
        await page.get_by_label("Password").press("Enter")
        await page.wait_for_url(f"{portal.gateway_url}/portal/{ORG}")
        await expect(page.locator("#roles")).to_have_text("Admin")
        cookies = {c["name"]: c for c in await context.cookies(portal.gateway_url)}
        assert cookies["__Host-vg_portal"]["secure"] and cookies["__Host-vg_portal"]["httpOnly"]
        assert cookies["__Host-vg_portal"]["sameSite"] == "Lax"

        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url(f"{portal.gateway_url}/portal/signed-out")
        assert "__Host-vg_portal" not in {c["name"] for c in await context.cookies(portal.gateway_url)}
        response = await page.goto(f"{portal.gateway_url}/portal/{ORG}")
        assert response is not None and response.status == 401
    finally:
        await context.close()
