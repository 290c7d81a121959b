"""Fixtures for join links, the patient portal launch and the lobby: the shared stack, but with the sandbox's
patient portal pointed at the gateway's patient launch URL, and helpers that open a visit and issue links."""
from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port

from gateway import Settings, create_app, joinlinks
from gateway.appkeys import DB, SEALER
from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
from gateway.events import patient_participant
from gateway.web import runner_options
from launch import store
from tests.conftest import CLIENT_ID, Stack


@pytest.fixture
async def stack(database_url: str, signing_key_pem: bytes) -> AsyncIterator[Stack]:
    """As tests/conftest.py's stack, with the sandbox's patient portal launching into /launch/patient."""
    from sandbox import SandboxClient, SandboxSettings, create_sandbox_app

    gw_port, sb_port = unused_port(), unused_port()
    gateway_url, sandbox_url = f"http://127.0.0.1:{gw_port}", f"http://localhost:{sb_port}"
    settings = Settings(public_url=gateway_url, secret_key=secrets.token_bytes(32),
                        signing_key_pem=signing_key_pem, database_url=database_url, port=gw_port,
                        frame_ancestors=(sandbox_url,), http_timeout=5)
    sandbox_app = create_sandbox_app(SandboxSettings(
        base_url=sandbox_url, app_launch_url=f"{gateway_url}/launch",
        patient_launch_url=f"{gateway_url}/launch/patient",
        clients=(SandboxClient(client_id=CLIENT_ID, redirect_uris=(settings.redirect_uri,),
                               auth_method="private_key_jwt", jwks_url=settings.jwks_url),)))
    gateway_app = create_app(settings)
    sandbox_server = TestServer(sandbox_app, host="127.0.0.1", port=sb_port)
    gateway_server = TestServer(gateway_app, host="127.0.0.1", port=gw_port)
    await sandbox_server.start_server(access_log=logging.getLogger("sandbox.access"))
    await gateway_server.start_server(**runner_options())
    async with gateway_app[DB].acquire() as conn:
        config_id = await add_approved(conn, gateway_app[SEALER], NewConfiguration(
            fhir_base_url=f"{sandbox_url}/fhir", environment="test", client_id=CLIENT_ID,
            client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="test-operator")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=20)) as browser:
        yield Stack(gateway_url, sandbox_url, gateway_app, sandbox_app, browser, config_id)
    await gateway_server.close()
    await sandbox_server.close()


@pytest.fixture
async def other_browser() -> AsyncIterator[aiohttp.ClientSession]:
    """A second browser: its own cookie jar, so its own session."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=20)) as browser:
        yield browser


@dataclass(frozen=True)
class Invite:
    """A visit, its patient participant and a join link for them."""

    visit_id: UUID
    participant_id: UUID
    token: str


async def open_visit(stack: Stack, encounter: str = "enc-1") -> tuple[UUID, UUID]:
    """The visit of an encounter and its patient participant, made directly in the database."""
    sealer = stack.gateway_app[SEALER]
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id, _meeting, _provider, _patient = await store.find_or_create_visit(
            conn, configuration_id=stack.configuration_id,
            encounter_key=sealer.lookup("encounter", f"{stack.fhir_base}|{encounter}"),
            encounter_ref=sealer.seal(encounter, "visits.encounter_ref"), patient_ref=None,
            meeting_provider="builtin")
        return visit_id, await patient_participant(conn, visit_id)


async def issue(stack: Stack, participant_id: UUID, visit_id: UUID,
                not_after: dt.datetime | None = None) -> str:
    """A join link for the participant, its visit window ending in two hours unless told otherwise."""
    not_after = not_after or dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    async with stack.gateway_app[DB].acquire() as conn:
        return await joinlinks.issue_link(conn, stack.gateway_app, participant_id, visit_id, not_after)


@pytest.fixture
async def invite(stack: Stack) -> Invite:
    """A fresh visit with a join link for its patient."""
    visit_id, participant_id = await open_visit(stack)
    return Invite(visit_id, participant_id, await issue(stack, participant_id, visit_id))


async def post_join(stack: Stack, browser: aiohttp.ClientSession, token: str,
                    origin: str | None = "same") -> aiohttp.ClientResponse:
    """Press the join page's button: POST the token in the body from our own origin (by default)."""
    headers = {} if origin is None else {"Origin": stack.gateway_url if origin == "same" else origin}
    response = await browser.post(f"{stack.gateway_url}/join", data={"t": token}, headers=headers,
                                  allow_redirects=False)
    await response.read()
    return response


async def get_page(browser: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    """GET without following redirects, body read."""
    response = await browser.get(url, allow_redirects=False)
    await response.read()
    return response
