"""Portal sessions: idle timeout, absolute lifetime, sign-out and its CSRF check, a fresh sign-in on demand,
and every portal route tried as every role and as nobody."""
from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from config_portal.access import ACCESS, PUBLIC
from gateway.settings import Settings
from tests.conftest import reason_code

from gateway.appkeys import DB, SEALER
from gateway.configurations import NewConfiguration, organisation_id, propose_new

from .conftest import ADMIN, APPROVER, EHR_CLIENT_ID, MEMBERS, ORG, READER, Ehr, Portal


async def signed_in_home(portal: Portal) -> int:
    """The status of the portal home for this browser."""
    return (await portal.get(f"/portal/{ORG}")).status


async def test_a_session_unused_past_the_idle_timeout_has_ended(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    await portal.sql("UPDATE portal_sessions SET last_seen_at = now() - interval '901 seconds'")
    r = await portal.get(f"/portal/{ORG}")
    text = await r.text()
    assert r.status == 401 and reason_code(text) == "not_signed_in", text
    assert f'href="/portal/{ORG}/sign-in"' in text  # the way back in


async def test_using_the_portal_keeps_the_session_alive(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    await portal.sql("UPDATE portal_sessions SET last_seen_at = now() - interval '800 seconds'")
    assert await signed_in_home(portal) == 200
    await portal.sql("UPDATE portal_sessions SET last_seen_at = last_seen_at - interval '800 seconds'")
    assert await signed_in_home(portal) == 200  # the visit above counted as use


def test_the_idle_timeout_defaults_to_fifteen_minutes_and_is_read_from_the_environment() -> None:
    env = {"VISITGATE_PUBLIC_URL": "https://v.example.org", "VISITGATE_SECRET_KEY": base64.b64encode(b"x" * 32).decode(),
           "VISITGATE_SIGNING_KEY": "pem"}
    assert Settings.from_env(env).portal_idle_timeout == 900
    assert Settings.from_env(env).portal_session_lifetime == 12 * 3600
    assert Settings.from_env({**env, "VISITGATE_PORTAL_IDLE_TIMEOUT": "300"}).portal_idle_timeout == 300
    assert str(Settings.from_env({**env, "VISITGATE_IDP_CA_FILE": "/tmp/ca.pem"}).idp_ca_file) == "/tmp/ca.pem"


async def test_a_busy_session_still_ends_at_its_absolute_lifetime(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    await portal.sql("UPDATE portal_sessions SET created_at = now() - interval '12 hours 1 second'")
    assert await signed_in_home(portal) == 401


async def test_signing_out_ends_the_session(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    cookie = portal.session_cookie()
    r = await portal.browser.post(f"{portal.gateway_url}/portal/sign-out", headers={"Origin": portal.gateway_url},
                                  allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/portal/signed-out", await r.text()
    assert portal.session_cookie() is None
    assert await portal.sql("SELECT 1 FROM portal_sessions") == []
    assert (await portal.get("/portal/signed-out")).status == 200
    audited = await portal.sql("SELECT actor, action FROM audit_log WHERE action LIKE 'portal.%' ORDER BY id")
    assert [(a["actor"], a["action"]) for a in audited] == [(f"{ORG}:{ADMIN.oid}", "portal.sign_in"),
                                                            (f"{ORG}:{ADMIN.oid}", "portal.sign_out")]
    # The old cookie, replayed, opens nothing.
    replay = await portal.get(f"/portal/{ORG}", headers={"Cookie": f"__Host-vg_portal={cookie}"})
    assert replay.status == 401


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Origin": "null"}, {},
                                     {"Sec-Fetch-Site": "cross-site"}])
async def test_sign_out_from_another_site_is_refused(portal: Portal, headers: dict[str, str]) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await portal.browser.post(f"{portal.gateway_url}/portal/sign-out", headers=headers, allow_redirects=False)
    assert r.status == 403 and reason_code(await r.text()) == "cross_site_request", await r.text()
    assert await signed_in_home(portal) == 200


async def test_a_sign_in_started_again_in_the_same_browser_keeps_its_binding(portal: Portal) -> None:
    first = await portal.start()
    second = await portal.start()
    # Two tabs: the second start keeps the browser's binding cookie, so the first tab's sign-in still works.
    assert "__Host-vg_portal_sign_in" in first.cookies
    assert second.cookies["__Host-vg_portal_sign_in"].value == first.cookies["__Host-vg_portal_sign_in"].value
    done = await portal.get(await portal.at_idp(first.headers["Location"], ADMIN))
    assert done.status == 303, await done.text()


async def test_a_session_of_one_organisation_opens_nothing_of_another(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await portal.get("/portal/generic-health")
    assert r.status == 403 and reason_code(await r.text()) == "other_organisation", await r.text()


async def test_an_unknown_organisation_is_a_clear_404(portal: Portal) -> None:
    for path in ("/portal/nobody-here/sign-in", "/portal/" + "x" * 300 + "/sign-in"):
        r = await portal.get(path)
        assert r.status == 404, await r.text()


# --- every route, every role ------------------------------------------------------------------------------


def portal_routes(app: web.Application) -> list[tuple[str, str, Any]]:
    """(method, path pattern, handler) of every portal route in the router."""
    found = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/portal") and route.method != "HEAD":
            found.append((route.method, path, route.handler))
    return found


async def test_every_portal_route_declares_who_may_use_it(portal: Portal) -> None:
    routes = portal_routes(portal.gateway_app)
    assert len(routes) >= 6
    undeclared = [(m, p) for m, p, handler in routes if handler not in ACCESS]
    assert not undeclared, "each portal route needs @allowed(...)"


# What a route of someone who holds its role may answer: a page, a redirect (to the EHR's sign-in, after a
# change), or a refusal of what the request carried (the matrix posts empty forms and no EHR answer).
ANSWERS_IN_ROLE = {"GET": (200, 302, 303, 400), "POST": (200, 303, 400, 409, 422)}


@pytest.mark.parametrize("who", ["nobody", "admin", "approver", "report_reader"])
async def test_every_portal_route_checks_the_role_on_the_server(portal: Portal, ehr: Ehr, who: str) -> None:
    async with portal.gateway_app[DB].acquire() as conn:
        org_id = await organisation_id(conn, ORG)
        config_id, revision_id = await propose_new(conn, portal.gateway_app[SEALER], NewConfiguration(
            fhir_base_url=ehr.fhir_base, environment="test", client_id=EHR_CLIENT_ID, client_auth="private_key_jwt",
            approver=APPROVER.oid), "test-operator", organisation_id=org_id)
        # One of the organisation's own sending numbers, for the SMS set-up's routes.
        number_id = await conn.fetchval("INSERT INTO sms_numbers (organisation_id, number) VALUES ($1, $2) "
                                        "RETURNING id", org_id, "+18335550199")
    placeholders = {"{org}": ORG, "{config}": str(config_id), "{revision}": str(revision_id),
                    "{number}": str(number_id)}
    if who != "nobody":
        assert (await portal.sign_in(MEMBERS[who])).status == 303
    for method, path, handler in portal_routes(portal.gateway_app):
        roles = ACCESS[handler]
        url = portal.gateway_url + path
        for placeholder, value in placeholders.items():
            url = url.replace(placeholder, value)
        assert "{" not in url, f"give the matrix a value for each placeholder of {path}"
        async with portal.browser.request(method, url, allow_redirects=False,
                                          headers={"Origin": portal.gateway_url}) as r:
            body = await r.text()
            assert r.status < 500, (method, path, body)
            if roles == PUBLIC:
                assert r.status not in (401, 403) or reason_code(body) in ("invalid_state", "cross_site_request"), \
                    (method, path, body)
            elif who == "nobody":
                assert r.status == 401, (method, path, body)
            elif who in roles:
                assert r.status in ANSWERS_IN_ROLE[method], (method, path, body)
            else:
                assert r.status == 403, (method, path, body)
        if method == "POST" and path == "/portal/sign-out" and who != "nobody":
            assert (await portal.sign_in(MEMBERS[who])).status == 303  # sign back in for the rest


async def test_a_forged_session_cookie_opens_nothing(portal: Portal) -> None:
    for value in ("A" * 43, "x", "A" * 500, "\u00e9" * 43):
        async with aiohttp.ClientSession() as stranger:
            async with stranger.get(f"{portal.gateway_url}/portal/{ORG}",
                                    headers={"Cookie": f"__Host-vg_portal={value}"}) as r:
                assert r.status == 401, await r.text()


async def test_roles_are_those_held_at_sign_in(portal: Portal) -> None:
    assert (await portal.sign_in(READER)).status == 303
    rows = await portal.sql("SELECT roles FROM portal_sessions")
    assert [list(r["roles"]) for r in rows] == [["report_reader"]]
    assert APPROVER.oid not in str(rows)
