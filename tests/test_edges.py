"""The edge: no input gives a 500. What a fuzzer found (and their neighbours) is refused with a 4xx and a
reason code before any handler or the database sees it; nothing hostile reaches an ERROR log line; a failed
send leaves nothing behind; CSRF is one check for every state-changing route; errors are JSON where the
route serves JSON; HSTS when served over https; the database away is a 503."""
from __future__ import annotations

import asyncio
import gzip
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import aiohttp_jinja2
import asyncpg
import jinja2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import Settings
from gateway.appkeys import DB, NOTIFIER, SETTINGS
from gateway.web import HSTS, csrf_exempt, csrf_middleware, error_middleware, input_middleware
from tests.conftest import Postgres, Stack, reason_code, running_stack
from tests.notify.helpers import launch_handle

@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record at INFO and above, as an operator's log would have them."""
    caplog.set_level(logging.INFO)
    return caplog


def assert_no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing hostile reached an ERROR line or a traceback."""
    loud = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == [], loud


async def raw_request(stack: Stack, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are (for what no client library would send) and read the whole answer."""
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


async def fresh_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST on a connection of its own (a refused body may leave the connection unusable, as it should)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
            return response.status, await response.text()


def reason_of(body: str) -> str | None:
    """The reason code of an error answer, page or JSON."""
    found = re.search(r'"error": "([a-z_]+)"', body)
    return found.group(1) if found else reason_code(body)


def invite_url(stack: Stack, handle: str) -> str:
    """The provider view's "send the link" endpoint."""
    return f"{stack.gateway_url}/provider/{handle}/invite"


def from_our_page(stack: Stack, **headers: str) -> dict[str, str]:
    """Headers of a fetch() from one of our pages."""
    return {"Origin": stack.gateway_url, "Accept": "application/json", **headers}


# --- The eight the fuzzer found ---------------------------------------------------------------------------

async def test_a_nul_in_iss_is_refused_before_the_database(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    response = await stack.get(f"{stack.gateway_url}/launch?iss=http://ehr.example%00/fhir&launch=abc")
    body = await response.text()
    assert response.status == 400, body
    assert reason_code(body) == "invalid_characters"
    assert_no_error_logged(logs)


async def test_multipart_without_a_boundary_is_refused(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    handle = await launch_handle(stack)
    status, body = await fresh_post(invite_url(stack, handle), b"channel=copy",
                                    from_our_page(stack, **{"Content-Type": "multipart/form-data"}))
    assert status == 400, body
    assert reason_of(body) == "malformed_body"
    assert_no_error_logged(logs)


async def test_a_form_body_that_is_not_utf8_is_refused(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    handle = await launch_handle(stack)
    status, body = await fresh_post(
        invite_url(stack, handle), b"channel=copy&role=\xff\xfe",
        from_our_page(stack, **{"Content-Type": "application/x-www-form-urlencoded"}))
    assert status == 400, body
    assert reason_of(body) == "malformed_body"
    assert_no_error_logged(logs)


async def test_a_form_in_an_unknown_charset_is_refused(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    handle = await launch_handle(stack)
    status, body = await fresh_post(
        invite_url(stack, handle), b"channel=copy",
        from_our_page(stack, **{"Content-Type": "application/x-www-form-urlencoded; charset=x-no-such"}))
    assert status == 415, body
    assert reason_of(body) == "unsupported_charset"
    assert_no_error_logged(logs)


async def test_gzip_encoding_on_a_body_that_is_not_gzip_is_refused(stack: Stack,
                                                                   logs: pytest.LogCaptureFixture) -> None:
    handle = await launch_handle(stack)
    status, body = await fresh_post(
        invite_url(stack, handle), b"channel=copy&role=patient",
        from_our_page(stack, **{"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"}))
    assert status == 400, body
    assert reason_of(body) == "malformed_body"
    await asyncio.sleep(0.2)  # aiohttp drains the rest of the body after answering: that is quiet too
    assert_no_error_logged(logs)


async def test_a_cookie_that_is_not_utf8_is_refused(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    status, answer = await raw_request(stack, b"GET /lobby HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                              b"Cookie: vg_participant=\xff\xfe\xc0\r\nConnection: close\r\n\r\n")
    assert status == 400, answer
    assert reason_code(answer.decode()) == "invalid_cookie"
    assert_no_error_logged(logs)


async def test_a_nul_in_a_guest_address_is_refused_and_nothing_is_kept(stack: Stack,
                                                                        logs: pytest.LogCaptureFixture) -> None:
    handle = await launch_handle(stack)
    response = await stack.browser.post(invite_url(stack, handle), headers=from_our_page(stack), data={
        "channel": "email", "role": "guest", "guest_kind": "family", "address": "kin\x00@example.org"})
    body = await response.text()
    assert response.status == 400, body
    assert reason_of(body) == "invalid_characters"
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM participants WHERE role = 'guest'") == 0
        assert await conn.fetchval("SELECT count(*) FROM join_links") == 0
    assert_no_error_logged(logs)


async def test_a_static_file_name_over_255_bytes_is_not_found(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    too_long = ("/static/" + "a" * 300, "/static/launch/" + "é" * 200 + ".js",
                "/static/" + "/".join(["b" * 250] * 20))  # each name short enough, the whole path not
    for path in too_long:
        response = await stack.get(f"{stack.gateway_url}{path}")
        body = await response.text()
        assert response.status == 404, body
        assert reason_code(body) == "not_found"
    assert_no_error_logged(logs)


# --- Their neighbours ------------------------------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "iss=http://ehr.example/fhir&launch=a%00b",       # NUL in another parameter
    "iss=http://ehr.example/fhir&launch=a%01b",       # another control character
    "iss=http://ehr.example/fhir&la%00unch=abc",      # in a parameter's name
    "iss=http://ehr.example/fhir&launch=a%C2%85b",    # a C1 control (U+0085)
])
async def test_control_characters_anywhere_in_the_query_are_refused(stack: Stack, logs: pytest.LogCaptureFixture,
                                                                    query: str) -> None:
    response = await stack.get(f"{stack.gateway_url}/launch?{query}")
    body = await response.text()
    assert response.status == 400, body
    assert reason_code(body) == "invalid_characters"
    assert_no_error_logged(logs)


@pytest.mark.parametrize("path", ["/launch/callback?state=%00", "/join?t=%00", "/provider/ab%00cd",
                                  "/provider/ab%00cd/room", "/static/a%00b.css", "/ws?handle=%00"])
async def test_a_nul_on_any_route_is_refused(stack: Stack, logs: pytest.LogCaptureFixture, path: str) -> None:
    response = await stack.get(f"{stack.gateway_url}{path}")
    body = await response.text()
    assert response.status == 400, body
    assert reason_of(body) == "invalid_characters"
    assert_no_error_logged(logs)


async def test_bad_percent_encoding_is_not_an_error(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    # Undecodable escapes become U+FFFD or stay as they are: an unknown issuer, not a crash.
    for query in ("iss=%FF%FE&launch=abc", "iss=%zz&launch=%", "iss=%ED%A0%80&launch=%C0%80"):
        response = await stack.get(f"{stack.gateway_url}/launch?{query}")
        body = await response.text()
        assert 400 <= response.status < 500, body
        assert reason_code(body) is not None
    assert_no_error_logged(logs)


async def test_a_quoted_cookie_that_unescapes_to_a_nul_is_refused(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    status, answer = await raw_request(stack, b'GET /lobby HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                                              b'Cookie: vg_participant="ab\\000cd"\r\nConnection: close\r\n\r\n')
    assert status == 400, answer
    assert reason_code(answer.decode()) == "invalid_cookie"
    assert_no_error_logged(logs)


async def test_a_header_that_is_not_utf8_is_refused(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    # The metrics token check would have tried to encode it.
    status, answer = await raw_request(stack, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                              b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n")
    assert status == 400, answer
    assert b'"error": "invalid_header"' in answer or b"invalid_header" in answer
    assert_no_error_logged(logs)


@pytest.mark.parametrize("headers, body, reason", [
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"channel=copy&role=pat%00ient", "invalid_characters"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"chan%01nel=copy", "invalid_characters"),
    ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\nnot a part at all", "malformed_body"),
    # aiohttp's parser refuses this one itself, before the application: a plain 400 (and one access line).
    ({"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "deflate"}, b"channel=copy", None),
    ({"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
     gzip.compress(b"channel=copy") + b"trailing junk", "malformed_body"),
    ({"Content-Type": "application/json"}, b'{"channel": ', "malformed_json"),
    ({"Content-Type": "application/json"}, b'{"a": "\xff"}', "malformed_json"),
    ({"Content-Type": "application/json"}, b"[" * 100_000 + b"]" * 100_000, "malformed_json"),
    ({"Content-Type": "application/json"}, b'{"a": ["b\\u0000c"]}', "invalid_characters"),
    ({"Content-Type": "application/json"}, b'{"a\\ud800": 1}', "invalid_characters"),
    # Raw, without a backslash: DEL in an ASCII body, a C1 control (U+0085) in one that is not ASCII.
    ({"Content-Type": "application/json"}, b'{"a": "b\x7fc"}', "invalid_characters"),
    ({"Content-Type": "application/json"}, '{"a": "\u00e9b\u0085c"}'.encode(), "invalid_characters"),
])
async def test_bodies_that_do_not_parse_or_hold_control_characters_are_refused(
        stack: Stack, logs: pytest.LogCaptureFixture, headers: dict[str, str], body: bytes,
        reason: str | None) -> None:
    handle = await launch_handle(stack)
    for url in (invite_url(stack, handle), f"{stack.gateway_url}/provider/{handle}/renew",
                f"{stack.gateway_url}/join"):
        status, answer = await fresh_post(url, body, {"Origin": stack.gateway_url, **headers})
        assert 400 <= status < 500, answer
        if reason is not None:
            assert reason_of(answer) == reason, answer
    await asyncio.sleep(0.2)
    assert_no_error_logged(logs)


async def test_a_body_over_the_limit_is_refused_as_too_large(stack: Stack, logs: pytest.LogCaptureFixture) -> None:
    status, answer = await fresh_post(f"{stack.gateway_url}/join", b"t=" + b"a" * 300_000,
                                      {"Origin": stack.gateway_url,
                                       "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 413, answer
    assert reason_of(answer) == "body_too_large"
    assert_no_error_logged(logs)


# --- A failed send leaves nothing behind -----------------------------------------------------------------

async def test_a_send_that_fails_unexpectedly_takes_the_guest_and_its_link_back(
        stack: Stack, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(to: str, subject: str, body: str) -> None:
        raise ValueError("the mail library refused the address")

    monkeypatch.setattr(stack.gateway_app[NOTIFIER], "send_email", refuse)
    handle = await launch_handle(stack)
    response = await stack.browser.post(invite_url(stack, handle), headers=from_our_page(stack), data={
        "channel": "email", "role": "guest", "guest_kind": "interpreter", "address": "kin@example.org"})
    assert response.status == 500, await response.text()
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM participants WHERE role = 'guest'") == 0
        assert await conn.fetchval("SELECT count(*) FROM join_links") == 0


# --- CSRF: one middleware for every state-changing route -------------------------------------------------

# Routes that prove their callers another way than being our own pages (server-to-server webhooks), and how.
CSRF_EXEMPT = {"/graph/notifications": "clientState HMAC per notification (presence.teams_events)",
               "/graph/lifecycle": "clientState HMAC per notification (presence.teams_events)",
               "/sms/inbound/acs": "the webhook secret in its URL (gateway.notify.inbound; Event Grid signs nothing)",
               "/sms/inbound/twilio": "X-Twilio-Signature over URL and parameters (gateway.notify.inbound)"}


def _state_changing_routes(app: web.Application) -> list[tuple[str, web.AbstractResource]]:
    routes = []
    for route in app.router.routes():
        if route.method in ("POST", "PUT", "PATCH", "DELETE"):
            if getattr(route.handler, "_visitgate_csrf_exempt", False):
                # Only the webhooks named above may skip the check; any other exemption fails here.
                assert _fill(route.resource, "{h}") in CSRF_EXEMPT, route
                continue
            routes.append((route.method, route.resource))
    return routes


def _fill(resource: web.AbstractResource, handle: str) -> str:
    info = resource.get_info()
    if "path" in info:
        return str(info["path"])
    return re.sub(r"\{[^}]+\}", handle, str(info["formatter"]))


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    {},
])
async def test_every_state_changing_route_refuses_other_sites(stack: Stack, headers: dict[str, str]) -> None:
    handle = await stack.provider_handle()
    routes = _state_changing_routes(stack.gateway_app)
    paths = {_fill(resource, "{h}") for _method, resource in routes}
    assert {"/join", "/lobby/handoff", "/provider/{h}/renew", "/provider/{h}/invite"} <= paths, paths
    for method, resource in routes:
        url = f"{stack.gateway_url}{_fill(resource, handle)}"
        async with stack.browser.request(method, url, headers=headers, data={"channel": "copy"},
                                         allow_redirects=False) as response:
            body = await response.text()
            assert response.status == 403, (url, body)
            assert reason_of(body) == "cross_site_request", (url, body)
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM provider_handles") == 1  # no renewal happened
        assert await conn.fetchval("SELECT count(*) FROM join_links") == 0  # no invite happened


async def test_every_state_changing_route_answers_our_own_pages(stack: Stack) -> None:
    handle = await stack.provider_handle()
    for headers in ({"Origin": stack.gateway_url}, {"Origin": "null", "Sec-Fetch-Site": "same-origin"}):
        for method, resource in _state_changing_routes(stack.gateway_app):
            url = f"{stack.gateway_url}{_fill(resource, handle)}"
            async with stack.browser.request(method, url, headers=headers, allow_redirects=False,
                                             data={"channel": "copy", "role": "patient"}) as response:
                body = await response.text()
                assert response.status != 403 and reason_of(body) != "cross_site_request", (url, body)
                assert response.status < 500, (url, body)


def _bare_app(*routes: web.RouteDef) -> web.Application:
    """The edge's middlewares around a few routes of a test's own, no database."""
    app = web.Application(middlewares=[error_middleware, csrf_middleware, input_middleware])
    app[SETTINGS] = Settings(public_url="https://visits.example.org", secret_key=b"k" * 32,
                             signing_key_pem=b"", database_url="postgresql://nowhere/none")
    aiohttp_jinja2.setup(app, loader=jinja2.ChoiceLoader([jinja2.PackageLoader("gateway")]), autoescape=True,
                         extensions=["jinja2.ext.i18n"])
    aiohttp_jinja2.get_env(app).install_null_translations(newstyle=True)  # type: ignore[attr-defined]
    app.add_routes(routes)
    return app


@csrf_exempt
async def _hook(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _form(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def bare_client() -> AsyncIterator[TestClient]:
    """A client of an app made of the edge's middlewares and a webhook that opted out of the CSRF check."""
    app = _bare_app(web.post("/hook", _hook), web.post("/form", _form))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def test_a_route_that_opted_out_takes_posts_from_other_sites(
        bare_client: TestClient) -> None:
    hook = await bare_client.post("/hook", headers={"Origin": "https://carrier.example"}, data=b"{}")
    assert hook.status == 200, await hook.text()
    form = await bare_client.post("/form", headers={"Origin": "https://carrier.example"}, data=b"{}")
    assert form.status == 403, await form.text()


# --- Errors: JSON where the route serves JSON, pages elsewhere, nothing into an upgraded socket ------------

async def test_errors_are_json_on_json_routes_and_pages_elsewhere(stack: Stack) -> None:
    renew = await stack.browser.post(f"{stack.gateway_url}/provider/abc/renew",
                                     headers={"Origin": "https://evil.example"})
    assert renew.status == 403 and renew.content_type == "application/json", await renew.text()
    assert (await renew.json())["error"] == "cross_site_request"
    handoff = await stack.browser.post(f"{stack.gateway_url}/lobby/handoff",
                                       headers={"Origin": "https://evil.example"})
    assert handoff.status == 403 and handoff.content_type == "application/json", await handoff.text()
    socket_handshake = await stack.browser.get(f"{stack.gateway_url}/ws?x=%00", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert socket_handshake.status == 400 and socket_handshake.content_type == "application/json"
    assert (await socket_handshake.json())["error"] == "invalid_characters"
    page = await stack.get(f"{stack.gateway_url}/launch")
    assert page.status == 400 and page.content_type == "text/html", await page.text()
    assert reason_code(await page.text()) == "missing_iss"
    missing = await stack.get(f"{stack.gateway_url}/no/such/page")
    assert missing.status == 404 and reason_code(await missing.text()) == "not_found"


async def _socket_then_fail(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str("hello")
    raise RuntimeError("a bug after the upgrade")


async def _socket_then_database_gone(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str("hello")
    raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")


@pytest.mark.parametrize("path", ["/fails", "/gone"])
async def test_an_error_after_the_upgrade_writes_nothing_into_the_socket(
        path: str, caplog: pytest.LogCaptureFixture) -> None:
    app = _bare_app(web.get("/fails", _socket_then_fail), web.get("/gone", _socket_then_database_gone))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        async with client.ws_connect(path) as ws:
            first = await asyncio.wait_for(ws.receive(), 5)
            assert first.type == aiohttp.WSMsgType.TEXT and first.data == "hello"
            after = await asyncio.wait_for(ws.receive(), 5)
            # The connection ends; no HTTP page arrives as a broken frame (which the client reports as 1002).
            assert after.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), after
            assert ws.close_code != 1002
    if path == "/gone":  # the database away is one warning, not a traceback
        assert [(r.levelname, r.exc_info) for r in caplog.records if r.name == "gateway.web"] == [("WARNING", None)]


# --- HSTS ------------------------------------------------------------------------------------------------

async def _responses_of_every_kind(stack: Stack) -> list[aiohttp.ClientResponse]:
    url = stack.gateway_url
    return [await stack.get(f"{url}/healthz"),                  # JSON
            await stack.get(f"{url}/launch"),                   # an error page
            await stack.get(f"{url}/no/such/page"),             # aiohttp's 404
            await stack.get(f"{url}/static/launch/lobby.js"),   # a static file
            await stack.get(f"{url}/launch?iss=%00"),           # refused at the edge
            await stack.get(f"{url}/metrics"),                  # raised HTTPNotFound
            await stack.browser.post(f"{url}/join", headers={"Origin": "https://evil.example"})]


async def test_every_response_carries_hsts_when_served_over_https(database_url: str, signing_key_pem: bytes) -> None:
    async with running_stack(database_url, signing_key_pem,
                             lambda gateway, sandbox: {"public_url": "https://visits.example.org"}) as stack:
        responses = await _responses_of_every_kind(stack)
        for response in responses:
            assert response.headers.get("Strict-Transport-Security") == HSTS, (response.url, response.status)
        assert {r.status for r in responses} >= {200, 400, 403, 404}


async def test_no_hsts_when_served_over_http(stack: Stack) -> None:
    for response in await _responses_of_every_kind(stack):
        assert "Strict-Transport-Security" not in response.headers, (response.url, response.status)


# --- The database away -----------------------------------------------------------------------------------

class DatabaseLink:
    """A TCP relay between the gateway and PostgreSQL's socket that the test can cut and mend."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.port = 0
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        """Accept connections (on the same port as before, if it was up before)."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Refuse new connections and break every open one, as a database host that went away."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.pipes):
            writer.transport.abort()
        self.pipes.clear()
        await self.server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            client_writer.transport.abort()
            return
        self.pipes |= {client_writer, server_writer}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pump(client_reader, server_writer), pump(server_reader, client_writer))
        self.pipes -= {client_writer, server_writer}


@pytest.fixture
async def database_link(postgres: Postgres) -> AsyncIterator[DatabaseLink]:
    """The relay to the session's PostgreSQL, up."""
    [socket_path] = Path(postgres.socket_dir).glob(".s.PGSQL.*[0-9]")
    link = DatabaseLink(str(socket_path))
    await link.up()
    yield link
    if link.server is not None:
        link.server.close()
    for writer in list(link.pipes):
        writer.transport.abort()


async def test_the_database_away_is_a_503_with_one_warning_line(
        database_url: str, signing_key_pem: bytes, database_link: DatabaseLink,
        caplog: pytest.LogCaptureFixture) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    relayed = f"postgresql://postgres@127.0.0.1:{database_link.port}/{name}?sslmode=disable"
    async with running_stack(relayed, signing_key_pem) as stack:
        handle = await stack.provider_handle()  # works while the database is there
        caplog.set_level(logging.INFO)
        caplog.clear()
        await database_link.down()
        try:
            page = await stack.get(f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch=abc")
            body = await page.text()
            assert page.status == 503, body
            assert reason_code(body) == "database_unavailable"
            renew = await stack.browser.post(f"{stack.gateway_url}/provider/{handle}/renew",
                                             headers={"Origin": stack.gateway_url})
            assert renew.status == 503, await renew.text()
            assert (await renew.json())["error"] == "database_unavailable"
            view = await stack.get(f"{stack.gateway_url}/provider/{handle}")
            assert view.status == 503 and reason_code(await view.text()) == "database_unavailable"
            ours = [r for r in caplog.records if r.name == "gateway.web"]
            assert [r.levelno for r in ours] == [logging.WARNING] * 3, [r.getMessage() for r in ours]
            assert all(r.exc_info is None and "database unavailable" in r.getMessage() for r in ours)
        finally:
            await database_link.up()
        # And back: the next request is answered as before.
        for _ in range(50):
            again = await stack.get(f"{stack.gateway_url}/provider/{handle}")
            if again.status == 200:
                break
            await asyncio.sleep(0.1)
        assert again.status == 200, await again.text()


# --- The error policy's mapping, route by route of a bare app ---------------------------------------------

def _raising(exc: BaseException) -> web.RouteDef:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    return web.get(f"/{type(exc).__name__}", handler)




@pytest.mark.parametrize("path, status, reason", [
    ("/CannotConnectNowError", 503, "database_unavailable"),
    ("/TooManyConnectionsError", 503, "database_unavailable"),
    ("/ConnectionDoesNotExistError", 503, "database_unavailable"),
    ("/InterfaceError", 503, "database_unavailable"),
    ("/connect_refused", 503, "database_unavailable"),
    ("/CharacterNotInRepertoireError", 400, "invalid_input"),
    ("/ClientConnectorError", 502, "upstream_unavailable"),
    ("/TimeoutError", 504, "upstream_timeout"),
    ("/ConnectionRefusedError", 500, "internal_error"),  # not the database's socket: a bug of ours
])
async def test_each_kind_of_failure_has_its_status_and_reason(caplog: pytest.LogCaptureFixture, path: str,
                                                              status: int, reason: str) -> None:
    async def connect_refused(request: web.Request) -> web.Response:
        await asyncpg.connect("postgresql://postgres@127.0.0.1:1/none", timeout=2)
        return web.Response()

    app = _bare_app(
        _raising(asyncpg.CannotConnectNowError("the database system is starting up")),
        _raising(asyncpg.TooManyConnectionsError("sorry, too many clients already")),
        _raising(asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")),
        _raising(asyncpg.InterfaceError("pool is closing")),
        _raising(asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence")),
        _raising(aiohttp.ClientConnectorError(aiohttp.client_reqrep.ConnectionKey(
            "ehr.example", 443, True, True, None, None, None), OSError(111, "refused"))),
        _raising(TimeoutError()),
        _raising(ConnectionRefusedError(111, "refused")),
        web.get("/connect_refused", connect_refused))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        page = await client.get(path)
        assert page.status == status, await page.text()
        assert reason_code(await page.text()) == reason
        answer = await client.get(path, headers={"Accept": "application/json"})
        assert answer.status == status and (await answer.json())["error"] == reason
    ours = [r for r in caplog.records if r.name == "gateway.web"]
    if status == 500:
        assert all(r.levelno == logging.ERROR for r in ours)
    else:  # known failures: one warning each, never a traceback
        assert ours and all(r.levelno == logging.WARNING and r.exc_info is None for r in ours), ours


async def test_a_pool_acquire_that_times_out_is_the_database_unavailable(database_url: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    assert pool is not None

    async def busy(request: web.Request) -> web.Response:
        async with pool.acquire(timeout=0.05) as conn:
            await conn.fetchval("SELECT 1")
        return web.Response()

    try:
        async with pool.acquire():  # every connection taken, as under a burst
            async with TestClient(TestServer(_bare_app(web.get("/busy", busy)), host="127.0.0.1")) as client:
                response = await client.get("/busy")
                assert response.status == 503, await response.text()
                assert reason_code(await response.text()) == "database_unavailable"
    finally:
        await pool.close()
    assert [(r.levelname, r.exc_info) for r in caplog.records if r.name == "gateway.web"] == [("WARNING", None)]
