"""The one EHR client (gateway/ehr.py): no redirect to another origin, size, time and content-type limits,
one discovery cache, one spelling of a FHIR base URL, kid-less id_tokens against a JWKS of several keys, and
what a launch answers when the EHR fails (502, 503, 504 with a reason code)."""
from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.appkeys import DB, SEALER
from gateway.configurations import NewConfiguration, add_approved
from gateway.ehr import EhrClient, fhir_base_url
from gateway.errors import ConfigError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.security import SigningKey, generate_signing_key_pem
from launch.smart import SmartClient, SmartConfiguration
from gateway.backend_auth import BackendTokens
from tests.conftest import CLIENT_ID, Overrides, Stack, reason_code

Server = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def stack_overrides() -> Overrides:
    """A shorter EHR time limit, so a launch against a slow EHR fails sooner (yet ample for the sandbox)."""
    return lambda _gateway, _sandbox: {"http_timeout": 3.0}


class Recorder:
    """A small aiohttp server's record of the paths it was asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []


def _discovery(base: str) -> dict[str, Any]:
    return {"issuer": base, "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks", "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "client_credentials"]}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse] | web.StreamResponse]


async def _recording_server(aiohttp_server: Server, handler: Handler) -> tuple[TestServer, Recorder]:
    """A server answering every path with handler (a coroutine or a plain function), recording each path."""
    recorder = Recorder()

    async def record(request: web.Request) -> web.StreamResponse:
        recorder.paths.append(request.path_qs)
        answer = handler(request)
        return await answer if inspect.isawaitable(answer) else answer

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return await aiohttp_server(app), recorder


# --- the client on its own ------------------------------------------------------------------------


async def test_discovery_redirected_to_another_origin_is_refused_and_the_other_host_never_asked(
        aiohttp_server: Server) -> None:
    elsewhere, elsewhere_log = await _recording_server(
        aiohttp_server, lambda request: _json(_discovery(str(request.url.origin()))))

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": str(elsewhere.make_url(request.path))})

    ehr, ehr_log = await _recording_server(aiohttp_server, redirect)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamError) as caught:
            await EhrClient(http).smart_configuration(str(ehr.make_url("/fhir")))
    assert caught.value.reason == "discovery_redirect" and caught.value.status == 502
    assert ehr_log.paths == ["/fhir/.well-known/smart-configuration"]
    assert elsewhere_log.paths == []


async def test_a_same_origin_redirect_is_followed_a_bounded_number_of_times(aiohttp_server: Server) -> None:
    async def answer(request: web.Request) -> web.Response:
        if request.path == "/moved":
            return _json({"ok": True})
        if request.path == "/loop":
            return web.Response(status=307, headers={"Location": "/loop"})
        return web.Response(status=301, headers={"Location": "/moved"})

    server, log = await _recording_server(aiohttp_server, answer)
    async with aiohttp.ClientSession() as http:
        ehr = EhrClient(http)
        assert await ehr.get_json(str(server.make_url("/old")), "jwks") == {"ok": True}
        with pytest.raises(UpstreamError) as caught:
            await ehr.get_json(str(server.make_url("/loop")), "jwks")
    assert caught.value.reason == "jwks_redirect"
    assert log.paths.count("/loop") == 4  # the first request and three redirects, then no more


@pytest.mark.parametrize("location", ["http://127.0.0.1:99999/x", "http://[::1/x", "javascript:alert(1)",
                                      "//elsewhere.example/x", "http://127.0.0.1:0/x"])
async def test_a_redirect_to_a_malformed_or_foreign_place_is_refused_not_a_crash(aiohttp_server: Server,
                                                                                  location: str) -> None:
    server, log = await _recording_server(aiohttp_server, lambda request: _redirect_to(location))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamError) as caught:
            await EhrClient(http).get_json(str(server.make_url("/x")), "jwks")
    assert caught.value.reason == "jwks_redirect" and log.paths == ["/x"]


async def test_a_post_is_never_redirected_even_to_the_same_origin(aiohttp_server: Server) -> None:
    server, log = await _recording_server(
        aiohttp_server, lambda request: _redirect_to("/token2") if request.path == "/token" else _json({}))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamError) as caught:
            await EhrClient(http).request("POST", str(server.make_url("/token")), what="token", data={"a": "b"})
    assert caught.value.reason == "token_redirect" and log.paths == ["/token"]


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_answer_over_the_size_cap_is_refused(aiohttp_server: Server, chunked: bool) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=b"{" + b" " * 5000 + b"}", content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(10):
            await response.write(b" " * 1000)
        await response.write_eof()
        return response

    server, _ = await _recording_server(aiohttp_server, big)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamError) as caught:
            await EhrClient(http, max_body=4096).get_json(str(server.make_url("/x")), "discovery")
    assert caught.value.reason == "discovery_too_large" and caught.value.status == 502


async def test_a_slow_ehr_is_a_timeout_504(aiohttp_server: Server) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return _json({})

    server, _ = await _recording_server(aiohttp_server, slow)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamTimeout) as caught:
            await EhrClient(http, timeout=0.2).smart_configuration(str(server.make_url("/fhir")))
    release.set()
    assert caught.value.reason == "discovery_timeout" and caught.value.status == 504


async def test_an_unreachable_ehr_is_unavailable_503() -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamUnavailable) as caught:
            await EhrClient(http).smart_configuration(f"http://127.0.0.1:{unused_port()}/fhir")
    assert caught.value.reason == "discovery_unreachable" and caught.value.status == 503


@pytest.mark.parametrize("content_type, accepted", [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("application/fhir+json;fhirVersion=4.0", True), ("text/html", False), ("text/plain", False)])
async def test_json_is_taken_only_under_a_json_content_type(aiohttp_server: Server, content_type: str,
                                                            accepted: bool) -> None:
    server, _ = await _recording_server(
        aiohttp_server, lambda request: _answer(b'{"a": 1}', headers={"Content-Type": content_type}))
    async with aiohttp.ClientSession() as http:
        ehr = EhrClient(http)
        if accepted:
            assert await ehr.get_json(str(server.make_url("/x")), "jwks") == {"a": 1}
        else:
            with pytest.raises(UpstreamError) as caught:
                await ehr.get_json(str(server.make_url("/x")), "jwks")
            assert caught.value.reason == "jwks_invalid"


async def test_deeply_nested_json_is_an_invalid_answer_not_a_crash(aiohttp_server: Server) -> None:
    server, _ = await _recording_server(
        aiohttp_server, lambda request: _answer(b"[" * 100_000 + b"]" * 100_000,
                                                headers={"Content-Type": "application/json"}))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamError) as caught:
            await EhrClient(http).get_json(str(server.make_url("/x")), "jwks")
    assert caught.value.reason == "jwks_invalid"


async def test_a_request_path_with_an_empty_segment_is_never_sent(aiohttp_server: Server) -> None:
    server, log = await _recording_server(aiohttp_server, lambda request: _json({}))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(UpstreamError) as caught:
            await EhrClient(http).get_json(str(server.make_url("/fhir//Patient/1")), "fhir")
    assert caught.value.reason == "fhir_bad_url" and log.paths == []


@pytest.mark.parametrize("given, canonical", [
    ("https://ehr.example/fhir", "https://ehr.example/fhir"),
    ("https://ehr.example/fhir/", "https://ehr.example/fhir"),
    ("https://ehr.example/fhir//", "https://ehr.example/fhir"),
    ("HTTPS://EHR.Example:443/fhir/r4/", "https://ehr.example/fhir/r4"),
    ("http://localhost:8080/fhir", "http://localhost:8080/fhir"),
    ("https://ehr.example", "https://ehr.example"),
    ("https://ehr.example/", "https://ehr.example"),
    ("https://ehr.example/fhir?x=1", None), ("https://ehr.example/fhir#f", None),
    ("https://user@ehr.example/fhir", None), ("ftp://ehr.example/fhir", None), ("/fhir", None),
    ("https://ehr.example/fh\x00ir", None), ("https://ehr.example/fhir x", None), ("https://ehr.example:99999/", None),
])
def test_fhir_base_urls_have_one_spelling(given: str, canonical: str | None) -> None:
    assert fhir_base_url(given) == canonical
    if canonical is not None:
        assert fhir_base_url(canonical) == canonical


def test_a_configuration_is_stored_in_the_canonical_spelling() -> None:
    config = NewConfiguration(fhir_base_url="https://EHR.example/fhir/", environment="test", client_id="c",
                              client_auth="public")
    assert config.fhir_base_url == "https://ehr.example/fhir"
    with pytest.raises(ConfigError):
        NewConfiguration(fhir_base_url="https://ehr.example/fhir?x", environment="test", client_id="c",
                         client_auth="public")


async def test_launch_and_backend_services_share_one_discovery_fetch(aiohttp_server: Server) -> None:
    async def slow_discovery(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)  # so the callers really overlap
        return _json(_discovery(str(request.url.origin()) + "/fhir"))

    server, log = await _recording_server(aiohttp_server, slow_discovery)
    base = str(server.make_url("/fhir"))
    key = SigningKey.from_pem(generate_signing_key_pem("ec"))
    async with aiohttp.ClientSession() as http:
        ehr = EhrClient(http)
        smart, tokens = SmartClient(ehr, key, "https://gw.example/launch/callback"), BackendTokens(ehr, key)
        confs = await asyncio.gather(*(smart.discover(base) for _ in range(5)),
                                     *(tokens._token_endpoint(base) for _ in range(5)),
                                     smart.discover(base + "/"))
    assert log.paths == ["/fhir/.well-known/smart-configuration"]
    assert {c.token_endpoint for c in confs[:5]} == {confs[5]} == {f"{base}/token"}


async def test_callers_waiting_on_a_failing_discovery_share_its_failure(aiohttp_server: Server) -> None:
    async def failing(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)  # so the callers really overlap
        return web.Response(status=500)

    server, log = await _recording_server(aiohttp_server, failing)
    async with aiohttp.ClientSession() as http:
        ehr = EhrClient(http)
        results = await asyncio.gather(*(ehr.smart_configuration(str(server.make_url("/fhir"))) for _ in range(5)),
                                       return_exceptions=True)
        assert [getattr(r, "reason", r) for r in results] == ["discovery_failed"] * 5
        assert len(log.paths) == 1
        with pytest.raises(UpstreamError):  # a failure is not kept: the next caller asks again
            await ehr.smart_configuration(str(server.make_url("/fhir")))
    assert len(log.paths) == 2


# --- id_tokens without a kid ----------------------------------------------------------------------


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "use": "sig"}


async def _validate(aiohttp_server: Server, published: list[rsa.RSAPrivateKey], signer: rsa.RSAPrivateKey,
                    alg: str = "RS256") -> dict[str, Any]:
    jwks = {"keys": [_public_jwk(k) for k in published]}
    server, _ = await _recording_server(aiohttp_server, lambda request: _json(jwks))
    now = int(time.time())
    token = jwt.encode({"iss": "https://ehr.example/fhir", "aud": CLIENT_ID, "sub": "Practitioner/p1",
                        "iat": now, "exp": now + 300, "nonce": "n-1"}, signer, algorithm=alg)
    assert "kid" not in jwt.get_unverified_header(token)
    conf = SmartConfiguration(issuer="https://ehr.example/fhir", authorization_endpoint="https://ehr.example/a",
                              token_endpoint="https://ehr.example/t", jwks_uri=str(server.make_url("/jwks")),
                              iss_parameter_supported=False)
    async with aiohttp.ClientSession() as http:
        smart = SmartClient(EhrClient(http), SigningKey.from_pem(generate_signing_key_pem("ec")), "https://gw/cb")
        return await smart.validate_id_token(conf, token, CLIENT_ID, "n-1")


async def test_an_id_token_without_kid_is_checked_against_each_key_of_the_jwks(aiohttp_server: Server) -> None:
    first, second = _rsa_key(), _rsa_key()
    claims = await _validate(aiohttp_server, [first, second], second, alg="RS384")
    assert claims["sub"] == "Practitioner/p1"


async def test_an_id_token_without_kid_signed_by_no_published_key_is_refused(aiohttp_server: Server) -> None:
    from gateway.errors import IdTokenInvalid

    with pytest.raises(IdTokenInvalid) as caught:
        await _validate(aiohttp_server, [_rsa_key(), _rsa_key()], _rsa_key())
    assert caught.value.reason == "id_token_signature"


# --- through the launch routes --------------------------------------------------------------------


async def _approve(stack: Stack, fhir_base: str) -> None:
    async with stack.gateway_app[DB].acquire() as conn:
        await add_approved(conn, stack.gateway_app[SEALER], NewConfiguration(
            fhir_base_url=fhir_base, environment="test", client_id=CLIENT_ID, client_auth="public"),
            approved_by="test-operator")


async def test_a_launch_whose_discovery_redirects_elsewhere_is_refused_without_asking_there(
        stack: Stack, aiohttp_server: Server) -> None:
    elsewhere, elsewhere_log = await _recording_server(
        aiohttp_server, lambda request: _json(_discovery(str(request.url.origin()))))

    async def redirect(request: web.Request) -> web.Response:
        # Another host name (the double listens on 127.0.0.1; localhost reaches it too, were it asked).
        return web.Response(status=302, headers={"Location": str(elsewhere.make_url(request.path)
                                                                 .with_host("localhost"))})

    ehr, _ = await _recording_server(aiohttp_server, redirect)
    await _approve(stack, str(ehr.make_url("/fhir")))
    response, visited = await stack.follow(f"{stack.gateway_url}/launch?iss={ehr.make_url('/fhir')}&launch=x")
    assert response.status == 502 and reason_code(await response.text()) == "discovery_redirect"
    assert len(visited) == 1 and elsewhere_log.paths == []


@pytest.mark.parametrize("endpoint", ["http://[::1/authorize", "http://127.0.0.1:99999/a", "ftp://ehr.example/a",
                                      "http://127.0.0.1//a"])
async def test_discovery_naming_a_malformed_endpoint_is_a_502_not_a_crash(stack: Stack, aiohttp_server: Server,
                                                                        endpoint: str) -> None:
    server, _ = await _recording_server(aiohttp_server, lambda request: _json(
        {**_discovery(str(request.url.origin()) + "/fhir"), "authorization_endpoint": endpoint}))
    await _approve(stack, str(server.make_url("/fhir")))
    response = await stack.get(f"{stack.gateway_url}/launch?iss={server.make_url('/fhir')}&launch=x")
    assert response.status == 502 and reason_code(await response.text()) == "discovery_invalid"


@pytest.mark.parametrize("fault, status, reason", [
    ("down", 503, "discovery_unreachable"), ("slow", 504, "discovery_timeout"),
    ("503", 503, "discovery_unavailable"), ("500", 502, "discovery_failed"), ("html", 502, "discovery_invalid"),
    ("no_s256", 502, "discovery_no_s256")])
async def test_an_ehr_fault_at_discovery_is_a_5xx_with_a_reason(stack: Stack, aiohttp_server: Server, fault: str,
                                                                 status: int, reason: str) -> None:
    release = asyncio.Event()

    async def faulty(request: web.Request) -> web.Response:
        if fault == "slow":
            await asyncio.wait_for(release.wait(), 10)
        if fault in ("503", "500"):
            return web.Response(status=int(fault))
        if fault == "html":
            return web.Response(text="<html>sign in</html>", content_type="text/html")
        return _json({**_discovery(str(request.url.origin()) + "/fhir"), "code_challenge_methods_supported": []})

    if fault == "down":
        base = f"http://127.0.0.1:{unused_port()}/fhir"
    else:
        server, _ = await _recording_server(aiohttp_server, faulty)
        base = str(server.make_url("/fhir"))
    await _approve(stack, base)
    response = await stack.get(f"{stack.gateway_url}/launch?iss={base}&launch=x")
    release.set()
    assert response.status == status and reason_code(await response.text()) == reason
    assert "Location" not in response.headers


@pytest.mark.parametrize("fault, status, reason", [
    ("down", 503, "token_unreachable"), ("slow", 504, "token_timeout"), ("invalid_grant", 502, "token_error")])
async def test_an_ehr_fault_at_the_token_endpoint_is_a_5xx_with_a_reason(
        stack: Stack, aiohttp_server: Server, fault: str, status: int, reason: str) -> None:
    """A small EHR whose authorize answers at once; its token endpoint is down, slow or refuses."""
    release = asyncio.Event()
    closed = f"http://127.0.0.1:{unused_port()}/token"

    async def ehr(request: web.Request) -> web.Response:
        origin = str(request.url.origin())
        if request.path.endswith("/.well-known/smart-configuration"):
            return _json({**_discovery(origin + "/fhir"), "authorization_endpoint": origin + "/authorize",
                          "token_endpoint": closed if fault == "down" else origin + "/token"})
        if request.path == "/authorize":
            back = {"code": "c-1", "state": request.query["state"]}
            return _redirect_to(request.query["redirect_uri"] + "?" + urlencode(back))
        if fault == "slow":
            await asyncio.wait_for(release.wait(), 10)
        return _json({"error": "invalid_grant"}, status=400)

    server, _ = await _recording_server(aiohttp_server, ehr)
    await _approve(stack, str(server.make_url("/fhir")))
    response, visited = await stack.follow(f"{stack.gateway_url}/launch?iss={server.make_url('/fhir')}&launch=x")
    release.set()
    assert [urlsplit(u).path for u in visited] == ["/launch", "/authorize", "/launch/callback"]
    assert response.status == status and reason_code(await response.text()) == reason


async def test_an_iss_with_a_trailing_slash_launches_the_configuration_of_its_base(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sandbox.access")
    iss = stack.fhir_base + "/"
    response, visited = await stack.launch(iss=iss)
    assert response.status == 200, await response.text()
    authorize = parse_qs(urlsplit(visited[1]).query)
    assert authorize["aud"] == [iss]  # as the EHR sent it
    asked = [m.group(1) for r in caplog.records if r.name == "sandbox.access"
             for m in [re.search(r'"[A-Z]+ (\S+) HTTP/', r.getMessage())] if m]
    assert any(path.startswith("/fhir/.well-known/") for path in asked), asked
    assert any(path.startswith("/fhir/Encounter/") for path in asked), asked
    assert not any("//" in urlsplit(path).path for path in asked), asked


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _answer(body: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(body=body, headers=headers)


def _redirect_to(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})
