"""MSAL for Python against the sandbox's OpenID provider: what a portal built on MSAL would send and get.

MSAL refuses plain http authorities (it insists on an https URL for the authority and the token endpoint),
so the provider is served over TLS on 127.0.0.1 with a certificate from a throw-away test authority, which
MSAL is told to trust (`verify=`). MSAL is blocking: every call into it runs in a thread.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import msal
import pytest
import requests
from aiohttp.test_utils import TestServer, unused_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from oidc_helpers import ADMIN, PORTAL_REDIRECT, POST_ID, POST_SECRET, make_sandbox_tls, tx_of

from sandbox import SandboxSettings, create_sandbox_app
from sandbox.config import OidcClient
from sandbox.oidc_directory import ORGANIZATIONS, TENANT_GENERIC, TENANT_MAIN, TENANT_OTHER

_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
GENERIC_ADMIN = ("admin@generic-idp.example", "generic-admin-pw")


@dataclasses.dataclass
class Provider:
    base: str  # https://127.0.0.1:<port>
    ca_path: Path
    browser: aiohttp.ClientSession  # plays the user's browser, trusting the test authority
    msal_sessions: list[requests.Session]  # closed when the test ends


@pytest.fixture
async def provider(aiohttp_server: Callable[..., Awaitable[TestServer]], settings: SandboxSettings,
                   tmp_path: Path) -> Any:
    """The sandbox over https on 127.0.0.1 with the portal registered (client_secret_post)."""
    tls = make_sandbox_tls(tmp_path)
    port = unused_port()
    base = f"https://127.0.0.1:{port}"
    app = create_sandbox_app(dataclasses.replace(settings, base_url=base, oidc_clients=(
        OidcClient(POST_ID, (PORTAL_REDIRECT,), "client_secret_post", client_secret=POST_SECRET),)))
    await aiohttp_server(app, port=port, ssl=tls.server_context)
    # unsafe=True: like a browser, keep cookies set by an IP-address host.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=10)) as browser:
        found = Provider(base, tls.ca_path, browser, [])
        try:
            yield found
        finally:
            for session in found.msal_sessions:
                session.close()


def _msal_app(provider: Provider, tenant: str) -> msal.ConfidentialClientApplication:
    # MSAL's own `verify=` is overridden by REQUESTS_CA_BUNDLE when the environment sets it (requests merges
    # the environment over the session's setting), so MSAL gets a session that ignores the environment.
    http = requests.Session()
    http.trust_env = False
    http.verify = str(provider.ca_path)
    provider.msal_sessions.append(http)
    return msal.ConfidentialClientApplication(
        POST_ID, client_credential=POST_SECRET, oidc_authority=f"{provider.base}/idp/{tenant}/v2.0",
        http_client=http, timeout=10)


async def _browser_sign_in(provider: Provider, auth_uri: str, user: tuple[str, str]) -> dict[str, str]:
    """Follow MSAL's auth_uri as a browser: sign in, and answer the fields the form_post response carries."""
    async with provider.browser.get(auth_uri, allow_redirects=False) as r:
        page = await r.text()
        assert r.status == 200, page
    tenant_path = auth_uri.split("/oauth2/", 1)[0]
    async with provider.browser.post(tenant_path + "/login", allow_redirects=False,
                                     data={"tx": tx_of(page), "username": user[0], "password": user[1]}) as r:
        page = await r.text()
        assert r.status == 200, page
    assert f'action="{PORTAL_REDIRECT}"' in page
    return {name: unescape(value) for name, value in _FIELD.findall(page)}


async def _msal_sign_in(provider: Provider, tenant: str, user: tuple[str, str], **flow_args: Any) -> dict[str, Any]:
    app = await asyncio.to_thread(_msal_app, provider, tenant)
    flow = await asyncio.to_thread(app.initiate_auth_code_flow, [], redirect_uri=PORTAL_REDIRECT,
                                   response_mode="form_post", **flow_args)
    answer = await _browser_sign_in(provider, flow["auth_uri"], user)
    result: dict[str, Any] = await asyncio.to_thread(app.acquire_token_by_auth_code_flow, flow, answer)
    assert "error" not in result, result
    result["_flow"] = flow
    return result


async def test_msal_runs_the_authorization_code_flow_against_the_provider(provider: Provider) -> None:
    result = await _msal_sign_in(provider, TENANT_MAIN, ADMIN)
    claims = result["id_token_claims"]
    assert claims["iss"] == f"{provider.base}/idp/{TENANT_MAIN}/v2.0"
    assert claims["aud"] == POST_ID and claims["tid"] == TENANT_MAIN
    assert claims["preferred_username"] == ADMIN[0]
    # MSAL sends the SHA-256 of its own nonce and compares the id_token's nonce with that hash.
    assert claims["nonce"] == hashlib.sha256(result["_flow"]["nonce"].encode()).hexdigest()


async def test_msal_sends_s256_where_discovery_does_not_list_it(provider: Provider) -> None:
    app = await asyncio.to_thread(_msal_app, provider, TENANT_MAIN)
    flow = await asyncio.to_thread(app.initiate_auth_code_flow, [], redirect_uri=PORTAL_REDIRECT,
                                   response_mode="form_post")
    assert "code_challenge_method=S256" in flow["auth_uri"]


async def test_msal_passes_the_rfc_9207_iss_through_without_checking_it(provider: Provider) -> None:
    result = await _msal_sign_in(provider, TENANT_GENERIC, GENERIC_ADMIN)
    assert result["id_token_claims"]["tid"] == TENANT_GENERIC


async def test_msal_max_age_gets_an_auth_time(provider: Provider) -> None:
    result = await _msal_sign_in(provider, TENANT_MAIN, ADMIN, max_age=300, prompt="login")
    assert result["id_token_claims"]["auth_time"] > 0


@pytest.mark.parametrize("kwargs", [
    {"oidc_authority": "http://127.0.0.1:8081/idp/" + TENANT_MAIN + "/v2.0"},
    {"authority": "http://127.0.0.1:8081/idp/" + TENANT_MAIN, "validate_authority": False, "instance_discovery": False},
], ids=["oidc_authority", "authority"])
def test_msal_refuses_a_plain_http_authority(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="https"):
        msal.ConfidentialClientApplication(POST_ID, client_credential=POST_SECRET, **kwargs)


async def test_msal_at_the_organizations_endpoint_hands_back_another_tenants_user_unchecked(provider: Provider) -> None:
    result = await _msal_sign_in(provider, ORGANIZATIONS, ("admin@other-clinic.example", "impostor-sandbox-pw"))
    claims = result["id_token_claims"]
    # MSAL accepts it: checking tid and iss against the organisation is the portal's job.
    assert claims["tid"] == TENANT_OTHER and claims["email"] == "admin@sandbox-health.example"


async def test_msal_with_a_certificate_authenticates_by_private_key_jwt(
    aiohttp_server: Callable[..., Awaitable[TestServer]], settings: SandboxSettings, tmp_path: Path,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "visitgate portal")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    tls = make_sandbox_tls(tmp_path)
    port = unused_port()
    base = f"https://127.0.0.1:{port}"
    app = create_sandbox_app(dataclasses.replace(settings, base_url=base, oidc_clients=(
        OidcClient("portal-cert", (PORTAL_REDIRECT,), "private_key_jwt", jwks={"keys": [jwk]}),)))
    await aiohttp_server(app, port=port, ssl=tls.server_context)
    http = requests.Session()
    http.trust_env = False
    http.verify = str(tls.ca_path)
    credential = {
        "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
        "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        try:
            msal_app = await asyncio.to_thread(
                msal.ConfidentialClientApplication, "portal-cert", client_credential=credential,
                oidc_authority=f"{base}/idp/{TENANT_MAIN}/v2.0", http_client=http, timeout=10)
            flow = await asyncio.to_thread(msal_app.initiate_auth_code_flow, [], redirect_uri=PORTAL_REDIRECT,
                                           response_mode="form_post")
            answer = await _browser_sign_in(Provider(base, tls.ca_path, browser, []), flow["auth_uri"], ADMIN)
            result = await asyncio.to_thread(msal_app.acquire_token_by_auth_code_flow, flow, answer)
        finally:
            http.close()
    assert "error" not in result, result
    assert result["id_token_claims"]["aud"] == "portal-cert"
