"""Fixtures for join links, the patient portal launch and the lobby: a second browser, and helpers that open
a visit and issue links (the shared `stack` already points the sandbox's patient portal at /launch/patient)."""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import aiohttp
import asyncpg
import jwt
import pytest

from gateway import joinlinks
from gateway.appkeys import DB, SEALER
from gateway.participants import patient_participant
from launch import store
from tests.conftest import Stack


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
                not_after: dt.datetime | None = None, signed: bool = False) -> str:
    """A join link's code (or, signed=True, a signed link as issued before codes) for the participant, its
    visit window ending in two hours unless told otherwise."""
    not_after = not_after or dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    async with stack.gateway_app[DB].acquire() as conn:
        if signed:
            return await issue_signed_link(conn, joinlinks.keys_of(stack.gateway_app), participant_id, visit_id,
                                           not_after)
        return await joinlinks.issue_link(conn, stack.gateway_app, participant_id, visit_id, not_after)


async def issue_signed_link(conn: asyncpg.Connection, keys: joinlinks.JoinKeys, participant_id: UUID,
                            visit_id: UUID, not_after: dt.datetime) -> str:
    """A signed link exactly as the gateway issued them before short codes (its row, then the EdDSA JWT)."""
    now = dt.datetime.now(dt.timezone.utc)
    expires = joinlinks.link_expiry(not_after, now)
    if expires <= now:
        raise ValueError("the visit's window has already passed")
    jti = uuid.uuid4()
    if await conn.fetchval(joinlinks.Q["insert_link"], jti, participant_id, visit_id, expires, None, None) is None:
        raise ValueError("no such participant in this visit")
    claims = {"iss": keys.issuer, "aud": keys.audience, "sub": str(participant_id), "jti": str(jti),
              "iat": int(now.timestamp()), "exp": int(expires.timestamp())}
    return jwt.encode(claims, keys.private_key, algorithm=joinlinks.ALGORITHM,
                      headers={"typ": joinlinks.TOKEN_TYPE, "kid": keys.kid})


@pytest.fixture
async def invite(stack: Stack) -> Invite:
    """A fresh visit with a join link (a short code) for its patient."""
    visit_id, participant_id = await open_visit(stack)
    return Invite(visit_id, participant_id, await issue(stack, participant_id, visit_id))


@pytest.fixture
async def signed_invite(stack: Stack) -> Invite:
    """A fresh visit with a signed link for its patient, as sent before short codes."""
    visit_id, participant_id = await open_visit(stack)
    return Invite(visit_id, participant_id, await issue(stack, participant_id, visit_id, signed=True))


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
