"""The live check of a configuration (gateway.config_check): each known misconfiguration gets its own reason and
an actionable message, asked of a small EHR double through the one EHR client; nothing raises."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config_check import PROBLEMS, Problem, check_configuration, environment_said
from gateway.configurations import NewConfiguration, add_approved
from gateway.ehr import EhrClient
from gateway.security import Sealer

Server = Callable[..., Awaitable[TestServer]]
R4_DISCOVERY = {"authorization_endpoint": "x", "token_endpoint": "y", "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "grant_types_supported": ["authorization_code", "client_credentials"]}


def _metadata(version: str) -> dict[str, Any]:
    return {"resourceType": "CapabilityStatement", "fhirVersion": version}


async def _fake_ehr(aiohttp_server: Server, answers: dict[str, dict[str, Any]]) -> str:
    """An EHR double answering JSON at the paths given (404 elsewhere); answers its origin."""
    async def answer(request: web.Request) -> web.Response:
        doc = answers.get(request.path)
        return web.json_response(doc) if doc is not None else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def ehr() -> AsyncIterator[EhrClient]:
    async with aiohttp.ClientSession() as http:
        client = EhrClient(http, timeout=3)
        yield client
        await client.close()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


def _new(base: str, **kw: Any) -> NewConfiguration:
    return NewConfiguration(**{"fhir_base_url": base, "environment": "test", "client_id": "c",
                               "client_auth": "private_key_jwt", **kw})


def _reasons(problems: list[Problem]) -> list[str]:
    return [p.reason for p in problems]


async def test_a_healthy_r4_endpoint_passes(aiohttp_server: Server, ehr: EhrClient, conn: Any) -> None:
    origin = await _fake_ehr(aiohttp_server, {"/fhir/metadata": _metadata("4.0.1"),
                                              "/fhir/.well-known/smart-configuration": R4_DISCOVERY})
    assert await check_configuration(conn, ehr, _new(f"{origin}/fhir", writeback_strategy="fhir-r4-put")) == []


async def test_a_url_without_the_r4_suffix_says_which_url_to_use(aiohttp_server: Server, ehr: EhrClient,
                                                                  conn: Any) -> None:
    origin = await _fake_ehr(aiohttp_server, {"/api/FHIR/metadata": _metadata("1.0.2"),
                                              "/api/FHIR/R4/metadata": _metadata("4.0.1")})
    problems = await check_configuration(conn, ehr, _new(f"{origin}/api/FHIR"))
    assert _reasons(problems) == ["missing_r4_suffix"]
    assert f"{origin}/api/FHIR/R4" in problems[0].message and problems[0].field == "fhir_base_url"


async def test_a_url_whose_metadata_is_missing_but_r4_answers_is_the_missing_suffix(
        aiohttp_server: Server, ehr: EhrClient, conn: Any) -> None:
    origin = await _fake_ehr(aiohttp_server, {"/api/FHIR/R4/metadata": _metadata("4.0.1")})
    assert _reasons(await check_configuration(conn, ehr, _new(f"{origin}/api/FHIR"))) == ["missing_r4_suffix"]


@pytest.mark.parametrize(("version", "reason"), [("1.0.2", "fhir_dstu2"), ("3.0.1", "fhir_stu3"),
                                                 ("5.0.0", "fhir_version_unknown")])
async def test_an_older_fhir_version_is_named(aiohttp_server: Server, ehr: EhrClient, conn: Any, version: str,
                                              reason: str) -> None:
    origin = await _fake_ehr(aiohttp_server, {"/fhir/metadata": _metadata(version)})
    assert _reasons(await check_configuration(conn, ehr, _new(f"{origin}/fhir"))) == [reason]


async def test_no_capability_statement_is_no_metadata(aiohttp_server: Server, ehr: EhrClient, conn: Any) -> None:
    origin = await _fake_ehr(aiohttp_server, {})
    assert _reasons(await check_configuration(conn, ehr, _new(f"{origin}/fhir"))) == ["no_metadata"]


async def test_fhir_without_smart_configuration_is_oauth_not_set_up(aiohttp_server: Server, ehr: EhrClient,
                                                                     conn: Any) -> None:
    origin = await _fake_ehr(aiohttp_server, {"/fhir/metadata": _metadata("4.0.1")})
    assert _reasons(await check_configuration(conn, ehr, _new(f"{origin}/fhir"))) == ["oauth_not_set_up"]


async def test_missing_s256_private_key_jwt_and_backend_services_each_get_their_message(
        aiohttp_server: Server, ehr: EhrClient, conn: Any) -> None:
    origin = await _fake_ehr(aiohttp_server, {
        "/fhir/metadata": _metadata("4.0.1"),
        "/fhir/.well-known/smart-configuration": {**R4_DISCOVERY, "code_challenge_methods_supported": ["plain"],
                                                  "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                                                  "grant_types_supported": ["authorization_code"]}})
    problems = await check_configuration(conn, ehr, _new(f"{origin}/fhir", writeback_strategy="fhir-r4-patch"))
    assert _reasons(problems) == ["no_s256", "no_private_key_jwt", "no_backend_services"]
    assert [p.field for p in problems] == ["fhir_base_url", "client_auth", "writeback_strategy"]


async def test_an_unreachable_server_is_one_message(ehr: EhrClient, conn: Any) -> None:
    from aiohttp.test_utils import unused_port
    assert _reasons(await check_configuration(conn, ehr, _new(f"http://127.0.0.1:{unused_port()}/fhir"))) == \
        ["unreachable"]


async def test_plain_http_and_a_test_url_in_production_are_refused(aiohttp_server: Server, ehr: EhrClient,
                                                                    conn: Any) -> None:
    origin = await _fake_ehr(aiohttp_server, {"/sandbox/fhir/metadata": _metadata("4.0.1"),
                                              "/sandbox/fhir/.well-known/smart-configuration": R4_DISCOVERY})
    problems = await check_configuration(conn, ehr, _new(f"{origin}/sandbox/fhir", environment="production"))
    assert _reasons(problems) == ["http_in_production", "test_url_as_production"]


async def test_a_production_url_registered_as_test_is_named(aiohttp_server: Server, ehr: EhrClient,
                                                             conn: Any) -> None:
    origin = await _fake_ehr(aiohttp_server, {"/prod/fhir/metadata": _metadata("4.0.1"),
                                              "/prod/fhir/.well-known/smart-configuration": R4_DISCOVERY})
    assert _reasons(await check_configuration(conn, ehr, _new(f"{origin}/prod/fhir"))) == ["production_url_as_test"]


def test_host_names_and_paths_say_the_environment() -> None:
    assert environment_said("https://fhir.epic.com/interconnect-fhir-oauth/api/FHIR/R4") == "test"
    assert environment_said("https://epicproxy-tst.example.org/api/FHIR/R4") == "test"
    assert environment_said("https://fhir-ehr-code.cerner.com/r4/poc") == "test"
    assert environment_said("https://epicproxy.prd.example.org/api/FHIR/R4") == "production"
    assert environment_said("https://ehr.example.org/latest/fhir") is None


async def test_a_duplicate_in_any_organisation_is_named(aiohttp_server: Server, ehr: EhrClient, conn: Any) -> None:
    origin = await _fake_ehr(aiohttp_server, {"/fhir/metadata": _metadata("4.0.1"),
                                              "/fhir/.well-known/smart-configuration": R4_DISCOVERY})
    config_id = await add_approved(conn, Sealer(b"k" * 32), _new(f"{origin}/fhir/"), "ops")
    assert _reasons(await check_configuration(conn, ehr, _new(f"{origin}/fhir"))) == ["duplicate"]
    assert await check_configuration(conn, ehr, _new(f"{origin}/fhir"), configuration_id=config_id) == []


def test_every_reason_has_a_field_and_a_message() -> None:
    for reason, (field, message) in PROBLEMS.items():
        assert field in ("fhir_base_url", "environment", "client_auth", "writeback_strategy"), reason
        assert len(message) > 40, reason
