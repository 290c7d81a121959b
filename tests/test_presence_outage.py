"""Nothing is lost while PostgreSQL is away: a socket that closes during an outage gets its closing event once
the database is back, dated when it closed, written once; an action sent during the outage is refused with
`database_unavailable`, which the page shows, and is not stored.

The gateway reaches PostgreSQL through a TCP proxy in the test, so the outage is real to it (every pooled
connection and the LISTEN connection break, new ones fail) while the server itself, shared by the session's
tests, keeps running.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from yarl import URL

from gateway import joinlinks, participants
from gateway.appkeys import DB
from presence import eventlog
from presence.appkeys import ANNOUNCER, LEASE
from presence.writeback import set_strategy
from tests.conftest import Stack, recv_frame, recv_until, running_stack

TIMEOUT = 5.0
OUTAGE = 3.0  # seconds the database stays away: long enough for every path to see it, short of the lease


class PostgresProxy:
    """127.0.0.1:port → the server's unix socket, which the test can cut (every connection broken, new ones
    closed at once, as a stopped server does) and restore."""

    def __init__(self, unix_socket: str) -> None:
        self._target = unix_socket
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.cut = False
        self.port = 0

    async def start(self) -> None:
        """Listen on an unused port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_unix_connection(self._target)
        pair = (writer, up_writer)
        self._pairs.add(pair)
        pumps = [asyncio.create_task(self._pump(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            self._pairs.discard(pair)
            writer.transport.abort()
            up_writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def cut_off(self) -> None:
        """The database goes away: open connections break, new ones are closed at once."""
        self.cut = True
        for client, upstream in list(self._pairs):
            client.transport.abort()
            upstream.transport.abort()

    def restore(self) -> None:
        """The database is back."""
        self.cut = False

    async def close(self) -> None:
        """Stop listening and break what is left."""
        self.cut_off()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def proxied(database_url: str, signing_key_pem: bytes) -> AsyncIterator[tuple[Stack, PostgresProxy, str]]:
    """A gateway whose database connections all pass through a PostgresProxy: (stack, proxy, direct DSN)."""
    parts = urlsplit(database_url)
    socket_dir = parse_qs(parts.query)["host"][0]
    proxy = PostgresProxy(f"{socket_dir}/.s.PGSQL.5432")
    await proxy.start()
    proxied_url = f"postgresql://postgres@127.0.0.1:{proxy.port}{parts.path}?sslmode=disable"
    try:
        async with running_stack(proxied_url, signing_key_pem) as stack:
            yield stack, proxy, database_url
    finally:
        await proxy.close()


async def _events_of(dsn: str, participant: UUID, kind: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT e.id, e.at, o.event_id AS outbox FROM presence_events e "
            "LEFT JOIN writeback_outbox o ON o.event_id = e.id "
            "WHERE e.participant_id = $1 AND e.kind = $2 ORDER BY e.id", participant, kind)
    finally:
        await conn.close()


async def _recv_event(ws: aiohttp.ClientWebSocketResponse, kind: str, limit: int = 50) -> dict[str, Any]:
    for _ in range(limit):
        frame = await recv_frame(ws, 15.0)  # the bus catches up within seconds of the database's return
        if frame["type"] == "event" and frame["kind"] == kind:
            return frame
    raise AssertionError(f"no {kind} event")


async def test_a_socket_closed_while_the_database_is_away_gets_its_event_once_dated_when_it_closed(
        proxied: tuple[Stack, PostgresProxy, str]) -> None:
    stack, proxy, direct = proxied
    async with stack.gateway_app[DB].acquire() as conn:
        await set_strategy(conn, stack.configuration_id, "fhir-r4-put")  # so the event needs its outbox row too
    handle = await stack.provider_handle()
    view = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await view.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    visit_id = UUID((await recv_frame(view, TIMEOUT))["visit"])
    await view.send_json({"type": "subscribe", "id": 2, "after": None})
    await recv_until(view, "snapshot", timeout=TIMEOUT)
    async with stack.gateway_app[DB].acquire() as conn:
        patient = await participants.patient_participant(conn, visit_id)
        session = await joinlinks.create_session(conn, patient, visit_id, joinlinks.default_not_after())
    stack.browser.cookie_jar.update_cookies({joinlinks.PARTICIPANT_COOKIE: session.handle},
                                            response_url=URL(stack.gateway_url))
    lobby = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await lobby.send_json({"type": "auth", "id": 1, "where": "lobby"})
    assert (await recv_frame(lobby, TIMEOUT))["type"] == "auth_ok"
    await _recv_event(view, "lobby_entered")

    proxy.cut_off()
    before_close = dt.datetime.now(dt.timezone.utc)
    await lobby.close()
    after_close = dt.datetime.now(dt.timezone.utc)
    lease = stack.gateway_app[LEASE]
    for _ in range(50):  # bounded: the close is handled within 5 s
        if lease.kept():
            break
        await asyncio.sleep(0.1)
    assert lease.kept() == 1, "the closing event should wait in memory for the database"

    # The clinician admits meanwhile: refused, with a code the page shows, and nothing stored.
    await view.send_json({"type": "admit", "id": 3, "participant": str(patient)})
    assert await recv_until(view, "error", timeout=TIMEOUT * 3) == {
        "type": "error", "id": 3, "code": "database_unavailable"}
    # A page that connects now is told why, in a frame, and asked to come back (1013), never sent a 500 page.
    late = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await late.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    assert await recv_frame(late, TIMEOUT * 3) == {"type": "error", "id": 1, "code": "database_unavailable"}
    close = await asyncio.wait_for(late.receive(), TIMEOUT)
    assert close.type == aiohttp.WSMsgType.CLOSE and close.data == 1013, close

    await asyncio.sleep(OUTAGE)
    restored = dt.datetime.now(dt.timezone.utc)
    proxy.restore()

    left = await _recv_event(view, "left")  # the clinician sees the patient gone once the database is back
    assert left["participant"] == str(patient)
    rows = await _events_of(direct, patient, "left")
    assert len(rows) == 1, rows
    assert before_close <= rows[0]["at"] <= after_close < restored, (before_close, rows[0]["at"], restored)
    assert rows[0]["outbox"] == rows[0]["id"]
    assert lease.kept() == 0
    assert await _events_of(direct, patient, "admitted") == []
    # And the database is usable again: the same admit now works.
    await view.send_json({"type": "admit", "id": 4, "participant": str(patient)})
    assert (await recv_until(view, "result", timeout=TIMEOUT))["id"] == 4
    await view.close()


async def test_a_socket_event_retried_after_an_ambiguous_commit_is_written_once(stack: Stack) -> None:
    pool = stack.gateway_app[DB]
    lease = stack.gateway_app[LEASE]
    handle = await stack.provider_handle()
    async with pool.acquire() as conn:
        visit_id = await conn.fetchval("SELECT id FROM visits LIMIT 1")
        patient = await participants.patient_participant(conn, visit_id)
    assert handle
    key = uuid.uuid4()
    happened = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=30)
    async with pool.acquire() as conn:
        # The first try committed, but its answer was lost; the retry carries the same key.
        first = await eventlog.append_held_event(conn, lease.id, visit_id, patient, "left", key, happened)
        again = await eventlog.append_held_event(conn, lease.id, visit_id, patient, "left", key, happened)
        rows = await conn.fetch("SELECT at FROM presence_events WHERE participant_id = $1 AND kind = 'left'",
                                patient)
    assert first is not None and again is None
    assert [r["at"] for r in rows] == [happened]


async def test_a_kept_closing_event_is_not_written_when_a_sweep_closed_the_socket_meanwhile(
        stack: Stack) -> None:
    from gateway.db import create_pool
    from presence.announcer import Announcer
    from presence.hub import Connection
    from presence.lease import ProcessLease, close_lapsed

    pool = stack.gateway_app[DB]
    handle = await stack.provider_handle()
    assert handle
    async with pool.acquire() as conn:
        visit_id = await conn.fetchval("SELECT id FROM visits LIMIT 1")
        patient = await participants.patient_participant(conn, visit_id)
    dsn = stack.settings.database_url
    assert dsn is not None
    socket_dir = parse_qs(urlsplit(dsn).query)["host"][0]
    proxy = PostgresProxy(f"{socket_dir}/.s.PGSQL.5432")
    await proxy.start()
    # Process B: its own pool, through the proxy, so only B loses the database.
    b_pool = await create_pool(f"postgresql://postgres@127.0.0.1:{proxy.port}{urlsplit(dsn).path}?sslmode=disable",
                               max_size=2)
    b_lease = ProcessLease(b_pool, Announcer(b_pool), 3)
    try:
        await b_lease.start()
        room = Connection(None, None, visit_id, patient, "patient", "room")  # type: ignore[arg-type]
        assert await b_lease.opened(room, "connected")
        proxy.cut_off()
        assert await b_lease.closed(room, "disconnected")  # kept: B cannot reach the database
        assert b_lease.kept() == 1
        # B stays away past its lease; another process sweeps it and writes the socket's closing event.
        async with pool.acquire() as conn:
            await conn.execute("UPDATE presence_processes SET renewed_at = now() - interval '1 hour' WHERE id = $1",
                               b_lease.id)
        assert [n for _, n in await close_lapsed(pool, 3, stack.gateway_app[ANNOUNCER])] == [1]
        proxy.restore()
        for _ in range(100):  # bounded: B writes (or drops) what it kept within seconds of the return
            if not b_lease.kept():
                break
            await asyncio.sleep(0.1)
        assert b_lease.kept() == 0
    finally:
        await b_lease.stop()
        await b_pool.close()
        await proxy.close()
    rows = await _events_of(dsn, patient, "disconnected")
    assert len(rows) == 1, rows  # the sweep's, and not B's as well
