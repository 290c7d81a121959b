"""The clinician's clinic queue: which of today's visits a clinician may watch live, in one place.

The queue page (launch) reads its visits' patients from FHIR with the clinician's own token; the queue
socket (presence) fans in those visits' presence events. Both ask here, so they always agree on the list.

A clinician's own visits are the visits they opened from the EHR under the EHR user id (`fhirUser`) of their
launch: a provider session of theirs (a launch, kept 12 hours) or their provider participant (made when
their provider view first connects, kept). That is what the gateway itself knows to be true; a visit only scheduled for them in the EHR (the
Appointment's practitioner), which they have not opened yet, is not theirs here. Such a visit shows in the
department queue, where the organisation shares one. Ids are per EHR, so the queue stays within the
configuration (EHR and environment) the clinician launched from.

"Today" is the calendar day in the organisation's time zone (else the gateway's VISITGATE_TIME_ZONE), and
a visit belongs to the day it was created (its first launch or join). Nothing here is patient data: ids and
times only.
"""
from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from uuid import UUID

import asyncpg

import sql

from .configurations import organisation_zone
from .errors import QueueRefused

Q = sql.queries("queue")

SCOPES = ("own", "department")
QUEUE_MAX = 200
"""Visits in one queue at most (a clinic day; a department's is bounded too)."""


@dataclass(frozen=True)
class QueueOwner:
    """What a clinician's queue is drawn from: the visit they launched into and its configuration."""

    visit_id: UUID
    fhir_user: str | None
    configuration_id: int
    organisation_id: int | None
    department: str | None
    department_allowed: bool
    """The organisation shares department queues and the launch named a department."""
    time_zone: str


@dataclass(frozen=True)
class QueueVisit:
    """One visit in a queue: its id, when it was created, its sealed Patient id and its department."""

    id: UUID
    created_at: dt.datetime
    patient_ref: bytes | None
    department: str | None


def day_bounds(time_zone: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The start and end (exclusive) of now's calendar day in time_zone, as UTC datetimes."""
    zone = zoneinfo.ZoneInfo(time_zone)
    today = now.astimezone(zone).date()
    start = dt.datetime.combine(today, dt.time(0), tzinfo=zone)
    end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    # In UTC: arithmetic on two times of one zone is by the wall clock, which hides a clock change.
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


async def queue_owner(conn: asyncpg.Connection, visit_id: UUID, fhir_user: str | None,
                      default_zone: str) -> QueueOwner | None:
    """The queue owner of a clinician who launched into visit_id as fhir_user; None if the visit is gone."""
    row = await conn.fetchrow(Q["queue_owner"], visit_id)
    if row is None:
        return None
    zone = (await organisation_zone(conn, row["organisation_id"], default_zone)).key
    return QueueOwner(visit_id, fhir_user or None, row["configuration_id"], row["organisation_id"],
                      row["department"], bool(row["department_queue"]) and row["department"] is not None, zone)


def check_scope(owner: QueueOwner, scope: str) -> None:
    """Refuse (QueueRefused) a scope this clinician may not see."""
    if scope == "department" and not owner.department_allowed:
        off = owner.department is not None
        raise QueueRefused("Your organisation does not share department queues." if off else
                           "Your launch from the EHR named no department.",
                           reason="department_queue_off" if off else "no_department")


async def queue_visits(conn: asyncpg.Connection, owner: QueueOwner, scope: str,
                       now: dt.datetime | None = None) -> list[QueueVisit]:
    """Today's visits of the owner's queue (scope "own" or "department"), oldest first; QueueRefused for a
    scope they may not see."""
    check_scope(owner, scope)
    start, end = day_bounds(owner.time_zone, now or dt.datetime.now(dt.UTC))
    if scope == "department":
        rows = await conn.fetch(Q["department_visits"], owner.configuration_id, owner.department, start, end,
                                QUEUE_MAX)
    elif owner.fhir_user is None:
        # A launch that did not say who signed in: the one visit this session is known to be theirs.
        rows = [r for r in await conn.fetch(Q["visit_row"], owner.visit_id)
                if start <= r["created_at"] < end]
    else:
        rows = await conn.fetch(Q["own_visits"], owner.fhir_user, owner.configuration_id, start, end, QUEUE_MAX)
    return [QueueVisit(r["id"], r["created_at"], r["patient_ref"], r["department"]) for r in rows]


async def set_department_queue(conn: asyncpg.Connection, slug: str, allowed: bool) -> tuple[int, bool] | None:
    """Turn an organisation's department queues on or off: (its id, the value before), or None if unknown."""
    row = await conn.fetchrow(Q["set_department_queue"], slug, allowed)
    return (row["id"], row["was"]) if row else None
