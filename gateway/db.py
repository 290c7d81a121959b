"""The database: embedded PostgreSQL when no DATABASE_URL is set, the connection pool, migrations."""
from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

import asyncpg

import sql

log = logging.getLogger(__name__)

# Any fixed number: it only has to be the same in every gateway process that migrates.
_MIGRATION_LOCK = 0x76697369


def start_embedded(data_dir: Path) -> tuple[Any, str]:
    """Start (or reuse) an embedded PostgreSQL in data_dir/pg; returns the server handle and its DSN."""
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir it never uses; servers rarely set XDG_RUNTIME_DIR.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: production with DATABASE_URL never needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(  # type: ignore[attr-defined]  # re-exported without __all__
        str((data_dir / "pg").resolve()), cleanup_mode="stop")
    return server, server.get_uri()


async def create_pool(dsn: str, max_size: int, min_size: int = 1,
                      server_settings: dict[str, str] | None = None) -> asyncpg.Pool:
    """A pool of short-lived units of work; callers take a connection per unit, never per request."""
    # Our connections keep no session state, so asyncpg's reset query on every release (a round trip,
    # measured at ~9% of a launch) buys nothing.
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30,
                                     reset=_no_reset, server_settings=server_settings)
    assert pool is not None
    return pool


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Connections go back to the pool as they are (no SET, LISTEN or advisory locks outlive a unit of work)."""
    if conn.is_in_transaction():  # only after a cancelled unit of work
        await conn.execute("ROLLBACK")


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet applied, in order, each in its own transaction; returns their names."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, text in sql.migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(text)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            log.info("applied migration %s", name)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def migrate_dsn(dsn: str) -> list[str]:
    """Connect, migrate, disconnect (for `visitgate migrate`)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def start_embedded_async(data_dir: Path) -> tuple[Any, str]:
    """start_embedded off the event loop (initdb and pg_ctl block for seconds)."""
    return await asyncio.to_thread(start_embedded, data_dir)
