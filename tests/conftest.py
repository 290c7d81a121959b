"""Fixtures: one real PostgreSQL per test session, a fresh database per test, the gateway and the sandbox
EHR as separate aiohttp servers on 127.0.0.1, and a cookie-keeping HTTP client playing the browser."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from gateway import Settings, create_app
from gateway.appkeys import DB, SEALER
from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
from gateway.db import migrate
from gateway.security import generate_signing_key_pem
from gateway.web import runner_options

CLIENT_ID = "visitgate-test"


@dataclass(frozen=True)
class Postgres:
    """The session's embedded server: where its socket is, and the migrated template database."""

    socket_dir: str
    template: str

    def dsn(self, database: str) -> str:
        """A DSN for one database on this server."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A real PostgreSQL (embedded via pgserver) with a migrated template database."""
    import pgserver

    # A short path: PostgreSQL's unix socket path must stay under ~100 characters.
    data = Path("/tmp") / f"vg-pg-{uuid.uuid4().hex[:8]}"
    server = pgserver.get_server(str(data), cleanup_mode="delete")
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    pg = Postgres(socket_dir=socket_dir, template="visitgate_template")

    async def make_template() -> None:
        admin = await asyncpg.connect(pg.dsn("postgres"))
        await admin.execute(f"CREATE DATABASE {pg.template}")
        await admin.close()
        conn = await asyncpg.connect(pg.dsn(pg.template))
        await migrate(conn)
        await conn.close()

    asyncio.run(make_template())
    yield pg
    server.cleanup()


@pytest.fixture
async def database_url(postgres: Postgres) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.dsn("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {postgres.template}")
        yield postgres.dsn(name)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def signing_key_pem() -> bytes:
    """Our private_key_jwt key (RSA generation is slow, so once per session)."""
    return generate_signing_key_pem()


@dataclass
class Stack:
    """A running gateway and sandbox EHR, and a browser-like client."""

    gateway_url: str
    sandbox_url: str
    gateway_app: web.Application
    sandbox_app: web.Application
    browser: aiohttp.ClientSession
    configuration_id: int
    settings: Settings

    @property
    def fhir_base(self) -> str:
        """The sandbox's FHIR base URL: the `iss` of every launch."""
        return f"{self.sandbox_url}/fhir"

    def new_launch(self, practitioner: str = "prac-1", patient: str | None = "pat-1",
                   encounter: str | None = "enc-1", **kw: Any) -> str:
        """Create a launch context in the EHR, as clicking "Begin virtual visit" does."""
        from sandbox import create_launch

        return create_launch(self.sandbox_app, practitioner_id=practitioner, patient_id=patient,
                             encounter_id=encounter, **kw)

    async def get(self, url: str) -> aiohttp.ClientResponse:
        """GET without following redirects; the body is read so the response can be inspected later."""
        response = await self.browser.get(url, allow_redirects=False)
        await response.read()
        return response

    async def follow(self, url: str, limit: int = 6) -> tuple[aiohttp.ClientResponse, list[str]]:
        """Follow redirects hop by hop (bounded), recording each URL visited."""
        visited = [url]
        response = await self.get(url)
        for _ in range(limit):
            if response.status not in (301, 302, 303, 307):
                break
            url = urljoin(url, response.headers["Location"])
            visited.append(url)
            response = await self.get(url)
        return response, visited

    async def launch(self, launch: str | None = None, iss: str | None = None) -> tuple[aiohttp.ClientResponse, list[str]]:
        """Run a provider launch from the EHR to the provider view."""
        launch = launch or self.new_launch()
        iss = iss or self.fhir_base
        return await self.follow(f"{self.gateway_url}/launch?iss={iss}&launch={launch}")

    async def provider_handle(self, launch: str | None = None) -> str:
        """Launch as the clinician and answer the handle the provider view's URL carries."""
        response, visited = await self.launch(launch)
        assert response.status == 200, await response.text()
        return urlsplit(visited[-1]).path.rsplit("/", 1)[1]


async def recv_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    """The next presence frame, which must be JSON text, within timeout seconds."""
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"{msg} (close code {ws.close_code})"
    frame: dict[str, Any] = json.loads(msg.data)
    return frame


async def recv_until(ws: aiohttp.ClientWebSocketResponse, want: str, limit: int = 50,
                     timeout: float = 10.0) -> dict[str, Any]:
    """The first frame of type want among the next limit frames."""
    for _ in range(limit):
        frame = await recv_frame(ws, timeout)
        if frame["type"] == want:
            return frame
    raise AssertionError(f"no {want} frame")


async def database_text(conn: asyncpg.Connection) -> tuple[set[str], str]:
    """Every table of ours and the text of every row in them (for the privacy scans)."""
    tables = [r["tablename"] for r in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    rows: list[str] = []
    for table in tables:
        rows.extend(r["row"] for r in await conn.fetch(f'SELECT t::text AS row FROM "{table}" t'))
    return set(tables), "\n".join(rows)


def browser_jar(*origins: str) -> aiohttp.CookieJar:
    """A cookie jar that keeps cookies as Chromium does for the gateway on http://127.0.0.1.

    unsafe: keep cookies of a bare IP address. treat_as_secure_origin: Chromium counts http://127.0.0.1 and
    localhost as potentially trustworthy, so it stores and sends `Secure` (and `__Host-`) cookies there;
    aiohttp sends a Secure cookie over plain http only to the origins named here. Production is https.
    """
    return aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=list(origins))


def browser_session(*origins: str) -> aiohttp.ClientSession:
    """A browser-like client with its own cookie jar (browser_jar) for the gateway origins given."""
    return aiohttp.ClientSession(cookie_jar=browser_jar(*origins), timeout=aiohttp.ClientTimeout(total=20))


def reason_code(body: str) -> str | None:
    """The reason code shown on an error page."""
    match = re.search(r'id="reason">([^<]+)<', body)
    return match.group(1) if match else None


Overrides = Callable[[str, str], dict[str, Any]]


@asynccontextmanager
async def running_stack(database_url: str, signing_key_pem: bytes,
                        overrides: Overrides | None = None) -> AsyncIterator[Stack]:
    """The gateway on 127.0.0.1 and the sandbox on localhost (different sites), each its own aiohttp app,
    with the sandbox's configuration approved. overrides(gateway_url, sandbox_url) adds gateway settings."""
    from sandbox import SandboxClient, SandboxSettings, create_sandbox_app

    gw_port, sb_port = unused_port(), unused_port()
    gateway_url, sandbox_url = f"http://127.0.0.1:{gw_port}", f"http://localhost:{sb_port}"
    settings = Settings(public_url=gateway_url, secret_key=secrets.token_bytes(32),
                        signing_key_pem=signing_key_pem, database_url=database_url, port=gw_port,
                        frame_ancestors=(sandbox_url,), http_timeout=5)
    if overrides is not None:
        settings = dataclasses.replace(settings, **overrides(gateway_url, sandbox_url))
    sandbox_app = create_sandbox_app(SandboxSettings(
        base_url=sandbox_url, app_launch_url=f"{gateway_url}/launch",
        patient_launch_url=f"{gateway_url}/launch/patient",
        clients=(SandboxClient(client_id=CLIENT_ID, redirect_uris=(settings.redirect_uri,),
                               auth_method="private_key_jwt", jwks_url=settings.jwks_url),)))
    gateway_app = create_app(settings)
    sandbox_server = TestServer(sandbox_app, host="127.0.0.1", port=sb_port)
    gateway_server = TestServer(gateway_app, host="127.0.0.1", port=gw_port)
    await sandbox_server.start_server(access_log=logging.getLogger("sandbox.access"))
    try:
        await gateway_server.start_server(**runner_options())
        try:
            async with gateway_app[DB].acquire() as conn:
                config_id = await add_approved(conn, gateway_app[SEALER], NewConfiguration(
                    fhir_base_url=f"{sandbox_url}/fhir", environment="test", client_id=CLIENT_ID,
                    client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="test-operator")
            async with browser_session(gateway_url) as browser:
                yield Stack(gateway_url, sandbox_url, gateway_app, sandbox_app, browser, config_id, settings)
        finally:
            await gateway_server.close()
    finally:
        await sandbox_server.close()


@pytest.fixture
def stack_overrides() -> Overrides | None:
    """Extra gateway settings for `stack`; a folder's conftest overrides this fixture to add its own."""
    return None


@pytest.fixture
async def stack(database_url: str, signing_key_pem: bytes, stack_overrides: Overrides | None) -> AsyncIterator[Stack]:
    """The running gateway and sandbox EHR for one test."""
    async with running_stack(database_url, signing_key_pem, stack_overrides) as running:
        yield running


@pytest.fixture
def sandbox_faults(stack: Stack) -> Any:
    """The sandbox's fault switches."""
    from sandbox.appkeys import FAULTS

    return stack.sandbox_app[FAULTS]


@pytest.fixture
def sandbox_calls(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """The sandbox EHR's requests ("GET /fhir/Patient/pat-1"), from its access log, as they happen."""
    caplog.set_level(logging.INFO, logger="sandbox.access")
    calls: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.search(r'"([A-Z]+) (\S+) HTTP', record.getMessage())
            if found:
                calls.append(f"{found.group(1)} {urlsplit(found.group(2)).path}")

    recorder = Recorder()
    logging.getLogger("sandbox.access").addHandler(recorder)
    yield calls
    logging.getLogger("sandbox.access").removeHandler(recorder)
