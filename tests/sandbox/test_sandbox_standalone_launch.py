"""SMART standalone launch at the sandbox EHR: no `launch`, so the EHR's sign-in page asks which practitioner is
there; the right password gives a code whose token answer names the practitioner and no patient."""
from __future__ import annotations

import re
from typing import Any

import jwt
from aiohttp.test_utils import TestClient
from sandbox_helpers import (
    BASIC_ID, FHIR_BASE, PUBLIC_ID, REDIRECT_URI, authorize_params, basic_header, pkce_pair, query_of,
)

Client = TestClient[Any, Any]
STANDALONE_SCOPE = "openid fhirUser user/Practitioner.rs"
BEN = ("ben.placeholder", "ben-ehr-pw")
_TX = re.compile(r'name="tx" value="([^"]+)"')


async def _page(ehr: Client, **overrides: Any) -> Any:
    _, challenge = pkce_pair()
    params = authorize_params(code_challenge=challenge, scope=STANDALONE_SCOPE, **overrides)
    return await ehr.get("/oauth/authorize", params=params, allow_redirects=False)


async def _tx(ehr: Client, challenge: str, **overrides: Any) -> str:
    params = authorize_params(code_challenge=challenge, scope=STANDALONE_SCOPE, **overrides)
    r = await ehr.get("/oauth/authorize", params=params, allow_redirects=False)
    html = await r.text()
    assert r.status == 200, html
    found = _TX.search(html)
    assert found, html
    return found.group(1)


async def _submit(ehr: Client, tx: str, user: tuple[str, str]) -> Any:
    return await ehr.post("/oauth/signin", data={"tx": tx, "username": user[0], "password": user[1]},
                          allow_redirects=False)


async def _code(ehr: Client, user: tuple[str, str] = BEN, **overrides: Any) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    r = await _submit(ehr, await _tx(ehr, challenge, **overrides), user)
    assert r.status == 302, await r.text()
    q = query_of(r.headers["Location"])
    assert q["state"] == "state-123" and q["iss"] == FHIR_BASE
    return q["code"], verifier


async def _redeem(ehr: Client, code: str, verifier: str) -> Any:
    return await ehr.post("/oauth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier, "client_id": PUBLIC_ID})


async def test_standalone_authorize_shows_the_ehrs_sign_in_page_listing_its_practitioners(ehr: Client) -> None:
    r = await _page(ehr)
    html = await r.text()
    assert r.status == 200, html
    assert "Location" not in r.headers
    for name in ("Dr Ada Sandbox", "Dr Ben Placeholder", "Dr Cleo Fixture", "ben.placeholder"):
        assert name in html


async def test_discovery_announces_the_standalone_launch(ehr: Client) -> None:
    doc = await (await ehr.get("/fhir/.well-known/smart-configuration")).json()
    assert "launch-standalone" in doc["capabilities"]


async def test_right_password_gives_an_id_token_naming_the_practitioner_and_no_patient(ehr: Client) -> None:
    code, verifier = await _code(ehr)
    r = await _redeem(ehr, code, verifier)
    body = await r.json()
    assert r.status == 200, body
    assert "patient" not in body and "encounter" not in body and "need_patient_banner" not in body
    kid = jwt.get_unverified_header(body["id_token"])["kid"]
    jwk = next(k for k in (await (await ehr.get("/oauth/jwks")).json())["keys"] if k["kid"] == kid)
    claims = jwt.decode(body["id_token"], jwt.PyJWK(jwk).key, algorithms=["RS256"], audience=PUBLIC_ID,
                        issuer=FHIR_BASE)
    assert claims["fhirUser"] == f"{FHIR_BASE}/Practitioner/prac-2"
    assert claims["sub"] == "prac-2"
    assert claims["nonce"] == "nonce-456"


async def test_the_access_token_reads_the_signed_in_practitioner(ehr: Client) -> None:
    code, verifier = await _code(ehr)
    token = (await (await _redeem(ehr, code, verifier)).json())["access_token"]
    r = await ehr.get("/fhir/Practitioner/prac-2", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200, await r.text()


async def test_wrong_password_is_refused_with_a_clear_page(ehr: Client) -> None:
    _, challenge = pkce_pair()
    r = await _submit(ehr, await _tx(ehr, challenge), (BEN[0], "ada-ehr-pw"))
    html = await r.text()
    assert r.status == 401, html
    assert "do not match" in html
    assert "Location" not in r.headers


async def test_unknown_user_is_refused(ehr: Client) -> None:
    _, challenge = pkce_pair()
    r = await _submit(ehr, await _tx(ehr, challenge), ("nobody", "ben-ehr-pw"))
    assert r.status == 401, await r.text()


async def test_after_a_wrong_password_the_right_one_signs_in(ehr: Client) -> None:
    _, challenge = pkce_pair()
    tx = await _tx(ehr, challenge)
    assert (await _submit(ehr, tx, (BEN[0], "guess"))).status == 401
    assert (await _submit(ehr, tx, BEN)).status == 302


async def test_sign_in_from_another_browser_is_refused(ehr: Client) -> None:
    _, challenge = pkce_pair()
    tx = await _tx(ehr, challenge)
    ehr.session.cookie_jar.clear()
    r = await _submit(ehr, tx, BEN)
    assert r.status == 400 and "another browser" in await r.text()


async def test_unknown_sign_in_is_refused(ehr: Client) -> None:
    r = await _submit(ehr, "made-up", BEN)
    assert r.status == 400, await r.text()


async def test_a_sign_in_finishes_once(ehr: Client) -> None:
    _, challenge = pkce_pair()
    tx = await _tx(ehr, challenge)
    assert (await _submit(ehr, tx, BEN)).status == 302
    assert (await _submit(ehr, tx, BEN)).status == 400


async def test_standalone_code_is_single_use_and_bound_to_the_verifier(ehr: Client) -> None:
    code, verifier = await _code(ehr)
    wrong = await _redeem(ehr, code, pkce_pair()[0])
    assert wrong.status == 400 and (await wrong.json())["error"] == "invalid_grant"
    code, verifier = await _code(ehr)
    assert (await _redeem(ehr, code, verifier)).status == 200
    again = await _redeem(ehr, code, verifier)
    assert again.status == 400 and (await again.json())["error"] == "invalid_grant"


async def test_standalone_launch_for_another_fhir_base_url_is_refused(ehr: Client) -> None:
    r = await _page(ehr, aud="http://localhost:8081/other-fhir")
    assert r.status == 302
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


async def test_standalone_launch_with_an_unregistered_redirect_uri_gets_a_page(ehr: Client) -> None:
    r = await _page(ehr, redirect_uri=REDIRECT_URI + "/")
    assert r.status == 400 and "Location" not in r.headers


async def test_standalone_launch_still_requires_s256(ehr: Client) -> None:
    r = await _page(ehr, code_challenge_method="plain")
    assert r.status == 302
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


async def test_standalone_launch_cannot_ask_for_a_patient_context(ehr: Client) -> None:
    _, challenge = pkce_pair()
    params = authorize_params(code_challenge=challenge, scope="openid fhirUser launch/patient patient/*.rs")
    r = await ehr.get("/oauth/authorize", params=params, allow_redirects=False)
    assert r.status == 302
    assert query_of(r.headers["Location"])["error"] == "invalid_scope"


async def test_confidential_client_redeems_a_standalone_code(ehr: Client) -> None:
    code, verifier = await _code(ehr, client_id=BASIC_ID)
    r = await ehr.post("/oauth/token", headers=basic_header(), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier})
    assert r.status == 200, await r.text()
    claims = jwt.decode((await r.json())["id_token"], options={"verify_signature": False})
    assert claims["fhirUser"].endswith("/Practitioner/prac-2") and claims["aud"] == BASIC_ID
