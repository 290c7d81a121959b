"""The usage report page in real Chromium, as a report reader: the four charts drawn and each with its table,
no WCAG 2.1 A/AA violation, and the range, the CSV link and every table reachable by keyboard with the focus
showing."""
from __future__ import annotations

import datetime as dt

import pytest
from playwright.async_api import Browser, expect

from gateway.appkeys import DB, SEALER
from gateway.configurations import set_organisation_zone
from tests.browser.axe import assert_accessible
from tests.browser.keyboard import press_until_focused
from tests.browser.portal_pages import sign_in
from tests.portal.conftest import (  # noqa: F401 -- fixtures
    ORG, READER, Portal, extra_routes, portal, portal_settings,
)
from tests.portal.test_usage_report import settle
from tests.portal.usage_seed import ZONE, configurations, plan_visits, write_visits

pytestmark = pytest.mark.browser


async def test_the_usage_report_draws_its_charts_with_tables_by_keyboard_and_passes_axe(portal: Portal,  # noqa: F811
                                                                                        browser: Browser) -> None:
    app = portal.gateway_app
    async with app[DB].acquire() as conn:
        org_id = await conn.fetchval("SELECT id FROM organisations WHERE slug = $1", ORG)
        await set_organisation_zone(conn, org_id, ZONE, "test-operator")
        configs = await configurations(conn, app[SEALER], ORG, "usage")
        today = dt.datetime.now(dt.timezone.utc).date()
        await write_visits(conn, app[SEALER], plan_visits(configs, today - dt.timedelta(days=9), 7))
    await settle(portal)
    context = await browser.new_context(ignore_https_errors=True)  # the provider's certificate is the tests' own
    context.set_default_timeout(5_000)
    context.set_default_navigation_timeout(8_000)
    try:
        page = await context.new_page()
        await sign_in(page, portal.gateway_url, ORG, READER)
        await page.get_by_role("link", name="Usage report", exact=True).click()
        await page.wait_for_url(f"{portal.gateway_url}/portal/{ORG}/reports/usage")

        for chart in ("chart-visits", "chart-wait", "chart-duration", "chart-no-show"):
            await expect(page.locator(f"svg#{chart}")).to_be_visible()
            await expect(page.locator(f"#{chart}-table tbody tr")).to_have_count(30)  # a row per day of 30
        assert await page.locator("svg#chart-visits rect").count() == 30
        await expect(page.get_by_role("img", name="Visits per day")).to_be_visible()
        await expect(page.locator("#by-department")).to_contain_text("cardiology")
        await assert_accessible(page)

        # By keyboard alone: the period, a chosen range, the CSV, and into each scrolling table.
        await page.evaluate("() => { if (document.activeElement) document.activeElement.blur(); }")
        await press_until_focused(page, "period")
        await press_until_focused(page, "show-period", limit=1)
        await press_until_focused(page, "from", limit=1)
        await press_until_focused(page, "to", limit=1)
        await press_until_focused(page, "show-dates", limit=1)
        await press_until_focused(page, "csv", limit=1)
        for region in ("chart-visits-region", "chart-wait-region", "chart-duration-region", "chart-no-show-region",
                       "by-department-region", "by-environment-region", "by-day-region", "visits-region"):
            await press_until_focused(page, region, limit=2)
        await page.locator("#period").select_option("7")
        await page.locator("#show-period").press("Enter")
        await page.wait_for_url(f"{portal.gateway_url}/portal/{ORG}/reports/usage?period=7")
        await expect(page.locator("#chart-visits-table tbody tr")).to_have_count(7)
    finally:
        await context.close()
