"""Write-back across real gateway processes: kill -9 in the middle, PostgreSQL restarted under load.

The gateway runs as `visitgate serve` in a subprocess (tests.harness starts, logs and stops it); the sandbox
EHR runs in the test's process so the test can read what was written. After recovery every visit's Encounter `_history` must be its event log
written exactly once, in order.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestServer, unused_port

from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
from gateway.security import Sealer, SigningKey
from presence.eventlog import record_event
from presence.writeback import set_strategy
from tests.harness import BIN, Processes, ServedProcess, gateway_env

from .conftest import (CLIENT_ID, assert_history_is_event_log, attempts, drained, fhir_history_with_key,
                       full_visit, make_visit, outbox_states, people, visit_events, wait_until)

VISITGATE = BIN / "visitgate"
ENCOUNTERS = [f"enc-{n}" for n in range(1, 7)]
_DB_DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)


@dataclass
class Cluster:
    """The sandbox EHR here, the gateway in a subprocess, and the database they share."""

    dsn: str
    sandbox_app: Any
    sandbox_url: str
    gateway_url: str
    env: dict[str, str]
    sealer: Sealer
    key: SigningKey
    pool: asyncpg.Pool
    configuration_id: int
    procs: Processes
    process: ServedProcess | None = None

    @property
    def fhir_base(self) -> str:
        """The sandbox's FHIR base URL."""
        return f"{self.sandbox_url}/fhir"

    async def start_gateway(self) -> None:
        """Start `visitgate serve` and wait until it is ready (each run has its own log)."""
        self.process = self.procs.gateway("gateway", self.env)
        await self.process.wait_ready_async()

    async def kill9(self) -> None:
        """SIGKILL: no shutdown, no cleanup, leases left behind."""
        assert self.process is not None
        self.process.kill()

    async def check_histories(self, visits: dict[str, UUID]) -> None:
        """Each Encounter's _history is its visit's event log written exactly once."""
        for encounter_id, visit in visits.items():
            versions = await fhir_history_with_key(self.key, self.fhir_base, encounter_id, CLIENT_ID)
            assert len(versions) > 1, encounter_id
            assert_history_is_event_log(versions, await visit_events(self.pool, visit), "fhir-r4-put")


@contextlib.asynccontextmanager
async def cluster(dsn: str, signing_key_pem: bytes, tmp_path: Path, fhir_delay: float) -> AsyncIterator[Cluster]:
    """Set up the sandbox, the configuration and the gateway's environment (the gateway is not started)."""
    from sandbox import SandboxClient, SandboxSettings, create_sandbox_app
    from sandbox.appkeys import FAULTS

    gw_port, sb_port = unused_port(), unused_port()
    gateway_url, sandbox_url = f"http://127.0.0.1:{gw_port}", f"http://localhost:{sb_port}"
    secret = secrets.token_bytes(32)
    sandbox_app = create_sandbox_app(SandboxSettings(
        base_url=sandbox_url, app_launch_url=f"{gateway_url}/launch",
        clients=(SandboxClient(client_id=CLIENT_ID, redirect_uris=(f"{gateway_url}/launch/callback",),
                               auth_method="private_key_jwt", jwks_url=f"{gateway_url}/.well-known/jwks.json"),)))
    sandbox_app[FAULTS].update({"fhir_delay": fhir_delay})
    server = TestServer(sandbox_app, host="127.0.0.1", port=sb_port)
    await server.start_server(access_log=logging.getLogger("sandbox.access"))
    env = gateway_env(
        public_url=gateway_url, secret=secret, signing_key_pem=signing_key_pem, database_url=dsn,
        data_dir=tmp_path / "data", db_pool_max=4, writeback_lease_seconds=2, writeback_backoff_base=0.05,
        writeback_backoff_max=0.5, writeback_poll_interval=0.05, writeback_max_attempts=50,
        writeback_request_timeout=1.5)
    pool: asyncpg.Pool | None = None
    try:
        # The gateway migrates at start-up; the test needs the schema first, to register the configuration.
        conn = await asyncpg.connect(dsn)
        try:
            from gateway.db import migrate

            await migrate(conn)
            sealer = Sealer(secret)
            config_id = await add_approved(conn, sealer, NewConfiguration(
                fhir_base_url=f"{sandbox_url}/fhir", environment="test", client_id=CLIENT_ID,
                client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="test-operator")
            await set_strategy(conn, config_id, "fhir-r4-put")
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        assert pool is not None
        # The gateway stops (SIGTERM, then SIGKILL after a bound) before the pool and the sandbox it talks to.
        async with Processes(tmp_path) as procs:
            yield Cluster(dsn, sandbox_app, sandbox_url, gateway_url, env, sealer,
                          SigningKey.from_pem(signing_key_pem), pool, config_id, procs)
    finally:
        if pool is not None:
            await pool.close()
        await server.close()


async def _record_with_retries(pool: asyncpg.Pool, visit: UUID, participant: UUID | None, kind: str) -> None:
    """Append one event, retrying while the database is away (bounded)."""
    for _ in range(300):
        try:
            await record_event(pool, visit, participant, kind)
            return
        except _DB_DOWN:
            await asyncio.sleep(0.05)
    raise AssertionError("the database did not come back")


async def test_a_gateway_killed_in_the_middle_of_write_back_loses_and_repeats_nothing(
        database_url: str, signing_key_pem: bytes, tmp_path: Path) -> None:
    async with cluster(database_url, signing_key_pem, tmp_path, fhir_delay=0.3) as c:
        visits = {e: await make_visit(c.pool, c.sealer, c.configuration_id, c.fhir_base, e) for e in ENCOUNTERS}
        first, second = ENCOUNTERS[:3], ENCOUNTERS[3:]

        async def record_visits(encounters: list[str]) -> None:
            for encounter in encounters:
                p = await people(c.pool, visits[encounter])
                for participant, kind in full_visit(p):
                    await record_event(c.pool, visits[encounter], participant, kind)

        async def some_written() -> bool:
            return any(a["outcome"] == "written" for a in await attempts(c.pool))

        async def some_in_flight() -> bool:
            async with c.pool.acquire() as conn:
                return bool(await conn.fetchval("SELECT count(*) FROM writeback_outbox"
                                                " WHERE state = 'pending' AND claimed_by IS NOT NULL"))

        # Half the visits written back, the other half claimed with their requests in flight: then the kill.
        # (The worker writes all of a visit's pending events in one request, so a backlog recorded while it
        # runs can be drained before anyone looks; waiting for a claim makes the interruption certain.)
        await record_visits(first)
        await c.start_gateway()
        await wait_until(some_written, timeout=20)
        await record_visits(second)
        await wait_until(some_in_flight, timeout=20)
        assert (await outbox_states(c.pool)).get("pending", 0) > 0, "nothing left to interrupt"
        await c.kill9()
        await c.start_gateway()  # a new process picks up what the dead one held, once its leases run out
        await drained(c.pool, timeout=40)
        assert (await outbox_states(c.pool)).keys() == {"done"}
        await c.check_histories(visits)


async def test_postgres_restarted_under_load_loses_and_repeats_nothing(signing_key_pem: bytes,
                                                                       tmp_path: Path) -> None:
    import pgserver
    from pgserver._commands import pg_ctl

    data = Path("/tmp") / f"vg-wbpg-{uuid.uuid4().hex[:8]}"
    server = pgserver.get_server(str(data), cleanup_mode="delete")
    try:
        socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
        admin = await asyncpg.connect(f"postgresql://postgres@/postgres?host={socket_dir}")
        await admin.execute("CREATE DATABASE writeback")
        await admin.close()
        dsn = f"postgresql://postgres@/writeback?host={socket_dir}"
        async with cluster(dsn, signing_key_pem, tmp_path, fhir_delay=0.02) as c:
            visits = {e: await make_visit(c.pool, c.sealer, c.configuration_id, c.fhir_base, e)
                      for e in ENCOUNTERS}
            plans = {e: full_visit(await people(c.pool, v)) for e, v in visits.items()}
            await c.start_gateway()
            recorded = 0
            restart: asyncio.Task[Any] | None = None
            for step in range(len(plans[ENCOUNTERS[0]])):
                for encounter_id, visit in visits.items():
                    participant, kind = plans[encounter_id][step]
                    await _record_with_retries(c.pool, visit, participant, kind)
                    recorded += 1
                    if recorded == 20:  # under load: events keep coming while the server goes down
                        restart = asyncio.create_task(asyncio.to_thread(
                            pg_ctl, ["-w", "-m", "immediate", "-l", str(server.log), "restart"],
                            pgdata=server.pgdata, user=server.system_user, timeout=60))
                    await asyncio.sleep(0.01)
            assert restart is not None
            await restart
            await drained(c.pool, timeout=60)
            await c.check_histories(visits)
            assert c.process is not None and c.process.returncode is None, "the gateway survived the restart"
    finally:
        with contextlib.suppress(Exception):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)
        server.cleanup()


@pytest.fixture(autouse=True)
def _needs_the_console_script() -> None:
    if not VISITGATE.exists():
        pytest.skip("the visitgate console script is not installed in this environment")
