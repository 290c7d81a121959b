"""The configuration portal's whole flow in real Chromium, by keyboard where a person would type: the admin adds
a configuration (checked live against the sandbox EHR), the approver signs in, signs in to the EHR on its
practitioner sign-in page and approves, a clinician launches from the EHR's schedule; then the admin changes
the client ID and the approved one keeps launching until the approver approves the change. Each portal page
passes the accessibility check."""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser.axe import assert_accessible
from tests.portal.conftest import (  # noqa: F401 -- fixtures
    ADMIN, APPROVER, EHR_CLIENT_ID, EHR_CLIENT_ID_2, EHR_PRACTITIONER, ORG, Ehr, Portal, ehr, ehr_port,
    extra_routes, portal,
)

pytestmark = pytest.mark.browser
LAUNCH_TIMEOUT_MS = 10_000


@pytest.fixture
def portal_settings(ehr_port: int) -> dict[str, Any]:
    """The sandbox EHR (on localhost) may frame the gateway, as an EHR embeds the launch."""
    return {"frame_ancestors": (f"http://localhost:{ehr_port}",)}


async def _portal_context(browser: Browser) -> BrowserContext:
    context = await browser.new_context(ignore_https_errors=True)  # the provider's certificate is the tests' own
    context.set_default_timeout(6_000)
    context.set_default_navigation_timeout(10_000)
    return context


async def _sign_in(page: Page, portal: Portal, who: Any) -> None:
    await page.goto(f"{portal.gateway_url}/portal/{ORG}/sign-in")
    await page.locator("#sign-in").click()
    await page.get_by_label("User name").fill(who.username)
    await page.get_by_label("Password").fill(who.password)
    await page.get_by_label("Password").press("Enter")
    await page.wait_for_url(f"{portal.gateway_url}/portal/{ORG}")


async def _approve(page: Page, portal: Portal, config_id: str) -> None:
    """As the approver: the configuration, the decision page, the EHR's sign-in page, approve."""
    await page.goto(f"{portal.gateway_url}/portal/{ORG}/configurations/{config_id}")
    await page.locator("#decide").click()
    await expect(page.locator("#ehr-sign-in")).to_be_visible()
    await assert_accessible(page)
    await page.locator("#ehr-sign-in").click()
    await page.get_by_label("User name").fill(EHR_PRACTITIONER[0])
    await page.get_by_label("Password").fill(EHR_PRACTITIONER[1])
    await page.get_by_label("Password").press("Enter")
    await expect(page.locator("#ehr-user")).to_contain_text("Practitioner/prac-2")
    await assert_accessible(page)
    await page.locator("#approve").click()
    await expect(page.locator("#status")).to_have_text("approved")


async def _launch_client_id(clinician: BrowserContext, ehr: Ehr) -> str:
    """A clinician's launch from the EHR's schedule; answers the client ID the gateway sent to the EHR's
    authorize, once the provider view is up."""
    page = await clinician.new_page()
    try:
        await page.goto(f"{ehr.url}/ehr?practitioner=prac-1")
        row = page.locator("#schedule li[data-appointment]").first
        async with page.expect_request(lambda r: "/oauth/authorize" in r.url, timeout=LAUNCH_TIMEOUT_MS) as sent:
            await row.get_by_role("link", name="Begin virtual visit").click()
        client_id = parse_qs(urlsplit((await sent.value).url).query)["client_id"][0]
        await expect(page.frame_locator("iframe#app").locator("#participants")).to_be_visible(
            timeout=LAUNCH_TIMEOUT_MS)
        return client_id
    finally:
        await page.close()


async def test_admin_adds_approver_proves_at_the_ehr_clinician_launches_and_a_change_waits_for_approval(
        portal: Portal, ehr: Ehr, browser: Browser, open_context: Any) -> None:  # noqa: F811
    admin_context, approver_context = await _portal_context(browser), await _portal_context(browser)
    clinician = await open_context("desktop")
    try:
        admin = await admin_context.new_page()
        await _sign_in(admin, portal, ADMIN)
        await admin.goto(f"{portal.gateway_url}/portal/{ORG}/configurations")
        await assert_accessible(admin)
        await admin.locator("#add-configuration").click()
        await assert_accessible(admin)
        await admin.get_by_label("FHIR base URL").fill(ehr.fhir_base)
        await admin.get_by_label("Client ID").fill(EHR_CLIENT_ID)
        await admin.get_by_label("Approver").select_option(APPROVER.oid)
        await admin.locator("#save").click()
        await expect(admin.locator("#status")).to_have_text("pending")
        await assert_accessible(admin)
        config_id = admin.url.rsplit("/", 1)[1]

        approver = await approver_context.new_page()
        await _sign_in(approver, portal, APPROVER)
        await _approve(approver, portal, config_id)
        assert await _launch_client_id(clinician, ehr) == EHR_CLIENT_ID

        await admin.goto(f"{portal.gateway_url}/portal/{ORG}/configurations/{config_id}/edit")
        await admin.get_by_label("Client ID").fill(EHR_CLIENT_ID_2)
        await admin.locator("#save").click()
        await expect(admin.locator("#pending-changes")).to_contain_text(EHR_CLIENT_ID_2)
        await assert_accessible(admin)
        assert await _launch_client_id(clinician, ehr) == EHR_CLIENT_ID  # the approved revision keeps launching

        await _approve(approver, portal, config_id)
        assert await _launch_client_id(clinician, ehr) == EHR_CLIENT_ID_2
        await expect(approver.locator('#history tr[data-revision="2"] .state')).to_have_text("approved")
    finally:
        await approver_context.close()
        await admin_context.close()


async def test_a_refused_form_moves_focus_to_the_error_summary_and_links_each_field(
        portal: Portal, ehr: Ehr, browser: Browser) -> None:  # noqa: F811
    context = await _portal_context(browser)
    try:
        page = await context.new_page()
        await _sign_in(page, portal, ADMIN)
        await page.goto(f"{portal.gateway_url}/portal/{ORG}/configurations/new")
        await page.get_by_label("FHIR base URL").fill(ehr.fhir_base)
        await page.get_by_label("Environment").select_option("production")
        await page.get_by_label("Approver").select_option(APPROVER.oid)
        await page.get_by_label("Client ID").fill("typed-by-me")
        await page.get_by_label("Client ID").press("Enter")
        await expect(page.locator("#error-summary")).to_be_focused()
        await expect(page.get_by_label("Client ID")).to_have_value("typed-by-me")
        await assert_accessible(page)
        await page.locator('#error-summary a[href="#fhir_base_url"]').first.click()
        await expect(page.get_by_label("FHIR base URL")).to_be_focused()
    finally:
        await context.close()
