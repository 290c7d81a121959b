"""`visitgate config feed show|set`: a configuration's appointment feed from the command line (MLLP address and
TLS, FHIR polling, reminder offsets, which messages go out and by which channels). Every change is audited."""
from __future__ import annotations

import argparse
import asyncio
from typing import Any

from gateway.cli import with_connection
from gateway.configurations import append_audit
from gateway.errors import ConfigError
from gateway.settings import Settings

from . import schedule


def add_command(commands: Any) -> None:
    """The top-level commands of this part: none (its command lives under `visitgate config`)."""


def add_config_command(config: Any) -> None:
    """Add `visitgate config feed` to the command line."""
    feed = config.add_parser("feed", help="a configuration's appointment feed and reminders")
    actions = feed.add_subparsers(dest="feed_action", required=True)
    show = actions.add_parser("show", help="show a configuration's feed settings")
    show.add_argument("configuration", type=int)
    show.set_defaults(func=_show)
    put = actions.add_parser("set", help="set a configuration's feed (options not given keep their value)")
    put.add_argument("configuration", type=int)
    put.add_argument("--mllp-host", help="address the HL7 listener binds (default 127.0.0.1)")
    put.add_argument("--mllp-port", help="port of the HL7 MLLP listener, or 'off'")
    put.add_argument("--tls-cert", help="PEM certificate chain file for MLLP over TLS, or 'off'")
    put.add_argument("--tls-key", help="PEM private key file for MLLP over TLS")
    put.add_argument("--fhir-polling", choices=["on", "off"], help="poll FHIR Appointment (_lastUpdated)")
    put.add_argument("--poll-interval", type=int, help="seconds between polls")
    put.add_argument("--reminders", help="reminder offsets before the start, e.g. 24h,15m (comma-separated)")
    put.add_argument("--messages", help="which go out: booked,changed,cancelled,reminder")
    put.add_argument("--channels", help="email,sms")
    put.add_argument("--by", default="operator", help="who does it (recorded in the audit log)")
    put.set_defaults(func=_set)


def offsets(text: str) -> tuple[int, ...]:
    """Reminder offsets like "24h,15m,2d" (a bare number is minutes) as minutes."""
    found = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        unit = {"m": 1, "h": 60, "d": 1440}.get(part[-1], 0)
        number = part[:-1] if unit else part
        if not number.isdigit():
            raise ConfigError(f"reminder offset {part[:16]!r} is not like 24h, 15m or 2d")
        found.append(int(number) * (unit or 1))
    return tuple(found)


def _describe(row: Any) -> str:
    port = f"{row['mllp_host']}:{row['mllp_port']}" if row["mllp_port"] else "off"
    return (f"mllp {port}{' (TLS)' if row['mllp_tls_cert'] else ''}; fhir polling "
            f"{'every ' + str(row['poll_interval']) + ' s' if row['fhir_polling'] else 'off'}; reminders "
            f"{', '.join(str(o) + ' min' for o in row['reminder_offsets']) or 'none'} before; messages "
            f"{','.join(row['messages'])}; channels {','.join(row['channels'])}")


def _show(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> int:
        row = await schedule.feed_settings(conn, args.configuration)
        print(f"configuration {args.configuration}: " + (_describe(row) if row else "no appointment feed"))
        return 0
    return asyncio.run(with_connection(Settings.from_env(), work))


def _set(args: argparse.Namespace) -> int:
    async def work(conn: Any) -> int:
        async with conn.transaction():
            row = await schedule.feed_settings(conn, args.configuration)
            now = dict(row) if row else {"mllp_host": "127.0.0.1", "mllp_port": None, "mllp_tls_cert": None,
                                         "mllp_tls_key": None, "fhir_polling": False, "poll_interval": 60,
                                         "reminder_offsets": [1440, 15], "messages": list(schedule.KINDS),
                                         "channels": list(schedule.CHANNELS)}
            new = dict(now)
            if args.mllp_host:
                new["mllp_host"] = args.mllp_host
            if args.mllp_port:
                new["mllp_port"] = None if args.mllp_port == "off" else _port(args.mllp_port)
            if args.tls_cert:
                new["mllp_tls_cert"] = None if args.tls_cert == "off" else args.tls_cert
                new["mllp_tls_key"] = None if args.tls_cert == "off" else args.tls_key
            if args.fhir_polling:
                new["fhir_polling"] = args.fhir_polling == "on"
            if args.poll_interval is not None:
                new["poll_interval"] = args.poll_interval
            if args.reminders is not None:
                new["reminder_offsets"] = list(offsets(args.reminders))
            if args.messages is not None:
                new["messages"] = [m.strip() for m in args.messages.split(",") if m.strip()]
            if args.channels is not None:
                new["channels"] = [c.strip() for c in args.channels.split(",") if c.strip()]
            try:
                await schedule.set_feed(
                    conn, args.configuration, mllp_host=new["mllp_host"], mllp_port=new["mllp_port"],
                    mllp_tls_cert=new["mllp_tls_cert"], mllp_tls_key=new["mllp_tls_key"],
                    fhir_polling=new["fhir_polling"], poll_interval=new["poll_interval"],
                    reminder_offsets=tuple(new["reminder_offsets"]), messages=tuple(new["messages"]),
                    channels=tuple(new["channels"]))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            changed = {k: {"before": now[k], "after": v} for k, v in new.items()
                       if k in now and now[k] != v and k != "poll_watermark"}
            await append_audit(conn, args.by, "appointment_feed.set", f"configuration:{args.configuration}",
                               changed)
            row = await schedule.feed_settings(conn, args.configuration)
        print(f"configuration {args.configuration}: {_describe(row)}")
        return 0
    return asyncio.run(with_connection(Settings.from_env(), work))


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError("--mllp-port must be a port number (1-65535) or 'off'")
    return int(text)
