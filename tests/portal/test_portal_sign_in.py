"""Signing in to the configuration portal through the organisation's identity provider (the sandbox's, over
TLS), and everything that must open nothing."""
from __future__ import annotations

import logging

import aiohttp
import pytest

from gateway.appkeys import DB
from sandbox.oidc_directory import ORGANIZATIONS, TENANT_MAIN
from sandbox.oidc_state import ID_TOKEN_FAULTS
from tests.conftest import database_text, reason_code

from .conftest import (
    ADMIN, APPROVER, GENERIC_ADMIN, GENERIC_ORG, IMPOSTOR, MEMBERS, ORG, OUTSIDER, Portal, query_of,
)


async def assert_nothing_opened(portal: Portal) -> None:
    """No session cookie in the browser, no session in the database, and the home refuses."""
    assert portal.session_cookie() is None
    assert await portal.sql("SELECT 1 FROM portal_sessions") == []
    home = await portal.get(f"/portal/{ORG}")
    assert home.status == 401, await home.text()


async def test_admin_signs_in_and_sees_what_admins_may_do(portal: Portal) -> None:
    r = await portal.sign_in(ADMIN)
    assert r.status == 303, await r.text()
    assert r.headers["Location"] == f"/portal/{ORG}"
    home = await portal.get(f"/portal/{ORG}")
    text = await home.text()
    assert home.status == 200, text
    assert 'data-role="admin"' in text and 'data-role="approver"' not in text
    assert portal.session_cookie() is not None


@pytest.mark.parametrize("role", ["approver", "report_reader"])
async def test_a_member_granted_by_group_or_email_sees_only_their_roles_work(portal: Portal, role: str) -> None:
    r = await portal.sign_in(MEMBERS[role])
    assert r.status == 303, await r.text()
    text = await (await portal.get(f"/portal/{ORG}")).text()
    shown = {r for r in MEMBERS if f'data-role="{r}"' in text}
    assert shown == {role}, text


async def test_a_generic_openid_provider_announcing_rfc_9207_iss_signs_its_admin_in(portal: Portal) -> None:
    r = await portal.sign_in(GENERIC_ADMIN, org=GENERIC_ORG)
    assert r.status == 303, await r.text()
    home = await portal.get(f"/portal/{GENERIC_ORG}")
    assert home.status == 200, await home.text()


async def test_a_user_with_no_role_is_refused_and_nothing_opens(portal: Portal) -> None:
    r = await portal.sign_in(OUTSIDER)
    text = await r.text()
    assert r.status == 403 and reason_code(text) == "no_role", text
    await assert_nothing_opened(portal)
    audited = await portal.sql("SELECT action, actor FROM audit_log WHERE action = 'portal.sign_in_refused'")
    assert [a["actor"] for a in audited] == [f"{ORG}:{OUTSIDER.oid}"]


async def test_another_tenants_impostor_with_the_admins_email_and_groups_gets_nothing(portal: Portal) -> None:
    started = await portal.start()
    # The impostor edits the address to Entra's multi-tenant endpoint, whose page takes any tenant's user.
    auth_uri = started.headers["Location"].replace(f"/idp/{TENANT_MAIN}/", f"/idp/{ORGANIZATIONS}/")
    r = await portal.get(await portal.at_idp(auth_uri, IMPOSTOR))
    text = await r.text()
    assert 400 <= r.status < 500 and reason_code(text) == "code_refused", text
    await assert_nothing_opened(portal)


async def test_an_id_token_of_another_tenant_is_refused_even_when_signed_by_the_provider(portal: Portal) -> None:
    # The provider signs a token whose iss names another tenant: only the issuer check stops it.
    await portal.idp_control("faults", {"id_token": "wrong_iss"})
    r = await portal.sign_in(ADMIN)
    assert r.status == 403 and reason_code(await r.text()) == "id_token_issuer", await r.text()
    await assert_nothing_opened(portal)


@pytest.mark.parametrize("fault", ID_TOKEN_FAULTS)
async def test_each_spoiled_id_token_is_refused(portal: Portal, fault: str) -> None:
    await portal.idp_control("faults", {"id_token": fault})
    r = await portal.sign_in(ADMIN)
    text = await r.text()
    assert r.status == 403, text
    reason = reason_code(text) or ""
    assert reason.startswith("id_token_") or reason == "wrong_tenant", text
    await assert_nothing_opened(portal)


@pytest.mark.parametrize(("fault", "expected"), [
    ("bad_signature", "id_token_signature"), ("unknown_kid", "id_token_unknown_key"),
    ("alg_none", "id_token_algorithm"), ("wrong_aud", "id_token_audience"), ("expired", "id_token_expired"),
    ("wrong_iss", "id_token_issuer"), ("wrong_tid", "wrong_tenant"),
])
async def test_the_portal_itself_names_what_is_wrong_with_a_signed_id_token(portal: Portal, fault: str,
                                                                           expected: str) -> None:
    # MSAL checks none of these (it compares the nonce only): the reason codes show the portal's own checks.
    await portal.idp_control("faults", {"id_token": fault})
    r = await portal.sign_in(ADMIN)
    assert reason_code(await r.text()) == expected, await r.text()


async def test_an_id_token_signed_with_the_providers_other_published_key_is_accepted(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303  # the portal has fetched the provider's keys
    await portal.idp_control("keys/rotate", {})
    portal.browser.cookie_jar.clear()
    r = await portal.sign_in(ADMIN)
    assert r.status == 303, await r.text()


async def test_a_wrong_rfc_9207_iss_is_refused_before_the_code_is_redeemed(portal: Portal) -> None:
    await portal.idp_control("faults", {"callback_iss": "https://idp.attacker.example/v2.0"})
    r = await portal.sign_in(ADMIN)
    assert r.status == 400 and reason_code(await r.text()) == "wrong_iss_parameter", await r.text()
    await assert_nothing_opened(portal)


async def test_an_answer_without_the_iss_its_provider_announces_is_refused(portal: Portal) -> None:
    started = await portal.start(GENERIC_ORG)
    callback = await portal.at_idp(started.headers["Location"], GENERIC_ADMIN)
    q = query_of(callback)
    assert "iss" in q
    r = await portal.get(f"/portal/callback?code={q['code']}&state={q['state']}")
    assert r.status == 400 and reason_code(await r.text()) == "missing_iss_parameter", await r.text()


async def test_a_replayed_state_is_refused(portal: Portal) -> None:
    started = await portal.start()
    callback = await portal.at_idp(started.headers["Location"], ADMIN)
    first = await portal.get(callback)
    assert first.status == 303, await first.text()
    again = await portal.get(callback)
    assert again.status == 400 and reason_code(await again.text()) == "invalid_state", await again.text()


async def test_a_state_the_portal_never_made_is_refused(portal: Portal) -> None:
    await portal.start()
    r = await portal.get("/portal/callback?code=abc&state=" + "A" * 43)
    assert r.status == 400 and reason_code(await r.text()) == "invalid_state", await r.text()
    await assert_nothing_opened(portal)


@pytest.mark.parametrize("query", ["", "?state=", "?state=%00%ff", "?state=a&state=b", "?code=x&state=" + "x" * 5000])
async def test_a_malformed_callback_is_a_clear_refusal(portal: Portal, query: str) -> None:
    r = await portal.get("/portal/callback" + query)
    # A NUL never reaches the portal: the gateway's edge refuses it first, with its own reason.
    expected = "invalid_characters" if "%00" in query else "invalid_state"
    assert r.status == 400 and reason_code(await r.text()) == expected, await r.text()


async def test_a_callback_in_another_browser_is_refused_and_the_sign_in_is_spent(portal: Portal) -> None:
    started = await portal.start()
    callback = await portal.at_idp(started.headers["Location"], ADMIN)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        async with other.get(callback, allow_redirects=False) as r:
            text = await r.text()
            assert r.status == 400 and reason_code(text) == "other_browser", text
            assert "__Host-vg_portal" not in r.cookies
    again = await portal.get(callback)
    assert again.status == 400 and reason_code(await again.text()) == "invalid_state", await again.text()
    await assert_nothing_opened(portal)


async def test_a_sign_in_left_too_long_at_the_provider_is_refused(portal: Portal) -> None:
    started = await portal.start()
    callback = await portal.at_idp(started.headers["Location"], ADMIN)
    await portal.sql("UPDATE portal_login_states SET expires_at = now() - interval '1 second'")
    r = await portal.get(callback)
    assert r.status == 400 and reason_code(await r.text()) == "state_expired", await r.text()
    await assert_nothing_opened(portal)


async def test_a_refusal_at_the_provider_is_shown_with_its_code(portal: Portal) -> None:
    started = await portal.start()
    state = query_of(started.headers["Location"])["state"]
    r = await portal.get(f"/portal/callback?error=access_denied&error_description=no&state={state}")
    text = await r.text()
    assert r.status == 400 and reason_code(text) == "idp_error" and "access_denied" in text, text


async def test_the_authorization_request_carries_our_own_state_s256_and_a_hashed_nonce(portal: Portal) -> None:
    started = await portal.start()
    q = query_of(started.headers["Location"])
    assert len(q["state"]) >= 43 and q["code_challenge_method"] == "S256" and len(q["nonce"]) == 64
    assert q["response_mode"] == "query"
    assert set(q["scope"].split()) == {"openid", "profile"}  # no offline_access: no refresh token wanted
    assert (await portal.sql("SELECT count(*) AS n FROM portal_login_states"))[0]["n"] == 1
    # The state is kept only as its hash.
    rows = await portal.sql("SELECT state_hash FROM portal_login_states")
    assert q["state"].encode() not in bytes(rows[0]["state_hash"])


async def test_sign_in_cookies_are_host_prefixed_secure_http_only_and_lax(portal: Portal) -> None:
    started = await portal.start()
    binding = started.cookies["__Host-vg_portal_sign_in"]
    callback = await portal.at_idp(started.headers["Location"], ADMIN)
    done = await portal.get(callback)
    session = done.cookies["__Host-vg_portal"]
    for cookie in (binding, session):
        assert cookie["secure"] and cookie["httponly"] and cookie["path"] == "/" and not cookie["domain"]
        assert cookie["samesite"] == "Lax"
    # The browser keeps the session cookie over http://127.0.0.1 (as browsers treat loopback as secure).
    assert portal.session_cookie() == session.value


async def test_signing_in_stores_nothing_of_the_person_but_their_subject(
        portal: Portal, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for who in (ADMIN, APPROVER, OUTSIDER):
        portal.browser.cookie_jar.clear()  # another person at another browser (no single sign-on)
        r = await portal.sign_in(who)
        assert r.status == (403 if who is OUTSIDER else 303), await r.text()
    async with portal.gateway_app[DB].acquire() as conn:
        _, text = await database_text(conn)
    logged = caplog.text
    for who in (ADMIN, APPROVER, OUTSIDER):
        # None is granted by email, so no address may be anywhere; no name ever; nothing in the logs either.
        assert who.email not in text and who.name not in text and who.username not in text
        assert who.email not in logged and who.name not in logged
    assert ADMIN.oid in text and APPROVER.oid in text
