"""The token endpoint: client authentication, PKCE, codes, id_tokens, refresh and backend services."""
from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from sandbox_helpers import (
    BASE_URL, BASIC_ID, FHIR_BASE, JWT_ID, PROVIDER_SCOPE, PUBLIC_ID, REDIRECT_URI, TOKEN_URL, ClientKeys,
    assertion_form, basic_header, client_assertion, get_code, pkce_pair, token_for,
)

from sandbox import FAULTS


def code_form(code: str, verifier: str, **extra: str) -> dict[str, str]:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    form.update(extra)
    return form


async def exchange(ehr: TestClient[Any, Any], form: dict[str, str], headers: dict[str, str] | None = None) -> Any:
    return await ehr.post("/oauth/token", data=form, headers=headers)


async def id_token_claims(ehr: TestClient[Any, Any], token: str, audience: str = PUBLIC_ID) -> dict[str, Any]:
    """Verify an id_token against the sandbox's published JWKS."""
    keys = (await (await ehr.get("/oauth/jwks")).json())["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK(next(k for k in keys if k["kid"] == kid))
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=FHIR_BASE)
    return claims


# --- happy paths, one per client authentication method ------------------------------------------


async def test_public_client_gets_tokens_and_launch_context(ehr: TestClient[Any, Any]) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge)
    r = await exchange(ehr, code_form(code, verifier, client_id=PUBLIC_ID))
    assert r.status == 200, await r.text()
    assert r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["patient"] == "pat-1" and body["encounter"] == "enc-1"
    assert body["need_patient_banner"] is True
    assert body["smart_style_url"] == BASE_URL + "/ehr/smart-style.json"
    assert set(body["scope"].split()) == set(PROVIDER_SCOPE.split())
    assert body["refresh_token"] and body["id_token"]


async def test_client_secret_basic_client_gets_tokens(ehr: TestClient[Any, Any]) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge, client_id=BASIC_ID)
    r = await exchange(ehr, code_form(code, verifier), headers=basic_header())
    assert r.status == 200, await r.text()


async def test_private_key_jwt_client_gets_tokens_with_rs384(ehr: TestClient[Any, Any], client_keys: ClientKeys) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge, client_id=JWT_ID)
    r = await exchange(ehr, code_form(code, verifier, **assertion_form(client_keys)))
    assert r.status == 200, await r.text()


async def test_private_key_jwt_client_gets_tokens_with_es384(ehr: TestClient[Any, Any], client_keys: ClientKeys) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge, client_id=JWT_ID)
    r = await exchange(ehr, code_form(code, verifier, **assertion_form(client_keys, alg="ES384")))
    assert r.status == 200, await r.text()


async def test_unknown_scopes_are_not_granted(ehr: TestClient[Any, Any]) -> None:
    body = await token_for(ehr, scope="launch openid fhirUser user/Observation.rs user/Encounter.rs made/up")
    assert body["scope"].split() == ["launch", "openid", "fhirUser", "user/Encounter.rs"]


# --- client authentication failures -----------------------------------------------------------------


async def test_basic_client_with_wrong_secret_is_refused(ehr: TestClient[Any, Any]) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge, client_id=BASIC_ID)
    r = await exchange(ehr, code_form(code, verifier), headers=basic_header(secret="wrong"))
    assert r.status == 401
    assert (await r.json())["error"] == "invalid_client"
    assert r.headers["WWW-Authenticate"].startswith("Basic")


async def test_basic_client_secret_in_body_is_refused(ehr: TestClient[Any, Any]) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge, client_id=BASIC_ID)
    r = await exchange(ehr, code_form(code, verifier, client_id=BASIC_ID, client_secret="s3cret-for-tests"))
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


async def test_confidential_client_cannot_authenticate_as_public(ehr: TestClient[Any, Any]) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge, client_id=JWT_ID)
    r = await exchange(ehr, code_form(code, verifier, client_id=JWT_ID))
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"aud": FHIR_BASE}, "aud is not the token endpoint"),
        ({"iss": "someone-else"}, "iss is not the client"),
        ({"sub": "someone-else"}, "sub is not the client"),
        ({"exp": None}, "no exp"),
        ({"exp": int(time.time()) + 3600}, "exp too far ahead"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"jti": None}, "no jti"),
        ({"kid": "unknown-kid"}, "key not in the JWKS"),
    ],
)
async def test_bad_client_assertion_is_refused(
    ehr: TestClient[Any, Any], client_keys: ClientKeys, kwargs: dict[str, Any], why: str
) -> None:
    r = await exchange(ehr, {"grant_type": "client_credentials", "scope": "system/Encounter.rs", **assertion_form(client_keys, **kwargs)})
    assert r.status == 401, why
    assert (await r.json())["error"] == "invalid_client", why


async def test_client_assertion_signed_with_rs256_is_refused(ehr: TestClient[Any, Any], client_keys: ClientKeys) -> None:
    now = int(time.time())
    claims = {"iss": JWT_ID, "sub": JWT_ID, "aud": TOKEN_URL, "exp": now + 60, "jti": "x-rs256"}
    assertion = jwt.encode(claims, client_keys.rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    form = {"grant_type": "client_credentials", "scope": "system/Encounter.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": assertion}
    r = await exchange(ehr, form)
    assert r.status == 401


async def test_replayed_client_assertion_is_refused(ehr: TestClient[Any, Any], client_keys: ClientKeys) -> None:
    assertion = client_assertion(client_keys)
    form = {"grant_type": "client_credentials", "scope": "system/Encounter.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": assertion}
    assert (await exchange(ehr, form)).status == 200
    r = await exchange(ehr, form)
    assert r.status == 401 and (await r.json())["error"] == "invalid_client"


async def test_client_jwks_is_cached(ehr: TestClient[Any, Any], client_keys: ClientKeys) -> None:
    for _ in range(3):
        r = await exchange(ehr, {"grant_type": "client_credentials", "scope": "system/Encounter.rs", **assertion_form(client_keys)})
        assert r.status == 200, await r.text()
    assert len(client_keys.fetches) == 1


async def test_rotated_client_key_is_found_by_refetching(ehr: TestClient[Any, Any], client_keys: ClientKeys) -> None:
    form = {"grant_type": "client_credentials", "scope": "system/Encounter.rs"}
    assert (await exchange(ehr, {**form, **assertion_form(client_keys)})).status == 200
    # The client publishes its RSA key under a new kid; the cached set does not have it yet.
    client_keys.published["keys"][0] = {**client_keys.published["keys"][0], "kid": "rsa-2"}
    r = await exchange(ehr, {**form, **assertion_form(client_keys, kid="rsa-2")})
    assert r.status == 200, await r.text()
    assert len(client_keys.fetches) == 2


# --- authorization code rules -------------------------------------------------------------------------


async def test_wrong_pkce_verifier_is_refused(ehr: TestClient[Any, Any]) -> None:
    _, challenge = pkce_pair()
    other_verifier, _ = pkce_pair()
    code = await get_code(ehr, challenge)
    r = await exchange(ehr, code_form(code, other_verifier, client_id=PUBLIC_ID))
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_short_pkce_verifier_is_refused(ehr: TestClient[Any, Any]) -> None:
    _, challenge = pkce_pair()
    code = await get_code(ehr, challenge)
    r = await exchange(ehr, code_form(code, "too-short", client_id=PUBLIC_ID))
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_code_used_twice_is_refused(ehr: TestClient[Any, Any]) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge)
    assert (await exchange(ehr, code_form(code, verifier, client_id=PUBLIC_ID))).status == 200
    r = await exchange(ehr, code_form(code, verifier, client_id=PUBLIC_ID))
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_code_reuse_revokes_the_tokens_it_issued(ehr: TestClient[Any, Any]) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge)
    first = await (await exchange(ehr, code_form(code, verifier, client_id=PUBLIC_ID))).json()
    auth = {"Authorization": f"Bearer {first['access_token']}"}
    assert (await ehr.get("/fhir/Patient/pat-1", headers=auth)).status == 200
    await exchange(ehr, code_form(code, verifier, client_id=PUBLIC_ID))
    assert (await ehr.get("/fhir/Patient/pat-1", headers=auth)).status == 401
    r = await exchange(ehr, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": PUBLIC_ID})
    assert r.status == 400


async def test_code_for_another_redirect_uri_is_refused(ehr: TestClient[Any, Any]) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge)
    form = code_form(code, verifier, client_id=PUBLIC_ID)
    form["redirect_uri"] = "http://127.0.0.1:8080/other"
    r = await exchange(ehr, form)
    assert (await r.json())["error"] == "invalid_grant"


async def test_code_issued_to_another_client_is_refused(ehr: TestClient[Any, Any]) -> None:
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge, client_id=BASIC_ID)
    r = await exchange(ehr, code_form(code, verifier, client_id=PUBLIC_ID))
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_unsupported_grant_type_is_refused(ehr: TestClient[Any, Any]) -> None:
    r = await exchange(ehr, {"grant_type": "password", "client_id": PUBLIC_ID})
    assert (await r.json())["error"] == "unsupported_grant_type"


async def test_json_body_is_refused(ehr: TestClient[Any, Any]) -> None:
    r = await ehr.post("/oauth/token", json={"grant_type": "client_credentials"})
    assert r.status == 400 and (await r.json())["error"] == "invalid_request"


# --- id_token ---------------------------------------------------------------------------------------


async def test_id_token_verifies_and_carries_nonce_and_fhir_user(ehr: TestClient[Any, Any]) -> None:
    body = await token_for(ehr)
    claims = await id_token_claims(ehr, body["id_token"])
    assert claims["nonce"] == "nonce-456"
    assert claims["sub"] == "prac-1"
    assert claims["fhirUser"] == FHIR_BASE + "/Practitioner/prac-1"
    assert claims["exp"] - claims["iat"] == 300


async def test_patient_launch_id_token_names_the_patient(ehr: TestClient[Any, Any]) -> None:
    body = await token_for(
        ehr, scope="launch openid fhirUser patient/*.rs",
        practitioner_id=None, patient_id="pat-2", encounter_id="enc-2", need_patient_banner=False,
    )
    claims = await id_token_claims(ehr, body["id_token"])
    assert claims["fhirUser"] == FHIR_BASE + "/Patient/pat-2"
    assert body["need_patient_banner"] is False


async def test_no_id_token_without_openid(ehr: TestClient[Any, Any]) -> None:
    body = await token_for(ehr, scope="launch user/*.rs")
    assert "id_token" not in body and "refresh_token" not in body


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("bad_signature", jwt.InvalidSignatureError),
        ("wrong_aud", jwt.InvalidAudienceError),
        ("expired", jwt.ExpiredSignatureError),
        ("wrong_iss", jwt.InvalidIssuerError),
    ],
)
async def test_id_token_fault_breaks_verification(ehr: TestClient[Any, Any], fault: str, error: type[Exception]) -> None:
    ehr.server.app[FAULTS].id_token = fault
    body = await token_for(ehr)
    with pytest.raises(error):
        await id_token_claims(ehr, body["id_token"])


async def test_id_token_wrong_nonce_fault_changes_only_the_nonce(ehr: TestClient[Any, Any]) -> None:
    ehr.server.app[FAULTS].id_token = "wrong_nonce"
    claims = await id_token_claims(ehr, (await token_for(ehr))["id_token"])
    assert claims["nonce"] != "nonce-456"
    assert claims["fhirUser"] == FHIR_BASE + "/Practitioner/prac-1"


# --- token endpoint faults -------------------------------------------------------------------------


async def test_token_error_fault_answers_400_with_the_error(ehr: TestClient[Any, Any]) -> None:
    ehr.server.app[FAULTS].token_error = "invalid_grant"
    verifier, challenge = pkce_pair()
    code = await get_code(ehr, challenge)
    r = await exchange(ehr, code_form(code, verifier, client_id=PUBLIC_ID))
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_token_server_error_fault_answers_500(ehr: TestClient[Any, Any]) -> None:
    ehr.server.app[FAULTS].token_error = "server_error"
    r = await exchange(ehr, {"grant_type": "authorization_code", "client_id": PUBLIC_ID})
    assert r.status == 500 and (await r.json())["error"] == "server_error"


# --- refresh -----------------------------------------------------------------------------------------


async def test_refresh_rotates_the_refresh_token_and_keeps_context(ehr: TestClient[Any, Any]) -> None:
    first = await token_for(ehr)
    r = await exchange(ehr, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": PUBLIC_ID})
    assert r.status == 200, await r.text()
    second = await r.json()
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == first["scope"]
    assert second["patient"] == "pat-1" and second["encounter"] == "enc-1"
    auth = {"Authorization": f"Bearer {second['access_token']}"}
    assert (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).status == 200


async def test_rotated_refresh_token_cannot_be_used_again(ehr: TestClient[Any, Any]) -> None:
    first = await token_for(ehr)
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": PUBLIC_ID}
    second = await (await exchange(ehr, form)).json()
    r = await exchange(ehr, form)
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
    # Reuse is treated as theft: the newer token dies too.
    r = await exchange(ehr, {**form, "refresh_token": second["refresh_token"]})
    assert r.status == 400


async def test_refresh_token_of_another_client_is_refused(ehr: TestClient[Any, Any]) -> None:
    first = await token_for(ehr)
    r = await exchange(ehr, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}, headers=basic_header())
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


# --- backend services ------------------------------------------------------------------------------


async def test_client_credentials_gives_a_system_token(ehr: TestClient[Any, Any], client_keys: ClientKeys) -> None:
    r = await exchange(ehr, {"grant_type": "client_credentials", "scope": "system/Encounter.rs system/Encounter.cu",
                             **assertion_form(client_keys)})
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["scope"] == "system/Encounter.rs system/Encounter.cu"
    assert "refresh_token" not in body and "id_token" not in body
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await ehr.get("/fhir/Encounter/enc-3", headers=auth)).status == 200
    assert (await ehr.get("/fhir/Patient/pat-3", headers=auth)).status == 403


async def test_client_credentials_refuses_user_scopes(ehr: TestClient[Any, Any], client_keys: ClientKeys) -> None:
    r = await exchange(ehr, {"grant_type": "client_credentials", "scope": "user/Encounter.rs", **assertion_form(client_keys)})
    assert r.status == 400 and (await r.json())["error"] == "invalid_scope"


async def test_client_credentials_refuses_symmetric_clients(ehr: TestClient[Any, Any]) -> None:
    r = await exchange(ehr, {"grant_type": "client_credentials", "scope": "system/Encounter.rs"}, headers=basic_header())
    assert r.status == 400 and (await r.json())["error"] == "unauthorized_client"
