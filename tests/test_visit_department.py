"""The visit's department comes from the provider launch (the context parameter the integration record names),
and each organisation may keep its own time zone for its reports and messages."""
from __future__ import annotations

import json
import secrets
import shutil
import zoneinfo
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestServer, unused_port

from gateway import Settings, create_app
from gateway.appkeys import DB
from gateway.configurations import organisation_zone, set_organisation_zone
from gateway.errors import ConfigError
from gateway.smart import department_of

from .conftest import Stack


async def _launch(stack: Stack, department: str | None, encounter: str = "enc-1") -> None:
    extra = "" if department is None else f"&department={quote(department)}"
    url = f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch(encounter=encounter)}{extra}"
    response, _ = await stack.follow(url)
    assert response.status == 200, await response.text()


async def _departments(stack: Stack) -> dict[str, str | None]:
    async with stack.gateway_app[DB].acquire() as conn:
        rows = await conn.fetch("SELECT id::text, department FROM visits ORDER BY created_at")
    return {r["id"]: r["department"] for r in rows}


async def test_provider_launch_keeps_the_department_the_ehr_named(stack: Stack) -> None:
    await _launch(stack, "cardiology")
    assert list((await _departments(stack)).values()) == ["cardiology"]


async def test_a_visit_keeps_its_first_department_and_a_launch_without_one_leaves_it(stack: Stack) -> None:
    await _launch(stack, None)
    assert list((await _departments(stack)).values()) == [None]
    await _launch(stack, "oncology")
    await _launch(stack, "cardiology")
    await _launch(stack, None)
    assert list((await _departments(stack)).values()) == ["oncology"]


@pytest.mark.parametrize("hostile", ["x" * 65, "ward\n7", "\u200b", "   "])
async def test_an_unfit_department_is_dropped_and_the_launch_still_works(stack: Stack, hostile: str) -> None:
    await _launch(stack, hostile)
    assert list((await _departments(stack)).values()) == [None]


def test_department_from_the_token_context_is_a_short_printable_string() -> None:
    assert department_of(" Cardiology ") == "Cardiology"
    assert department_of(42) is None and department_of({"id": "x"}) is None and department_of("") is None


async def test_organisation_time_zone_is_its_own_or_the_gateways(stack: Stack) -> None:
    async with stack.gateway_app[DB].acquire() as conn:
        org = await conn.fetchval(
            "INSERT INTO organisations (slug, name, idp_kind, issuer, client_id, client_secret, group_claim) "
            "VALUES ('zone-health', 'Zone Health', 'oidc', 'https://idp.example/', 'c', '\\x00', 'groups') "
            "RETURNING id")
        assert await organisation_zone(conn, org, "UTC") == zoneinfo.ZoneInfo("UTC")
        await set_organisation_zone(conn, org, "Europe/Paris", "admin@example.org")
        assert await organisation_zone(conn, org, "UTC") == zoneinfo.ZoneInfo("Europe/Paris")
        with pytest.raises(ConfigError):
            await set_organisation_zone(conn, org, "Mars/Olympus_Mons", "admin@example.org")
        await set_organisation_zone(conn, org, None, "admin@example.org")
        assert await organisation_zone(conn, org, "America/Chicago") == zoneinfo.ZoneInfo("America/Chicago")
        audited = await conn.fetch("SELECT details FROM audit_log WHERE action = 'organisation.time_zone' "
                                   "AND organisation_id = $1 ORDER BY id", org)
    assert [json.loads(r["details"])["time_zone"] for r in audited] == ["Europe/Paris", None]


async def test_a_gateway_zone_the_database_does_not_know_stops_start_up_by_name(
        database_url: str, signing_key_pem: bytes, tmp_path: Path) -> None:
    # Python's tz data knows this zone and PostgreSQL's does not (the two can be of different ages).
    (tmp_path / "Visitgate").mkdir()
    shutil.copy(Path(zoneinfo.TZPATH[0] if zoneinfo.TZPATH else "/usr/share/zoneinfo") / "Europe" / "Paris",
                tmp_path / "Visitgate" / "Elsewhere")
    zoneinfo.reset_tzpath(to=[str(tmp_path), *zoneinfo.TZPATH])
    try:
        port = unused_port()
        settings = Settings(public_url=f"http://127.0.0.1:{port}", secret_key=secrets.token_bytes(32),
                            signing_key_pem=signing_key_pem, database_url=database_url, port=port,
                            time_zone="Visitgate/Elsewhere")
        server = TestServer(create_app(settings), host="127.0.0.1", port=port)
        with pytest.raises(ConfigError, match="VISITGATE_TIME_ZONE"):
            await server.start_server()
        await server.close()
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache(only_keys=["Visitgate/Elsewhere"])
