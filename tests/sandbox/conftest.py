"""Fixtures for the sandbox EHR's tests: a sandbox app per test, clients of each auth method, and a
JWKS server on 127.0.0.1 for the private_key_jwt client's public keys."""
from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

# `pytest` run as a script does not put the repository root on sys.path, and the project may not be
# installed into the venv yet; the sandbox package sits next to tests/.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sandbox import SandboxClient, SandboxSettings, create_sandbox_app  # noqa: E402
from sandbox_helpers import (  # noqa: E402
    APP_LAUNCH_URL, BASE_URL, BASIC_ID, BASIC_SECRET, JWT_ID, PATIENT_LAUNCH_URL, PUBLIC_ID, REDIRECT_URI,
    ClientKeys, public_jwk,
)


@pytest.fixture
async def client_keys(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> ClientKeys:
    """A tiny JWKS server on 127.0.0.1 with an RS384 and an ES384 key."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    published = {"keys": [public_jwk(rsa_key, "rsa-1", "RS384"), public_jwk(ec_key, "ec-1", "ES384")]}
    fetches: list[float] = []

    async def serve(request: web.Request) -> web.Response:
        fetches.append(time.time())
        return web.json_response(published)

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    server = await aiohttp_server(app)
    return ClientKeys(rsa_key, ec_key, str(server.make_url("/jwks.json")), published, fetches)


@pytest.fixture
def settings(client_keys: ClientKeys) -> SandboxSettings:
    """Sandbox settings with one client of each authentication method and test controls on."""
    return SandboxSettings(
        base_url=BASE_URL,
        app_launch_url=APP_LAUNCH_URL,
        patient_launch_url=PATIENT_LAUNCH_URL,
        clients=(
            SandboxClient(PUBLIC_ID, (REDIRECT_URI,), "none"),
            SandboxClient(BASIC_ID, (REDIRECT_URI,), "client_secret_basic", client_secret=BASIC_SECRET),
            SandboxClient(JWT_ID, (REDIRECT_URI,), "private_key_jwt", jwks_url=client_keys.jwks_url),
        ),
        test_controls=True,
    )


@pytest.fixture
async def ehr(aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], settings: SandboxSettings) -> TestClient[Any, Any]:
    """An HTTP client talking to a fresh sandbox EHR."""
    return await aiohttp_client(create_sandbox_app(settings))


