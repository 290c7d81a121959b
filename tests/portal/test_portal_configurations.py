"""The portal's configurations end to end over HTTP: an admin adds one (pending), the named approver signs in
afresh, signs in to the sandbox EHR (its practitioner password page) and approves, and launches go; a change
is a pending revision while the approved values keep launching; rejection and retirement refuse launches
with their own page and no request to the EHR; a wrong EHR password proves nothing."""
from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from config_portal.approval import practitioner_reference
from config_portal.errors import EhrSignInRefused
from gateway.appkeys import DB, EHR as EHR_CLIENT, SEALER
from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved, organisation_id
from tests.conftest import reason_code

from .conftest import (
    ADMIN, APPROVER, EHR_CLIENT_ID, EHR_PRACTITIONER, GENERIC_ORG, ORG, READER, Ehr, Portal, grant, query_of,
)

_TX = re.compile(r'name="tx" value="([^"]+)"')


def _form(at: Ehr, **changes: str) -> dict[str, str]:
    return {"fhir_base_url": at.fhir_base, "environment": "test", "ehr": "epic", "client_id": EHR_CLIENT_ID,
            "client_auth": "private_key_jwt", "client_secret": "", "scopes": DEFAULT_SCOPES,
            "meeting_provider": "builtin", "writeback_strategy": "none", "approver": APPROVER.oid, **changes}


async def _as(portal: Portal, who: Any) -> None:
    """Sign in as who, in a browser that forgot everyone before (the provider's single sign-on included)."""
    portal.browser.cookie_jar.clear()
    assert (await portal.sign_in(who)).status == 303


async def _post(portal: Portal, path: str, data: dict[str, str]) -> aiohttp.ClientResponse:
    r = await portal.browser.post(portal.gateway_url + path, data=data, allow_redirects=False,
                                  headers={"Origin": portal.gateway_url})
    await r.read()
    return r


async def _add(portal: Portal, at: Ehr, **changes: str) -> int:
    await _as(portal, ADMIN)
    r = await _post(portal, f"/portal/{ORG}/configurations/new", _form(at, **changes))
    assert r.status == 303, await r.text()
    return int(r.headers["Location"].rsplit("/", 1)[1])


async def _pending_revision(portal: Portal, config_id: int) -> int:
    rows = await portal.sql("SELECT id FROM configuration_revisions WHERE configuration_id = $1 AND state = "
                            "'pending'", config_id)
    assert len(rows) == 1
    return int(rows[0]["id"])


async def _ehr_sign_in(portal: Portal, ehr: Ehr, revision_id: int,
                       password: str = EHR_PRACTITIONER[1]) -> aiohttp.ClientResponse:
    """The approver's EHR sign-in: start, the EHR's sign-in page, the password; answers the EHR's answer to the
    password (a redirect to the portal when it took it, followed once)."""
    start = await portal.get(f"/portal/{ORG}/revisions/{revision_id}/ehr-sign-in")
    assert start.status == 302, await start.text()
    authorize = start.headers["Location"]
    assert authorize.startswith(f"{ehr.url}/oauth/authorize?")
    params = query_of(authorize)
    assert params["scope"] == "openid fhirUser" and params["code_challenge_method"] == "S256"
    assert "launch" not in params and params["aud"] == ehr.fhir_base
    page = await portal.get(authorize)
    assert page.status == 200, await page.text()
    tx = _TX.search(await page.text())
    assert tx
    answer = await portal.browser.post(f"{ehr.url}/oauth/signin", allow_redirects=False, data={
        "tx": tx.group(1), "username": EHR_PRACTITIONER[0], "password": password})
    await answer.read()
    if answer.status != 302:
        return answer
    assert answer.headers["Location"].startswith(f"{portal.gateway_url}/portal/ehr-callback?")
    return await portal.get(answer.headers["Location"])


async def _approve(portal: Portal, ehr: Ehr, config_id: int) -> None:
    revision_id = await _pending_revision(portal, config_id)
    await _as(portal, APPROVER)
    page = await portal.get(f"/portal/{ORG}/revisions/{revision_id}")
    assert page.status == 200, await page.text()
    back = await _ehr_sign_in(portal, ehr, revision_id)
    assert back.status == 303, await back.text()
    r = await _post(portal, f"/portal/{ORG}/revisions/{revision_id}/approve", {"reason": ""})
    assert r.status == 303, await r.text()


async def _launch(portal: Portal, ehr: Ehr) -> aiohttp.ClientResponse:
    return await portal.get(f"/launch?iss={quote(ehr.fhir_base, safe='')}&launch=launch-1")


async def _status(portal: Portal, config_id: int) -> str:
    return str((await portal.sql("SELECT status FROM configurations WHERE id = $1", config_id))[0]["status"])


async def test_a_new_configuration_is_pending_and_its_launches_get_their_own_page_without_asking_the_ehr(
        portal: Portal, ehr: Ehr, caplog: pytest.LogCaptureFixture) -> None:
    config_id = await _add(portal, ehr)
    assert await _status(portal, config_id) == "pending"
    portal.gateway_app[EHR_CLIENT]._discovery.clear()  # a discovery now would have to reach the EHR
    with caplog.at_level(logging.INFO, logger="sandbox.access"):
        caplog.clear()
        r = await _launch(portal, ehr)
        assert r.status == 403, await r.text()
        assert reason_code(await r.text()) == "configuration_pending"
        assert "not approved yet" in await r.text()
        assert not [rec for rec in caplog.records if rec.name == "sandbox.access"]
    assert await portal.sql("SELECT * FROM launch_states") == []
    counted = await portal.sql("SELECT configuration_id, reason, sum(count)::int FROM launch_refusals "
                                 "GROUP BY configuration_id, reason")
    assert [tuple(r) for r in counted] == [(config_id, "configuration_pending", 1)]


async def test_an_unknown_iss_is_counted_without_a_configuration(portal: Portal, ehr: Ehr) -> None:
    for _ in range(2):
        r = await _launch(portal, ehr)
        assert r.status == 403 and reason_code(await r.text()) == "unknown_iss"
    counted = await portal.sql("SELECT configuration_id, reason, sum(count)::int FROM launch_refusals "
                                 "GROUP BY configuration_id, reason")
    assert [tuple(r) for r in counted] == [(None, "unknown_iss", 2)]


async def test_the_approver_proves_the_url_at_the_ehr_approves_and_launches_go(portal: Portal, ehr: Ehr) -> None:
    config_id = await _add(portal, ehr)
    await _approve(portal, ehr, config_id)
    assert await _status(portal, config_id) == "approved"
    rows = await portal.sql("SELECT state, decided_by, ehr_fhir_user, ehr_signed_in_at IS NOT NULL AS signed "
                            "FROM configuration_revisions WHERE configuration_id = $1", config_id)
    assert [tuple(r) for r in rows] == [("approved", f"{ORG}:{APPROVER.oid}",
                                          f"{ehr.fhir_base}/Practitioner/prac-2", True)]
    actions = [r["action"] for r in await portal.sql("SELECT action FROM audit_log WHERE subject = $1",
                                                     f"configuration:{config_id}")]
    assert actions == ["configuration.add", "configuration.ehr_sign_in", "configuration.approve"]
    # Of the EHR session only who (the reference) and when were kept: not the practitioner's name, no token.
    kept = str(await portal.sql("SELECT * FROM configuration_revisions")) + \
        str(await portal.sql("SELECT details FROM audit_log"))
    assert "Placeholder" not in kept and "access_token" not in kept and "id_token" not in kept
    r = await _launch(portal, ehr)
    assert r.status == 302, await r.text()
    assert query_of(r.headers["Location"])["client_id"] == EHR_CLIENT_ID
    # Nothing of the EHR session is kept but who and when: no cookie of it either.
    assert "__Host-vg_portal_ehr" not in {c.key for c in portal.browser.cookie_jar}


async def test_a_wrong_ehr_password_proves_nothing_and_approving_is_refused(portal: Portal, ehr: Ehr) -> None:
    config_id = await _add(portal, ehr)
    revision_id = await _pending_revision(portal, config_id)
    await _as(portal, APPROVER)
    answer = await _ehr_sign_in(portal, ehr, revision_id, password="not-my-password")
    assert answer.status == 401
    page = await portal.get(f"/portal/{ORG}/revisions/{revision_id}")
    assert 'id="approve"' not in await page.text()
    r = await _post(portal, f"/portal/{ORG}/revisions/{revision_id}/approve", {"reason": ""})
    assert r.status == 409 and "sign in to the EHR first" in await r.text()
    assert await _status(portal, config_id) == "pending"


def test_an_ehr_user_of_another_ehr_or_not_a_practitioner_proves_nothing() -> None:
    base = "https://ehr.example.org/api/FHIR/R4"
    assert practitioner_reference(f"{base}/Practitioner/abc", base) == f"{base}/Practitioner/abc"
    assert practitioner_reference("Person/p1", base) == f"{base}/Person/p1"
    for value, reason in (("https://other.example.org/fhir/Practitioner/abc", "ehr_other_ehr"),
                          (f"{base}-evil/Practitioner/abc", "ehr_other_ehr"),
                          (f"{base}/Patient/p1", "ehr_not_practitioner"), ("Practitioner/../x", "ehr_not_practitioner"),
                          (None, "ehr_no_fhir_user")):
        with pytest.raises(EhrSignInRefused) as refused:
            practitioner_reference(value, base)
        assert refused.value.reason == reason


async def test_a_change_waits_for_approval_while_the_approved_values_keep_launching(portal: Portal,
                                                                                    ehr: Ehr) -> None:
    config_id = await _add(portal, ehr)
    await _approve(portal, ehr, config_id)
    await _as(portal, ADMIN)
    edit = await portal.get(f"/portal/{ORG}/configurations/{config_id}/edit")
    assert edit.status == 200, await edit.text()
    new_scopes = DEFAULT_SCOPES + " user/Observation.read"
    r = await _post(portal, f"/portal/{ORG}/configurations/{config_id}/edit", _form(ehr, scopes=new_scopes))
    assert r.status == 303, await r.text()
    launched = await _launch(portal, ehr)
    assert launched.status == 302 and query_of(launched.headers["Location"])["scope"] == DEFAULT_SCOPES
    page = await portal.get(f"/portal/{ORG}/configurations/{config_id}")
    assert "Waiting for approval: revision 2" in await page.text()
    await _approve(portal, ehr, config_id)
    launched = await _launch(portal, ehr)
    assert launched.status == 302 and query_of(launched.headers["Location"])["scope"] == new_scopes
    history = await (await portal.get(f"/portal/{ORG}/configurations/{config_id}")).text()
    assert "Scopes: " + DEFAULT_SCOPES + " → " + new_scopes in history.replace("&#34;", '"')


async def test_a_newer_proposal_supersedes_the_pending_one(portal: Portal, ehr: Ehr) -> None:
    config_id = await _add(portal, ehr)
    r = await _post(portal, f"/portal/{ORG}/configurations/{config_id}/edit",
                    _form(ehr, scopes=DEFAULT_SCOPES + " user/Observation.read"))
    assert r.status == 303, await r.text()
    states = await portal.sql("SELECT number, state FROM configuration_revisions ORDER BY number")
    assert [tuple(s) for s in states] == [(1, "superseded"), (2, "pending")]


async def test_a_rejected_configuration_refuses_its_launches_and_says_why_it_was_rejected(portal: Portal,
                                                                                           ehr: Ehr) -> None:
    config_id = await _add(portal, ehr)
    revision_id = await _pending_revision(portal, config_id)
    await _as(portal, APPROVER)
    refused = await _post(portal, f"/portal/{ORG}/revisions/{revision_id}/reject", {"reason": " "})
    assert refused.status == 409, await refused.text()
    r = await _post(portal, f"/portal/{ORG}/revisions/{revision_id}/reject", {"reason": "wrong client ID"})
    assert r.status == 303, await r.text()
    assert await _status(portal, config_id) == "rejected"
    launched = await _launch(portal, ehr)
    assert launched.status == 403 and reason_code(await launched.text()) == "configuration_rejected"
    page = await (await portal.get(f"/portal/{ORG}/configurations/{config_id}")).text()
    assert "wrong client ID" in page


async def test_a_retired_configuration_refuses_its_launches_with_a_clear_page(portal: Portal, ehr: Ehr) -> None:
    config_id = await _add(portal, ehr)
    await _approve(portal, ehr, config_id)
    assert (await _launch(portal, ehr)).status == 302
    await _as(portal, ADMIN)
    r = await _post(portal, f"/portal/{ORG}/configurations/{config_id}/retire", {})
    assert r.status == 303, await r.text()
    launched = await _launch(portal, ehr)
    body = await launched.text()
    assert launched.status == 403 and reason_code(body) == "configuration_retired" and "retired" in body
    refused = await _post(portal, f"/portal/{ORG}/configurations/{config_id}/edit", _form(ehr))
    assert refused.status == 409, await refused.text()


async def test_a_refused_form_keeps_what_was_typed_and_names_the_problem_next_to_its_field(portal: Portal,
                                                                                            ehr: Ehr) -> None:
    await _as(portal, ADMIN)
    r = await _post(portal, f"/portal/{ORG}/configurations/new",
                    _form(ehr, environment="production", client_id="typed-client", client_auth="client_secret_basic",
                          client_secret="s3cret-value"))
    html = await r.text()
    assert r.status == 422, html
    assert 'id="error-summary"' in html and "autofocus" in html
    assert 'aria-describedby="fhir_base_url-error"' in html and 'id="fhir_base_url-error"' in html
    assert "must use https" in html and 'value="typed-client"' in html
    assert "s3cret-value" not in html  # a secret is never shown back
    assert "http_in_production" in html
    assert await portal.sql("SELECT * FROM configurations") == []


async def test_an_admin_sees_only_their_organisations_configurations(portal: Portal, ehr: Ehr) -> None:
    async with portal.gateway_app[DB].acquire() as conn:
        other = await add_approved(conn, portal.gateway_app[SEALER], NewConfiguration(
            fhir_base_url="https://other.example.org/fhir", environment="test", client_id="c",
            client_auth="public"), "ops", organisation_id=await organisation_id(conn, GENERIC_ORG))
    mine = await _add(portal, ehr)
    listing = await (await portal.get(f"/portal/{ORG}/configurations")).text()
    assert ehr.fhir_base in listing and "other.example.org" not in listing
    assert (await portal.get(f"/portal/{ORG}/configurations/{mine}")).status == 200
    assert (await portal.get(f"/portal/{ORG}/configurations/{other}")).status == 404
    assert (await portal.get(f"/portal/{ORG}/configurations/{other}/edit")).status == 404


async def test_an_organisation_may_waive_the_approver_for_oracle_health_and_the_save_approves(
        portal: Portal, ehr: Ehr) -> None:
    await _as(portal, ADMIN)
    r = await _post(portal, f"/portal/{ORG}/settings/oracle-approval", {"waive": "on"})
    assert r.status == 303, await r.text()
    config_id = await _add(portal, ehr, ehr="oracle", approver="")
    assert await _status(portal, config_id) == "approved"
    details = await portal.sql("SELECT details->>'via' AS via FROM audit_log WHERE action = 'configuration.approve'")
    assert [d["via"] for d in details] == ["waived"]
    assert (await _launch(portal, ehr)).status == 302


async def test_epic_configurations_need_their_approver_even_when_oracle_is_waived(portal: Portal,
                                                                                  ehr: Ehr) -> None:
    await _as(portal, ADMIN)
    assert (await _post(portal, f"/portal/{ORG}/settings/oracle-approval", {"waive": "on"})).status == 303
    config_id = await _add(portal, ehr, ehr="epic")
    assert await _status(portal, config_id) == "pending"


async def test_only_the_approver_the_configuration_names_may_decide(portal: Portal, ehr: Ehr) -> None:
    async with portal.gateway_app[DB].acquire() as conn:
        await grant(conn, ORG, "approver", "subject", READER.oid, "test-operator")
    config_id = await _add(portal, ehr, approver=READER.oid)
    revision_id = await _pending_revision(portal, config_id)
    await _as(portal, APPROVER)
    for method, path in (("GET", f"/portal/{ORG}/revisions/{revision_id}"),
                         ("GET", f"/portal/{ORG}/revisions/{revision_id}/ehr-sign-in"),
                         ("POST", f"/portal/{ORG}/revisions/{revision_id}/approve")):
        r = await portal.browser.request(method, portal.gateway_url + path, allow_redirects=False,
                                         headers={"Origin": portal.gateway_url})
        body = await r.text()
        assert r.status == 403 and reason_code(body) == "not_the_approver", (path, body)


async def test_an_epic_configuration_without_an_approver_is_refused(portal: Portal, ehr: Ehr) -> None:
    await _as(portal, ADMIN)
    r = await _post(portal, f"/portal/{ORG}/configurations/new", _form(ehr, approver=""))
    assert r.status == 422 and 'id="approver-error"' in await r.text()


@pytest.mark.parametrize("headers", [{}, {"Origin": "https://evil.example"}])
async def test_every_portal_change_refuses_a_cross_site_request(portal: Portal, ehr: Ehr,
                                                                headers: dict[str, str]) -> None:
    config_id = await _add(portal, ehr)
    revision_id = await _pending_revision(portal, config_id)
    for path in (f"/portal/{ORG}/configurations/new", f"/portal/{ORG}/configurations/{config_id}/edit",
                 f"/portal/{ORG}/configurations/{config_id}/retire", f"/portal/{ORG}/settings/oracle-approval",
                 f"/portal/{ORG}/revisions/{revision_id}/approve", f"/portal/{ORG}/revisions/{revision_id}/reject"):
        r = await portal.browser.post(portal.gateway_url + path, data=_form(ehr), headers=headers,
                                      allow_redirects=False)
        body = await r.text()
        assert r.status == 403 and reason_code(body) == "cross_site_request", (path, body)
    assert await _status(portal, config_id) == "pending"



async def test_deciding_asks_for_a_fresh_sign_in_when_the_last_one_is_old(portal: Portal, ehr: Ehr) -> None:
    config_id = await _add(portal, ehr)
    revision_id = await _pending_revision(portal, config_id)
    await _as(portal, APPROVER)
    await portal.sql("UPDATE portal_sessions SET auth_time = now() - interval '10 minutes'")
    r = await portal.get(f"/portal/{ORG}/revisions/{revision_id}")
    assert r.status == 302, await r.text()
    assert query_of(r.headers["Location"])["max_age"] == "300"
    assert (await portal.get(f"/portal/{ORG}/revisions/{revision_id}/ehr-sign-in")).status == 302
    assert not (await portal.get(f"/portal/{ORG}/revisions/{revision_id}/ehr-sign-in")).headers["Location"] \
        .startswith(ehr.url)
    await portal.sql("UPDATE portal_sessions SET auth_time = now() - interval '1 hour'")
    r = await _post(portal, f"/portal/{ORG}/revisions/{revision_id}/reject", {"reason": "stale"})
    assert r.status == 409 and "too old" in await r.text()


async def test_hostile_identifiers_in_portal_urls_are_a_clean_404(portal: Portal, ehr: Ehr) -> None:
    await _as(portal, ADMIN)
    for raw in ("\u00b2", "1e3", "-1", "9" * 30, "%00"):
        r = await portal.get(f"/portal/{ORG}/configurations/{raw}")
        assert r.status in (400, 404), (raw, await r.text())
