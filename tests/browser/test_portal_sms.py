"""Getting a number in the portal, in real Chromium: the progress shows live, survives a reload, and ends with
the number in the table; the page passes axe and works by keyboard."""
from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Browser, expect

from sandbox.carriers import AcsDouble
from tests.browser.axe import assert_accessible
from tests.browser.portal_pages import sign_in
from tests.portal.conftest import ADMIN, ORG, Portal, extra_routes, portal  # noqa: F401 -- fixtures
from tests.portal.sms_helpers import acs, acs_settings, lro_delay  # noqa: F401 -- fixtures

pytestmark = pytest.mark.browser


@pytest.fixture
def portal_settings(acs: tuple[AcsDouble, str]) -> dict[str, Any]:  # noqa: F811
    """The gateway buys numbers through the ACS double."""
    return acs_settings(acs[1])


async def test_getting_a_number_shows_its_progress_across_a_reload(portal: Portal, browser: Browser,  # noqa: F811
                                                                   acs: tuple[AcsDouble, str]) -> None:  # noqa: F811
    double = acs[0]
    double.hold_operations = True  # ACS takes its time until the test lets it finish
    context = await browser.new_context(ignore_https_errors=True)  # the provider's certificate is the tests' own
    context.set_default_timeout(5_000)
    context.set_default_navigation_timeout(8_000)
    try:
        page = await context.new_page()
        await sign_in(page, portal.gateway_url, ORG, ADMIN)

        await page.goto(f"{portal.gateway_url}/portal/{ORG}/sms")
        await page.get_by_role("checkbox", name="I accept the terms").check()
        await page.get_by_role("checkbox", name="I allow Visitgate").check()
        await page.get_by_role("button", name="Save consent").press("Enter")
        await expect(page.locator("#done")).to_be_visible()
        await assert_accessible(page)

        await page.get_by_role("button", name="Get a new number").focus()
        await page.keyboard.press("Enter")
        progress = page.locator("#operation-list li").first
        await expect(progress.locator(".step")).to_have_text("Searching for an available number")

        await page.reload()  # the progress is the gateway's, not the page's
        await expect(progress.locator(".step")).to_have_text("Searching for an available number")
        double.hold_operations = False
        # The page's script follows it to the end, then shows the number bought.
        await expect(page.locator("#numbers tbody tr")).to_have_count(1, timeout=15_000)
        number = await page.locator("#numbers tbody th").text_content()
        assert number is not None and number.strip() in double.numbers
        await expect(progress.locator(".step")).to_have_text("Done")
        await assert_accessible(page)
        await page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen
        assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        await context.close()
