"""Fixtures of the portal's tests: the gateway on http://127.0.0.1 and the sandbox's OpenID provider over TLS
(MSAL refuses plain http authorities) with a throw-away test CA, an organisation at the sandbox's main tenant
with one member per role, and a cookie-keeping browser."""
from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from config_portal.organisations import NewOrganisation, add_organisation, grant
from gateway import Settings, create_app
from gateway.appkeys import DB, SEALER, SETTINGS
from gateway.web import runner_options

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from oidc_helpers import make_sandbox_tls  # noqa: E402

from sandbox import SandboxClient, SandboxSettings, create_sandbox_app  # noqa: E402
from sandbox.config import OidcClient  # noqa: E402
from sandbox.oidc_directory import (  # noqa: E402
    GROUP_ADMINS, GROUP_APPROVERS, TENANT_GENERIC, TENANT_MAIN, USERS, OidcUser,
)

CLIENT_ID = "visitgate-portal-test"
CLIENT_SECRET = "portal-test-secret-" + "x" * 16
ORG = "sandbox-health"
GENERIC_ORG = "generic-health"
_TX = re.compile(r'name="tx" value="([^"]+)"')


def user(username: str) -> OidcUser:
    """A sandbox test user by user name."""
    return next(u for u in USERS if u.username == username)


ADMIN = user("admin@sandbox-health.example")
APPROVER = user("approver@sandbox-health.example")
READER = user("reader@sandbox-health.example")
OUTSIDER = user("outsider@sandbox-health.example")
IMPOSTOR = user("admin@other-clinic.example")
GENERIC_ADMIN = user("admin@generic-idp.example")
MEMBERS = {"admin": ADMIN, "approver": APPROVER, "report_reader": READER}


@dataclass
class Portal:
    """The running gateway and OpenID provider, and a browser."""

    gateway_url: str
    idp_url: str
    gateway_app: web.Application
    idp_app: web.Application
    browser: aiohttp.ClientSession
    database_url: str

    async def start(self, org: str = ORG) -> aiohttp.ClientResponse:
        """Follow "Sign in" on the organisation's landing page; answers the redirect (not followed)."""
        landing = await self.get(f"/portal/{org}/sign-in")
        assert landing.status == 200, await landing.text()
        assert f'href="/portal/{org}/sign-in/start"' in await landing.text()
        return await self.get(f"/portal/{org}/sign-in/start")

    async def at_idp(self, auth_uri: str, who: OidcUser) -> str:
        """At the provider: open the authorize URL, sign in as who; answers the callback URL it redirects to."""
        async with self.browser.get(auth_uri, allow_redirects=False) as r:
            page = await r.text()
            if r.status == 302:  # signed in there already (single sign-on)
                return r.headers["Location"]
            assert r.status == 200, page
        tx = _TX.search(page)
        assert tx, page
        login = auth_uri.split("/oauth2/", 1)[0] + "/login"
        async with self.browser.post(login, data={"tx": tx.group(1), "username": who.username,
                                                  "password": who.password}, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
            location = r.headers["Location"]
        assert location.startswith(f"{self.gateway_url}/portal/callback?"), location
        return location

    async def get(self, url: str, **kw: Any) -> aiohttp.ClientResponse:
        """GET without following redirects, body read."""
        r = await self.browser.get(url if url.startswith("http") else self.gateway_url + url,
                                   allow_redirects=False, **kw)
        await r.read()
        return r

    async def sign_in(self, who: OidcUser, org: str = ORG) -> aiohttp.ClientResponse:
        """The whole sign-in; answers the callback's response (303 to the portal home when it worked)."""
        started = await self.start(org)
        assert started.status == 302, await started.text()
        return await self.get(await self.at_idp(started.headers["Location"], who))

    async def idp_control(self, path: str, body: dict[str, Any]) -> None:
        """POST to one of the sandbox's test controls."""
        async with self.browser.post(f"{self.idp_url}/_sandbox/oidc/{path}", json=body) as r:
            assert r.status == 200, await r.text()

    def session_cookie(self) -> str | None:
        """The portal session cookie the browser holds, if any."""
        for cookie in self.browser.cookie_jar:
            if cookie.key == "__Host-vg_portal":
                return cookie.value
        return None

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Run a query on the gateway's database (to age sessions or read what was stored)."""
        async with self.gateway_app[DB].acquire() as conn:
            return list(await conn.fetch(query, *args))


def query_of(url: str) -> dict[str, str]:
    """A URL's query parameters (first values)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@pytest.fixture
def portal_settings() -> dict[str, Any]:
    """Extra gateway settings for a test (a test overrides this fixture)."""
    return {}


@pytest.fixture
def extra_routes() -> list[tuple[str, str, Any]]:
    """Routes a test adds to the gateway before it starts (method, path, handler)."""
    return []


@pytest.fixture
async def portal(database_url: str, signing_key_pem: bytes, tmp_path: Path, portal_settings: dict[str, Any],
                 extra_routes: list[tuple[str, str, Any]]) -> AsyncIterator[Portal]:
    """The gateway and the sandbox's OpenID provider (https), with the organisation and its members set up."""
    tls = make_sandbox_tls(tmp_path)
    gw_port, idp_port = unused_port(), unused_port()
    gateway_url, idp_url = f"http://127.0.0.1:{gw_port}", f"https://127.0.0.1:{idp_port}"
    idp_app = create_sandbox_app(SandboxSettings(
        base_url=idp_url, app_launch_url=f"{gateway_url}/launch", test_controls=True,
        oidc_clients=(OidcClient(CLIENT_ID, (f"{gateway_url}/portal/callback",), "client_secret_post",
                                 client_secret=CLIENT_SECRET),)))
    settings = Settings(public_url=gateway_url, secret_key=secrets.token_bytes(32), signing_key_pem=signing_key_pem,
                        database_url=database_url, port=gw_port, http_timeout=5, idp_ca_file=tls.ca_path)
    settings = dataclasses.replace(settings, **portal_settings)
    gateway_app = create_app(settings)
    for method, path, handler in extra_routes:
        gateway_app.router.add_route(method, path, handler)
    idp_server = TestServer(idp_app, host="127.0.0.1", port=idp_port)
    gateway_server = TestServer(gateway_app, host="127.0.0.1", port=gw_port)
    await idp_server.start_server(ssl=tls.server_context, access_log=logging.getLogger("sandbox.access"))
    try:
        await gateway_server.start_server(**runner_options())
        try:
            async with gateway_app[DB].acquire() as conn:
                sealer = gateway_app[SEALER]
                await add_organisation(conn, sealer, NewOrganisation(
                    slug=ORG, name="Sandbox Health", idp_kind="entra", tenant_id=TENANT_MAIN,
                    entra_host=f"{idp_url}/idp", client_id=CLIENT_ID, client_secret=CLIENT_SECRET), "test-operator")
                await add_organisation(conn, sealer, NewOrganisation(
                    slug=GENERIC_ORG, name="Generic Health", idp_kind="oidc",
                    issuer=f"{idp_url}/idp/{TENANT_GENERIC}/v2.0", client_id=CLIENT_ID,
                    client_secret=CLIENT_SECRET), "test-operator")
                # One member per way of matching: the admin by subject (Entra's oid) and by the admins' group,
                # the approver by group, the report reader by email.
                await grant(conn, ORG, "admin", "subject", ADMIN.oid, "test-operator")
                await grant(conn, ORG, "admin", "group", GROUP_ADMINS, "test-operator")
                await grant(conn, ORG, "approver", "group", GROUP_APPROVERS, "test-operator")
                await grant(conn, ORG, "report_reader", "email", READER.email, "test-operator")
                await grant(conn, GENERIC_ORG, "admin", "subject", GENERIC_ADMIN.sub, "test-operator")
            # unsafe: keep cookies of an IP-address host; treat_as_secure_origin: as browsers treat
            # http://127.0.0.1, keep and send the gateway's Secure (__Host-) cookies over plain http.
            jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[gateway_url])
            async with aiohttp.ClientSession(cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=tls.client_context),
                                             timeout=aiohttp.ClientTimeout(total=20)) as browser:
                yield Portal(gateway_url, idp_url, gateway_app, idp_app, browser, database_url)
        finally:
            await gateway_server.close()
    finally:
        await idp_server.close()


# --- an EHR for the configuration and approval flows --------------------------------------------------------

EHR_CLIENT_ID = "visitgate-portal-ehr-client"
EHR_CLIENT_ID_2 = "visitgate-portal-ehr-client-2"  # a second registration, for changing the client ID
EHR_PRACTITIONER = ("ben.placeholder", "ben-ehr-pw")  # the sandbox EHR's practitioner and password


@dataclass
class Ehr:
    """The sandbox EHR over plain http on another host name (as a real EHR is another site)."""

    url: str
    app: web.Application

    @property
    def fhir_base(self) -> str:
        """Its FHIR base URL (the SMART `iss`)."""
        return f"{self.url}/fhir"


@pytest.fixture
def ehr_port() -> int:
    """The sandbox EHR's port, known before the gateway starts (a browser test lets the EHR frame the gateway)."""
    return unused_port()


@pytest.fixture
async def ehr(portal: Portal, ehr_port: int) -> AsyncIterator[Ehr]:
    """The sandbox EHR, with the gateway's client registered for the launch and for the portal's approver
    sign-in (both redirect URIs), and the organisation's approver granted by subject (a configuration names one
    person as its approver)."""
    settings = portal.gateway_app[SETTINGS]
    port = ehr_port
    url = f"http://localhost:{port}"
    redirect_uris = (settings.redirect_uri, f"{portal.gateway_url}/portal/ehr-callback")
    app = create_sandbox_app(SandboxSettings(
        base_url=url, app_launch_url=f"{portal.gateway_url}/launch", test_controls=True,
        clients=tuple(SandboxClient(client_id=client_id, auth_method="private_key_jwt", jwks_url=settings.jwks_url,
                                    redirect_uris=redirect_uris) for client_id in (EHR_CLIENT_ID, EHR_CLIENT_ID_2))))
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server(access_log=logging.getLogger("sandbox.access"))
    async with portal.gateway_app[DB].acquire() as conn:
        await grant(conn, ORG, "approver", "subject", APPROVER.oid, "test-operator")
    try:
        yield Ehr(url, app)
    finally:
        await server.close()
