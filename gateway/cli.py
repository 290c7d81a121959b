"""The `visitgate` command: serve, migrate, config, demo."""
from __future__ import annotations

import argparse
import asyncio
import importlib
from importlib import metadata
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import ConfigError
from .settings import Settings

PART_COMMANDS = ("config_portal.cli", "presence.cli", "appointments.cli")


def configure_logging(level: str) -> None:
    """One line per record, to stderr."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # not on this platform; the standard loop works, only slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# Below this many descriptors a gateway cannot hold a busy clinic's browsers (each presence socket is one).
FEW_OPEN_FILES = 4096


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit; returns (soft, hard) after."""
    try:
        import resource
    except ImportError:  # not on this platform
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        # Service managers often start processes at 1,024; the hard limit is what the operator allowed.
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _say_open_files(soft: int) -> None:
    log = logging.getLogger("visitgate")
    if 0 <= soft < FEW_OPEN_FILES:
        log.warning("this process may open only %d files: that is at most ~%d connected browsers, and past it "
                    "new connections fail; raise the limit (systemd: LimitNOFILE=, Docker: --ulimit nofile=)",
                    soft, max(soft - 100, 0))
    elif soft >= 0:
        log.info("open files limit %d (each connected browser holds one)", soft)


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app
    from .web import freeze_startup_heap, runner_options

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    _say_open_files(raise_open_files_limit()[0])
    _install_uvloop()
    app = create_app(settings)
    app.on_startup.append(freeze_startup_heap)  # last: after the pool, the bus and the templates exist
    web.run_app(app, host=settings.host, port=settings.port, **runner_options(),  # type: ignore[arg-type]
                shutdown_timeout=10, print=lambda _: logging.getLogger("visitgate").info(
                    "serving on %s:%s as %s", settings.host, settings.port, settings.public_url))
    return 0


async def with_connection(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    import asyncpg

    from . import db

    dsn = settings.database_url
    if dsn is None:
        _, dsn = await db.start_embedded_async(settings.data_dir)
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn)
        return await work(conn)
    finally:
        await conn.close()


def _migrate(args: argparse.Namespace) -> int:
    from . import db

    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        _, dsn = db.start_embedded(Settings.from_env().data_dir)
    configure_logging("INFO")
    applied = asyncio.run(db.migrate_dsn(dsn))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _config_add(args: argparse.Namespace) -> int:
    from .configurations import NewConfiguration, add_approved, approve_if_waived, organisation_id, propose_new
    from .security import Sealer

    settings = Settings.from_env()
    secret = os.environ.get(args.client_secret_env) if args.client_secret_env else None
    new = NewConfiguration(fhir_base_url=args.fhir_base_url, environment=args.environment,
                           client_id=args.client_id, client_auth=args.client_auth, scopes=args.scopes,
                           client_secret=secret, meeting_provider=args.meeting_provider,
                           writeback_strategy=args.writeback, ehr=args.ehr, approver=args.approver)

    if not args.approved_by and not args.approver and args.ehr != "oracle":
        raise ConfigError("name who approves it in the portal (--approver), or approve it now as an operator "
                          "(--approved-by)")

    async def work(conn: Any) -> int:
        org_id = await organisation_id(conn, args.org) if args.org else None
        problems = await _check(conn, settings, new, live=not args.no_live_check)
        if problems:
            for found in problems:
                print(f"visitgate: {found.reason}: {found.message}", file=sys.stderr)
            return 2
        sealer = Sealer(settings.secret_key)
        if args.approved_by:
            config_id = await add_approved(conn, sealer, new, args.approved_by, organisation_id=org_id)
            print(f"configuration {config_id} added and approved by {args.approved_by}: {new.fhir_base_url}")
            return 0
        # Without --approved-by a proposal waits for its approver, as one made in the portal does (unless the
        # organisation waived the approver for Oracle Health).
        async with conn.transaction():
            config_id, revision_id = await propose_new(conn, sealer, new, args.by, organisation_id=org_id)
            waived = await approve_if_waived(conn, revision_id, args.by, ehr=new.ehr, organisation_id=org_id)
        print(f"configuration {config_id} added, " + ("approved (the organisation waived the approver for Oracle "
              "Health)" if waived else "pending approval in the portal") + f": {new.fhir_base_url}")
        return 0

    return asyncio.run(with_connection(settings, work))


async def _check(conn: Any, settings: Settings, new: Any, *, live: bool) -> list[Any]:
    """The portal's check of a configuration (gateway.config_check), live through the one EHR client."""
    import aiohttp

    from .config_check import check_configuration, problem, static_problems
    from .configurations import by_base
    from .ehr import EhrClient

    if not live:
        problems = static_problems(new)
        if await by_base(conn, new.fhir_base_url) is not None:
            problems.append(problem("duplicate", new.fhir_base_url))
        return problems
    async with aiohttp.ClientSession(headers={"User-Agent": "visitgate"}) as http:
        ehr = EhrClient(http, timeout=settings.http_timeout)
        try:
            return await check_configuration(conn, ehr, new)
        finally:
            await ehr.close()


def _config_list(args: argparse.Namespace) -> int:
    from .configurations import list_all

    async def work(conn: Any) -> int:
        for row in await list_all(conn):
            print(f"{row['id']}\t{row['organisation'] or '-'}\t{row['environment']}\t{row['status']}\t"
                  f"{row['fhir_base_url']}\t{row['ehr']}\t{row['client_id']}\t{row['client_auth']}\t"
                  f"write-back {row['writeback_strategy']}"
                  + (f" (off: {row['writeback_disabled_reason']})" if row['writeback_disabled_reason'] else ""))
        return 0

    return asyncio.run(with_connection(Settings.from_env(), work))


def parser() -> argparse.ArgumentParser:
    """The command line."""
    from .configurations import DEFAULT_SCOPES, WRITEBACK_STRATEGIES

    top = argparse.ArgumentParser(prog="visitgate", description="Video visits straight out of the EHR.")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway (settings from the environment)").set_defaults(func=_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)
    # Commands of the parts above the shell (the sandbox's `demo`) plug in through package metadata, so
    # the shell never imports them.
    for entry in metadata.entry_points(group="visitgate.commands"):
        entry.load()(sub)
    for part in PART_COMMANDS:  # the parts' own commands, named like app.PARTS so no import points up
        importlib.import_module(part).add_command(sub)
    config = sub.add_parser("config", help="EHR configurations").add_subparsers(dest="action", required=True)
    add = config.add_parser("add", help="register a FHIR base URL (checked as the portal checks it)")
    add.add_argument("--fhir-base-url", required=True)
    add.add_argument("--environment", choices=["test", "production"], required=True)
    add.add_argument("--client-id", required=True)
    add.add_argument("--client-auth", choices=["public", "client_secret_basic", "private_key_jwt"],
                     default="private_key_jwt")
    add.add_argument("--client-secret-env", help="name of the environment variable holding the client secret")
    add.add_argument("--scopes", default=DEFAULT_SCOPES)
    add.add_argument("--meeting-provider", default="builtin")
    add.add_argument("--writeback", choices=list(WRITEBACK_STRATEGIES), default="none",
                     help="write visits back to the FHIR Encounter (needs system/Encounter scopes; see docs/writeback.md)")
    add.add_argument("--ehr", choices=["epic", "oracle", "smart"], default="smart",
                     help="which EHR: epic, oracle (Oracle Health) or smart (any other SMART on FHIR EHR)")
    add.add_argument("--org", help="the organisation it belongs to (its short name in portal URLs)")
    add.add_argument("--approver", help="the subject (Entra: object ID) of the approver who approves it in the "
                                        "portal")
    add.add_argument("--approved-by", help="approve it at once, as this operator (recorded in the audit log); "
                                           "without it the configuration waits for its approver in the portal")
    add.add_argument("--by", default="operator", help="who proposes it (recorded in the audit log)")
    add.add_argument("--no-live-check", action="store_true",
                     help="skip asking the EHR (discovery, /metadata) before saving; the other checks still run")
    add.set_defaults(func=_config_add)
    config.add_parser("list", help="list configurations").set_defaults(func=_config_list)
    for part in PART_COMMANDS:  # per-configuration settings a part keeps (`visitgate config feed`)
        hook = getattr(importlib.import_module(part), "add_config_command", None)
        if hook is not None:
            hook(config)
    return top


def _stop_like_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `visitgate` console script."""
    # SIGTERM (a service manager, `kill`, dev.py passing a stop on) ends a command as Ctrl-C does: unwinding,
    # so an embedded PostgreSQL it started is stopped, with no traceback. `serve` and `demo` replace both
    # with a graceful shutdown once their event loop runs.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_like_ctrl_c) if in_main_thread else None
    try:
        args = parser().parse_args(argv)
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"visitgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        return 128 + signum  # the shell's convention for "ended by this signal"
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
