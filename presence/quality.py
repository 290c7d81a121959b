"""Connection quality in buckets: a device test's round-trip time, and the per-visit call quality summary.

The room pages send a sample about every 30 s (round-trip time and packet loss from `getStats`); the gateway
keeps, per visit and participant role, how many samples fell in each bucket, so the reports can say the worst
and the median without a row per sample. Buckets only: no exact numbers, nothing about who the participant is.
"""
from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

import sql

Q = sql.queries("quality")

# Upper bounds (exclusive) of each bucket but the last; the last is "this much and over".
RTT_BOUNDS_MS = (50, 100, 200, 400)
RTT_BUCKETS = ("under_50ms", "50_100ms", "100_200ms", "200_400ms", "over_400ms")
LOSS_BOUNDS_PCT = (1.0, 3.0, 10.0)
LOSS_BUCKETS = ("under_1pct", "1_3pct", "3_10pct", "over_10pct")
# Samples counted per visit and role: 24 hours at one every 30 s from each of a few room pages.
MAX_SAMPLES = 10_000


def _bucket(value: float, bounds: tuple[float, ...]) -> int:
    for index, bound in enumerate(bounds):
        if value < bound:
            return index
    return len(bounds)


def rtt_bucket(rtt_ms: float) -> str:
    """The bucket a round-trip time falls in."""
    return RTT_BUCKETS[_bucket(rtt_ms, RTT_BOUNDS_MS)]


def loss_bucket(loss_pct: float) -> str:
    """The bucket a packet loss (percent) falls in."""
    return LOSS_BUCKETS[_bucket(loss_pct, LOSS_BOUNDS_PCT)]


def _one_hot(size: int, index: int | None) -> list[int]:
    return [1 if i == index else 0 for i in range(size)]


async def add_sample(conn: asyncpg.Connection, visit_id: UUID, role: str, rtt_ms: float | None,
                     loss_pct: float | None) -> None:
    """Count one quality sample of a participant with this role (the row stops counting at MAX_SAMPLES)."""
    rtt = None if rtt_ms is None else _bucket(rtt_ms, RTT_BOUNDS_MS)
    loss = None if loss_pct is None else _bucket(loss_pct, LOSS_BOUNDS_PCT)
    await conn.execute(Q["add_quality_sample"], visit_id, role, _one_hot(len(RTT_BUCKETS), rtt),
                       _one_hot(len(LOSS_BUCKETS), loss), MAX_SAMPLES)


@dataclass(frozen=True)
class QualitySummary:
    """One role's call quality in a visit: bucket names, None where nothing was measured."""

    role: str
    samples: int
    worst_rtt: str | None
    median_rtt: str | None
    worst_loss: str | None
    median_loss: str | None


def _worst(counts: list[int], names: tuple[str, ...]) -> str | None:
    found = [i for i, n in enumerate(counts) if n > 0]
    return names[found[-1]] if found else None


def _median(counts: list[int], names: tuple[str, ...]) -> str | None:
    total = sum(counts)
    if total == 0:
        return None
    seen = 0
    for index, n in enumerate(counts):
        seen += n
        if seen * 2 >= total:
            return names[index]
    return names[-1]  # not reached: the counts add up to total


async def visit_quality(conn: asyncpg.Connection, visit_id: UUID) -> list[QualitySummary]:
    """The visit's call quality per participant role."""
    rows = await conn.fetch(Q["visit_quality"], visit_id)
    return [QualitySummary(r["role"], r["samples"], _worst(r["rtt_counts"], RTT_BUCKETS),
                           _median(r["rtt_counts"], RTT_BUCKETS), _worst(r["loss_counts"], LOSS_BUCKETS),
                           _median(r["loss_counts"], LOSS_BUCKETS)) for r in rows]
