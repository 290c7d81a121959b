"""The clinician ends the visit from the provider view in Chromium: a confirmation first, then the page says
the visit has ended and the end is stored once."""
from __future__ import annotations

import pytest
from playwright.async_api import BrowserContext, expect

from gateway.appkeys import DB
from tests.browser.axe import assert_accessible
from tests.browser.conftest import carry_browser_keys
from tests.conftest import Stack

pytestmark = pytest.mark.browser


async def test_the_clinician_ends_the_visit_after_confirming(stack: Stack, context: BrowserContext) -> None:
    handle = await stack.provider_handle()
    await carry_browser_keys(stack.browser, context, stack.gateway_url)
    page = await context.new_page()
    await page.goto(f"{stack.gateway_url}/provider/{handle}")
    await expect(page.locator("#presence-status")).to_have_text("live")
    await page.get_by_role("button", name="End visit").click()
    # Cancelling first: nothing ends.
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.get_by_role("button", name="End visit")).to_be_visible()
    await page.get_by_role("button", name="End visit").click()
    await assert_accessible(page)
    await page.get_by_role("button", name="Yes, end the visit").click()
    await expect(page.locator("#visit-ended")).to_have_text("This visit has ended")
    await expect(page.locator("#end-visit")).to_be_hidden()
    async with stack.gateway_app[DB].acquire() as conn:
        ends = await conn.fetch("SELECT reason FROM visit_ends")
    assert [r["reason"] for r in ends] == ["clinician"]
