"""The end of a visit: by its clinician, after everyone has been gone a while, or after its window.

Whoever ends it, the end is one `visit_ended` event written with a `visit_ends` row whose primary key is the
visit, under a lock on the visit's row: so a visit ends exactly once, with one reason, however many clinicians
press the button and however many processes sweep. The event goes out like any other (presence.bus), and
write-back turns it into the Encounter's end (presence.encounter_mapping). Join links and participant sessions
of an ended visit are refused (sql/queries/join.sql).

The sweep (idle visits, visits past their window) may run in every gateway process: one process at a time
sweeps (a transaction-level advisory lock), and each end takes the visit's row lock as the clinician's does.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import NamedTuple
from uuid import UUID

import asyncpg

import sql
from gateway.settings import Settings

from . import eventlog
from .announcer import Announcer

log = logging.getLogger(__name__)

Q = sql.queries("visit_end")
REASONS = ("clinician", "idle", "window")
SWEEP_BATCH = 100
LOOK_BACK = dt.timedelta(days=9)  # links live at most 7 days past issue, plus grace: older visits ended then


class Ended(NamedTuple):
    """A visit's end: its event, why, whether the patient never came, when."""

    event_id: int
    reason: str
    no_show: bool
    ended_at: dt.datetime


async def end_visit(conn: asyncpg.Connection, visit_id: UUID, reason: str,
                    ended_by: UUID | None = None) -> Ended | None:
    """End a visit in one transaction; None when it had ended already (the first end stands)."""
    if reason not in REASONS:
        raise ValueError(f"unknown end reason {reason!r}")
    async with conn.transaction():
        if await conn.fetchval(Q["lock_visit"], visit_id) is None:
            return None
        row = await conn.fetchrow(Q["end_visit"], visit_id, ended_by, reason)
    if row is None:
        return None
    await eventlog.notify_after_commit(conn, row["id"])
    return Ended(row["id"], reason, row["no_show"], row["at"])


async def visit_end(conn: asyncpg.Connection, visit_id: UUID) -> Ended | None:
    """How a visit ended, or None while it goes on."""
    row = await conn.fetchrow(Q["visit_end"], visit_id)
    return None if row is None else Ended(row["event_id"], row["reason"], row["no_show"], row["ended_at"])


async def sweep(pool: asyncpg.Pool, settings: Settings, limit: int = SWEEP_BATCH) -> list[UUID]:
    """End the visits that are due (idle or past their window); returns those this call ended."""
    ended: list[UUID] = []
    async with pool.acquire() as conn:
        async with conn.transaction():
            if not await conn.fetchval(Q["sweep_lock"]):
                return ended  # another process is sweeping now
            due = await conn.fetch(Q["due_visits"], float(settings.visit_grace), float(settings.visit_idle_end),
                                   LOOK_BACK.total_seconds(), limit)
            for row in due:
                async with conn.transaction():  # a savepoint: one visit's end does not wait for the rest
                    if await conn.fetchval(Q["lock_visit"], row["id"]) is None:
                        continue
                    found = await conn.fetchrow(Q["end_visit"], row["id"], None, row["reason"])
                if found is not None:
                    ended.append(row["id"])
                    log.info("visit %s ended (%s)", row["id"], row["reason"])
    return ended


class VisitSweeper:
    """Runs the sweep every few seconds in this process, and announces the ends it wrote."""

    def __init__(self, pool: asyncpg.Pool, announcer: Announcer, settings: Settings) -> None:
        self._pool = pool
        self._announcer = announcer
        self._settings = settings

    async def run(self) -> None:
        """Sweep until cancelled; a database away, or a failure of ours, costs a round, not the loop."""
        while True:
            try:
                if await sweep(self._pool, self._settings):
                    async with self._pool.acquire() as conn:
                        # One notification covers every event up to it, the ends just written among them.
                        self._announcer.announce(await eventlog.last_event_id(conn))
            except eventlog.UNAVAILABLE as exc:
                log.warning("visit sweep skipped: database unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("visit sweep failed")
            await asyncio.sleep(self._settings.visit_sweep_interval)
