"""The error report end to end: real launches against the sandbox EHR that fail in different ways (at /launch
and after the EHR's sign-in), unknown `iss` values that nearly match a configuration and one that does not;
the admins' page counts each reason per configuration and day as the launches showed it, names the near
misses, and says what to do; the public page of a near miss is the page of any unknown `iss`; no launch
parameter, token or patient value is kept."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections import Counter
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import pytest

from gateway.appkeys import DB, EHR as EHR_CLIENT, SEALER
from gateway.configurations import NewConfiguration, add_approved, organisation_id, propose_new
from gateway.reasons import launch_reason
from launch import store
from sandbox import create_launch
from sandbox.appkeys import FAULTS
from tests.conftest import database_text, reason_code

from .conftest import ADMIN, APPROVER, EHR_CLIENT_ID, ORG, Ehr, Portal

_ROW = re.compile(r'<tr data-configuration="(\d+)" data-reason="([a-z0-9_]+)" data-count="(\d+)">')
_DAY_ROW = re.compile(r'<tr data-day="([0-9-]+)" data-configuration="(\d+)" data-reason="([a-z0-9_]+)" '
                      r'data-count="(\d+)">')
_NEAR = re.compile(r'<tr data-configuration="(\d+)" data-difference="([a-z]+)">\s*<td>.*?</td>'
                   r'<td class="value iss">([^<]*)</td>', re.S)
_NONCE = re.compile(r'nonce="[^"]*"')
CANARY_NAME = "Zephyrinacanary"
CANARY_MRN = "9931077310"


async def _follow(portal: Portal, url: str) -> aiohttp.ClientResponse:
    """A browser following a launch hop by hop until the gateway answers something else than a redirect, or
    sends it to the provider view."""
    response = await portal.get(url)
    for _ in range(6):
        if response.status not in (302, 303) or "/provider/" in response.headers["Location"]:
            break
        url = urljoin(url, response.headers["Location"])
        response = await portal.get(url)
    return response


def _launch_url(portal: Portal, iss: str, launch: str) -> str:
    return f"{portal.gateway_url}/launch?iss={quote(iss, safe='')}&launch={quote(launch, safe='')}"


async def _configurations(portal: Portal, ehr: Ehr) -> tuple[int, int]:
    """The organisation's approved configuration of the sandbox EHR, and a pending one on the same server."""
    async with portal.gateway_app[DB].acquire() as conn:
        org_id = await organisation_id(conn, ORG)
        approved = await add_approved(conn, portal.gateway_app[SEALER], NewConfiguration(
            fhir_base_url=ehr.fhir_base, environment="test", client_id=EHR_CLIENT_ID, client_auth="private_key_jwt"),
            "test-operator", organisation_id=org_id)
        pending, _ = await propose_new(conn, portal.gateway_app[SEALER], NewConfiguration(
            fhir_base_url=f"{ehr.url}/pending/fhir", environment="production", client_id=EHR_CLIENT_ID,
            client_auth="private_key_jwt", approver=APPROVER.oid), "test-operator", organisation_id=org_id)
    return approved, pending


def _new_launch(ehr: Ehr) -> str:
    return create_launch(ehr.app, practitioner_id="prac-1", patient_id="pat-1", encounter_id="enc-1")


async def test_failed_launches_are_counted_per_reason_and_configuration_with_what_to_do(portal: Portal,
                                                                                       ehr: Ehr) -> None:
    approved, pending = await _configurations(portal, ehr)
    faults = ehr.app[FAULTS]
    seen: Counter[tuple[int, str]] = Counter()

    async def launch(iss: str, launch_id: str, config_id: int) -> str | None:
        r = await _follow(portal, _launch_url(portal, iss, launch_id))
        if r.status in (302, 303):
            return None  # opened: not a failure
        reason = reason_code(await r.text())
        assert reason is not None, await r.text()
        seen[(config_id, reason)] += 1
        return reason

    # Refused at /launch, before any sign-in: the EHR's discovery fails (nothing cached yet).
    portal.gateway_app[EHR_CLIENT]._discovery.clear()
    faults.update({"discovery_without_s256": True})
    assert await launch(ehr.fhir_base, _new_launch(ehr), approved) not in (None, "unknown_iss")
    faults.update({"discovery_without_s256": False})
    portal.gateway_app[EHR_CLIENT]._discovery.clear()
    # A launch that works is not counted.
    assert await launch(ehr.fhir_base, _new_launch(ehr), approved) is None
    # The EHR refuses the authorization (a launch it does not know), twice.
    for _ in range(2):
        assert await launch(ehr.fhir_base, "no-such-launch", approved) == "authorize_refused"
    # The EHR's answer names another issuer.
    faults.update({"callback_iss": "http://localhost:1/fhir"})
    assert await launch(ehr.fhir_base, _new_launch(ehr), approved) == "iss_mismatch"
    faults.update({"callback_iss": None})
    # The token endpoint refuses the code.
    faults.update({"token_error": "invalid_grant"})
    token_reason = await launch(ehr.fhir_base, _new_launch(ehr), approved)
    assert token_reason is not None and launch_reason(token_reason).codes == launch_reason("token_error").codes
    faults.update({"token_error": None})
    # The sign-in took too long: the state expired before the EHR's answer came back.
    first = await portal.get(_launch_url(portal, ehr.fhir_base, _new_launch(ehr)))
    assert first.status == 302, await first.text()
    await portal.sql("UPDATE launch_states SET expires_at = now() - interval '1 second'")
    answer = await portal.get(first.headers["Location"])
    expired = await portal.get(answer.headers["Location"])
    assert reason_code(await expired.text()) == "expired_state"
    seen[(approved, "expired_state")] += 1
    # The pending configuration's launches are refused with their own reason.
    assert await launch(f"{ehr.url}/pending/fhir", "launch-x", pending) == "configuration_pending"

    await _as_admin(portal)
    page = await portal.get(f"/portal/{ORG}/errors?days=7")
    assert page.status == 200, await page.text()
    body = await page.text()
    reasons_table = body.split('id="launch-reasons"', 1)[1].split("</table>", 1)[0]
    shown = {(int(c), r): int(n) for c, r, n in _ROW.findall(reasons_table)}
    assert shown == dict(seen)
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    days_table = body.split('id="launch-days"', 1)[1].split("</table>", 1)[0]
    by_day = {(d, int(c), r): int(n) for d, c, r, n in _DAY_ROW.findall(days_table)}
    assert by_day == {(today, c, r): n for (c, r), n in seen.items()}
    # Each reason with what happened and what to do, as docs/errors.md says.
    for _config, reason in seen:
        assert launch_reason(reason).what_to_do_text in body.replace("&#39;", "'")
    assert 'aria-current="page">Last 7 days' in body and 'aria-current="page">Errors</a>' in body


async def test_an_unknown_iss_near_a_configuration_is_named_to_admins_only(portal: Portal, ehr: Ehr) -> None:
    approved, _pending = await _configurations(portal, ehr)
    port = urlsplit(ehr.url).port
    near = {
        "suffix": f"{ehr.fhir_base}/R4",
        "path": f"{ehr.url}/api/FHIR/R4",
        "environment": f"http://localhost-tst:{port}/fhir",
    }
    answers = {}
    for difference, iss in near.items():
        r = await portal.get(_launch_url(portal, iss, "launch-1"))
        assert r.status == 403 and reason_code(await r.text()) == "unknown_iss", await r.text()
        answers[difference] = await r.text()
    far = await portal.get(_launch_url(portal, "https://elsewhere.example.org/fhir", "launch-1"))
    assert far.status == 403 and reason_code(await far.text()) == "unknown_iss"
    # The person at the EHR learns nothing of what is configured: the same page as for any unknown URL.
    for body in answers.values():
        assert _NONCE.sub("", body) == _NONCE.sub("", await far.text())
        assert ehr.url not in body and "localhost" not in body and "near" not in body.lower()

    counted = await portal.sql("SELECT configuration_id, reason, sum(count)::int AS n FROM launch_refusals "
                               "GROUP BY configuration_id, reason")
    assert {(r["configuration_id"], r["reason"]): r["n"] for r in counted} == {
        (approved, "iss_near_miss"): 3, (None, "unknown_iss"): 1}

    await _as_admin(portal)
    body = await (await portal.get(f"/portal/{ORG}/errors")).text()
    found = {(int(c), d): iss for c, d, iss in _NEAR.findall(body)}
    assert found == {(approved, d): iss for d, iss in near.items()}
    assert "elsewhere.example.org" not in body
    assert "another environment of the same ehr" in body.lower()


async def test_near_misses_keep_no_query_and_no_personal_looking_path(portal: Portal, ehr: Ehr,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    approved, _pending = await _configurations(portal, ehr)
    hostile = [f"{ehr.fhir_base}?patient={CANARY_NAME}&launch=secret-launch-value&access_token=tok-canary",
               f"{ehr.fhir_base}/Patient/{CANARY_NAME}",
               f"{ehr.fhir_base}/x/{CANARY_MRN}",
               f"{ehr.fhir_base}#{CANARY_NAME}"]
    for iss in hostile:
        r = await portal.get(_launch_url(portal, iss, "secret-launch-value"))
        assert r.status == 403 and reason_code(await r.text()) == "unknown_iss"
    kept = sorted(r["iss"] for r in await portal.sql("SELECT iss FROM launch_near_misses"))
    assert kept == sorted([f"{ehr.fhir_base}?…", f"{ehr.fhir_base}/Patient/…", f"{ehr.fhir_base}/x/…"])
    async with portal.gateway_app[DB].acquire() as conn:
        _tables, text = await database_text(conn)
    for canary in (CANARY_NAME, CANARY_MRN, "secret-launch-value", "tok-canary"):
        assert canary not in text and canary not in caplog.text
    assert (await portal.sql("SELECT sum(count)::int AS n FROM launch_refusals WHERE configuration_id = $1",
                             approved))[0]["n"] == 4


async def test_near_miss_urls_kept_per_configuration_and_day_are_capped(portal: Portal, ehr: Ehr) -> None:
    approved, _pending = await _configurations(portal, ehr)
    made_up = store.NEAR_MISSES_PER_DAY + 5
    for n in range(made_up):
        r = await portal.get(_launch_url(portal, f"{ehr.url}/made-up-{n}/fhir", "launch-1"))
        assert r.status == 403
    assert (await portal.sql("SELECT count(*)::int AS n FROM launch_near_misses"))[0]["n"] == \
        store.NEAR_MISSES_PER_DAY
    assert (await portal.sql("SELECT sum(count)::int AS n FROM launch_refusals WHERE configuration_id = $1 AND "
                             "reason = 'iss_near_miss'", approved))[0]["n"] == made_up


async def test_connections_counting_the_same_failure_at_once_do_not_wait_for_each_other(portal: Portal,
                                                                                      ehr: Ehr) -> None:
    approved, _pending = await _configurations(portal, ehr)
    pool = portal.gateway_app[DB]
    held = [await pool.acquire() for _ in range(3)]
    try:
        buckets = {}
        for conn in held:
            buckets.setdefault(await conn.fetchval("SELECT pg_backend_pid() % 64"), conn)
        assert len(buckets) >= 2, "three connections of one pool share a bucket"
        first, second = list(buckets.values())[:2]
        async with first.transaction():
            await store.count_launch_refusal(first, approved, "token_error", "UTC")
            # The first transaction still holds its row: a second counter on that row would wait for it.
            async with second.transaction():
                await second.execute("SET LOCAL lock_timeout = '2s'")
                await asyncio.wait_for(store.count_launch_refusal(second, approved, "token_error", "UTC"), 10)
    finally:
        for conn in held:
            await pool.release(conn)
    rows = await portal.sql("SELECT bucket, count FROM launch_refusals WHERE configuration_id = $1", approved)
    assert len(rows) == 2 and sum(r["count"] for r in rows) == 2


async def _as_admin(portal: Portal) -> None:
    portal.browser.cookie_jar.clear()
    assert (await portal.sign_in(ADMIN)).status == 303
