"""Webhook messages the gateway's own paths enqueue (launch failures), where presence's follower cannot see
them: into the same outbox presence.webhooks delivers from. Reason codes and times only."""
from __future__ import annotations

import datetime as dt
import json
import logging
import uuid

import asyncpg

import sql

log = logging.getLogger(__name__)

Q = sql.queries("webhooks")


async def launch_failed(pool: asyncpg.Pool, configuration_id: int, reason: str) -> None:
    """Tell the configuration's organisation's `launch.failed` endpoints, if any (never raises: the launch's
    own error page matters more than this message)."""
    now = dt.datetime.now(dt.timezone.utc)
    at = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    payload = json.dumps({"type": "launch.failed", "timestamp": at,
                          "data": {"configuration_id": configuration_id, "reason": reason, "occurred_at": at}},
                         separators=(",", ":"))
    try:
        async with pool.acquire() as conn:
            for endpoint in await conn.fetch(Q["configuration_endpoints"], configuration_id, "launch.failed"):
                await conn.execute(Q["enqueue"], endpoint["id"], f"msg_launch_{uuid.uuid4().hex}", "launch.failed",
                                   payload, None)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        log.warning("launch.failed webhook not enqueued (%s)", type(exc).__name__)
