"""The sandbox's OpenID provider: Entra-shaped discovery per tenant, the sign-in page, codes, id_tokens, client
authentication, sessions (prompt=login, max_age), sign-out, key rotation and every refusal."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from oidc_helpers import (
    ADMIN, BASIC_ID, BASIC_SECRET, IDP, JWT_ID, PORTAL_REDIRECT, PORTAL_SIGNED_OUT, POST_ID, POST_SECRET, SINGLE_ID,
    auth_params, authorize_code, issuer_of, path, redeem, redirect_target, sign_in_page, submit, tx_of,
    verified_claims,
)
from sandbox_helpers import ClientKeys, basic_header, pkce_pair, query_of

from sandbox import SandboxSettings, create_sandbox_app
from sandbox.appkeys import OIDC
from sandbox.config import DEMO_PORTAL_CLIENT_ID, OidcClient, demo_portal_client
from sandbox.oidc_directory import (
    GROUP_ADMINS, GROUP_APPROVERS, ORGANIZATIONS, TENANT_GENERIC, TENANT_MAIN, TENANT_OTHER, USERS,
)

Client = TestClient[Any, Any]
APPROVER = ("approver@sandbox-health.example", "approver-sandbox-pw")
IMPOSTOR = ("admin@other-clinic.example", "impostor-sandbox-pw")
GENERIC_ADMIN = ("admin@generic-idp.example", "generic-admin-pw")


@pytest.fixture
def idp_settings(settings: SandboxSettings, client_keys: ClientKeys) -> SandboxSettings:
    """The sandbox settings with the portal registered at start, once per client authentication method."""
    return dataclasses.replace(settings, oidc_clients=(
        OidcClient(POST_ID, (PORTAL_REDIRECT,), "client_secret_post", client_secret=POST_SECRET,
                   post_logout_redirect_uris=(PORTAL_SIGNED_OUT,)),
        OidcClient(BASIC_ID, (PORTAL_REDIRECT,), "client_secret_basic", client_secret=BASIC_SECRET),
        OidcClient(JWT_ID, (PORTAL_REDIRECT,), "private_key_jwt", jwks_url=client_keys.jwks_url),
        OidcClient(SINGLE_ID, (PORTAL_REDIRECT,), "client_secret_post", client_secret=POST_SECRET,
                   tenants=(TENANT_MAIN,)),
    ))


@pytest.fixture
async def idp(aiohttp_client: Callable[..., Awaitable[Client]], idp_settings: SandboxSettings) -> Client:
    """An HTTP client talking to a fresh sandbox with its OpenID provider."""
    return await aiohttp_client(create_sandbox_app(idp_settings))


async def _authorize(idp: Client, tenant: str = TENANT_MAIN, **overrides: Any) -> Any:
    _, challenge = pkce_pair()
    return await idp.get(path(tenant, "authorize"), params=auth_params(challenge, **overrides), allow_redirects=False)


async def _error_of(idp: Client, tenant: str = TENANT_MAIN, **overrides: Any) -> dict[str, str]:
    r = await _authorize(idp, tenant, **overrides)
    assert r.status == 302, await r.text()
    assert redirect_target(r.headers["Location"]) == PORTAL_REDIRECT
    q = query_of(r.headers["Location"])
    assert "code" not in q, q
    return q


async def _id_token(idp: Client, **overrides: Any) -> str:
    code, verifier, _ = await authorize_code(idp, **overrides)
    r = await redeem(idp, code, verifier)
    assert r.status == 200, await r.text()
    token: str = (await r.json())["id_token"]
    return token


# --- discovery and keys ------------------------------------------------------------------------------


async def test_discovery_names_entra_shaped_issuer_and_endpoints(idp: Client) -> None:
    r = await idp.get(path(TENANT_MAIN, "discovery"))
    assert r.status == 200, await r.text()
    doc = await r.json()
    base = f"{IDP}/{TENANT_MAIN}"
    assert doc["issuer"] == base + "/v2.0"
    assert doc["authorization_endpoint"] == base + "/oauth2/v2.0/authorize"
    assert doc["token_endpoint"] == base + "/oauth2/v2.0/token"
    assert doc["jwks_uri"] == base + "/discovery/v2.0/keys"
    assert doc["end_session_endpoint"] == base + "/oauth2/v2.0/logout"
    assert doc["response_types_supported"] == ["code"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {"client_secret_post", "client_secret_basic", "private_key_jwt"}


async def test_main_tenant_discovery_omits_s256_and_the_iss_parameter_like_entra(idp: Client) -> None:
    doc = await (await idp.get(path(TENANT_MAIN, "discovery"))).json()
    assert "code_challenge_methods_supported" not in doc
    assert "authorization_response_iss_parameter_supported" not in doc


async def test_generic_tenant_discovery_lists_s256_and_announces_the_iss_parameter(idp: Client) -> None:
    doc = await (await idp.get(path(TENANT_GENERIC, "discovery"))).json()
    assert doc["issuer"] == issuer_of(TENANT_GENERIC)
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True


async def test_tenant_control_switches_what_discovery_announces(idp: Client) -> None:
    r = await idp.post(f"/_sandbox/oidc/tenants/{TENANT_MAIN}", json={"iss_parameter": True, "lists_s256": True})
    assert r.status == 200, await r.text()
    doc = await (await idp.get(path(TENANT_MAIN, "discovery"))).json()
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["code_challenge_methods_supported"] == ["S256"]


async def test_tenant_control_refuses_unknown_switches(idp: Client) -> None:
    r = await idp.post(f"/_sandbox/oidc/tenants/{TENANT_MAIN}", json={"lists_plain": True})
    assert r.status == 400, await r.text()


async def test_unknown_tenant_has_no_discovery(idp: Client) -> None:
    r = await idp.get(path("00000000-0000-0000-0000-000000000000", "discovery"))
    assert r.status == 400
    assert (await r.json())["error"] == "invalid_tenant"


async def test_jwks_publishes_two_rs256_keys_with_distinct_kids(idp: Client) -> None:
    r = await idp.get(path(TENANT_MAIN, "keys"))
    assert r.status == 200, await r.text()
    keys = (await r.json())["keys"]
    assert len(keys) == 2
    assert len({k["kid"] for k in keys}) == 2
    assert all(k["kty"] == "RSA" and k["alg"] == "RS256" and k["use"] == "sig" and "d" not in k for k in keys)


# --- the happy path ----------------------------------------------------------------------------------


async def test_admin_signs_in_and_gets_a_signed_id_token_with_directory_claims(idp: Client) -> None:
    code, verifier, q = await authorize_code(idp)
    assert q["state"] == "portal-state-0123456789abcdef"
    r = await redeem(idp, code, verifier)
    assert r.status == 200, await r.text()
    assert r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert body["token_type"] == "Bearer" and body["access_token"]
    header = jwt.get_unverified_header(body["id_token"])
    assert header["alg"] == "RS256" and header["kid"]
    claims = await verified_claims(idp, body["id_token"])
    admin = next(u for u in USERS if u.username == ADMIN[0])
    assert claims["nonce"] == "portal-nonce-42"
    assert claims["sub"] == admin.sub and claims["oid"] == admin.oid
    assert claims["tid"] == TENANT_MAIN
    assert claims["email"] == claims["preferred_username"] == "admin@sandbox-health.example"
    assert claims["name"] == "Avery Admin"
    assert GROUP_ADMINS in claims["groups"]
    assert abs(claims["auth_time"] - time.time()) < 300


async def test_each_user_keeps_the_same_sub_and_oid_across_sign_ins(idp: Client) -> None:
    first = jwt.decode(await _id_token(idp, user=APPROVER), options={"verify_signature": False})
    idp.session.cookie_jar.clear()
    second = jwt.decode(await _id_token(idp, user=APPROVER), options={"verify_signature": False})
    assert (first["sub"], first["oid"]) == (second["sub"], second["oid"])
    assert GROUP_APPROVERS in first["groups"]


async def test_main_tenant_sends_no_iss_in_the_authorization_response(idp: Client) -> None:
    _, _, q = await authorize_code(idp)
    assert "iss" not in q


async def test_generic_tenant_sends_iss_in_the_authorization_response(idp: Client) -> None:
    _, _, q = await authorize_code(idp, tenant=TENANT_GENERIC, user=GENERIC_ADMIN)
    assert q["iss"] == issuer_of(TENANT_GENERIC)


async def test_error_responses_carry_iss_where_the_tenant_announces_it(idp: Client) -> None:
    q = await _error_of(idp, TENANT_GENERIC, code_challenge_method="plain")
    assert q["iss"] == issuer_of(TENANT_GENERIC)


async def test_other_tenant_user_gets_that_tenants_issuer_and_tid(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp, tenant=TENANT_OTHER, user=IMPOSTOR)
    r = await redeem(idp, code, verifier, tenant=TENANT_OTHER)
    assert r.status == 200, await r.text()
    claims = await verified_claims(idp, (await r.json())["id_token"], tenant=TENANT_OTHER)
    assert claims["tid"] == TENANT_OTHER and claims["iss"] == issuer_of(TENANT_OTHER)
    # The trap: same email and group ids as Sandbox Health's admin, another tenant and object id.
    assert claims["email"] == "admin@sandbox-health.example"
    assert GROUP_ADMINS in claims["groups"]
    assert claims["oid"] != next(u for u in USERS if u.username == ADMIN[0]).oid


async def test_form_post_response_mode_answers_a_form_to_the_redirect_uri(idp: Client) -> None:
    _, challenge = pkce_pair()
    tx = await sign_in_page(idp, TENANT_MAIN, auth_params(challenge, response_mode="form_post"))
    r = await submit(idp, TENANT_MAIN, tx, ADMIN)
    html = await r.text()
    assert r.status == 200, html
    assert f'action="{PORTAL_REDIRECT}"' in html
    assert 'name="code"' in html and 'name="state" value="portal-state-0123456789abcdef"' in html


async def test_msal_client_info_is_answered_with_oid_and_tenant(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    r = await redeem(idp, code, verifier, client_info="1")
    info = (await r.json())["client_info"]
    decoded = json.loads(base64.urlsafe_b64decode(info + "=" * (-len(info) % 4)))
    assert decoded == {"uid": next(u for u in USERS if u.username == ADMIN[0]).oid, "utid": TENANT_MAIN}


# --- the sign-in page ---------------------------------------------------------------------------------


async def test_sign_in_page_lists_the_tenants_test_users(idp: Client) -> None:
    r = await _authorize(idp)
    html = await r.text()
    assert r.status == 200, html
    for username in ("admin@", "approver@", "reader@", "outsider@"):
        assert username + "sandbox-health.example" in html
    assert "other-clinic.example" not in html


async def test_wrong_password_is_refused_with_a_clear_page(idp: Client) -> None:
    _, challenge = pkce_pair()
    tx = await sign_in_page(idp, TENANT_MAIN, auth_params(challenge))
    r = await submit(idp, TENANT_MAIN, tx, (ADMIN[0], "not-the-password"))
    html = await r.text()
    assert r.status == 401, html
    assert "do not match" in html
    assert "Location" not in r.headers


async def test_after_a_wrong_password_the_right_one_still_signs_in(idp: Client) -> None:
    _, challenge = pkce_pair()
    tx = await sign_in_page(idp, TENANT_MAIN, auth_params(challenge))
    r = await submit(idp, TENANT_MAIN, tx, (ADMIN[0], "wrong"))
    assert r.status == 401
    r = await submit(idp, TENANT_MAIN, tx_of(await r.text()), ADMIN)
    assert r.status == 302, await r.text()


async def test_a_user_of_another_tenant_cannot_sign_in_here(idp: Client) -> None:
    _, challenge = pkce_pair()
    tx = await sign_in_page(idp, TENANT_OTHER, auth_params(challenge))
    r = await submit(idp, TENANT_OTHER, tx, ADMIN)
    assert r.status == 401, await r.text()


async def test_sign_in_posted_from_another_browser_is_refused(idp: Client) -> None:
    _, challenge = pkce_pair()
    tx = await sign_in_page(idp, TENANT_MAIN, auth_params(challenge))
    idp.session.cookie_jar.clear()
    r = await submit(idp, TENANT_MAIN, tx, ADMIN)
    assert r.status == 400, await r.text()
    assert "another browser" in await r.text()


async def test_unknown_sign_in_transaction_is_refused(idp: Client) -> None:
    r = await submit(idp, TENANT_MAIN, "made-up", ADMIN)
    assert r.status == 400, await r.text()


async def test_sign_in_transaction_is_used_once(idp: Client) -> None:
    _, challenge = pkce_pair()
    tx = await sign_in_page(idp, TENANT_MAIN, auth_params(challenge))
    assert (await submit(idp, TENANT_MAIN, tx, ADMIN)).status == 302
    assert (await submit(idp, TENANT_MAIN, tx, ADMIN)).status == 400


# --- authorize refusals shown as a page ----------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {"client_id": "unregistered"},
    {"client_id": None},
    {"redirect_uri": PORTAL_REDIRECT + "/"},
    {"redirect_uri": "http://127.0.0.1:9999/portal/signin/callback"},
    {"redirect_uri": None},
], ids=["unknown-client", "no-client", "trailing-slash", "other-port", "no-redirect-uri"])
async def test_unverifiable_client_or_redirect_uri_gets_a_page_not_a_redirect(idp: Client, overrides: dict[str, Any]) -> None:
    r = await _authorize(idp, **overrides)
    assert r.status == 400, await r.text()
    assert "Location" not in r.headers


async def test_single_tenant_application_is_refused_at_another_tenant(idp: Client) -> None:
    r = await _authorize(idp, TENANT_OTHER, client_id=SINGLE_ID)
    assert r.status == 400, await r.text()
    assert "Location" not in r.headers


async def test_unknown_tenant_authorize_gets_a_page(idp: Client) -> None:
    r = await _authorize(idp, "not-a-tenant")
    assert r.status == 400 and "Location" not in r.headers


# --- authorize refusals sent back as OAuth errors --------------------------------------------------------


@pytest.mark.parametrize(("overrides", "error"), [
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"response_type": "code id_token"}, "unsupported_response_type"),
    ({"response_type": None}, "unsupported_response_type"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge_method": None}, "invalid_request"),
    ({"code_challenge": None}, "invalid_request"),
    ({"code_challenge": "too-short"}, "invalid_request"),
    ({"state": None}, "invalid_request"),
    ({"scope": "profile email"}, "invalid_scope"),
    ({"scope": "openid User.Read"}, "invalid_scope"),
    ({"response_mode": "fragment"}, "invalid_request"),
    ({"prompt": "sometimes"}, "invalid_request"),
    ({"prompt": "none login"}, "invalid_request"),
    ({"max_age": "-1"}, "invalid_request"),
    ({"request": "eyJ.x.y"}, "request_not_supported"),
], ids=lambda v: str(v))
async def test_bad_authorization_request_is_sent_back_as_an_oauth_error(
    idp: Client, overrides: dict[str, Any], error: str,
) -> None:
    q = await _error_of(idp, **overrides)
    assert q["error"] == error, q
    assert q["error_description"]
    if overrides.get("state", "") is not None:
        assert q["state"] == "portal-state-0123456789abcdef"


async def test_repeated_parameters_are_refused(idp: Client) -> None:
    _, challenge = pkce_pair()
    params = [*auth_params(challenge).items(), ("scope", "openid")]
    r = await idp.get(path(TENANT_MAIN, "authorize"), params=params, allow_redirects=False)
    assert r.status == 302, await r.text()
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


async def test_prompt_none_without_a_session_answers_login_required(idp: Client) -> None:
    q = await _error_of(idp, prompt="none")
    assert q["error"] == "login_required"


# --- sessions: single sign-on, prompt=login, max_age, sign-out -------------------------------------------


async def _straight_code(idp: Client, **overrides: Any) -> tuple[str, str]:
    """Authorize with a live session: a code without a page. Answers (code, verifier)."""
    verifier, challenge = pkce_pair()
    r = await idp.get(path(TENANT_MAIN, "authorize"), params=auth_params(challenge, **overrides), allow_redirects=False)
    assert r.status == 302, await r.text()
    return query_of(r.headers["Location"])["code"], verifier


async def test_a_second_sign_in_in_the_same_browser_skips_the_page_and_keeps_auth_time(idp: Client) -> None:
    first = jwt.decode(await _id_token(idp), options={"verify_signature": False})
    code, verifier = await _straight_code(idp)
    second = jwt.decode((await (await redeem(idp, code, verifier)).json())["id_token"], options={"verify_signature": False})
    assert second["sub"] == first["sub"]
    assert second["auth_time"] == first["auth_time"]


async def test_prompt_login_forces_the_sign_in_page(idp: Client) -> None:
    await _id_token(idp)
    r = await _authorize(idp, prompt="login")
    assert r.status == 200, await r.text()
    assert "Sign in to Sandbox Health" in await r.text()


async def test_max_age_zero_forces_the_sign_in_page(idp: Client) -> None:
    await _id_token(idp)
    r = await _authorize(idp, max_age="0")
    assert r.status == 200 and 'name="tx"' in await r.text()


async def test_max_age_passed_forces_the_sign_in_page_and_a_new_auth_time(idp: Client) -> None:
    first = jwt.decode(await _id_token(idp), options={"verify_signature": False})
    r = await idp.post("/_sandbox/oidc/sessions/age", json={"seconds": 600})
    assert r.status == 200, await r.text()
    r = await _authorize(idp, max_age="300")
    assert r.status == 200 and 'name="tx"' in await r.text()
    again = jwt.decode(await _id_token(idp, max_age="300"), options={"verify_signature": False})
    assert again["auth_time"] > first["auth_time"] - 600


async def test_max_age_not_yet_passed_reuses_the_session(idp: Client) -> None:
    await _id_token(idp)
    await _straight_code(idp, max_age="300")


async def test_sign_out_ends_the_session(idp: Client) -> None:
    await _id_token(idp)
    r = await idp.get(path(TENANT_MAIN, "logout"), allow_redirects=False)
    assert r.status == 200, await r.text()
    r = await _authorize(idp)
    assert r.status == 200 and 'name="tx"' in await r.text()


async def test_sign_out_returns_to_a_registered_post_logout_uri_with_state(idp: Client) -> None:
    token = await _id_token(idp)
    r = await idp.get(path(TENANT_MAIN, "logout"), params={
        "post_logout_redirect_uri": PORTAL_SIGNED_OUT, "id_token_hint": token, "state": "bye"}, allow_redirects=False)
    assert r.status == 302, await r.text()
    assert r.headers["Location"] == PORTAL_SIGNED_OUT + "?state=bye"


async def test_sign_out_never_redirects_to_an_unregistered_uri(idp: Client) -> None:
    r = await idp.get(path(TENANT_MAIN, "logout"), params={
        "post_logout_redirect_uri": "https://attacker.example/", "client_id": POST_ID}, allow_redirects=False)
    assert r.status == 400 and "Location" not in r.headers


async def test_sign_out_refuses_an_id_token_hint_from_another_tenant(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp, tenant=TENANT_OTHER, user=IMPOSTOR)
    token = (await (await redeem(idp, code, verifier, tenant=TENANT_OTHER)).json())["id_token"]
    r = await idp.get(path(TENANT_MAIN, "logout"), params={
        "post_logout_redirect_uri": PORTAL_SIGNED_OUT, "id_token_hint": token}, allow_redirects=False)
    assert r.status == 400 and "Location" not in r.headers


# --- the token endpoint ---------------------------------------------------------------------------------


async def test_code_is_single_use(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    assert (await redeem(idp, code, verifier)).status == 200
    r = await redeem(idp, code, verifier)
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_expired_code_is_refused(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    idp.server.app[OIDC].codes[code].expires_at = time.time() - 1
    r = await redeem(idp, code, verifier)
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_code_lives_a_minute_at_most(idp: Client) -> None:
    code, _, _ = await authorize_code(idp)
    assert idp.server.app[OIDC].codes[code].expires_at - time.time() <= 60


@pytest.mark.parametrize("overrides", [
    {"redirect_uri": PORTAL_REDIRECT + "/"},
    {"redirect_uri": None},
    {"code_verifier": "A" * 43},
    {"code_verifier": None},
    {"code": "made-up"},
], ids=["other-redirect", "no-redirect", "wrong-verifier", "no-verifier", "unknown-code"])
async def test_code_is_bound_to_redirect_uri_and_verifier(idp: Client, overrides: dict[str, Any]) -> None:
    code, verifier, _ = await authorize_code(idp)
    fields = dict(overrides)
    r = await redeem(idp, fields.pop("code", code), verifier, **fields)
    assert r.status == 400, await r.text()
    assert (await r.json())["error"] == "invalid_grant"


async def test_code_is_bound_to_the_client(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    r = await redeem(idp, code, verifier, client_id=SINGLE_ID)
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_code_is_bound_to_its_tenant(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    r = await redeem(idp, code, verifier, tenant=TENANT_OTHER)
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_wrong_client_secret_is_invalid_client(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    r = await redeem(idp, code, verifier, client_secret="guess")
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


async def test_missing_client_authentication_is_invalid_client(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    r = await redeem(idp, code, verifier, client_secret=None)
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


async def test_secret_sent_by_basic_when_registered_for_post_is_refused(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    r = await redeem(idp, code, verifier, client_secret=None, client_id=None,
                     headers=basic_header(POST_ID, POST_SECRET))
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


async def test_two_authentication_methods_at_once_are_refused(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    r = await redeem(idp, code, verifier, headers=basic_header(POST_ID, POST_SECRET))
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


async def test_client_secret_basic_client_redeems_its_code(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp, client_id=BASIC_ID)
    r = await redeem(idp, code, verifier, client_id=None, client_secret=None,
                     headers=basic_header(BASIC_ID, BASIC_SECRET))
    assert r.status == 200, await r.text()
    await verified_claims(idp, (await r.json())["id_token"], audience=BASIC_ID)


async def test_client_secret_basic_with_a_wrong_secret_gets_a_challenge(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp, client_id=BASIC_ID)
    r = await redeem(idp, code, verifier, client_id=None, client_secret=None,
                     headers=basic_header(BASIC_ID, "guess"))
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")


async def test_single_tenant_application_is_unauthorized_at_another_tenants_token_endpoint(idp: Client) -> None:
    r = await redeem(idp, "any", "A" * 43, tenant=TENANT_OTHER, client_id=SINGLE_ID)
    assert r.status == 400 and (await r.json())["error"] == "unauthorized_client"


async def test_refresh_token_grant_is_not_supported(idp: Client) -> None:
    r = await redeem(idp, "any", "A" * 43, grant_type="refresh_token")
    assert r.status == 400 and (await r.json())["error"] == "unsupported_grant_type"


async def test_token_request_must_be_a_form(idp: Client) -> None:
    r = await idp.post(path(TENANT_MAIN, "token"), json={"grant_type": "authorization_code"})
    assert r.status == 400 and (await r.json())["error"] == "invalid_request"


async def test_token_request_with_repeated_fields_is_refused(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp)
    form = [("grant_type", "authorization_code"), ("code", code), ("code", code), ("redirect_uri", PORTAL_REDIRECT),
            ("code_verifier", verifier), ("client_id", POST_ID), ("client_secret", POST_SECRET)]
    r = await idp.post(path(TENANT_MAIN, "token"), data=form)
    assert r.status == 400 and (await r.json())["error"] == "invalid_request"


# --- private_key_jwt ------------------------------------------------------------------------------------


def _assertion(keys: ClientKeys, tenant: str = TENANT_MAIN, *, headers: dict[str, Any] | None = None,
               key: Any = None, alg: str = "RS384", **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"iss": JWT_ID, "sub": JWT_ID, "aud": f"{IDP}/{tenant}/oauth2/v2.0/token",
                            "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key or keys.rsa_key, algorithm=alg,
                      headers=headers if headers is not None else {"kid": "rsa-1"})


async def _redeem_with_assertion(idp: Client, assertion: str) -> Any:
    code, verifier, _ = await authorize_code(idp, client_id=JWT_ID)
    return await redeem(idp, code, verifier, client_secret=None, client_id=None,
                        client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        client_assertion=assertion)


async def test_private_key_jwt_client_redeems_with_a_key_from_its_jwks_url(idp: Client, client_keys: ClientKeys) -> None:
    r = await _redeem_with_assertion(idp, _assertion(client_keys))
    assert r.status == 200, await r.text()
    await verified_claims(idp, (await r.json())["id_token"], audience=JWT_ID)


@pytest.mark.parametrize("claims", [
    {"aud": "http://localhost:8081/oauth/token"},
    {"aud": f"{IDP}/{TENANT_OTHER}/oauth2/v2.0/token"},
    {"exp": int(time.time()) + 3600},
    {"exp": int(time.time()) - 60},
    {"sub": "someone-else"},
    {"jti": None},
], ids=["ehr-audience", "other-tenant-audience", "far-expiry", "expired", "wrong-sub", "no-jti"])
async def test_bad_client_assertion_is_invalid_client(idp: Client, client_keys: ClientKeys, claims: dict[str, Any]) -> None:
    r = await _redeem_with_assertion(idp, _assertion(client_keys, **claims))
    assert r.status == 401, await r.text()
    assert (await r.json())["error"] == "invalid_client"


async def test_client_assertion_signed_by_an_unregistered_key_is_refused(idp: Client, client_keys: ClientKeys) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r = await _redeem_with_assertion(idp, _assertion(client_keys, key=stranger))
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


async def test_client_assertion_naming_an_unknown_kid_is_refused(idp: Client, client_keys: ClientKeys) -> None:
    r = await _redeem_with_assertion(idp, _assertion(client_keys, headers={"kid": "nope"}))
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


async def test_replayed_client_assertion_is_refused(idp: Client, client_keys: ClientKeys) -> None:
    assertion = _assertion(client_keys)
    assert (await _redeem_with_assertion(idp, assertion)).status == 200
    r = await _redeem_with_assertion(idp, assertion)
    assert r.status == 401 and "already used" in (await r.json())["error_description"]


def _certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portal sandbox client")])
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))


async def test_private_key_jwt_with_an_inline_jwks_and_a_certificate_thumbprint_as_msal_sends(idp: Client) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = _certificate(key).public_bytes(serialization.Encoding.DER)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk["x5c"] = [base64.b64encode(der).decode()]
    r = await idp.post("/_sandbox/oidc/clients", json={
        "client_id": "portal-cert", "redirect_uris": [PORTAL_REDIRECT], "auth_method": "private_key_jwt",
        "jwks": {"keys": [jwk]}})
    assert r.status == 200, await r.text()
    thumb = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    now = int(time.time())
    assertion = jwt.encode({"iss": "portal-cert", "sub": "portal-cert", "aud": f"{IDP}/{TENANT_MAIN}/oauth2/v2.0/token",
                            "exp": now + 600, "iat": now, "jti": str(uuid.uuid4())},
                           key, algorithm="PS256", headers={"x5t#S256": thumb})
    code, verifier, _ = await authorize_code(idp, client_id="portal-cert")
    r = await redeem(idp, code, verifier, client_secret=None, client_id="portal-cert",
                     client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                     client_assertion=assertion)
    assert r.status == 200, await r.text()


# --- key rotation ---------------------------------------------------------------------------------------


async def test_rotation_signs_with_the_other_published_key(idp: Client) -> None:
    before = jwt.get_unverified_header(await _id_token(idp))["kid"]
    r = await idp.post("/_sandbox/oidc/keys/rotate", json={})
    assert r.status == 200, await r.text()
    idp.session.cookie_jar.clear()
    token = await _id_token(idp)
    after = jwt.get_unverified_header(token)["kid"]
    assert after != before
    kids = {k["kid"] for k in (await (await idp.get(path(TENANT_MAIN, "keys"))).json())["keys"]}
    assert kids == {before, after}
    await verified_claims(idp, token)


async def test_rotation_replacing_the_retired_key_drops_it_from_the_jwks(idp: Client) -> None:
    before = jwt.get_unverified_header(await _id_token(idp))["kid"]
    body = await (await idp.post("/_sandbox/oidc/keys/rotate", json={"replace_retired": True})).json()
    kids = {k["kid"] for k in (await (await idp.get(path(TENANT_MAIN, "keys"))).json())["keys"]}
    assert before not in kids and body["signing_kid"] in kids and len(kids) == 2


# --- registration ---------------------------------------------------------------------------------------


async def test_an_application_registered_through_the_control_can_sign_in(idp: Client) -> None:
    r = await idp.post("/_sandbox/oidc/clients", json={
        "client_id": "late-portal", "redirect_uris": ["http://127.0.0.1:8090/cb"],
        "auth_method": "client_secret_post", "client_secret": "late-secret"})
    assert r.status == 200, await r.text()
    code, verifier, _ = await authorize_code(idp, client_id="late-portal", redirect_uri="http://127.0.0.1:8090/cb")
    r = await redeem(idp, code, verifier, client_id="late-portal", client_secret="late-secret",
                     redirect_uri="http://127.0.0.1:8090/cb")
    assert r.status == 200, await r.text()


@pytest.mark.parametrize("body", [
    {"client_id": "x", "redirect_uris": []},
    {"client_id": "x", "redirect_uris": ["http://127.0.0.1/cb"], "auth_method": "client_secret_post"},
    {"client_id": "x", "redirect_uris": ["http://127.0.0.1/cb"], "auth_method": "none"},
    {"client_id": "x", "redirect_uris": "http://127.0.0.1/cb", "client_secret": "s"},
    {"client_id": 5, "redirect_uris": ["http://127.0.0.1/cb"], "client_secret": "s"},
], ids=["no-redirects", "no-secret", "public", "uris-not-a-list", "id-not-a-string"])
async def test_registration_control_refuses_bad_clients(idp: Client, body: dict[str, Any]) -> None:
    r = await idp.post("/_sandbox/oidc/clients", json=body)
    assert r.status == 400, await r.text()


async def test_controls_do_not_exist_without_test_controls(
    aiohttp_client: Callable[..., Awaitable[Client]], idp_settings: SandboxSettings,
) -> None:
    client = await aiohttp_client(create_sandbox_app(dataclasses.replace(idp_settings, test_controls=False)))
    r = await client.post("/_sandbox/oidc/clients", json={"client_id": "x"})
    assert r.status in (404, 405)
    r = await client.get(path(TENANT_MAIN, "discovery"))
    assert r.status == 200


async def test_a_registered_key_that_does_not_parse_is_invalid_client_not_a_crash(idp: Client) -> None:
    r = await idp.post("/_sandbox/oidc/clients", json={
        "client_id": "portal-badkey", "redirect_uris": [PORTAL_REDIRECT], "auth_method": "private_key_jwt",
        "jwks": {"keys": [{"kty": "RSA", "kid": "bad", "n": 5, "e": "AQAB"}]}})
    assert r.status == 200, await r.text()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    assertion = jwt.encode({"iss": "portal-badkey", "sub": "portal-badkey", "aud": f"{IDP}/{TENANT_MAIN}/oauth2/v2.0/token",
                            "exp": now + 60, "jti": str(uuid.uuid4())}, key, algorithm="RS256", headers={"kid": "bad"})
    r = await redeem(idp, "any", "A" * 43, client_secret=None, client_id="portal-badkey",
                     client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                     client_assertion=assertion)
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


@pytest.mark.parametrize("assertion", ["", "not.a.jwt", "e30.e30.", "W10.W10.x"], ids=["empty", "garbage", "unsigned", "arrays"])
async def test_malformed_client_assertions_are_invalid_client(idp: Client, assertion: str) -> None:
    r = await redeem(idp, "any", "A" * 43, client_secret=None, client_id=JWT_ID,
                     client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                     client_assertion=assertion)
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


@pytest.mark.parametrize("hint", ["garbage", "e30.e30.e30", "W10.W10.x"], ids=["garbage", "empty-objects", "arrays"])
async def test_sign_out_with_a_garbage_id_token_hint_gets_a_page(idp: Client, hint: str) -> None:
    r = await idp.get(path(TENANT_MAIN, "logout"), params={"post_logout_redirect_uri": PORTAL_SIGNED_OUT,
                                                          "id_token_hint": hint}, allow_redirects=False)
    assert r.status == 400 and "Location" not in r.headers


async def test_sign_in_form_posted_as_multipart_is_refused(idp: Client) -> None:
    form = aiohttp.FormData()
    form.add_field("tx", "x")
    form.add_field("file", b"bytes", filename="f.txt")
    r = await idp.post(path(TENANT_MAIN, "login"), data=form)
    assert r.status == 400, await r.text()


async def test_the_demo_portal_registered_at_start_signs_in(
    aiohttp_client: Callable[..., Awaitable[Client]], settings: SandboxSettings,
) -> None:
    demo = demo_portal_client(PORTAL_REDIRECT, "demo-secret", PORTAL_SIGNED_OUT)
    client = await aiohttp_client(create_sandbox_app(dataclasses.replace(settings, oidc_clients=(demo,))))
    code, verifier, _ = await authorize_code(client, client_id=DEMO_PORTAL_CLIENT_ID)
    r = await redeem(client, code, verifier, client_id=DEMO_PORTAL_CLIENT_ID, client_secret="demo-secret")
    assert r.status == 200, await r.text()


@pytest.mark.parametrize("uri", ["/relative/cb", "javascript:alert(1)", "http://127.0.0.1/cb#frag"],
                         ids=["relative", "javascript", "fragment"])
async def test_registration_refuses_redirect_uris_that_are_not_absolute_http(idp: Client, uri: str) -> None:
    r = await idp.post("/_sandbox/oidc/clients", json={"client_id": "x", "redirect_uris": [uri], "client_secret": "s"})
    assert r.status == 400, await r.text()


# --- the multi-tenant endpoint --------------------------------------------------------------------------


async def test_organizations_discovery_names_its_issuer_as_entras_template(idp: Client) -> None:
    doc = await (await idp.get(path(ORGANIZATIONS, "discovery"))).json()
    assert doc["issuer"] == f"{IDP}/{{tenantid}}/v2.0"
    assert doc["token_endpoint"] == f"{IDP}/organizations/oauth2/v2.0/token"


async def test_organizations_signs_in_any_tenants_user_with_that_users_own_issuer(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp, tenant=ORGANIZATIONS, user=IMPOSTOR)
    r = await redeem(idp, code, verifier, tenant=ORGANIZATIONS)
    assert r.status == 200, await r.text()
    claims = await verified_claims(idp, (await r.json())["id_token"], tenant=TENANT_OTHER)
    assert claims["tid"] == TENANT_OTHER and claims["iss"] == issuer_of(TENANT_OTHER)


async def test_organizations_refuses_a_single_tenant_application(idp: Client) -> None:
    r = await _authorize(idp, ORGANIZATIONS, client_id=SINGLE_ID)
    assert r.status == 400 and "Location" not in r.headers


async def test_an_organizations_code_cannot_be_redeemed_at_the_users_tenant(idp: Client) -> None:
    code, verifier, _ = await authorize_code(idp, tenant=ORGANIZATIONS)
    r = await redeem(idp, code, verifier, tenant=TENANT_MAIN)
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


# --- faults: id_tokens and responses a portal must refuse -----------------------------------------------


async def _faulty_token(idp: Client, fault: str) -> str:
    r = await idp.post("/_sandbox/oidc/faults", json={"id_token": fault})
    assert r.status == 200, await r.text()
    return await _id_token(idp)


@pytest.mark.parametrize("fault", ["bad_signature", "unknown_kid", "alg_none", "malformed"])
async def test_id_token_faults_that_break_the_signature_fail_verification(idp: Client, fault: str) -> None:
    token = await _faulty_token(idp, fault)
    with pytest.raises(jwt.PyJWTError):
        await verified_claims(idp, token)


@pytest.mark.parametrize(("fault", "error"), [
    ("wrong_aud", jwt.InvalidAudienceError),
    ("expired", jwt.ExpiredSignatureError),
    ("wrong_iss", jwt.InvalidIssuerError),
])
async def test_id_token_faults_on_claims_keep_a_valid_signature(idp: Client, fault: str, error: type[Exception]) -> None:
    token = await _faulty_token(idp, fault)
    with pytest.raises(error):
        await verified_claims(idp, token)


@pytest.mark.parametrize(("fault", "check"), [
    ("wrong_nonce", lambda c: c["nonce"] != "portal-nonce-42"),
    ("missing_nonce", lambda c: "nonce" not in c),
    ("wrong_tid", lambda c: c["tid"] != TENANT_MAIN and c["iss"] == issuer_of(TENANT_MAIN)),
])
async def test_id_token_faults_a_portal_must_catch_itself(
    idp: Client, fault: str, check: Callable[[dict[str, Any]], bool],
) -> None:
    claims = await verified_claims(idp, await _faulty_token(idp, fault))
    assert check(claims), claims


async def test_callback_iss_fault_puts_a_wrong_iss_into_the_authorization_response(idp: Client) -> None:
    r = await idp.post("/_sandbox/oidc/faults", json={"callback_iss": "https://attacker.example/v2.0"})
    assert r.status == 200, await r.text()
    _, _, q = await authorize_code(idp, tenant=TENANT_GENERIC, user=GENERIC_ADMIN)
    assert q["iss"] == "https://attacker.example/v2.0"


@pytest.mark.parametrize("body", [{"id_token": "sometimes"}, {"id_token": 3}, {"colour": "red"}])
async def test_fault_control_refuses_unknown_faults(idp: Client, body: dict[str, Any]) -> None:
    r = await idp.post("/_sandbox/oidc/faults", json=body)
    assert r.status == 400, await r.text()
