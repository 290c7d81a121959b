"""Provider launch from the sandbox EHR: the happy path and every refusal."""
from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from gateway.appkeys import DB
from tests.conftest import Stack, reason_code


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_provider_launch_lands_on_provider_view_with_patient_banner(stack: Stack) -> None:
    response, visited = await stack.launch()
    body = await response.text()
    assert response.status == 200, body
    paths = [urlsplit(u).path for u in visited]
    assert paths[:3] == ["/launch", "/oauth/authorize", "/launch/callback"]
    assert len(paths) == 4 and paths[3].startswith("/provider/")
    assert 'id="patient-banner"' in body and 'id="participants"' in body
    from sandbox.appkeys import STORE

    patient = stack.sandbox_app[STORE].get("Patient", "pat-1")
    assert patient is not None
    assert patient["name"][0]["family"] in body


async def test_authorize_redirect_uses_pkce_s256_single_use_state_nonce_and_aud(stack: Stack) -> None:
    response = await stack.get(f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch()}")
    assert response.status == 302
    params = _query(response.headers["Location"])
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 22  # >= 128 bits of base64url
    assert params["nonce"] and params["aud"] == stack.fhir_base
    assert {"launch", "openid", "fhirUser"} <= set(params["scope"].split())
    assert params["redirect_uri"] == f"{stack.gateway_url}/launch/callback"


async def test_launch_from_unapproved_iss_is_refused_without_contacting_it(stack: Stack, aiohttp_server) -> None:
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({})

    stranger = web.Application()
    stranger.router.add_route("*", "/{tail:.*}", record)
    server = await aiohttp_server(stranger)
    response = await stack.get(f"{stack.gateway_url}/launch?iss={server.make_url('/fhir')}&launch=x")
    assert response.status == 403
    assert "Location" not in response.headers
    assert reason_code(await response.text()) == "unknown_iss"
    assert hits == []


@pytest.mark.parametrize("tail", ["x", "/other", "/..", "%3Fq=1", "%23frag"])
async def test_iss_must_match_the_base_not_a_prefix(stack: Stack, tail: str) -> None:
    # A trailing slash is the same base (tests/test_ehr_client.py); anything else is another one.
    response = await stack.get(f"{stack.gateway_url}/launch?iss={stack.fhir_base}{tail}&launch=x")
    assert response.status == 403 and reason_code(await response.text()) == "unknown_iss"


@pytest.mark.parametrize("query, reason", [("launch=abc", "missing_iss"), ("iss={iss}", "missing_launch")])
async def test_launch_with_missing_parameter_is_refused(stack: Stack, query: str, reason: str) -> None:
    response = await stack.get(f"{stack.gateway_url}/launch?" + query.format(iss=stack.fhir_base))
    assert response.status == 400 and reason_code(await response.text()) == reason


async def _callback_url(stack: Stack) -> str:
    """Go as far as the EHR's redirect back to us, and return that URL without visiting it."""
    first = await stack.get(f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch()}")
    authorize = await stack.get(first.headers["Location"])
    assert authorize.status == 302, await authorize.text()
    return authorize.headers["Location"]


async def test_callback_without_state_is_refused(stack: Stack) -> None:
    url = await _callback_url(stack)
    params = _query(url)
    response = await stack.get(f"{stack.gateway_url}/launch/callback?code={params['code']}&iss={params['iss']}")
    assert response.status == 400 and reason_code(await response.text()) == "missing_state"


async def test_reused_state_is_refused(stack: Stack) -> None:
    url = await _callback_url(stack)
    first = await stack.get(url)
    assert first.status == 303, await first.text()
    again = await stack.get(url)
    assert again.status == 400 and reason_code(await again.text()) == "invalid_state"


async def test_state_from_another_launch_is_refused(stack: Stack) -> None:
    url_a, url_b = await _callback_url(stack), await _callback_url(stack)
    a, b = _query(url_a), _query(url_b)
    mixed = f"{stack.gateway_url}/launch/callback?code={a['code']}&state={b['state']}&iss={a['iss']}"
    response = await stack.get(mixed)
    assert response.status == 502 and reason_code(await response.text()) == "token_error"


async def test_forged_state_is_refused(stack: Stack) -> None:
    response = await stack.get(f"{stack.gateway_url}/launch/callback?code=x&state=forged")
    assert response.status == 400 and reason_code(await response.text()) == "invalid_state"


async def test_rfc9207_iss_mismatch_is_refused(stack: Stack, sandbox_faults) -> None:
    sandbox_faults.callback_iss = "https://attacker.invalid/fhir"
    response, _ = await stack.launch()
    assert response.status == 400 and reason_code(await response.text()) == "iss_mismatch"


async def test_discovery_without_s256_is_refused(stack: Stack, sandbox_faults) -> None:
    sandbox_faults.discovery_without_s256 = True
    response, visited = await stack.launch()
    assert response.status == 502 and reason_code(await response.text()) == "discovery_no_s256"
    assert len(visited) == 1  # no redirect to the EHR


@pytest.mark.parametrize("fault, reason", [
    ("bad_signature", "id_token_signature"), ("wrong_aud", "id_token_audience"),
    ("wrong_nonce", "id_token_nonce"), ("expired", "id_token_expired"), ("wrong_iss", "id_token_issuer"),
    ("malformed", "id_token_malformed")])
async def test_bad_id_token_is_refused(stack: Stack, sandbox_faults, fault: str, reason: str) -> None:
    sandbox_faults.id_token = fault
    response, _ = await stack.launch()
    assert response.status == 502 and reason_code(await response.text()) == reason
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM provider_sessions") == 0


@pytest.mark.parametrize("error", ["invalid_grant", "server_error"])
async def test_token_endpoint_error_is_refused(stack: Stack, sandbox_faults, error: str) -> None:
    sandbox_faults.token_error = error
    response, _ = await stack.launch()
    assert response.status == 502 and reason_code(await response.text()) == "token_error"


async def test_fhir_server_error_shows_visit_with_reason_not_500(stack: Stack, sandbox_faults) -> None:
    response, visited = await stack.launch(launch=stack.new_launch())
    assert response.status == 200
    sandbox_faults.fhir_status = 503
    again = await stack.get(visited[-1])
    body = await again.text()
    assert again.status == 200, body
    assert "fhir_unavailable" in body and 'id="participants"' in body


async def test_expired_or_unknown_provider_page_is_refused(stack: Stack) -> None:
    response = await stack.get(f"{stack.gateway_url}/provider/not-a-handle")
    assert response.status == 401 and reason_code(await response.text()) == "session_expired"


async def test_ten_concurrent_launches_of_one_encounter_make_one_visit(stack: Stack) -> None:
    results = await asyncio.gather(*(stack.launch(stack.new_launch(encounter="enc-1")) for _ in range(10)))
    assert [r.status for r, _ in results] == [200] * 10
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM visits") == 1
        assert await conn.fetchval("SELECT count(DISTINCT meeting_id) FROM visits") == 1
        assert await conn.fetchval("SELECT count(*) FROM provider_sessions") == 10


async def test_two_launches_for_two_patients_never_mix(stack: Stack) -> None:
    from sandbox.appkeys import STORE

    store = stack.sandbox_app[STORE]
    first = await stack.get(f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch="
                            f"{stack.new_launch(patient='pat-1', encounter='enc-1')}")
    second = await stack.get(f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch="
                             f"{stack.new_launch(patient='pat-2', encounter='enc-2')}")
    # Finish them in the opposite order, as two tabs might.
    page_b, _ = await stack.follow(second.headers["Location"])
    page_a, _ = await stack.follow(first.headers["Location"])
    body_a, body_b = await page_a.text(), await page_b.text()
    name_1 = store.get("Patient", "pat-1")["name"][0]["family"]
    name_2 = store.get("Patient", "pat-2")["name"][0]["family"]
    assert name_1 in body_a and name_2 not in body_a
    assert name_2 in body_b and name_1 not in body_b


async def test_provider_view_may_be_framed_by_the_ehr_only(stack: Stack) -> None:
    response, _ = await stack.launch()
    csp = response.headers["Content-Security-Policy"]
    assert f"frame-ancestors 'self' {stack.sandbox_url}" in csp
    assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_jwks_publishes_the_key_used_for_private_key_jwt(stack: Stack) -> None:
    response = await stack.get(f"{stack.gateway_url}/.well-known/jwks.json")
    keys = (await response.json())["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "RSA" and keys[0]["alg"] == "RS384" and "d" not in keys[0]


async def test_an_ec_p384_signing_key_works_too(signing_key_pem: bytes) -> None:
    from gateway.security import SigningKey, generate_signing_key_pem

    ec_key = SigningKey.from_pem(generate_signing_key_pem("ec"))
    assert ec_key.alg == "ES384" and ec_key.jwks()["keys"][0]["kty"] == "EC"
    assert SigningKey.from_pem(signing_key_pem).alg == "RS384"


async def test_health_and_readiness(stack: Stack) -> None:
    assert (await stack.get(f"{stack.gateway_url}/healthz")).status == 200
    ready = await stack.get(f"{stack.gateway_url}/readyz")
    assert ready.status == 200 and (await ready.json())["database"] == "ok"
    # Counters are for the operator's Prometheus only: with no metrics token configured there is no page.
    assert stack.settings.metrics_token is None
    assert (await stack.get(f"{stack.gateway_url}/metrics")).status == 404


@pytest.mark.parametrize("token", [
    "", "no-dots-at-all", ".payload.sig", "%%%.payload.sig", "W10.payload.sig",   # W10 is "[]"
    "bnVsbA.payload.sig", "eyJ.payload.sig", "//8.payload.sig", "A" * 5000 + ".p.s"])
def test_a_garbled_jws_header_is_a_value_error_never_a_crash(token: str) -> None:
    from gateway.security import jws_header

    with pytest.raises(ValueError):
        jws_header(token)


def test_jws_header_reads_what_pyjwt_reads() -> None:
    import jwt

    from gateway.security import jws_header

    token = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256", headers={"kid": "k1", "typ": "JWT"})
    assert jws_header(token) == jwt.get_unverified_header(token)
