"""A new signing key (a key rotation) is in the audit log once, for the admins of every organisation."""
from __future__ import annotations

import dataclasses
import secrets

import asyncpg
from aiohttp.test_utils import TestServer

from gateway import Settings, create_app
from gateway.security import SigningKey, generate_signing_key_pem


async def _start_and_stop(database_url: str, key_pem: bytes) -> None:
    settings = Settings(public_url="http://127.0.0.1:1", secret_key=secrets.token_bytes(32),
                        signing_key_pem=key_pem, database_url=database_url)
    server = TestServer(create_app(dataclasses.replace(settings)), host="127.0.0.1")
    await server.start_server()
    await server.close()


async def _rotations(database_url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT details -> 'before' ->> 'kid' AS before, details -> 'after' ->> 'kid' AS after"
                                " FROM audit_log WHERE action = 'key.rotate' ORDER BY id")
    finally:
        await conn.close()
    return [(r["before"], r["after"]) for r in rows]


async def test_a_new_signing_key_is_audited_once_with_the_key_it_replaced(database_url: str) -> None:
    first, second = generate_signing_key_pem(), generate_signing_key_pem("ec")
    first_kid, second_kid = SigningKey.from_pem(first).kid, SigningKey.from_pem(second).kid
    await _start_and_stop(database_url, first)
    assert await _rotations(database_url) == [(None, first_kid)]
    await _start_and_stop(database_url, first)  # a restart with the same key is no rotation
    assert await _rotations(database_url) == [(None, first_kid)]
    await _start_and_stop(database_url, second)
    assert await _rotations(database_url) == [(None, first_kid), (first_kid, second_kid)]
