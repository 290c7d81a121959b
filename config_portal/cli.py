"""`visitgate org add` and `visitgate org grant`: an organisation and its first admin, from the command line."""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from gateway.cli import with_connection
from gateway.configurations import set_organisation_zone
from gateway.errors import ConfigError
from gateway.security import Sealer
from gateway.settings import Settings

from . import store
from .organisations import ENTRA_HOST, NewOrganisation, add_organisation, department_queue, grant


def add_command(commands: Any) -> None:
    """Add `visitgate org` to the command line."""
    org = commands.add_parser("org", help="organisations served by the portal, and their roles")
    actions = org.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add an organisation and its identity provider")
    add.add_argument("--slug", required=True, help="short name in portal URLs: lower-case letters, digits, dashes")
    add.add_argument("--name", required=True)
    add.add_argument("--idp", choices=["entra", "oidc"], required=True)
    add.add_argument("--tenant", help="Entra: the organisation's directory (tenant) ID")
    add.add_argument("--entra-host", default=ENTRA_HOST, help="Entra: the login host (another cloud's)")
    add.add_argument("--issuer", help="generic OpenID: the provider's issuer URL")
    add.add_argument("--client-id", required=True)
    add.add_argument("--client-secret-file", required=True, type=Path,
                     help="a file holding the client secret (kept sealed; never on the command line)")
    add.add_argument("--group-claim", default="groups", help="the id_token claim listing the person's groups")
    add.add_argument("--by", default="operator", help="who does it (recorded in the audit log)")
    add.set_defaults(func=_add)
    give = actions.add_parser("grant", help="grant a role in an organisation (the first admin comes from here)")
    give.add_argument("--org", required=True, help="the organisation's short name")
    give.add_argument("--role", choices=["admin", "approver", "report_reader"], required=True)
    who = give.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", help="the person's subject (Entra: object ID)")
    who.add_argument("--email")
    who.add_argument("--group", help="a group ID as the group claim lists it")
    give.add_argument("--by", default="operator", help="who does it (recorded in the audit log)")
    give.set_defaults(func=_grant)
    queue = actions.add_parser("department-queue",
                               help="let the organisation's clinicians see their department's clinic queue, or not")
    queue.add_argument("--org", required=True, help="the organisation's short name")
    queue.add_argument("state", choices=["on", "off"])
    queue.add_argument("--by", default="operator", help="who does it (recorded in the audit log)")
    queue.set_defaults(func=_department_queue)
    zone = actions.add_parser("time-zone", help="the organisation's time zone for its reports and messages")
    zone.add_argument("--org", required=True, help="the organisation's short name")
    which = zone.add_mutually_exclusive_group(required=True)
    which.add_argument("--zone", help="an IANA name, such as Europe/Paris")
    which.add_argument("--clear", action="store_true", help="use the gateway's VISITGATE_TIME_ZONE again")
    zone.add_argument("--by", default="operator", help="who does it (recorded in the audit log)")
    zone.set_defaults(func=_time_zone)


def _add(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        secret = args.client_secret_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"the client secret file cannot be read: {exc.strerror}") from exc
    new = NewOrganisation(slug=args.slug, name=args.name, idp_kind=args.idp, client_id=args.client_id,
                          client_secret=secret, tenant_id=args.tenant, issuer=args.issuer,
                          entra_host=args.entra_host, group_claim=args.group_claim)

    async def work(conn: Any) -> int:
        org_id = await add_organisation(conn, Sealer(settings.secret_key), new, args.by)
        print(f"organisation {org_id} added: {new.slug} ({new.expected_issuer}); its portal is "
              f"{settings.public_url}/portal/{new.slug}/sign-in")
        return 0

    return asyncio.run(with_connection(settings, work))


def _grant(args: argparse.Namespace) -> int:
    matched_by, value = next((k, v) for k, v in (("subject", args.subject), ("email", args.email),
                                                  ("group", args.group)) if v)

    async def work(conn: Any) -> int:
        added = await grant(conn, args.org, args.role, matched_by, value, args.by)
        print(f"{args.role} granted by {matched_by} in {args.org}" if added else "that grant already existed")
        return 0

    return asyncio.run(with_connection(Settings.from_env(), work))


def _department_queue(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> int:
        changed = await department_queue(conn, args.org, args.state == "on", args.by)
        print(f"department queues are {args.state} in {args.org}" + ("" if changed else " (already)"))
        return 0

    return asyncio.run(with_connection(Settings.from_env(), work))


def _time_zone(args: argparse.Namespace) -> int:
    settings = Settings.from_env()

    async def work(conn: Any) -> int:
        org = await store.organisation_by_slug(conn, args.org)
        if org is None:
            raise ConfigError(f"no organisation is named {args.org!r}")
        await set_organisation_zone(conn, org.id, None if args.clear else args.zone, args.by)
        print(f"{args.org}: " + (f"time zone {args.zone}" if args.zone else
                                 f"the gateway's time zone ({settings.time_zone})"))
        return 0

    return asyncio.run(with_connection(settings, work))
