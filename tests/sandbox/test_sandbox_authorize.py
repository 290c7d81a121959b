"""The authorize endpoint: what it refuses without redirecting, what it redirects as errors, and codes."""
from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from sandbox_helpers import FHIR_BASE, REDIRECT_URI, authorize_params, pkce_pair, provider_launch, query_of

from sandbox import FAULTS, LAUNCHES


async def _authorize(ehr: TestClient[Any, Any], **overrides: Any) -> Any:
    _, challenge = pkce_pair()
    params = authorize_params(code_challenge=challenge, launch=provider_launch(ehr))
    params.update({k: v for k, v in overrides.items() if v is not None})
    for k in [k for k, v in overrides.items() if v is None]:
        params.pop(k, None)
    return await ehr.get("/oauth/authorize", params=params, allow_redirects=False)


async def test_authorize_redirects_with_code_state_and_iss(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr)
    assert r.status == 302, await r.text()
    assert r.headers["Location"].startswith(REDIRECT_URI + "?")
    q = query_of(r.headers["Location"])
    assert q["state"] == "state-123"
    assert q["iss"] == FHIR_BASE
    assert len(q["code"]) >= 22


async def test_unregistered_redirect_uri_gets_a_page_not_a_redirect(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr, redirect_uri="http://127.0.0.1:8080/evil")
    assert r.status == 400
    assert "Location" not in r.headers
    assert "text/html" in r.headers["Content-Type"]


async def test_redirect_uri_must_match_exactly(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr, redirect_uri=REDIRECT_URI + "/")
    assert r.status == 400 and "Location" not in r.headers


async def test_unknown_client_gets_a_page_not_a_redirect(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr, client_id="nobody")
    assert r.status == 400 and "Location" not in r.headers


async def test_wrong_response_type_is_redirected_as_unsupported(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr, response_type="token")
    q = query_of(r.headers["Location"])
    assert q["error"] == "unsupported_response_type" and q["state"] == "state-123"


async def test_missing_code_challenge_is_refused(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr, code_challenge=None)
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


async def test_plain_pkce_is_refused(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr, code_challenge_method="plain")
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


async def test_wrong_aud_is_refused(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr, aud="http://localhost:8081/other-fhir")
    q = query_of(r.headers["Location"])
    assert q["error"] == "invalid_request" and "aud" in q["error_description"]
    assert "code" not in q


async def test_missing_launch_is_refused(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr, launch=None)
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


async def test_unknown_launch_is_refused(ehr: TestClient[Any, Any]) -> None:
    r = await _authorize(ehr, launch="made-up")
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


async def test_expired_launch_is_refused(ehr: TestClient[Any, Any]) -> None:
    launch = provider_launch(ehr)
    ehr.server.app[LAUNCHES].expire(launch)
    r = await _authorize(ehr, launch=launch)
    assert query_of(r.headers["Location"])["error"] == "invalid_request"


async def test_launch_can_be_reused_within_its_lifetime(ehr: TestClient[Any, Any]) -> None:
    launch = provider_launch(ehr)
    for _ in range(2):
        r = await _authorize(ehr, launch=launch)
        assert "code" in query_of(r.headers["Location"])


async def test_launch_ids_are_long_and_random(ehr: TestClient[Any, Any]) -> None:
    a, b = provider_launch(ehr), provider_launch(ehr)
    assert a != b and len(a) >= 22  # 22 base64url characters carry 128 bits


async def test_callback_iss_fault_changes_the_iss_parameter(ehr: TestClient[Any, Any]) -> None:
    ehr.server.app[FAULTS].callback_iss = "https://attacker.example/fhir"
    r = await _authorize(ehr)
    assert query_of(r.headers["Location"])["iss"] == "https://attacker.example/fhir"


async def test_repeated_parameters_are_refused(ehr: TestClient[Any, Any]) -> None:
    _, challenge = pkce_pair()
    params = list(authorize_params(code_challenge=challenge, launch=provider_launch(ehr)).items())
    params.append(("scope", "openid"))
    r = await ehr.get("/oauth/authorize", params=params, allow_redirects=False)
    assert query_of(r.headers["Location"])["error"] == "invalid_request"
