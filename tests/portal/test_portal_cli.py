"""`visitgate org add` and `visitgate org grant`: an organisation and its first admin from the command line,
audited, with the client secret sealed."""
from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import asyncpg
import pytest

from gateway.cli import main


@pytest.fixture
def operator_env(database_url: str, monkeypatch: pytest.MonkeyPatch, signing_key_pem: bytes) -> None:
    """The environment `visitgate` reads."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("VISITGATE_PUBLIC_URL", "https://visits.example.org")
    monkeypatch.setenv("VISITGATE_SECRET_KEY", base64.b64encode(b"x" * 32).decode())
    monkeypatch.setenv("VISITGATE_SIGNING_KEY", signing_key_pem.decode())


async def test_an_operator_adds_an_organisation_and_grants_its_first_admin(
        operator_env: None, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the-entra-client-secret\n")
    code = await asyncio.to_thread(main, [
        "org", "add", "--slug", "contoso", "--name", "Contoso Health", "--idp", "entra", "--tenant",
        "11111111-2222-3333-4444-555555555555", "--client-id", "app-1", "--client-secret-file", str(secret),
        "--by", "ops@contoso.example"])
    assert code == 0, capsys.readouterr().err
    assert "https://visits.example.org/portal/contoso/sign-in" in capsys.readouterr().out
    code = await asyncio.to_thread(main, [
        "org", "grant", "--org", "contoso", "--role", "admin", "--subject", "0c1d-admin-oid", "--by", "ops"])
    assert code == 0
    code = await asyncio.to_thread(main, [
        "org", "grant", "--org", "contoso", "--role", "approver", "--email", "Analyst@Contoso.example"])
    assert code == 0
    conn = await asyncpg.connect(database_url)
    try:
        org = await conn.fetchrow("SELECT * FROM organisations")
        assert org["issuer"] == "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
        assert b"the-entra-client-secret" not in bytes(org["client_secret"])
        members = {(r["role"], r["matched_by"], r["value"]) for r in await conn.fetch("SELECT * FROM memberships")}
        assert members == {("admin", "subject", "0c1d-admin-oid"), ("approver", "email", "analyst@contoso.example")}
        audit = [(r["actor"], r["action"]) for r in await conn.fetch("SELECT * FROM audit_log ORDER BY id")]
        assert audit == [("ops@contoso.example", "organisation.add"), ("ops", "role.grant"),
                         ("operator", "role.grant")]
        assert "the-entra-client-secret" not in str(await conn.fetch("SELECT details FROM audit_log"))
    finally:
        await conn.close()


@pytest.mark.parametrize(("args", "message"), [
    (["--idp", "entra", "--tenant", "organizations"], "own tenant"),
    (["--idp", "entra", "--tenant", "common"], "own tenant"),
    (["--idp", "oidc", "--issuer", "http://idp.example.org"], "https"),
    (["--idp", "oidc"], "issuer"),
])
async def test_an_organisation_the_portal_could_not_check_is_refused(
        operator_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        message: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    code = await asyncio.to_thread(main, ["org", "add", "--slug", "x", "--name", "X", "--client-id", "a",
                                          "--client-secret-file", str(secret), *args])
    assert code == 2 and message in capsys.readouterr().err


async def test_granting_in_an_unknown_organisation_is_refused(operator_env: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(main, ["org", "grant", "--org", "nobody", "--role", "admin", "--group", "g"])
    assert code == 2 and "no organisation" in capsys.readouterr().err


async def test_an_operator_sets_an_organisations_time_zone_and_a_wrong_name_is_refused(
        operator_env: None, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    assert await asyncio.to_thread(main, [
        "org", "add", "--slug", "contoso", "--name", "Contoso Health", "--idp", "oidc", "--issuer",
        "https://idp.example.org", "--client-id", "app-1", "--client-secret-file", str(secret)]) == 0
    assert await asyncio.to_thread(main, ["org", "time-zone", "--org", "contoso", "--zone", "America/Chicago"]) == 0
    assert "America/Chicago" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["org", "time-zone", "--org", "contoso", "--zone", "Chicago"]) != 0
    assert "IANA" in capsys.readouterr().err
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT time_zone FROM organisations") == "America/Chicago"
    finally:
        await conn.close()
