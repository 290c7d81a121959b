"""Constants and helpers shared by the sandbox tests (a plain module, so tests import it by name)."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sandbox import create_launch

BASE_URL = "http://localhost:8081"
FHIR_BASE = BASE_URL + "/fhir"
TOKEN_URL = BASE_URL + "/oauth/token"
APP_LAUNCH_URL = "http://127.0.0.1:8080/launch"
PATIENT_LAUNCH_URL = "http://127.0.0.1:8080/patient/launch"
REDIRECT_URI = "http://127.0.0.1:8080/launch/callback"
PUBLIC_ID = "public-app"
BASIC_ID = "basic-app"
BASIC_SECRET = "s3cret-for-tests"
JWT_ID = "jwt-app"
PROVIDER_SCOPE = "launch openid fhirUser online_access user/*.rs user/Encounter.cu"


@dataclass
class ClientKeys:
    """The private_key_jwt client's keys and the server that publishes their public halves."""

    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    jwks_url: str
    published: dict[str, Any]  # mutable: tests may add or remove keys
    fetches: list[float]  # one entry per JWKS request


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


def pkce_pair() -> tuple[str, str]:
    """A code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(location: str) -> dict[str, str]:
    """The single-valued query parameters of a redirect Location."""
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def provider_launch(ehr: TestClient[Any, Any], **overrides: Any) -> str:
    """A launch for prac-1 opening enc-1 of pat-1, created in process."""
    args: dict[str, Any] = {"practitioner_id": "prac-1", "patient_id": "pat-1", "encounter_id": "enc-1", "appointment_id": "appt-1"}
    args.update(overrides)
    return create_launch(ehr.server.app, **args)


def authorize_params(**overrides: Any) -> dict[str, str]:
    """A correct authorize request for the public client; overrides replace or (with None) remove params."""
    params = {
        "response_type": "code",
        "client_id": PUBLIC_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": PROVIDER_SCOPE,
        "state": "state-123",
        "aud": FHIR_BASE,
        "code_challenge_method": "S256",
        "nonce": "nonce-456",
    }
    for key, value in overrides.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return params


async def get_code(ehr: TestClient[Any, Any], challenge: str, **overrides: Any) -> str:
    """Run /oauth/authorize and return the code from the redirect."""
    params = authorize_params(code_challenge=challenge, **overrides)
    if "launch" not in params and "launch" in params["scope"].split():
        params["launch"] = provider_launch(ehr)
    r = await ehr.get("/oauth/authorize", params=params, allow_redirects=False)
    assert r.status == 302, await r.text()
    q = query_of(r.headers["Location"])
    assert "code" in q, q
    return q["code"]


def client_assertion(
    keys: ClientKeys, *, alg: str = "RS384", kid: str | None = None, **claims: Any
) -> str:
    """A signed client assertion for the JWT client; claims override the correct defaults."""
    now = int(time.time())
    body: dict[str, Any] = {"iss": JWT_ID, "sub": JWT_ID, "aud": TOKEN_URL, "exp": now + 240, "iat": now, "jti": str(uuid.uuid4())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    key = keys.rsa_key if alg.startswith("RS") else keys.ec_key
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid or ("rsa-1" if alg.startswith("RS") else "ec-1")})


def assertion_form(keys: ClientKeys, **kwargs: Any) -> dict[str, str]:
    """Token-request fields that authenticate the JWT client."""
    return {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion(keys, **kwargs),
    }


def basic_header(client_id: str = BASIC_ID, secret: str = BASIC_SECRET) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def token_for(ehr: TestClient[Any, Any], scope: str = PROVIDER_SCOPE, **launch: Any) -> dict[str, Any]:
    """A full public-client launch; returns the token response."""
    verifier, challenge = pkce_pair()
    overrides: dict[str, Any] = {"scope": scope}
    if launch:
        overrides["launch"] = provider_launch(ehr, **launch)
    code = await get_code(ehr, challenge, **overrides)
    r = await ehr.post(
        "/oauth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
              "code_verifier": verifier, "client_id": PUBLIC_ID},
    )
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body
