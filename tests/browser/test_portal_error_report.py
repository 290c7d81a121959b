"""The error report in real Chromium on a phone: no WCAG 2.1 A/AA violation, every stop reachable by Tab with
its focus showing (the wide tables scroll sideways as focusable regions), the period and a chosen range of
days chosen by keyboard, and the time zone of the days named."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, expect

from gateway.appkeys import DB, SETTINGS
from gateway.near_miss import NearMiss
from launch import store as launch_store
from tests.browser.axe import assert_accessible
from tests.browser.conftest import ACTION_TIMEOUT_MS, NAVIGATION_TIMEOUT_MS, PROFILES
from tests.browser.keyboard import tab_through
from tests.browser.portal_pages import sign_in
from tests.portal.conftest import (  # noqa: F401 -- fixtures
    ADMIN, ORG, Portal, extra_routes, portal, portal_settings,
)
from tests.portal.test_portal_admin import approved

pytestmark = pytest.mark.browser


async def test_the_error_report_works_on_a_phone_by_keyboard_and_passes_axe(portal: Portal,  # noqa: F811
                                                                           browser: Browser) -> None:
    config_id = await approved(portal, "epic")
    zone = portal.gateway_app[SETTINGS].time_zone
    async with portal.gateway_app[DB].acquire() as conn:
        await launch_store.count_launch_refusal(conn, config_id, "token_error", zone)
        await launch_store.count_launch_refusal(conn, config_id, "iss_near_miss", zone)
        await launch_store.note_near_miss(conn, NearMiss(config_id, "environment",
                                                         "https://ehr-tst.example.org/fhir/R4"), zone)
        await conn.execute("INSERT INTO writeback_failures (configuration_id, day, reason, outcome, bucket, count) "
                           "VALUES ($1, (now() AT TIME ZONE $2)::date, 'fhir_404', 'dead', 0, 2)", config_id, zone)
    context = await browser.new_context(ignore_https_errors=True, **PROFILES["phone"])
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    try:
        page = await context.new_page()
        await sign_in(page, portal.gateway_url, ORG, ADMIN)

        await page.goto(f"{portal.gateway_url}/portal/{ORG}/errors")
        await expect(page.locator("#launch-reasons")).to_contain_text("token_error")
        await expect(page.locator("#near-misses")).to_contain_text("https://ehr-tst.example.org/fhir/R4")
        await expect(page.locator("#writeback-reasons")).to_contain_text("fhir_404")
        await assert_accessible(page)
        # Nothing wider than the phone but the tables' own scrolling regions.
        assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
        stops = await tab_through(page)
        assert "period-7" in stops and sum(s.startswith("div ") for s in stops) == 5, stops
        assert {"range-from", "range-to", "range-show"} <= set(stops), stops
        await expect(page.locator("#time-zone")).to_contain_text(zone)
        await page.locator("#period-7").focus()
        await page.keyboard.press("Enter")
        await page.wait_for_url(f"{portal.gateway_url}/portal/{ORG}/errors?days=7")
        await expect(page.locator("#period-7")).to_have_attribute("aria-current", "page")
        # A chosen range by keyboard: the labelled date fields, then the button.
        today = dt.datetime.now(ZoneInfo(zone)).date()
        await page.get_by_label("From (first day)").fill((today - dt.timedelta(days=1)).isoformat())
        await page.get_by_label("To (last day", exact=False).fill(today.isoformat())
        await page.locator("#range-show").focus()
        await page.keyboard.press("Enter")
        await page.wait_for_url(f"{portal.gateway_url}/portal/{ORG}/errors?from=*")
        await expect(page.locator("#launch-reasons")).to_contain_text("token_error")
        await expect(page.locator("#period-7")).not_to_have_attribute("aria-current", "page")
        # A range that is not one: the default period, and why, announced.
        await page.get_by_label("From (first day)").fill(today.isoformat())
        await page.get_by_label("To (last day", exact=False).fill((today - dt.timedelta(days=1)).isoformat())
        await page.get_by_label("To (last day", exact=False).press("Enter")
        await expect(page.locator("#range-refused")).to_contain_text("must not be after")
        await expect(page.locator("#period-30")).to_have_attribute("aria-current", "page")
        await assert_accessible(page)
    finally:
        await context.close()
