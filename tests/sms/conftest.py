"""Fixtures of the SMS tests: the carrier doubles on 127.0.0.1 and a gateway configured to send through one."""
from __future__ import annotations

import base64
import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from gateway import Settings, create_app
from gateway.web import runner_options
from sandbox.carriers import AcsDouble, TwilioDouble

ACS_KEY = base64.b64encode(b"k" * 64).decode()
ACS_NUMBER = "+18005550100"
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-" + "t" * 14
TWILIO_NUMBER = "+12065550100"
WEBHOOK_SECRET = "event-grid-secret-" + "s" * 16
PATIENT = "+12065550142"
"""A patient's mobile number (valid, fictitious); as typed in the EHR: "(206) 555-0142" in the US."""


@dataclass
class Carrier:
    """A double serving on 127.0.0.1 and where it is."""

    url: str
    acs: AcsDouble
    twilio: TwilioDouble


@dataclass
class Gateway:
    """A running gateway, its URL and its application."""

    url: str
    app: web.Application
    server: TestServer


@pytest.fixture
async def carrier() -> AsyncIterator[Carrier]:
    """Both carrier doubles in one server: ACS at /acs, Twilio at /twilio."""
    acs = AcsDouble(access_key=base64.b64decode(ACS_KEY), owned_number=ACS_NUMBER)
    twilio = TwilioDouble(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN, numbers={TWILIO_NUMBER})
    app = web.Application()
    acs.add_routes(app.router, "/acs")
    twilio.add_routes(app.router, "/twilio")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Carrier(str(server.make_url("")).rstrip("/"), acs, twilio)
    finally:
        await server.close()


def carrier_settings(kind: str, carrier: Carrier) -> dict[str, Any]:
    """Gateway settings that send SMS through one of the doubles."""
    if kind == "acs":
        return dict(sms_provider="acs", acs_endpoint=f"{carrier.url}/acs", acs_access_key=ACS_KEY,
                    sms_from=ACS_NUMBER, sms_webhook_secret=WEBHOOK_SECRET)
    return dict(sms_provider="twilio", twilio_account_sid=TWILIO_SID, twilio_auth_token=TWILIO_TOKEN,
                twilio_api_url=f"{carrier.url}/twilio", sms_from=TWILIO_NUMBER)


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(database_url: str, signing_key_pem: bytes) -> AsyncIterator[StartGateway]:
    """Start gateways (each with the settings given) on the test's database; all are stopped at the end."""
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> Gateway:
        port = unused_port()
        url = f"http://127.0.0.1:{port}"
        settings = Settings(public_url=url, secret_key=SECRET, signing_key_pem=signing_key_pem,
                            database_url=database_url, port=port, http_timeout=5, organisation_name="Riverside Clinic",
                            phone_region="US")
        app = create_app(dataclasses.replace(settings, **overrides))
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server(**runner_options())
        servers.append(server)
        return Gateway(url, app, server)

    try:
        yield start
    finally:
        for server in reversed(servers):
            await server.close()


SECRET = secrets.token_bytes(32)
"""The gateway key, the same for every gateway of a test run (as for processes of one installation)."""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client (the carriers' side)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session
