"""The provider launch in a real browser, the way a clinician does it: from the sandbox EHR's schedule,
"Begin virtual visit" opens the EHR's visit page, which runs the gateway's launch inside an iframe.

The EHR page is on localhost and the gateway on 127.0.0.1, two different sites, and the browser blocks
third-party cookies (test_browser_fixtures.py proves it), so these tests also show that the launch needs no
cookie in the iframe but its partitioned (CHIPS) browser key, which the browser keeps there.
"""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Cookie, Error as PlaywrightError, Frame, Page, Route, expect

from gateway.sessions import BROWSER_COOKIE
from sandbox.appkeys import STORE
from tests.browser.axe import assert_accessible
from tests.conftest import Stack

pytestmark = pytest.mark.browser

PRACTITIONER = "prac-1"
LAUNCH_TIMEOUT_MS = 8_000  # /launch -> /oauth/authorize -> /launch/callback -> /provider/..., FHIR reads included


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _patient_name(stack: Stack, appointment_id: str) -> str:
    """The name the EHR holds for the patient of an appointment, as the provider view should show it."""
    store = stack.sandbox_app[STORE]
    appointment = store.get("Appointment", appointment_id)
    assert appointment is not None, appointment_id
    reference = next(p["actor"]["reference"] for p in appointment["participant"]
                     if (p.get("actor") or {}).get("reference", "").startswith("Patient/"))
    patient = store.get("Patient", reference.removeprefix("Patient/"))
    assert patient is not None, reference
    name = patient["name"][0]
    return str(name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip())


async def _schedule(page: Page, stack: Stack) -> list[str]:
    """Open the clinician's schedule in the EHR and answer its appointment ids, in the order shown."""
    await page.goto(f"{stack.sandbox_url}/ehr?practitioner={PRACTITIONER}")
    rows = page.locator("#schedule li[data-appointment]")
    await expect(rows.first).to_be_visible()
    return [a for a in await rows.evaluate_all("rows => rows.map(r => r.dataset.appointment)") if a]


async def _begin_visit(page: Page, appointment_id: str) -> None:
    """Click "Begin virtual visit" on an appointment's row and wait for the EHR's visit page."""
    row = page.locator(f'#schedule li[data-appointment="{appointment_id}"]')
    await row.get_by_role("link", name="Begin virtual visit").click()
    await page.wait_for_url(f"**/ehr/visit/{appointment_id}?*", wait_until="domcontentloaded")


async def _app_frame(page: Page) -> Frame:
    """The frame of the EHR's embedded app (iframe#app)."""
    handle = await page.locator("iframe#app").element_handle()
    frame = await handle.content_frame()
    assert frame is not None
    return frame


async def _expect_provider_view(page: Page, stack: Stack, patient_name: str) -> str:
    """Wait for the provider view in the EHR's iframe showing this patient; answer the frame's URL."""
    app = page.frame_locator("iframe#app")
    await expect(app.locator("#patient-name")).to_have_text(patient_name, timeout=LAUNCH_TIMEOUT_MS)
    await expect(app.locator("#patient-banner")).to_be_visible()
    await expect(app.locator("#appointment")).to_be_visible()
    await expect(app.locator("#participants")).to_be_visible()
    url = (await _app_frame(page)).url
    assert _origin(url) == stack.gateway_url and urlsplit(url).path.startswith("/provider/"), url
    # The launch stayed inside the iframe: the EHR's page is still on top.
    assert _origin(page.url) == stack.sandbox_url and urlsplit(page.url).path.startswith("/ehr/visit/")
    return url


def _site(url: str) -> str:
    """The site a URL belongs to, as cookie partitions name it (scheme and host, no port)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"


def _only_partitioned_keys(cookies: list[Cookie], stack: Stack) -> bool:
    """Whether the gateway's cookies are all browser keys partitioned under the EHR's site, and there is one."""
    return bool(cookies) and all(c["name"].startswith(BROWSER_COOKIE) and c["secure"] and c["sameSite"] == "None"
                                 and c.get("partitionKey") == _site(stack.sandbox_url) for c in cookies)


async def _keep_partitioned(context: BrowserContext, set_cookie: str, partition: str) -> None:
    """Store a gateway Set-Cookie in the EHR site's partition, as the browser does for an answer it got itself.

    An answer that route.fetch got and route.fulfill hands on does not leave a partitioned cookie (Playwright
    keeps the Set-Cookie in its own, unpartitioned, jar, where a cross-site iframe cannot use it), so a held
    answer's browser key is put in place here instead.
    """
    name, _, rest = set_cookie.partition("=")
    value = rest.split(";", 1)[0]
    await context.add_cookies([{"name": name, "value": value, "domain": "127.0.0.1", "path": "/", "secure": True,
                                "httpOnly": True, "sameSite": "None", "partitionKey": partition}])


async def test_begin_virtual_visit_in_ehr_lands_on_provider_view_in_iframe(
        stack: Stack, context: BrowserContext, tmp_path: Path) -> None:
    page = await context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # The sandbox EHR has no favicon; the browser's own request for it is not part of the launch.
        if message.type == "error" and urlsplit(message.location.get("url", "")).path != "/favicon.ico":
            problems.append(f"console error: {message.text} at {message.location.get('url')}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    first = (await _schedule(page, stack))[0]
    await _begin_visit(page, first)
    await _expect_provider_view(page, stack, _patient_name(stack, first))
    await assert_accessible(await _app_frame(page))

    # Nothing was refused on the way (a CSP or framing refusal shows up as a console error).
    assert problems == []
    await page.screenshot(path=str(tmp_path / "provider-view-in-ehr.png"))
    # The launch needed no cookie from the gateway but its partitioned browser key, which the iframe keeps
    # with third-party cookies blocked (test_launch_bound_to_browser.py shows what it is for).
    assert _only_partitioned_keys(await context.cookies(stack.gateway_url), stack)


async def test_two_tabs_launching_at_once_each_show_their_own_patient(
        stack: Stack, context: BrowserContext) -> None:
    tab_a, tab_b = await context.new_page(), await context.new_page()
    appointments = await _schedule(tab_a, stack)
    first = appointments[0]
    name_a = _patient_name(stack, first)
    second = next(a for a in appointments[1:] if _patient_name(stack, a) != name_a)
    name_b = _patient_name(stack, second)

    # Tab A's launch is held after the gateway's /launch answered (its state issued, not yet used) and
    # before the browser sees that answer. Playwright cannot hold a redirect hop, so the iframe's first
    # request is sent on by the route and its 302 kept back until tab B is done.
    held, release = asyncio.Event(), asyncio.Event()

    async def hold_launch(route: Route) -> None:
        try:
            answer = await route.fetch(max_redirects=0, timeout=LAUNCH_TIMEOUT_MS)
            held.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(release.wait(), timeout=10)
            headers = dict(answer.headers)
            for set_cookie in headers.pop("set-cookie", "").split("\n"):
                if set_cookie:
                    await _keep_partitioned(context, set_cookie, _site(stack.sandbox_url))
            await route.fulfill(status=answer.status, headers=headers, body=await answer.body())
        except PlaywrightError:  # the tab is gone if the test already failed
            pass

    await tab_a.route(lambda url: urlsplit(url).path == "/launch", hold_launch)
    try:
        await _begin_visit(tab_a, first)
        await asyncio.wait_for(held.wait(), timeout=LAUNCH_TIMEOUT_MS / 1000)

        # Tab B starts later and finishes first.
        await _schedule(tab_b, stack)
        await _begin_visit(tab_b, second)
        url_b = await _expect_provider_view(tab_b, stack, name_b)
        # Meanwhile tab A's iframe has not got anywhere: its launch is still held.
        assert not urlsplit((await _app_frame(tab_a)).url).path.startswith("/provider/")
    finally:
        release.set()

    url_a = await _expect_provider_view(tab_a, stack, name_a)
    assert url_a != url_b
    # Tab B still shows its own patient, also after a reload of its provider view.
    await (await _app_frame(tab_b)).goto(url_b)
    await _expect_provider_view(tab_b, stack, name_b)
    # Each launch began in a browser without a key, so each made its own, and neither replaced the other.
    # (route.fetch keeps an unpartitioned copy of the held answer's cookie, which the iframe never sends.)
    cookies = [c for c in await context.cookies(stack.gateway_url) if c.get("partitionKey")]
    assert len({c["name"] for c in cookies}) == 2 and _only_partitioned_keys(cookies, stack), cookies
