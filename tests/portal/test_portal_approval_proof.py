"""What an approver's EHR sign-in must prove: an EHR double that signs in anybody at once and answers a chosen
fhirUser shows that a user of another EHR, a patient, or an id_token of another sign-in proves nothing, and that
without that proof the revision cannot be approved."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.appkeys import DB, SEALER
from gateway.configurations import NewConfiguration, organisation_id, propose_new
from tests.conftest import reason_code

from .conftest import APPROVER, ORG, Portal, grant, query_of

CLIENT_ID = "approver-proof-client"


class FakeEhr:
    """Discovery, /metadata, an authorize that signs in at once, a token endpoint and a JWKS."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.base = f"{origin}/fhir"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fhir_user: str = f"{self.base}/Practitioner/p1"
        self.nonce_override: str | None = None
        self.nonce = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/fhir/.well-known/smart-configuration", self.discovery)
        app.router.add_get("/fhir/metadata", self.metadata)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/jwks", self.jwks)
        return app

    async def discovery(self, _: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.base, "authorization_endpoint": f"{self.origin}/authorize",
            "token_endpoint": f"{self.origin}/token", "jwks_uri": f"{self.origin}/jwks",
            "code_challenge_methods_supported": ["S256"], "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "grant_types_supported": ["authorization_code"]})

    async def metadata(self, _: web.Request) -> web.Response:
        return web.json_response({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})

    async def authorize(self, request: web.Request) -> web.Response:
        self.nonce = request.query["nonce"]
        back = {"code": "code-1", "state": request.query["state"], "iss": self.base}
        return web.Response(status=302, headers={"Location": f"{request.query['redirect_uri']}?{urlencode(back)}"})

    async def token(self, _: web.Request) -> web.Response:
        now = int(time.time())
        id_token = jwt.encode({"iss": self.base, "aud": CLIENT_ID, "sub": "p1", "iat": now, "exp": now + 300,
                               "nonce": self.nonce_override or self.nonce, "fhirUser": self.fhir_user},
                              self.key, algorithm="RS256", headers={"kid": "k1"})
        return web.json_response({"access_token": "at", "token_type": "Bearer", "expires_in": 300,
                                  "scope": "openid fhirUser", "id_token": id_token})

    async def jwks(self, _: web.Request) -> web.Response:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return web.json_response({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]})


@pytest.fixture
async def fake_ehr(portal: Portal) -> AsyncIterator[FakeEhr]:
    port = unused_port()
    ehr = FakeEhr(f"http://127.0.0.1:{port}")
    server = TestServer(ehr.app(), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield ehr
    finally:
        await server.close()


async def _revision(portal: Portal, ehr: FakeEhr) -> int:
    async with portal.gateway_app[DB].acquire() as conn:
        await grant(conn, ORG, "approver", "subject", APPROVER.oid, "test-operator")
        _, revision_id = await propose_new(conn, portal.gateway_app[SEALER], NewConfiguration(
            fhir_base_url=ehr.base, environment="test", ehr="epic", client_id=CLIENT_ID,
            client_auth="private_key_jwt", approver=APPROVER.oid), "test-admin",
            organisation_id=await organisation_id(conn, ORG))
    assert (await portal.sign_in(APPROVER)).status == 303
    return revision_id


async def _sign_in_at_ehr(portal: Portal, revision_id: int) -> Any:
    start = await portal.get(f"/portal/{ORG}/revisions/{revision_id}/ehr-sign-in")
    assert start.status == 302, await start.text()
    at_ehr = await portal.get(start.headers["Location"])
    assert at_ehr.status == 302
    assert query_of(at_ehr.headers["Location"])["state"]
    return await portal.get(at_ehr.headers["Location"])


async def _approve(portal: Portal, revision_id: int) -> Any:
    r = await portal.browser.post(f"{portal.gateway_url}/portal/{ORG}/revisions/{revision_id}/approve",
                                  data={"reason": ""}, headers={"Origin": portal.gateway_url},
                                  allow_redirects=False)
    await r.read()
    return r


async def test_a_practitioner_of_this_fhir_base_is_the_proof(portal: Portal, fake_ehr: FakeEhr) -> None:
    revision_id = await _revision(portal, fake_ehr)
    back = await _sign_in_at_ehr(portal, revision_id)
    assert back.status == 303, await back.text()
    assert (await _approve(portal, revision_id)).status == 303


@pytest.mark.parametrize(("fhir_user", "reason"), [
    ("https://other-ehr.example.org/fhir/Practitioner/p1", "ehr_other_ehr"),
    ("Patient/pat-1", "ehr_not_practitioner"),
])
async def test_an_ehr_sign_in_as_someone_else_proves_nothing_and_approval_is_refused(
        portal: Portal, fake_ehr: FakeEhr, fhir_user: str, reason: str) -> None:
    fake_ehr.fhir_user = fhir_user
    revision_id = await _revision(portal, fake_ehr)
    back = await _sign_in_at_ehr(portal, revision_id)
    assert back.status == 403 and reason_code(await back.text()) == reason, await back.text()
    rows = await portal.sql("SELECT ehr_fhir_user FROM configuration_revisions WHERE id = $1", revision_id)
    assert rows[0]["ehr_fhir_user"] is None
    refused = await portal.sql("SELECT details->>'reason' AS reason FROM audit_log "
                               "WHERE action = 'configuration.ehr_sign_in_refused'")
    assert [r["reason"] for r in refused] == [reason]
    assert (await _approve(portal, revision_id)).status == 409


async def test_an_id_token_of_another_sign_in_proves_nothing(portal: Portal, fake_ehr: FakeEhr) -> None:
    fake_ehr.nonce_override = "someone-elses-nonce"
    revision_id = await _revision(portal, fake_ehr)
    back = await _sign_in_at_ehr(portal, revision_id)
    assert back.status == 502 and reason_code(await back.text()) == "id_token_nonce", await back.text()
    assert (await _approve(portal, revision_id)).status == 409


async def test_an_ehr_answer_in_another_browser_proves_nothing(portal: Portal, fake_ehr: FakeEhr) -> None:
    revision_id = await _revision(portal, fake_ehr)
    start = await portal.get(f"/portal/{ORG}/revisions/{revision_id}/ehr-sign-in")
    at_ehr = await portal.get(start.headers["Location"])
    jar = portal.browser.cookie_jar
    kept = [c for c in jar if c.key == "__Host-vg_portal_ehr"]
    assert kept and kept[0]["secure"] and kept[0]["httponly"]
    jar.clear(lambda c: c.key == "__Host-vg_portal_ehr")
    back = await portal.get(at_ehr.headers["Location"])
    assert back.status == 400 and reason_code(await back.text()) == "ehr_other_browser", await back.text()
