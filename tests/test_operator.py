"""Operator commands, settings, migrations and the audit trail."""
from __future__ import annotations

import asyncio
import base64

import asyncpg
import pytest

from gateway.cli import main
from gateway.db import migrate
from gateway.errors import ConfigError
from gateway.security import generate_signing_key_pem
from gateway.settings import Settings


def test_missing_required_setting_is_named() -> None:
    with pytest.raises(ConfigError, match="VISITGATE_PUBLIC_URL"):
        Settings.from_env({"VISITGATE_SECRET_KEY": base64.b64encode(b"k" * 32).decode(),
                           "VISITGATE_SIGNING_KEY": generate_signing_key_pem().decode()})
    with pytest.raises(ConfigError, match="VISITGATE_SECRET_KEY"):
        Settings.from_env({"VISITGATE_PUBLIC_URL": "https://visits.example.org"})


def _required() -> dict[str, str]:
    """The settings every gateway must be given, and nothing else."""
    return {"VISITGATE_PUBLIC_URL": "https://visits.example.org",
            "VISITGATE_SECRET_KEY": base64.b64encode(b"k" * 32).decode(),
            "VISITGATE_SIGNING_KEY": generate_signing_key_pem().decode()}


def test_provider_handle_lifetime_is_read_in_whole_seconds_of_at_least_a_minute() -> None:
    base = _required()
    assert Settings.from_env(base).provider_handle_ttl == 900
    assert Settings.from_env({**base, "VISITGATE_PROVIDER_HANDLE_TTL": "600"}).provider_handle_ttl == 600
    for bad, says in (("ten minutes", "whole number"), ("30", "at least 60"), ("0", "at least 60")):
        with pytest.raises(ConfigError, match=f"VISITGATE_PROVIDER_HANDLE_TTL must be .*{says}"):
            Settings.from_env({**base, "VISITGATE_PROVIDER_HANDLE_TTL": bad})


def test_presence_lease_is_read_in_whole_seconds_of_at_least_three() -> None:
    base = _required()
    assert Settings.from_env(base).presence_lease == 30
    assert Settings.from_env({**base, "VISITGATE_PRESENCE_LEASE": "10"}).presence_lease == 10
    for bad, says in (("half a minute", "whole number"), ("2", "at least 3")):
        with pytest.raises(ConfigError, match=f"VISITGATE_PRESENCE_LEASE must be .*{says}"):
            Settings.from_env({**base, "VISITGATE_PRESENCE_LEASE": bad})


def test_settings_never_show_secrets() -> None:
    settings = Settings(public_url="https://v.example.org", secret_key=b"s" * 32,
                        signing_key_pem=generate_signing_key_pem())
    assert "secret_key" not in repr(settings) and "PRIVATE KEY" not in repr(settings)


async def test_config_add_registers_an_approved_configuration_and_audits_it(
        database_url: str, monkeypatch: pytest.MonkeyPatch, signing_key_pem: bytes) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("VISITGATE_PUBLIC_URL", "https://visits.example.org")
    monkeypatch.setenv("VISITGATE_SECRET_KEY", base64.b64encode(b"x" * 32).decode())
    monkeypatch.setenv("VISITGATE_SIGNING_KEY", signing_key_pem.decode())
    code = await asyncio.to_thread(main, [
        "config", "add", "--fhir-base-url", "https://ehr.example.org/fhir/r4", "--environment", "production",
        "--client-id", "abc", "--approved-by", "ops@example.org", "--writeback", "fhir-r4-patch",
        "--no-live-check"])
    assert code == 0
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM configurations")
        assert row["status"] == "approved" and row["approved_by"] == "ops@example.org"
        assert row["fhir_base_url"] == "https://ehr.example.org/fhir/r4"
        assert row["writeback_strategy"] == "fhir-r4-patch"
        actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_log ORDER BY id")]
        assert actions == ["configuration.add", "configuration.approve"]
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE audit_log SET actor = 'someone else'")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit_log")
    finally:
        await conn.close()


async def test_config_add_refuses_a_malformed_fhir_base_url(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                                           signing_key_pem: bytes, capsys) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("VISITGATE_PUBLIC_URL", "https://visits.example.org")
    monkeypatch.setenv("VISITGATE_SECRET_KEY", base64.b64encode(b"x" * 32).decode())
    monkeypatch.setenv("VISITGATE_SIGNING_KEY", signing_key_pem.decode())
    code = await asyncio.to_thread(main, [
        "config", "add", "--fhir-base-url", "ftp://ehr.example.org/fhir?x=1", "--environment", "test",
        "--client-id", "abc", "--approved-by", "ops"])
    assert code == 2 and "FHIR base URL" in capsys.readouterr().err


async def test_migrations_apply_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn) == []  # the template was migrated already
        versions = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert versions >= 1
    finally:
        await conn.close()


def _open_files_after_start(soft: int, hard: int) -> tuple[list[str], str]:
    """In a fresh process started with these limits: the limits after serve's raise, and what it logged."""
    import subprocess
    import sys

    code = (
        "import logging, resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from gateway.cli import raise_open_files_limit, _say_open_files, configure_logging\n"
        "configure_logging('INFO')\n"
        "after = raise_open_files_limit()\n"
        "_say_open_files(after[0])\n"
        "print(after[0], after[1])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split(), done.stderr


def test_serve_raises_its_open_files_limit_to_what_the_operator_allowed() -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    limits, said = _open_files_after_start(256, ceiling)
    assert limits == [str(ceiling), str(ceiling)]  # every socket is a descriptor: started at 256, it may use all
    assert f"open files limit {ceiling}" in said or ceiling < 4096
    assert ("WARNING" in said) == (ceiling < 4096)


def test_serve_warns_when_it_can_hold_few_browsers() -> None:
    limits, said = _open_files_after_start(256, 1024)
    assert limits == ["1024", "1024"]
    assert "WARNING" in said and "at most ~924 connected browsers" in said and "LimitNOFILE" in said
