"""`visitgate config add/list` through the portal's functions: a configuration of an organisation, checked live
like the portal's form, pending for its approver unless an operator approves it in one step."""
from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from config_portal.organisations import NewOrganisation, add_organisation
from gateway.cli import main
from gateway.security import Sealer

Server = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def operator_env(database_url: str, monkeypatch: pytest.MonkeyPatch, signing_key_pem: bytes) -> None:
    """The environment `visitgate` reads, and an organisation."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("VISITGATE_PUBLIC_URL", "https://visits.example.org")
    monkeypatch.setenv("VISITGATE_SECRET_KEY", base64.b64encode(b"x" * 32).decode())
    monkeypatch.setenv("VISITGATE_SIGNING_KEY", signing_key_pem.decode())
    conn = await asyncpg.connect(database_url)
    try:
        await add_organisation(conn, Sealer(b"x" * 32), NewOrganisation(
            slug="contoso", name="Contoso", idp_kind="oidc", issuer="https://idp.example", client_id="c",
            client_secret="s"), "ops")
    finally:
        await conn.close()


async def _dstu2_ehr(aiohttp_server: Server) -> str:
    async def metadata(request: web.Request) -> web.Response:
        if request.path == "/api/FHIR/metadata":
            return web.json_response({"resourceType": "Conformance", "fhirVersion": "1.0.2"})
        if request.path == "/api/FHIR/R4/metadata":
            return web.json_response({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", metadata)
    return str((await aiohttp_server(app)).make_url("/api/FHIR"))


async def test_config_add_runs_the_portals_live_check_and_names_the_problem(
        operator_env: None, database_url: str, aiohttp_server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    base = await _dstu2_ehr(aiohttp_server)
    code = await asyncio.to_thread(main, ["config", "add", "--org", "contoso", "--fhir-base-url", base,
                                          "--environment", "test", "--client-id", "abc", "--approver", "oid-1"])
    err = capsys.readouterr().err
    assert code == 2 and "missing_r4_suffix" in err and f"{base}/R4" in err
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetch("SELECT * FROM configurations") == []
    finally:
        await conn.close()


async def test_config_add_proposes_for_the_organisations_approver_and_list_shows_the_organisation(
        operator_env: None, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(main, [
        "config", "add", "--org", "contoso", "--fhir-base-url", "https://ehr.example.org/api/FHIR/R4",
        "--environment", "production", "--client-id", "abc", "--ehr", "epic", "--approver", "oid-1",
        "--by", "ops@contoso.example", "--no-live-check"])
    assert code == 0, capsys.readouterr().err
    assert "pending approval" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["config", "list"]) == 0
    listed = capsys.readouterr().out
    assert "contoso" in listed and "pending" in listed and "epic" in listed
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT c.status, c.approver, o.slug FROM configurations c "
                                  "JOIN organisations o ON o.id = c.organisation_id")
        assert tuple(row) == ("pending", "oid-1", "contoso")
        revisions = await conn.fetch("SELECT number, state, proposed_by FROM configuration_revisions")
        assert [tuple(r) for r in revisions] == [(1, "pending", "ops@contoso.example")]
        actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_log WHERE action LIKE "
                                                         "'configuration.%' ORDER BY id")]
        assert actions == ["configuration.add"]
    finally:
        await conn.close()


async def test_config_add_with_approved_by_is_proposed_and_approved_as_operator(
        operator_env: None, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(main, [
        "config", "add", "--org", "contoso", "--fhir-base-url", "https://ehr.example.org/fhir/r4",
        "--environment", "production", "--client-id", "abc", "--approved-by", "ops", "--no-live-check"])
    assert code == 0, capsys.readouterr().err
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT status FROM configurations") == "approved"
        assert await conn.fetchval("SELECT state FROM configuration_revisions") == "approved"
        via = await conn.fetchval("SELECT details->>'via' FROM audit_log WHERE action = 'configuration.approve'")
        assert via == "operator"
        code = await asyncio.to_thread(main, [
            "config", "add", "--fhir-base-url", "https://EHR.example.org/fhir/r4/", "--environment", "production",
            "--client-id", "abc", "--approved-by", "ops", "--no-live-check"])
        assert code == 2 and "duplicate" in capsys.readouterr().err
    finally:
        await conn.close()
