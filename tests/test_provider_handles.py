"""The handle in a provider page's URL works for minutes; the open page renews it and replaces its URL.

A URL ends up in the EHR browser's history, so a handle copied from there must be of no use later, while the
clinician's open page keeps working for the whole session.
"""
from __future__ import annotations

import json
import re
import secrets
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

import sql
from gateway.appkeys import DB, SETTINGS
from gateway.configurations import DEFAULT_SCOPES
from gateway.db import migrate
from gateway.security import Sealer, new_token, token_hash
from gateway.sessions import BROWSER_COOKIE, BrowserKey, provider_identity
from launch import store
from tests.conftest import Postgres, Stack, reason_code


async def _renew(stack: Stack, handle: str, origin: str | None = None) -> tuple[int, dict[str, Any]]:
    async with stack.browser.post(f"{stack.gateway_url}/provider/{handle}/renew",
                                  headers={"Origin": origin or stack.gateway_url,
                                           "Accept": "application/json"}) as response:
        assert response.headers["Cache-Control"] == "no-store"
        return response.status, await response.json()


async def _age(stack: Stack, handle: str) -> None:
    """Let the handle's time run out (as provider_handle_ttl seconds passing would)."""
    async with stack.gateway_app[DB].acquire() as conn:
        await conn.execute("UPDATE provider_handles SET expires_at = now() - interval '1 second'"
                           " WHERE handle_hash = $1", token_hash(handle))


async def _socket_role(stack: Stack, handle: str) -> str | None:
    """The role a provider-view socket authenticated with handle gets, or None when refused."""
    ws = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    try:
        await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
        msg = await ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        frame = json.loads(msg.data)
        return frame.get("role") if frame.get("type") == "auth_ok" else None
    finally:
        await ws.close()


async def test_the_launch_handle_expires_while_the_renewed_one_keeps_the_page_working(stack: Stack) -> None:
    first = await stack.provider_handle()
    ttl = stack.gateway_app[SETTINGS].provider_handle_ttl
    page = await stack.get(f"{stack.gateway_url}/provider/{first}")
    # The page is told to renew a third of the way into the handle's life.
    found = re.search(r'<meta name="vg-renew-in" content="(\d+)">', await page.text())
    assert found and ttl // 3 - 2 <= int(found.group(1)) <= ttl // 3

    status, renewed = await _renew(stack, first)
    assert status == 200
    second = renewed["handle"]
    assert second != first and len(second) >= 22
    assert ttl - 5 <= renewed["expires_in"] <= ttl and ttl // 3 - 2 <= renewed["renew_in"] <= ttl // 3

    await _age(stack, first)
    # The URL left in the history: the page, the room, the socket and sending links all refuse it.
    stale = await stack.get(f"{stack.gateway_url}/provider/{first}")
    assert stale.status == 401 and reason_code(await stale.text()) == "session_expired"
    assert (await stack.get(f"{stack.gateway_url}/provider/{first}/room")).status == 401
    assert await _socket_role(stack, first) is None
    assert (await _renew(stack, first))[0] == 401
    # The page's current one: everything works, and the room page renews too.
    fresh = await stack.get(f"{stack.gateway_url}/provider/{second}")
    assert fresh.status == 200 and f"/provider/{second}/room" in await fresh.text()
    room = await stack.get(f"{stack.gateway_url}/provider/{second}/room")
    assert room.status == 200 and 'name="vg-renew-in"' in await room.text()
    assert await _socket_role(stack, second) == "provider"


async def test_renewal_is_refused_for_forged_and_expired_handles_and_from_other_sites(stack: Stack) -> None:
    handle = await stack.provider_handle()
    status, body = await _renew(stack, "not-a-handle")
    assert status == 401 and body["error"] == "session_expired" and "handle" not in body
    status, body = await _renew(stack, "x" * 500)
    assert status == 401 and "handle" not in body
    status, body = await _renew(stack, handle, origin="https://evil.example")
    assert status == 403 and body["error"] == "cross_site_request"
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM provider_handles") == 1  # nothing was issued


async def test_a_renewed_handle_never_outlives_the_session(stack: Stack) -> None:
    handle = await stack.provider_handle()
    async with stack.gateway_app[DB].acquire() as conn:
        await conn.execute("UPDATE provider_sessions SET expires_at = now() + interval '20 seconds'")
    status, renewed = await _renew(stack, handle)
    assert status == 200 and renewed["expires_in"] <= 20 and renewed["renew_in"] <= 6
    async with stack.gateway_app[DB].acquire() as conn:
        await conn.execute("UPDATE provider_sessions SET expires_at = now() - interval '1 second'")
    # The session is over: no handle of it works, and none can be renewed.
    assert (await stack.get(f"{stack.gateway_url}/provider/{renewed['handle']}")).status == 401
    assert (await _renew(stack, renewed["handle"]))[0] == 401


async def test_expired_handles_are_purged_and_go_with_their_session(stack: Stack) -> None:
    handle = await stack.provider_handle()
    second = (await _renew(stack, handle))[1]["handle"]
    await _age(stack, handle)
    async with stack.gateway_app[DB].acquire() as conn:
        await store.purge_expired(conn)
        assert await conn.fetchval("SELECT count(*) FROM provider_handles") == 1
        await conn.execute("UPDATE provider_sessions SET expires_at = now() - interval '1 second'")
        await store.purge_expired(conn)
        assert await conn.fetchval("SELECT count(*) FROM provider_handles") == 0
        assert await conn.fetchval("SELECT count(*) FROM provider_sessions") == 0
    assert (await stack.get(f"{stack.gateway_url}/provider/{second}")).status == 401


async def test_the_session_key_itself_is_never_a_handle(stack: Stack) -> None:
    # The launch's session row is keyed by a secret the browser never sees: only provider_handles open pages.
    handle = await stack.provider_handle()
    async with stack.gateway_app[DB].acquire() as conn:
        session_hash = await conn.fetchval("SELECT handle_hash FROM provider_sessions")
        handle_hash = await conn.fetchval("SELECT handle_hash FROM provider_handles")
    assert session_hash != handle_hash == token_hash(handle)


async def test_a_provider_page_open_across_0006_keeps_its_handle_and_across_0009_must_be_opened_again(
        postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before migration 0006 the URL carried the session's own key; such a page survived that upgrade. Since
    # 0009 a session must be bound to a browser, and one from before has no browser to be bound to.
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.dsn("postgres"))
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(postgres.dsn(name))
    try:
        every = sql.migrations()
        monkeypatch.setattr(sql, "migrations", lambda: [m for m in every if m[0] < 6])
        await migrate(conn)
        sealer = Sealer(secrets.token_bytes(32))
        # Inserted as the schema of that time had it (today's add_approved writes revisions, from 0017).
        config_id = await conn.fetchval(
            "INSERT INTO configurations (fhir_base_url, environment, client_id, client_auth, scopes, status)"
            " VALUES ('https://ehr.example.org/fhir', 'test', 'c', 'private_key_jwt', $1, 'approved') RETURNING id",
            DEFAULT_SCOPES)
        visit_id = await conn.fetchval(
            "INSERT INTO visits (configuration_id, encounter_key, encounter_ref, meeting_provider)"
            " VALUES ($1, $2, $3, 'builtin') RETURNING id",
            config_id, b"k", sealer.seal("enc-1", "visits.encounter_ref"))
        handle = new_token()
        await conn.execute(
            "INSERT INTO provider_sessions (handle_hash, visit_id, fhir_user, access_token, token_expires_at,"
            " scopes, need_patient_banner, expires_at) VALUES ($1, $2, 'Practitioner/p', $3, now() + interval '1 hour',"
            " 'launch', false, now() + interval '1 hour')", token_hash(handle), visit_id, b"sealed")
        monkeypatch.setattr(sql, "migrations", lambda: [m for m in every if m[0] < 9])
        assert (await migrate(conn))[0] == "0006_provider_handles.sql"
        kept = await conn.fetchval("SELECT extract(epoch FROM expires_at - now()) FROM provider_handles"
                                   " WHERE handle_hash = $1", token_hash(handle))
        assert kept is not None and kept > 3000
        monkeypatch.undo()
        assert "0009_browser_bound_launches.sql" in await migrate(conn)
        somebody = BrowserKey(BROWSER_COOKIE + "x", new_token())
        assert await provider_identity(conn, handle, browser=[somebody]) is None
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
