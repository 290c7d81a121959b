"""Presence across two gateway processes on one PostgreSQL: events cross through LISTEN/NOTIFY (ids only),
and a process whose listening connection is cut reconnects and catches up from the last id it saw.

Two real `visitgate serve` processes (as deployed: uvloop, settings from the environment) share one fresh
database, one secret key and one signing key, each on its own port and public origin. The sandbox EHR runs
in this process. A provider launches through process A and watches the visit on A's /ws; the patient
exchanges a join link on process B and waits in B's lobby.

The gateway processes are started, logged and stopped by tests.harness. Set VISITGATE_TEST_GATEWAY_LOOP=asyncio
to run both processes on asyncio's own loop instead of uvloop (diagnosis only: it tells a loop-specific fault
from a cross-process one).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer, unused_port

from gateway import Settings, joinlinks
from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
from gateway.participants import patient_participant
from gateway.security import Sealer, token_hash
from presence.eventlog import events_after
from tests.conftest import browser_jar, recv_frame, recv_until
from tests.harness import Processes, ServedProcess, gateway_env

CLIENT_ID = "visitgate-test"
TIMEOUT = 10.0          # any one frame or request
READY_TIMEOUT = 30.0    # a gateway process starting (imports, pool, migrations already applied)
RECONNECT_TIMEOUT = 10.0
# Seconds a process's claim on its sockets lasts unrenewed (30 as shipped): short for a quick test, long enough
# that a process starved of CPU for a second or two by the rest of the suite is not taken for dead.
LEASE = 5
METRICS_TOKEN = "cluster-metrics-token"


@dataclass
class Gateway:
    """One `visitgate serve` process."""

    name: str
    url: str
    process: ServedProcess
    settings: Settings

    def tail(self, lines: int = 30) -> str:
        """The end of its log."""
        return self.process.tail(lines)


@dataclass
class Cluster:
    """Two gateways on one database, the sandbox EHR, and a DSN to look at the database directly."""

    a: Gateway
    b: Gateway
    dsn: str
    sandbox_app: Any
    sandbox_url: str

    @property
    def fhir_base(self) -> str:
        return f"{self.sandbox_url}/fhir"


def _spawn(procs: Processes, name: str, port: int, database_url: str, secret: bytes, pem: bytes,
           frame_ancestors: str) -> Gateway:
    url = f"http://127.0.0.1:{port}"
    env = gateway_env(
        public_url=url, secret=secret, signing_key_pem=pem,
        # application_name tells the processes' database connections apart in pg_stat_activity.
        database_url=f"{database_url}&application_name=vg-{name}", data_dir=procs.dir / f"data-{name}",
        frame_ancestors=frame_ancestors, http_timeout=5, writeback_enabled=False, metrics_token=METRICS_TOKEN,
        presence_lease=LEASE)
    loop = "asyncio" if os.environ.get("VISITGATE_TEST_GATEWAY_LOOP") == "asyncio" else "uvloop"
    process = procs.gateway(f"gateway-{name}", env, loop=loop)
    return Gateway(name, url, process, Settings(public_url=url, secret_key=secret, signing_key_pem=pem))


@pytest.fixture
async def cluster(database_url: str, signing_key_pem: bytes, tmp_path: Path) -> AsyncIterator[Cluster]:
    from sandbox import SandboxClient, SandboxSettings, create_sandbox_app

    port_a, port_b, sb_port = unused_port(), unused_port(), unused_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    sandbox_url = f"http://localhost:{sb_port}"
    secret = secrets.token_bytes(32)
    sandbox_app = create_sandbox_app(SandboxSettings(
        base_url=sandbox_url, app_launch_url=f"{url_a}/launch",
        clients=(SandboxClient(client_id=CLIENT_ID,
                               redirect_uris=(f"{url_a}/launch/callback", f"{url_b}/launch/callback"),
                               auth_method="private_key_jwt", jwks_url=f"{url_a}/.well-known/jwks.json"),)))
    sandbox = TestServer(sandbox_app, host="127.0.0.1", port=sb_port)
    await sandbox.start_server(access_log=logging.getLogger("sandbox.access"))
    try:
        conn = await asyncpg.connect(database_url)
        try:
            await add_approved(conn, Sealer(secret), NewConfiguration(
                fhir_base_url=f"{sandbox_url}/fhir", environment="test", client_id=CLIENT_ID,
                client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="test-operator")
        finally:
            await conn.close()
        async with Processes(tmp_path) as procs:
            a, b = (_spawn(procs, name, port, database_url, secret, signing_key_pem, sandbox_url)
                    for name, port in (("a", port_a), ("b", port_b)))
            await asyncio.gather(a.process.wait_ready_async(READY_TIMEOUT), b.process.wait_ready_async(READY_TIMEOUT))
            yield Cluster(a, b, database_url, sandbox_app, sandbox_url)
    finally:
        await sandbox.close()


def _browser(cluster: Cluster) -> aiohttp.ClientSession:
    # Keeps cookies of 127.0.0.1, and the Secure ones of both gateways, as Chromium does (see browser_jar).
    return aiohttp.ClientSession(cookie_jar=browser_jar(cluster.a.url, cluster.b.url),
                                 timeout=aiohttp.ClientTimeout(total=TIMEOUT))


async def _launch(cluster: Cluster, browser: aiohttp.ClientSession, gateway: Gateway) -> str:
    """A provider launch from the sandbox EHR through one gateway; returns the provider view's handle."""
    from sandbox import create_launch

    launch = create_launch(cluster.sandbox_app, practitioner_id="prac-1", patient_id="pat-1",
                           encounter_id="enc-1")
    url = f"{gateway.url}/launch?iss={cluster.fhir_base}&launch={launch}"
    for _ in range(6):
        async with browser.get(url, allow_redirects=False) as response:
            await response.read()
            if response.status not in (301, 302, 303, 307):
                break
            url = urljoin(url, response.headers["Location"])
    assert response.status == 200, f"launch ended with {response.status} at {url}\n{gateway.tail()}"
    return urlsplit(url).path.rsplit("/", 1)[1]


async def _recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    return await recv_frame(ws, TIMEOUT)


async def _recv_until(ws: aiohttp.ClientWebSocketResponse, want: str, limit: int = 50) -> dict[str, Any]:
    return await recv_until(ws, want, limit, TIMEOUT)


async def _provider_view(browser: aiohttp.ClientSession, gateway: Gateway,
                         handle: str) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any], dict[str, Any]]:
    ws = await browser.ws_connect(f"{gateway.url}/ws", origin=gateway.url)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    auth = await _recv(ws)
    assert auth["type"] == "auth_ok" and auth["role"] == "provider", auth
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})
    snapshot = await _recv_until(ws, "snapshot")
    return ws, auth, snapshot


async def _patient_in_lobby(cluster: Cluster, browser: aiohttp.ClientSession, gateway: Gateway,
                            visit_id: UUID, name: str | None = None) -> tuple[aiohttp.ClientWebSocketResponse,
                                                                              dict[str, Any]]:
    """The real join flow on one gateway: a link for the visit's patient, POST /join, the lobby socket."""
    conn = await asyncpg.connect(cluster.dsn)
    try:
        patient = await patient_participant(conn, visit_id)
        token = await joinlinks.issue_link(conn, joinlinks.JoinKeys.from_settings(gateway.settings), patient,
                                           visit_id, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    finally:
        await conn.close()
    async with browser.post(f"{gateway.url}/join", data={"t": token}, headers={"Origin": gateway.url},
                            allow_redirects=False) as response:
        await response.read()
        assert response.status == 303, f"{response.status}\n{gateway.tail()}"
    ws = await browser.ws_connect(f"{gateway.url}/ws", origin=gateway.url)
    await ws.send_json({"type": "auth", "id": 1, "where": "lobby"})
    auth = await _recv(ws)
    assert auth["type"] == "auth_ok" and auth["role"] == "patient", auth
    assert auth["participant"] == str(patient) and auth["visit"] == str(visit_id)
    if name is not None:  # the lobby page says its name first, then subscribes
        await ws.send_json({"type": "hello", "id": 3, "display_name": name})
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})  # as the lobby page does
    await _recv_until(ws, "snapshot")
    return ws, auth


async def _watching_and_waiting(cluster: Cluster, provider_browser: aiohttp.ClientSession,
                                patient_browser: aiohttp.ClientSession) -> tuple[
        aiohttp.ClientWebSocketResponse, dict[str, Any], UUID, aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """A clinician launched on A watching the visit (view, snapshot), and its patient in B's lobby (lobby, auth)."""
    handle = await _launch(cluster, provider_browser, cluster.a)
    view, auth, snapshot = await _provider_view(provider_browser, cluster.a, handle)
    visit_id = UUID(auth["visit"])
    lobby, patient = await _patient_in_lobby(cluster, patient_browser, cluster.b, visit_id)
    return view, snapshot, visit_id, lobby, patient


async def _events_until(ws: aiohttp.ClientWebSocketResponse, last_id: int, limit: int = 200) -> list[dict[str, Any]]:
    """Event frames until the one with id last_id (bounded)."""
    seen: list[dict[str, Any]] = []
    for _ in range(limit):
        frame = await _recv(ws)
        if frame["type"] != "event":
            continue
        seen.append(frame)
        if frame["id"] >= last_id:
            return seen
    raise AssertionError(f"event {last_id} never came; saw {[f['id'] for f in seen]}")


async def _visit_event_ids(dsn: str, visit_id: UUID, after: int) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [e.id for e in await events_after(conn, visit_id, after, 2**62, 10_000)]
    finally:
        await conn.close()


async def test_a_provider_on_one_process_sees_a_patient_on_the_other(cluster: Cluster) -> None:
    async with _browser(cluster) as provider_browser, _browser(cluster) as patient_browser:
        view, snapshot, visit_id, lobby, patient = await _watching_and_waiting(
            cluster, provider_browser, patient_browser)

        # Process B wrote the patient's lobby_entered; process A's bus reads it by id and A's hub sends it.
        for _ in range(50):
            frame = await _recv(view)
            if frame["type"] == "event" and frame["kind"] == "lobby_entered":
                break
        else:
            raise AssertionError("the provider on A never saw the patient enter B's lobby")
        assert frame["participant"] == patient["participant"] and frame["role"] == "patient"
        assert frame["visit"] == str(visit_id) and frame["id"] > snapshot["last_id"]

        # And back: the provider admits on A, the patient's lobby on B hears it.
        await view.send_json({"type": "admit", "id": 3, "participant": patient["participant"]})
        for _ in range(50):
            frame = await _recv(lobby)
            if frame["type"] == "event" and frame["kind"] == "admitted":
                break
        else:
            raise AssertionError("the patient on B never heard the admission made on A")
        assert frame["participant"] == patient["participant"]
        await lobby.close()
        await view.close()

    # An operator's Prometheus sees the crossing: B announced what it wrote, A was woken and read it.
    a, b = await _metrics(cluster.a), await _metrics(cluster.b)
    assert b["visitgate_presence_notifications_sent_total"] >= 1
    assert a["visitgate_presence_bus_notices_total"] >= 1
    assert a["visitgate_presence_bus_reads_total"] >= 1 and a["visitgate_presence_bus_events_total"] >= 1
    # A served process put its start-up heap out of the cycle collector's sight (a full collection of it
    # took ~20 ms, a stall of every live delivery), and says so with its process figures.
    assert a["visitgate_gc_frozen_objects"] > 10_000 and b["visitgate_gc_frozen_objects"] > 10_000
    assert a["process_resident_memory_bytes"] > 0


async def _metrics(gateway: Gateway) -> dict[str, float]:
    """The gateway's unlabelled /metrics samples, by name."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as r:
            assert r.status == 200, r.status
            text = await r.text()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            found[name] = float(value)
    return found


async def _listen_backends(dsn: str, app_name: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1"
                                " AND query LIKE 'LISTEN%' AND datname = current_database()", app_name)
        return [r["pid"] for r in rows]
    finally:
        await conn.close()


async def test_a_process_whose_listener_is_cut_catches_up_in_order(cluster: Cluster) -> None:
    async with _browser(cluster) as provider_browser, _browser(cluster) as patient_browser:
        view, _snapshot, visit_id, lobby, _patient = await _watching_and_waiting(
            cluster, provider_browser, patient_browser)
        entered = await _recv_until(view, "event")
        while entered["kind"] != "lobby_entered":
            entered = await _recv_until(view, "event")
        last_seen = entered["id"]

        # A's listening connection (its last statement was a LISTEN) dies under it.
        listeners = await _listen_backends(cluster.dsn, "vg-a")
        assert len(listeners) == 1, f"expected one LISTEN connection of process A, found {listeners}"
        conn = await asyncpg.connect(cluster.dsn)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", listeners[0])
        finally:
            await conn.close()

        # While A is not listening, the patient acts on B: each device test appends an event on B.
        for n in range(6):
            await lobby.send_json({"type": "device_test", "id": 10 + n, "passed": n % 2 == 0})
            answer = await _recv_until(lobby, "result")
            assert answer["id"] == 10 + n
        # A listens again (a new backend), without anyone restarting it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_TIMEOUT
        while True:
            again = await _listen_backends(cluster.dsn, "vg-a")
            if again and listeners[0] not in again:
                break
            assert loop.time() < deadline, f"process A never listened again\n{cluster.a.tail()}"
            await asyncio.sleep(0.1)
        # Written after the reconnect: these reach A live (each result differs from the one before: the same
        # result twice is stored once).
        for n in range(3):
            await lobby.send_json({"type": "device_test", "id": 20 + n, "passed": n % 2 == 0})
            assert (await _recv_until(lobby, "result"))["id"] == 20 + n

        expected = await _visit_event_ids(cluster.dsn, visit_id, last_seen)
        assert len(expected) == 9, expected
        got = [frame["id"] for frame in await _events_until(view, expected[-1])]
        assert got == expected, f"A's provider saw {got}, the visit's events are {expected}"
        # Nothing more, and certainly nothing twice, is on its way.
        with pytest.raises(asyncio.TimeoutError):
            extra = await asyncio.wait_for(view.receive(), 0.5)
            raise AssertionError(f"unexpected frame after catching up: {extra}")
        await lobby.close()
        await view.close()


async def test_a_patient_on_a_process_killed_with_minus_9_is_seen_to_go(cluster: Cluster) -> None:
    async with _browser(cluster) as provider_browser, _browser(cluster) as patient_browser:
        view, _snapshot, visit_id, lobby, patient = await _watching_and_waiting(
            cluster, provider_browser, patient_browser)
        await view.send_json({"type": "admit", "id": 3, "participant": patient["participant"]})
        room = await patient_browser.ws_connect(f"{cluster.b.url}/ws", origin=cluster.b.url)
        await room.send_json({"type": "auth", "id": 1, "where": "room"})
        assert (await _recv(room))["type"] == "auth_ok"
        seen = []
        while "connected" not in seen:
            frame = await _recv_until(view, "event")
            if frame["participant"] == patient["participant"]:
                seen.append(frame["kind"])

        # Process B dies without a word: no close frame, no closing event, its lease no longer renewed.
        cluster.b.process.kill()
        # Within the lease and one renewal, process A writes what B never did, and the clinician sees it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE * 3 + TIMEOUT
        gone: list[str] = []
        while sorted(gone) != ["disconnected", "left"]:
            try:
                frame = await recv_frame(view, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise AssertionError(f"the provider saw only {gone} after the kill (and {seen} before)\n"
                                     f"{cluster.a.tail()}\n{cluster.b.tail()}") from None
            # The Admit's own event may arrive after the room's `connected` (they are written by different
            # processes): only the closing events are what this waits for.
            if frame["type"] == "event" and frame["participant"] == patient["participant"] \
                    and frame["kind"] in ("disconnected", "left"):
                gone.append(frame["kind"])
        await view.close()
        await lobby.close()
        await room.close()

    # Exactly once in the log, and an operator sees that A ended a lapsed lease.
    conn = await asyncpg.connect(cluster.dsn)
    try:
        kinds = [e.kind for e in await events_after(conn, visit_id, 0, 2**62, 1000)
                 if str(e.participant_id) == patient["participant"]]
    finally:
        await conn.close()
    assert kinds.count("left") == 1 and kinds.count("disconnected") == 1, kinds
    a = await _metrics(cluster.a)
    assert a["visitgate_presence_lapsed_processes_total"] == 1
    assert a["visitgate_presence_lapsed_sockets_total"] == 2


async def test_a_provider_who_opens_the_visit_later_on_another_process_sees_the_patients_name(
        cluster: Cluster) -> None:
    async with _browser(cluster) as provider_browser, _browser(cluster) as patient_browser:
        handle = await _launch(cluster, provider_browser, cluster.a)
        visit_id = await _visit_of(cluster, handle)
        # The patient types a name in B's lobby while no one watches the visit on A.
        lobby, patient = await _patient_in_lobby(cluster, patient_browser, cluster.b, visit_id, name="Ada")
        # The clinician opens (or reloads) the visit on A: A never saw that name, B holds it in memory only.
        view, _auth, snapshot = await _provider_view(provider_browser, cluster.a, handle)
        names = dict(snapshot.get("display_names", {}))
        for _ in range(50):
            if names.get(patient["participant"]) == "Ada":
                break
            frame = await _recv(view)
            if frame["type"] == "display_name":
                names[frame["participant"]] = frame["display_name"]
        assert names.get(patient["participant"]) == "Ada", names
        await lobby.close()
        await view.close()


async def _visit_of(cluster: Cluster, handle: str) -> UUID:
    conn = await asyncpg.connect(cluster.dsn)
    try:
        found: UUID | None = await conn.fetchval(
            "SELECT s.visit_id FROM provider_handles h JOIN provider_sessions s ON s.handle_hash = h.session_hash"
            " WHERE h.handle_hash = $1", token_hash(handle))
    finally:
        await conn.close()
    assert found is not None
    return found


async def _lobby_with_code(browser: aiohttp.ClientSession, gateway: Gateway,
                           code: str) -> aiohttp.ClientWebSocketResponse:
    """A phone that opens the link's code on one gateway and waits in its lobby (subscribed)."""
    async with browser.post(f"{gateway.url}/join", data={"t": code}, headers={"Origin": gateway.url},
                            allow_redirects=False) as response:
        await response.read()
        assert response.status == 303, f"{response.status}\n{gateway.tail()}"
    ws = await browser.ws_connect(f"{gateway.url}/ws", origin=gateway.url)
    await ws.send_json({"type": "auth", "id": 1, "where": "lobby"})
    assert (await _recv(ws))["type"] == "auth_ok"
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})
    await _recv_until(ws, "snapshot")
    return ws


async def test_a_link_opened_on_a_phone_served_by_the_other_process_tells_the_first_phone(cluster: Cluster) -> None:
    async with _browser(cluster) as provider_browser, _browser(cluster) as first, _browser(cluster) as second:
        visit_id = await _visit_of(cluster, await _launch(cluster, provider_browser, cluster.a))
        conn = await asyncpg.connect(cluster.dsn)
        try:
            patient = await patient_participant(conn, visit_id)
            code = await joinlinks.issue_link(conn, joinlinks.JoinKeys.from_settings(cluster.a.settings), patient,
                                              visit_id, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
        finally:
            await conn.close()
        old = await _lobby_with_code(first, cluster.a, code)
        new = await _lobby_with_code(second, cluster.b, code)
        # The first phone's socket, on process A, hears that the visit moved (relayed through PostgreSQL).
        assert (await _recv_until(old, "session_moved"))["type"] == "session_moved"
        await new.close()
        await old.close()
