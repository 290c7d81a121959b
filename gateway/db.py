"""The database: embedded PostgreSQL when no DATABASE_URL is set, the connection pool, migrations."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

import sql

log = logging.getLogger(__name__)

# Any fixed number: it only has to be the same in every gateway process that migrates.
_MIGRATION_LOCK = 0x76697369


def start_embedded(data_dir: Path) -> tuple[Any, str]:
    """Start (or reuse) an embedded PostgreSQL in data_dir/pg; returns the server handle and its DSN.

    The server stops when the last process holding it calls `cleanup()` or exits normally."""
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir it never uses; servers rarely set XDG_RUNTIME_DIR.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: production with DATABASE_URL never needs it
        from pgserver.postgres_server import PostgresServer
    # pgserver logs every pg_ctl command line and its output at INFO: noise on the demo's console.
    # Its warnings and errors (a server that would not start, with its log) still show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = (data_dir / "pg").resolve()
    pgdata.mkdir(exist_ok=True)
    with _signals_held():
        with PostgresServer._lock:  # the lock pgserver itself takes around its holder list
            _forget_gone_holders(pgdata)
            _remove_stale_postmaster_pid(pgdata)
        server = pgserver.get_server(str(pgdata), cleanup_mode="stop")  # type: ignore[attr-defined]
    return server, server.get_uri()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM in this thread while initdb and pg_ctl run.

    The children inherit the mask: a Ctrl-C in the terminal in the first seconds of a first run then
    cannot kill initdb half-way (a data folder that never starts again) nor pg_ctl after it launched the
    server (a server nobody stops). The signal is delivered once the server is up, and the caller stops it.
    """
    if not hasattr(signal, "pthread_sigmask"):  # not on this platform
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _forget_gone_holders(pgdata: Path) -> None:
    """Drop the processes that are gone from pgserver's list of the server's holders.

    pgserver stops the server when its last holder lets go, and a holder killed without letting go (kill -9,
    a terminal closed) stayed on the list for ever: the server then outlived every later run, each attaching
    to it and none stopping it. A pid that now names a process started after the list was last written is
    another process that reuses the number, so it is dropped too; a live holder is never dropped, so a
    server some running process still uses is never stopped under it."""
    holders = pgdata / ".handle_pids.json"
    try:
        written = holders.stat().st_mtime
        pids = json.loads(holders.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    # The margin: a process's start time is known to about a second (the boot time it counts from is
    # whole seconds), and some file systems keep modification times in whole seconds or two.
    alive = [pid for pid in pids if isinstance(pid, int) and _started_before(pid, written + 5)]
    if alive != pids:
        log.info("embedded PostgreSQL: %d holder(s) of an earlier run are gone", len(pids) - len(alive))
        holders.write_text(json.dumps(alive))


def _started_before(pid: int, moment: float) -> bool:
    import psutil  # type: ignore[import-untyped]  # pgserver's dependency, untyped; needed only with it

    try:
        return bool(psutil.Process(pid).create_time() <= moment)
    except psutil.Error:  # gone, or not ours to look at (then not one of this data folder's holders either)
        return False


def _remove_stale_postmaster_pid(pgdata: Path) -> None:
    """Remove postmaster.pid when the process it names is not a PostgreSQL serving this data folder.

    After a reboot or a container restart the number can belong to any process; pgserver would then take
    the server for running and hand out a socket nobody listens on, and PostgreSQL itself would refuse to
    start. Removing the file is safe: PostgreSQL also guards the data folder with its shared-memory
    segment, and will not start while a leftover process of the old server still holds it."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if not _serves(pid, pgdata):
        log.info("embedded PostgreSQL: removing a postmaster.pid left by a server that no longer runs")
        pid_file.unlink(missing_ok=True)


def _serves(pid: int, pgdata: Path) -> bool:
    """Whether pid is a postgres process whose data folder is pgdata."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.name() == "postgres" and str(pgdata) in process.cmdline()
    except psutil.AccessDenied:  # another user's process: assume the file is right and leave it alone
        return True
    except psutil.Error:
        return False


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
