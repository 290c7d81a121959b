"""A launch belongs to the browser that started it: its callback URL and its provider page URL open nothing in
another browser. Also: the user's own refusal at the EHR, and a provider view that could not verify the patient.
"""
from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import pytest

from gateway.appkeys import DB
from gateway.sessions import BROWSER_COOKIE
from sandbox.appkeys import OAUTH, STORE
from tests.conftest import Stack, browser_session, reason_code

PATIENT = "pat-1"


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _patient_family(stack: Stack) -> str:
    patient = stack.sandbox_app[STORE].get("Patient", PATIENT)
    assert patient is not None
    return str(patient["name"][0]["family"])


@pytest.fixture
async def other_browser(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    """A second browser: its own cookie jar, which keeps the gateway's cookies as the first one's does."""
    async with browser_session(stack.gateway_url) as browser:
        yield browser


async def _get(browser: aiohttp.ClientSession, url: str) -> tuple[int, str, aiohttp.ClientResponse]:
    async with browser.get(url, allow_redirects=False) as response:
        return response.status, await response.text(), response


async def _callback_url(stack: Stack) -> str:
    """Start a launch in stack.browser and go as far as the EHR's redirect back; that URL, not visited."""
    first = await stack.get(f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch()}")
    assert first.status == 302, await first.text()
    authorize = await stack.get(first.headers["Location"])
    assert authorize.status == 302, await authorize.text()
    return authorize.headers["Location"]


def _tokens_issued(stack: Stack) -> int:
    return len(stack.sandbox_app[OAUTH].access_tokens)


def _ehr_reads(calls: list[str]) -> list[str]:
    """Token calls and FHIR reads (discovery is public and harmless)."""
    return [c for c in calls if c.startswith("POST /oauth/token") or
            (c.startswith("GET /fhir/") and "/.well-known/" not in c and not c.endswith("/metadata"))]


async def test_the_launch_gives_the_browser_a_host_only_partitioned_cookie(stack: Stack) -> None:
    response = await stack.get(f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch()}")
    assert response.status == 302, await response.text()
    [cookie] = response.headers.getall("Set-Cookie")
    name, _, rest = cookie.partition("=")
    value, *attributes = [part.strip() for part in rest.split(";")]
    assert name.startswith("__Host-") and name.startswith(BROWSER_COOKIE) and len(value) >= 43
    assert {"Path=/", "Secure", "HttpOnly", "SameSite=None", "Partitioned"} <= set(attributes)
    assert not any(a.lower().startswith("domain") for a in attributes)
    async with stack.gateway_app[DB].acquire() as conn:
        # Only its hash is kept, with the state.
        kept = await conn.fetchval("SELECT browser_hash FROM launch_states")
        text = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM launch_states t")
    assert kept is not None and value not in text


async def test_a_browser_keeps_one_key_for_all_its_launches(stack: Stack) -> None:
    await stack.provider_handle()
    again = await stack.get(f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch()}")
    assert again.status == 302
    assert len(stack.browser.cookie_jar) == 1  # the second launch reused the first one's key
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(DISTINCT browser_hash) FROM launch_states") == 1


async def test_a_callback_url_opened_in_another_browser_offers_a_new_window_and_reads_nothing(
        stack: Stack, other_browser: aiohttp.ClientSession, sandbox_calls: list[str]) -> None:
    url = await _callback_url(stack)
    tokens, before = _tokens_issued(stack), len(sandbox_calls)
    status, body, response = await _get(other_browser, url)
    assert status == 400, body
    assert reason_code(body) == "no_browser_cookie"
    assert _tokens_issued(stack) == tokens and _ehr_reads(sandbox_calls[before:]) == []
    assert _patient_family(stack) not in body and "Location" not in response.headers
    # The way on: the launch again, from the start, in a window of its own.
    link = re.search(r'<a class="button" id="continue-new-window" href="([^"]+)" target="_blank"', body)
    assert link is not None, body
    restart = link.group(1).replace("&amp;", "&")
    assert urlsplit(restart).path == "/launch" and _query(restart)["iss"] == stack.fhir_base
    # The other browser's try did not spend the state: the browser that started the launch finishes it.
    first = await stack.get(url)
    assert first.status == 303 and first.headers["Location"].startswith("/provider/"), await first.text()


async def test_continuing_in_a_new_window_runs_the_launch_there(
        stack: Stack, other_browser: aiohttp.ClientSession) -> None:
    # A window that keeps no cookie at all (the "other browser" here only in that it sent none back).
    url = await _callback_url(stack)
    _, body, _ = await _get(other_browser, url)
    link = re.search(r'id="continue-new-window" href="([^"]+)"', body)
    assert link is not None, body
    current = urljoin(stack.gateway_url, link.group(1).replace("&amp;", "&"))
    for _ in range(6):
        status, body, response = await _get(other_browser, current)
        if status not in (302, 303):
            break
        current = urljoin(current, response.headers["Location"])
    assert status == 200, body
    assert urlsplit(current).path.startswith("/provider/") and _patient_family(stack) in body


async def test_a_callback_url_is_refused_in_a_browser_holding_a_key_of_its_own(
        stack: Stack, other_browser: aiohttp.ClientSession, sandbox_calls: list[str]) -> None:
    # The other browser has launched before, so it brings a key: not this launch's.
    mine = await _get(other_browser, f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch()}")
    assert mine[0] == 302
    url = await _callback_url(stack)
    tokens, before = _tokens_issued(stack), len(sandbox_calls)
    status, body, _ = await _get(other_browser, url)
    assert status == 400 and reason_code(body) == "other_browser", body
    assert _tokens_issued(stack) == tokens and _ehr_reads(sandbox_calls[before:]) == []
    assert _patient_family(stack) not in body
    assert (await stack.get(url)).status == 303  # still the first browser's to finish


async def test_a_state_from_another_browsers_launch_is_refused(stack: Stack,
                                                               other_browser: aiohttp.ClientSession) -> None:
    # The other browser starts its own launch and pairs its own key with this browser's state and code.
    await _get(other_browser, f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch()}")
    params = _query(await _callback_url(stack))
    status, body, _ = await _get(other_browser, f"{stack.gateway_url}/launch/callback?code={params['code']}"
                                                f"&state={params['state']}&iss={params['iss']}")
    assert status == 400 and reason_code(body) == "other_browser"


async def test_a_provider_page_url_opens_nothing_in_another_browser(
        stack: Stack, other_browser: aiohttp.ClientSession, sandbox_calls: list[str]) -> None:
    handle = await stack.provider_handle()
    before = len(sandbox_calls)
    base = f"{stack.gateway_url}/provider/{handle}"
    # Once with no key at all, once with a key of its own.
    for _ in range(2):
        status, body, _ = await _get(other_browser, base)
        assert status == 401 and reason_code(body) == "session_expired", body
        assert _patient_family(stack) not in body
        status, body, _ = await _get(other_browser, f"{base}/room")
        assert status == 401, body
        async with other_browser.post(f"{base}/renew", headers={"Origin": stack.gateway_url,
                                                                "Accept": "application/json"}) as renew:
            assert renew.status == 401 and "handle" not in await renew.json()
        async with other_browser.post(f"{base}/invite", data={"channel": "copy", "role": "patient"},
                                      headers={"Origin": stack.gateway_url,
                                               "Accept": "application/json"}) as invite:
            assert invite.status == 401
        ws = await other_browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
        try:
            await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
            msg = await ws.receive(timeout=10)
            assert msg.type != aiohttp.WSMsgType.TEXT or json.loads(msg.data)["type"] != "auth_ok", msg
        finally:
            await ws.close()
        await _get(other_browser, f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch()}")
    assert _ehr_reads(sandbox_calls[before:]) == []
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM provider_handles") == 1  # no renewal was issued
    # In its own browser the same URL works, and reads the patient (which the recorder sees).
    assert (await stack.get(base)).status == 200
    assert f"GET /fhir/Patient/{PATIENT}" in _ehr_reads(sandbox_calls[before:])


async def test_declining_at_the_ehr_is_a_page_saying_so(stack: Stack, sandbox_calls: list[str]) -> None:
    params = _query(await _callback_url(stack))
    before = len(sandbox_calls)
    response = await stack.get(f"{stack.gateway_url}/launch/callback?error=access_denied"
                               f"&error_description=The+user+declined&state={params['state']}")
    body = await response.text()
    assert 400 <= response.status < 500, body
    assert reason_code(body) == "access_denied" and "declined at the EHR" in body
    assert _ehr_reads(sandbox_calls[before:]) == []


async def test_other_errors_from_the_ehr_stay_its_faults(stack: Stack) -> None:
    params = _query(await _callback_url(stack))
    response = await stack.get(f"{stack.gateway_url}/launch/callback?error=server_error&state={params['state']}")
    assert response.status == 502 and reason_code(await response.text()) == "authorize_refused"


async def test_when_fhir_is_down_at_launch_the_provider_view_says_the_patient_is_unverified(
        stack: Stack, sandbox_faults) -> None:  # type: ignore[no-untyped-def]
    sandbox_faults.fhir_status = 503
    response, _ = await stack.launch()
    body = await response.text()
    assert response.status == 200, body
    alert = re.search(r'<div class="alert" id="patient-unverified" role="alert">(.*?)</div>', body, re.S)
    assert alert is not None, body
    assert "could not be verified" in alert.group(1) and "Confirm the patient's identity in the EHR" in alert.group(1)
    # It comes before anything else on the page.
    assert body.index('id="patient-unverified"') < body.index('id="patient-banner"')


async def test_a_provider_view_whose_patient_was_read_has_no_unverified_alert(stack: Stack) -> None:
    response, _ = await stack.launch()
    body = await response.text()
    assert response.status == 200 and 'id="patient-unverified"' not in body


async def test_a_portal_launch_callback_in_another_browser_opens_no_lobby_and_offers_a_new_window(
        stack: Stack, other_browser: aiohttp.ClientSession, sandbox_calls: list[str]) -> None:
    from sandbox import create_launch

    launch = create_launch(stack.sandbox_app, practitioner_id=None, patient_id=PATIENT, encounter_id="enc-1",
                           need_patient_banner=False)
    first = await stack.get(f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={launch}")
    authorize = await stack.get(first.headers["Location"])
    callback = authorize.headers["Location"]
    before = len(sandbox_calls)
    status, body, response = await _get(other_browser, callback)
    assert status == 400 and reason_code(body) == "no_browser_cookie", body
    link = re.search(r'id="continue-new-window" href="([^"]+)"', body)
    assert link is not None and urlsplit(link.group(1)).path == "/launch/patient"
    assert _ehr_reads(sandbox_calls[before:]) == [] and "Set-Cookie" not in response.headers
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM participant_sessions") == 0
    # The patient's own browser goes on to the lobby with the same answer.
    mine = await stack.get(callback)
    assert mine.status == 303 and mine.headers["Location"] == "/lobby", await mine.text()
