"""Webhooks: the customer's systems hear of an organisation's visit events, signed per Standard Webhooks.

A follower reads the presence event log by id (the hot event insert stays as it is) and enqueues one message
per subscribed endpoint in a durable outbox, in the same transaction that moves its position, so each event is
enqueued once; one follower at a time (its row is locked SKIP LOCKED), and a gap in the ids is passed only once
every transaction that could still fill it has ended. Any number of delivery workers claim due messages
(`FOR UPDATE SKIP LOCKED`, leased) and POST them, signed with the library of the specification
(`webhook-id`, `webhook-timestamp`, `webhook-signature`); failures are retried with exponential backoff and
jitter along the specification's schedule for about a day (`webhook_retry_window`), then the message fails and
its endpoint is disabled with the reason and the time. Every attempt is logged with its status code and time,
never a body.

Payloads carry identifiers and times only: the visit's and the participant's opaque ids, the participant's
role, the event type and when it happened; never a name, a FHIR id or anything clinical.

Outbound requests go through a client of their own: https only (http to 127.0.0.1 only with
`webhook_allow_http_loopback`, for tests), every address the host resolves to checked (no private, loopback,
link-local or otherwise non-public address, at connection time too, so a name that re-resolves cannot
slip through), no redirects followed, a timeout, and at most a few KiB of the answer read.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks.webhooks import Webhook

import sql
from gateway.configurations import append_audit
from gateway.security import Sealer
from gateway.settings import Settings

from . import eventlog

log = logging.getLogger(__name__)

Q = sql.queries("webhooks")
SECRET_CONTEXT = "webhook_endpoints.secret"
# Our event types, and the presence event kinds they come from (visit.started: the first moment both sides are
# connected; writeback.failed and launch.failed are enqueued where those failures happen).
EVENT_TYPES = ("visit.started", "visit.ended", "participant.joined", "participant.left", "lobby.entered",
               "participant.admitted", "writeback.failed", "launch.failed", "test")
FROM_KIND = {"connected": "participant.joined", "disconnected": "participant.left", "left": "participant.left",
             "lobby_entered": "lobby.entered", "admitted": "participant.admitted", "visit_ended": "visit.ended"}
# Where a participant joined or left: the visit (room or provider view) or the lobby.
PLACE = {"connected": "visit", "disconnected": "visit", "left": "lobby", "lobby_entered": "lobby"}
# The specification's schedule (seconds after the first try), for a retry window of a day; shorter windows
# shrink it in proportion.
SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
DAY = 86400.0
FOLLOW_BATCH = 500
DELIVER_BATCH = 20
LEASE_SECONDS = 60.0
MAX_ANSWER = 4096  # bytes of an endpoint's answer read (and thrown away)
MAX_URL = 2048


class WebhookRefused(ValueError):
    """An endpoint URL or event type we will not accept; the reason is a short code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RefusedAddress(OSError):
    """The endpoint's host resolves to an address we do not send to."""


def new_secret() -> str:
    """A fresh endpoint secret: whsec_ and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _loopback_allowed(settings: Settings, host: str) -> bool:
    return settings.webhook_allow_http_loopback and host == "127.0.0.1"


def check_url(url: str, settings: Settings) -> str:
    """The endpoint URL if we may send to it (https, a host, no credentials); else WebhookRefused."""
    if len(url) > MAX_URL or any(ch.isspace() for ch in url):
        raise WebhookRefused("bad_url")
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or parts.username or parts.password or parts.fragment:
        raise WebhookRefused("bad_url")
    if parts.scheme != "https" and not (parts.scheme == "http" and _loopback_allowed(settings, host)):
        raise WebhookRefused("https_required")
    return url


def check_event_types(types: list[str]) -> list[str]:
    """The event types, each one we know; else WebhookRefused."""
    wanted = sorted(set(types))
    if not wanted or any(t not in EVENT_TYPES or t == "test" for t in wanted):
        raise WebhookRefused("bad_event_types")
    return wanted


def address_allowed(address: str, settings: Settings) -> bool:
    """Whether we may connect to an IP address: public ones, and 127.0.0.1 when tests allow loopback."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback and settings.webhook_allow_http_loopback:
        return str(ip) == "127.0.0.1"
    return ip.is_global and not ip.is_multicast


class CheckedResolver(AbstractResolver):
    """Resolves like aiohttp does and refuses a host when any of its addresses is not one we send to."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        """Every address of host, if every one is allowed."""
        found = await self._inner.resolve(host, port, family)
        if not found or not all(address_allowed(r["host"], self._settings) for r in found):
            raise RefusedAddress(f"{host} resolves to an address webhooks are not sent to")
        return found

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


def webhook_session(settings: Settings) -> aiohttp.ClientSession:
    """The one client for customers' webhook endpoints (never the EHR's)."""
    connector = aiohttp.TCPConnector(resolver=CheckedResolver(settings), limit=50, use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout),
                                 auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())


# --- management (the CLI, and later the portal) ----------------------------------------------------------


@dataclass(frozen=True)
class NewEndpoint:
    """An endpoint just made, with its secret (shown this once)."""

    id: int
    secret: str


async def add_endpoint(conn: asyncpg.Connection, sealer: Sealer, settings: Settings, organisation_slug: str,
                       url: str, event_types: list[str], actor: str = "operator") -> NewEndpoint:
    """Add an organisation's endpoint; its secret is returned once and kept only sealed."""
    url = check_url(url, settings)
    types = check_event_types(event_types)
    secret = new_secret()
    async with conn.transaction():
        endpoint_id = await conn.fetchval(Q["add_endpoint"], organisation_slug, url, types,
                                          sealer.seal(secret, SECRET_CONTEXT))
        if endpoint_id is None:
            raise WebhookRefused("unknown_organisation")
        await append_audit(conn, actor, "webhook.add", f"webhook:{endpoint_id}",
                           {"organisation": organisation_slug, "url": url, "event_types": types})
    return NewEndpoint(int(endpoint_id), secret)


async def list_endpoints(conn: asyncpg.Connection, organisation_slug: str | None = None) -> list[dict[str, Any]]:
    """The live endpoints (of one organisation, or all), with their disabled notice if any; never a secret."""
    return [dict(r) for r in await conn.fetch(Q["list_endpoints"], organisation_slug)]


async def remove_endpoint(conn: asyncpg.Connection, endpoint_id: int, actor: str = "operator") -> bool:
    """Remove an endpoint (nothing more is sent to it); False when there was none."""
    async with conn.transaction():
        if await conn.fetchval(Q["remove_endpoint"], endpoint_id) is None:
            return False
        await append_audit(conn, actor, "webhook.remove", f"webhook:{endpoint_id}", {})
    return True


async def enable_endpoint(conn: asyncpg.Connection, endpoint_id: int, actor: str = "operator") -> bool:
    """Turn a disabled endpoint back on (its waiting messages go out again); False when it was not disabled."""
    async with conn.transaction():
        if await conn.fetchval(Q["enable_endpoint"], endpoint_id) is None:
            return False
        await append_audit(conn, actor, "webhook.enable", f"webhook:{endpoint_id}", {})
    return True


async def delivery_log(conn: asyncpg.Connection, endpoint_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """An endpoint's newest delivery attempts: when, which message, status code or error, how long."""
    return [dict(r) for r in await conn.fetch(Q["delivery_log"], endpoint_id, limit)]


def _instant(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _payload(event_type: str, at: dt.datetime, data: dict[str, Any]) -> str:
    return json.dumps({"type": event_type, "timestamp": _instant(at), "data": data}, separators=(",", ":"))


async def enqueue_test(conn: asyncpg.Connection, endpoint_id: int) -> int:
    """Queue a test message to one endpoint (even a disabled one is not sent it until turned on)."""
    now = dt.datetime.now(dt.timezone.utc)
    message_id = f"msg_test_{uuid.uuid4().hex}"
    payload = _payload("test", now, {"endpoint_id": endpoint_id, "occurred_at": _instant(now)})
    found = await conn.fetchval(Q["enqueue"], endpoint_id, message_id, "test", payload, None)
    assert found is not None
    return int(found)


# --- the follower ------------------------------------------------------------------------------------------


def _event_data(row: asyncpg.Record, event_type: str) -> dict[str, Any]:
    data: dict[str, Any] = {"visit_id": str(row["visit_id"]), "event_id": row["id"], "occurred_at": _instant(row["at"])}
    if event_type != "visit.started" and row["participant_id"] is not None:
        data["participant"] = {"id": str(row["participant_id"]), "role": row["role"]}
    if event_type != "visit.started" and row["kind"] in PLACE:
        data["place"] = PLACE[row["kind"]]
    if event_type == "visit.ended":
        data["reason"] = row["end_reason"]
        data["no_show"] = row["no_show"]
    return data


async def follow_once(conn: asyncpg.Connection, batch: int = FOLLOW_BATCH) -> int | None:
    """Enqueue the messages of events after the follower's position; how many events it passed (None: busy)."""
    async with conn.transaction():
        state = await conn.fetchrow(Q["lock_follower"])
        if state is None:
            return None
        last: int = state["last_id"]
        snap: str | None = state["gap_snapshot"]
        upto: int | None = state["gap_upto"]
        if not await conn.fetchval(Q["any_endpoint"]):
            # Nobody subscribes: skip ahead (an endpoint added later wants nothing from before it existed).
            newest = await eventlog.last_event_id(conn)
            await conn.execute(Q["move_follower"], max(last, newest), None, None)
            return max(newest - last, 0)
        closed = snap is not None and await eventlog.writers_finished(conn, snap)
        rows = await conn.fetch(Q["events_for_webhooks"], last, batch)
        organisations = sorted({r["organisation_id"] for r in rows if r["organisation_id"] is not None})
        endpoints = await conn.fetch(Q["subscribed_endpoints"], organisations) if organisations else []
        by_org: dict[int, list[asyncpg.Record]] = {}
        for endpoint in endpoints:
            by_org.setdefault(endpoint["organisation_id"], []).append(endpoint)
        start, gap = last, False
        for row in rows:
            if row["id"] != last + 1 and not (closed and upto is not None and row["id"] <= upto):
                # An id missing before this one may still be written: stop here until every transaction that
                # was running now has ended (then what is still missing was rolled back).
                if snap is None or closed:
                    snap, _none = await eventlog.running_writers(conn)
                    upto = rows[-1]["id"]
                gap = True
                break
            await _enqueue_event(conn, row, by_org.get(row["organisation_id"], []))
            last = row["id"]
        if not gap:
            snap, upto = None, None
        await conn.execute(Q["move_follower"], last, snap, upto)
    return last - start


async def _enqueue_event(conn: asyncpg.Connection, row: asyncpg.Record, endpoints: list[asyncpg.Record]) -> None:
    if not endpoints:
        return
    types = []
    kind_type = FROM_KIND.get(row["kind"])
    if kind_type is not None:
        types.append((kind_type, f"msg_{row['id']}"))
    if row["kind"] == "connected" and await conn.fetchval(Q["both_sides_connected"], row["visit_id"], row["id"]):
        # The message id names the visit: only the first moment both sides are there is its start.
        types.append(("visit.started", f"msg_started_{row['visit_id']}"))
    for event_type, message_id in types:
        payload = _payload(event_type, row["at"], _event_data(row, event_type))
        for endpoint in endpoints:
            if event_type in endpoint["event_types"]:
                await conn.execute(Q["enqueue"], endpoint["id"], message_id, event_type, payload, None)


async def writeback_failed(conn: asyncpg.Connection, visit_id: uuid.UUID, up_to_event_id: int, reason: str) -> None:
    """Enqueue `writeback.failed` for a visit whose events went to the dead letters (in the caller's transaction).

    The reason is write-back's own: status codes and OperationOutcome issue codes, never a response body.
    """
    now = dt.datetime.now(dt.timezone.utc)
    payload = _payload("writeback.failed", now, {"visit_id": str(visit_id), "up_to_event_id": up_to_event_id,
                                                 "reason": reason, "occurred_at": _instant(now)})
    for endpoint in await conn.fetch(Q["visit_endpoints"], visit_id, "writeback.failed"):
        await conn.execute(Q["enqueue"], endpoint["id"], f"msg_writeback_{visit_id}_{up_to_event_id}",
                           "writeback.failed", payload, None)


# --- delivery ------------------------------------------------------------------------------------------------


def retry_delay(attempt: int, window: float) -> float:
    """Seconds before the next attempt after `attempt` failed ones: the schedule, scaled to the window, jittered."""
    step = max(SCHEDULE[min(max(attempt - 1, 0), len(SCHEDULE) - 1)] * min(1.0, window / DAY), 0.05)
    return random.uniform(step * 0.8, step * 1.2)


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt found: the status code, or an error code."""

    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        """Delivered: any 2xx."""
        return self.status is not None and 200 <= self.status < 300


async def post(http: aiohttp.ClientSession, settings: Settings, url: str, secret: str, message_id: str,
               payload: str) -> Attempt:
    """POST one signed message to an endpoint; never follows a redirect, reads at most MAX_ANSWER bytes."""
    try:
        check_url(url, settings)
        host = urlsplit(url).hostname or ""
        # Checked here too so the log says why; the resolver checks again at connection time.
        for info in await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM):
            if not address_allowed(str(info[4][0]), settings):
                return Attempt(None, "refused_address")
    except WebhookRefused as refused:
        return Attempt(None, refused.reason)
    except OSError:
        return Attempt(None, "dns_failed")
    now = dt.datetime.now(dt.timezone.utc)
    signature = Webhook(secret).sign(message_id, now, payload)
    headers = {"content-type": "application/json", "webhook-id": message_id,
               "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature,
               "user-agent": "Visitgate-Webhooks"}
    try:
        async with http.post(url, data=payload.encode(), headers=headers, allow_redirects=False) as answer:
            await answer.content.read(MAX_ANSWER)
            return Attempt(answer.status, None)
    except RefusedAddress:
        return Attempt(None, "refused_address")
    except TimeoutError:
        return Attempt(None, "timeout")
    except (aiohttp.ClientError, OSError):
        return Attempt(None, "connection_failed")


class WebhookWorker:
    """Follows the event log into the outbox and delivers due messages, in this process."""

    def __init__(self, pool: asyncpg.Pool, http: aiohttp.ClientSession, sealer: Sealer, settings: Settings) -> None:
        self._pool = pool
        self._http = http
        self._sealer = sealer
        self._settings = settings

    async def run(self) -> None:
        """Follow and deliver until cancelled; a database away, or a failure of ours, costs a round."""
        while True:
            busy = False
            try:
                async with self._pool.acquire() as conn:
                    passed = await follow_once(conn)
                busy = bool(passed) or await self.deliver_once() > 0
            except eventlog.UNAVAILABLE as exc:
                log.warning("webhooks: database unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("webhooks: a round failed")
            if not busy:
                await asyncio.sleep(self._settings.webhook_poll_interval)

    async def deliver_once(self) -> int:
        """Claim due messages and deliver them; how many were tried."""
        async with self._pool.acquire() as conn:
            claimed = await conn.fetch(Q["claim_messages"], DELIVER_BATCH, LEASE_SECONDS)
        await asyncio.gather(*(self._deliver(m) for m in claimed))
        return len(claimed)

    async def _deliver(self, message: asyncpg.Record) -> None:
        async with self._pool.acquire() as conn:
            endpoint = await conn.fetchrow(Q["endpoint"], message["endpoint_id"])
        if endpoint is None or endpoint["disabled_reason"] is not None:
            return  # removed or disabled meanwhile: the lease lapses and it waits
        attempt, duration_ms = await post_message(self._http, self._sealer, self._settings, endpoint, message)
        async with self._pool.acquire() as conn:
            await settle(conn, self._settings, endpoint["id"], message, attempt, duration_ms)


async def post_message(http: aiohttp.ClientSession, sealer: Sealer, settings: Settings, endpoint: asyncpg.Record,
                       message: asyncpg.Record) -> tuple[Attempt, int]:
    """POST one outbox message to its endpoint; what came back, and how many milliseconds it took."""
    secret = sealer.unseal(endpoint["secret"], SECRET_CONTEXT)
    started = time.monotonic()
    attempt = await post(http, settings, endpoint["url"], secret, message["message_id"], message["payload"])
    return attempt, int((time.monotonic() - started) * 1000)


async def send_test(conn: asyncpg.Connection, http: aiohttp.ClientSession, sealer: Sealer, settings: Settings,
                    endpoint_id: int) -> Attempt:
    """Send a test message to an endpoint now (logged like any delivery); what the endpoint answered."""
    endpoint = await conn.fetchrow(Q["endpoint"], endpoint_id)
    if endpoint is None:
        raise WebhookRefused("unknown_endpoint")
    message = await conn.fetchrow(Q["claim_message"], await enqueue_test(conn, endpoint_id), LEASE_SECONDS)
    assert message is not None
    attempt, duration_ms = await post_message(http, sealer, settings, endpoint, message)
    await settle(conn, settings, endpoint_id, message, attempt, duration_ms)
    return attempt


async def settle(conn: asyncpg.Connection, settings: Settings, endpoint_id: int, message: asyncpg.Record,
                 attempt: Attempt, duration_ms: int) -> None:
    """Log an attempt and decide the message: delivered, tried again later, or failed with its endpoint disabled."""
    window = settings.webhook_retry_window
    async with conn.transaction():
        await conn.execute(Q["record_attempt"], message["id"], endpoint_id, attempt.status, attempt.error,
                           duration_ms)
        if attempt.ok:
            await conn.execute(Q["delivered"], message["id"])
            return
        age = (dt.datetime.now(dt.timezone.utc) - message["created_at"]).total_seconds()
        if age >= window:
            reason = f"failing for {int(window)}s: last {attempt.status or attempt.error}"
            await conn.execute(Q["give_up"], message["id"], reason)
            log.warning("webhook endpoint %s disabled (%s)", endpoint_id, reason)
            return
        await conn.execute(Q["retry_later"], message["id"], retry_delay(message["attempts"], window))
