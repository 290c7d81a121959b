"""Discovery: the SMART configuration, the CapabilityStatement and the sandbox's JWKS."""
from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from sandbox_helpers import BASE_URL, FHIR_BASE, TOKEN_URL

from sandbox import FAULTS


async def test_smart_configuration_names_endpoints_and_s256(ehr: TestClient[Any, Any]) -> None:
    r = await ehr.get("/fhir/.well-known/smart-configuration")
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["issuer"] == FHIR_BASE
    assert doc["jwks_uri"] == BASE_URL + "/oauth/jwks"
    assert doc["authorization_endpoint"] == BASE_URL + "/oauth/authorize"
    assert doc["token_endpoint"] == TOKEN_URL
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert set(doc["token_endpoint_auth_methods_supported"]) == {"private_key_jwt", "client_secret_basic"}
    assert set(doc["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert "openid" in doc["scopes_supported"]
    for capability in ("launch-ehr", "client-public", "client-confidential-symmetric",
                       "client-confidential-asymmetric", "context-ehr-patient", "context-ehr-encounter",
                       "sso-openid-connect", "permission-offline", "permission-patient", "permission-user",
                       "permission-v2"):
        assert capability in doc["capabilities"]
    assert "launch-standalone" in doc["capabilities"]
    assert "authorize-post" not in doc["capabilities"]


async def test_discovery_fault_advertises_only_plain(ehr: TestClient[Any, Any]) -> None:
    ehr.server.app[FAULTS].discovery_without_s256 = True
    doc = await (await ehr.get("/fhir/.well-known/smart-configuration")).json()
    assert doc["code_challenge_methods_supported"] == ["plain"]


async def test_metadata_is_an_r4_capability_statement_with_oauth_uris(ehr: TestClient[Any, Any]) -> None:
    r = await ehr.get("/fhir/metadata")
    assert r.status == 200, await r.text()
    assert r.content_type == "application/fhir+json"
    cs = await r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"].startswith("4.0")
    ext = cs["rest"][0]["security"]["extension"][0]
    assert ext["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    uris = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert uris == {"authorize": BASE_URL + "/oauth/authorize", "token": TOKEN_URL}


async def test_discovery_and_metadata_ignore_fhir_faults(ehr: TestClient[Any, Any]) -> None:
    ehr.server.app[FAULTS].fhir_status = 503
    assert (await ehr.get("/fhir/metadata")).status == 200
    assert (await ehr.get("/fhir/.well-known/smart-configuration")).status == 200


async def test_jwks_publishes_one_rsa_signing_key(ehr: TestClient[Any, Any]) -> None:
    keys = (await (await ehr.get("/oauth/jwks")).json())["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "RSA" and keys[0]["kid"] and "d" not in keys[0]
