"""`visitgate webhook add|list|test|enable|remove|log`: an organisation's webhook endpoints from the command line
(the portal's page comes later). Every change is audited."""
from __future__ import annotations

import argparse
import asyncio
from typing import Any

from gateway.cli import with_connection
from gateway.errors import ConfigError
from gateway.security import Sealer
from gateway.settings import Settings

from . import webhooks


def add_command(commands: Any) -> None:
    """Add `visitgate webhook` to the command line."""
    hook = commands.add_parser("webhook", help="an organisation's webhook endpoints (Standard Webhooks)")
    actions = hook.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add an endpoint; prints its secret once")
    add.add_argument("--org", required=True, help="the organisation's short name")
    add.add_argument("--url", required=True, help="https URL of the endpoint")
    add.add_argument("--events", required=True,
                     help="comma-separated event types: " + ", ".join(t for t in webhooks.EVENT_TYPES if t != "test"))
    add.add_argument("--by", default="operator", help="who does it (recorded in the audit log)")
    add.set_defaults(func=_add)
    listing = actions.add_parser("list", help="list endpoints, with the notice of any disabled one")
    listing.add_argument("--org", help="only this organisation's")
    listing.set_defaults(func=_list)
    test = actions.add_parser("test", help="send a test message to an endpoint now")
    test.add_argument("id", type=int)
    test.set_defaults(func=_test)
    remove = actions.add_parser("remove", help="remove an endpoint (nothing more is sent to it)")
    remove.add_argument("id", type=int)
    remove.add_argument("--by", default="operator", help="who does it (recorded in the audit log)")
    remove.set_defaults(func=_remove)
    enable = actions.add_parser("enable", help="turn an endpoint disabled after a day of failures back on")
    enable.add_argument("id", type=int)
    enable.add_argument("--by", default="operator", help="who does it (recorded in the audit log)")
    enable.set_defaults(func=_enable)
    log = actions.add_parser("log", help="an endpoint's latest delivery attempts")
    log.add_argument("id", type=int)
    log.set_defaults(func=_log)


def _refused(exc: webhooks.WebhookRefused) -> ConfigError:
    return ConfigError(f"refused: {exc.reason}")


def _add(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    types = [t.strip() for t in args.events.split(",") if t.strip()]

    async def work(conn: Any) -> int:
        try:
            made = await webhooks.add_endpoint(conn, Sealer(settings.secret_key), settings, args.org, args.url, types,
                                               args.by)
        except webhooks.WebhookRefused as exc:
            raise _refused(exc) from None
        print(f"webhook {made.id} added for {args.org}: {args.url}")
        print(f"secret (shown this once; verify deliveries with it): {made.secret}")
        return 0

    return asyncio.run(with_connection(settings, work))


def _list(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> int:
        for e in await webhooks.list_endpoints(conn, args.org):
            notice = f"  DISABLED {e['disabled_at']:%Y-%m-%d %H:%M}Z: {e['disabled_reason']}" if e["disabled_reason"] else ""
            print(f"{e['id']}\t{e['slug']}\t{e['url']}\t{','.join(e['event_types'])}{notice}")
        return 0

    return asyncio.run(with_connection(Settings.from_env(), work))


def _test(args: argparse.Namespace) -> int:
    settings = Settings.from_env()

    async def work(conn: Any) -> int:
        async with webhooks.webhook_session(settings) as http:
            try:
                attempt = await webhooks.send_test(conn, http, Sealer(settings.secret_key), settings, args.id)
            except webhooks.WebhookRefused as exc:
                raise _refused(exc) from None
        print(f"answered {attempt.status}" if attempt.status is not None else f"not delivered: {attempt.error}")
        return 0 if attempt.ok else 1

    return asyncio.run(with_connection(settings, work))


def _remove(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> int:
        removed = await webhooks.remove_endpoint(conn, args.id, args.by)
        print(f"webhook {args.id} removed" if removed else f"no webhook {args.id}")
        return 0 if removed else 1

    return asyncio.run(with_connection(Settings.from_env(), work))


def _enable(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> int:
        enabled = await webhooks.enable_endpoint(conn, args.id, args.by)
        print(f"webhook {args.id} enabled" if enabled else f"webhook {args.id} was not disabled")
        return 0 if enabled else 1

    return asyncio.run(with_connection(Settings.from_env(), work))


def _log(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> int:
        for a in await webhooks.delivery_log(conn, args.id):
            print(f"{a['at']:%Y-%m-%d %H:%M:%S}Z\t{a['message_id']}\t{a['event_type']}\t"
                  f"{a['status_code'] or a['error']}\t{a['duration_ms']} ms")
        return 0

    return asyncio.run(with_connection(Settings.from_env(), work))
