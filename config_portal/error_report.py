"""The portal's error report (issue 16 line 3): an organisation's launch failures and write-back failures by
reason code, per configuration and day, each reason with what happened and what to do (gateway.reasons),
and the near misses of unknown `iss` values (gateway.near_miss). Admins of the organisation only.

Figures come from the counters kept as failures happen (launch_refusals, writeback_failures,
launch_near_misses; sql/queries/error_report.sql), never from scanning logs. Days are the organisation's:
each counter counts a failure on the day it happened in the configuration's organisation's time zone (the
gateway's, VISITGATE_TIME_ZONE, when it has none), and the periods end on today in that zone.
"""
from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp_jinja2
import asyncpg
from aiohttp import web

import sql
from gateway.appkeys import DB, SETTINGS
from gateway.configurations import organisation_zone
from gateway.reasons import Reason, launch_reason, writeback_reason

from . import access
from .access import allowed, no_store

Q = sql.queries("error_report")
PERIODS = (7, 30, 90)
DEFAULT_PERIOD = 30
# The longest chosen range, in days (a year, leap day included): the report stays a page, not a dump.
MAX_RANGE_DAYS = 366
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
# What each kind of near miss means, for the admin reading it.
DIFFERENCES = {
    "suffix": "The same URL with more or less at its end (path segments, a query or a fragment).",
    "path": "The same server with another path.",
    "environment": "Another environment of the same EHR: the URLs are the same but for words such as test or prd.",
}


@dataclass(frozen=True)
class ReportConfiguration:
    """A configuration of the organisation, as the report names it."""

    id: int
    fhir_base_url: str
    environment: str
    ehr: str
    status: str


@dataclass(frozen=True)
class LaunchFailures:
    """Launches of one configuration that failed for one reason on one day."""

    day: dt.date
    configuration_id: int
    reason: str
    count: int


@dataclass(frozen=True)
class WritebackFailures:
    """Write-back attempts of one configuration that failed for one reason on one day, by what followed."""

    day: dt.date
    configuration_id: int
    reason: str
    retried: int
    gave_up: int
    turned_off: int


@dataclass(frozen=True)
class NearMissSeen:
    """An unknown `iss` (as kept: no query, personal-looking segments masked) close to a configuration's URL."""

    configuration_id: int
    iss: str
    difference: str
    first_day: dt.date
    last_day: dt.date
    days: int


@dataclass(frozen=True)
class ReasonTotal:
    """One reason of one configuration over the period, with what it means and what to do."""

    configuration_id: int
    code: str
    reason: Reason
    counts: tuple[int, ...]


@dataclass(frozen=True)
class ErrorReport:
    """Everything the error page shows for an organisation and a range of days."""

    first_day: dt.date
    last_day: dt.date
    configurations: Mapping[int, ReportConfiguration]
    launches: list[LaunchFailures]
    writebacks: list[WritebackFailures]
    near_misses: list[NearMissSeen]

    def launch_totals(self) -> list[ReasonTotal]:
        """Per configuration and reason: launches failed over the period, most first."""
        totals: dict[tuple[int, str], int] = defaultdict(int)
        for row in self.launches:
            totals[(row.configuration_id, row.reason)] += row.count
        return sorted((ReasonTotal(c, code, launch_reason(code), (n,)) for (c, code), n in totals.items()),
                      key=lambda t: (t.configuration_id, -t.counts[0], t.code))

    def writeback_totals(self) -> list[ReasonTotal]:
        """Per configuration and reason: attempts retried, given up and turning write-back off over the period."""
        totals: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in self.writebacks:
            found = totals[(row.configuration_id, row.reason)]
            found[0] += row.retried
            found[1] += row.gave_up
            found[2] += row.turned_off
        return sorted((ReasonTotal(c, code, writeback_reason(code), tuple(n)) for (c, code), n in totals.items()),
                      key=lambda t: (t.configuration_id, -sum(t.counts), t.code))


async def report(conn: asyncpg.Connection, organisation_id: int, first_day: dt.date, last_day: dt.date) -> ErrorReport:
    """The organisation's error report for the days first_day to last_day (the organisation's days, as the
    counters counted them), both included."""
    configurations = {r["id"]: ReportConfiguration(**dict(r))
                      for r in await conn.fetch(Q["organisation_configurations"], organisation_id)}
    launches = [LaunchFailures(**dict(r)) for r in await conn.fetch(Q["launch_failures"], organisation_id,
                                                                     first_day, last_day)]
    writebacks = [WritebackFailures(**dict(r)) for r in await conn.fetch(Q["writeback_failures"], organisation_id,
                                                                          first_day, last_day)]
    near = [NearMissSeen(**dict(r)) for r in await conn.fetch(Q["near_misses"], organisation_id, first_day, last_day)]
    return ErrorReport(first_day, last_day, configurations, launches, writebacks, near)


@dataclass(frozen=True)
class Period:
    """The days a report covers: the last `days` days (7, 30 or 90) or, with days None, a chosen range.
    refused says why a chosen range that was asked for is not the one shown (the default period is)."""

    days: int | None
    first: dt.date
    last: dt.date
    refused: str | None = None


def _date(value: str) -> dt.date | None:
    # YYYY-MM-DD only: fromisoformat alone also takes week dates and basic formats nobody meant to type.
    if len(value) != 10 or not _DATE.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def period_of(query: Mapping[str, str], today: dt.date) -> Period:
    """The period a query asks for: `from` and `to` (YYYY-MM-DD, from <= to, at most MAX_RANGE_DAYS days) for a
    chosen range, else `days` (7, 30 or 90); anything else is the default period ending today."""
    raw = query.get("days", "")
    days = int(raw) if len(raw) <= 2 and raw.isascii() and raw.isdigit() and int(raw) in PERIODS else DEFAULT_PERIOD
    default = Period(days, today - dt.timedelta(days=days - 1), today)
    start, end = query.get("from", ""), query.get("to", "")
    if not start and not end:
        return default
    first, last = _date(start), _date(end)
    if first is None or last is None:
        refused = "Both dates of a range must be given, written as YYYY-MM-DD."
    elif first > last:
        refused = "The first day of a range must not be after its last day."
    elif (last - first).days + 1 > MAX_RANGE_DAYS:
        refused = f"A range may cover at most {MAX_RANGE_DAYS} days."
    else:
        return Period(None, first, last)
    return Period(days, default.first, default.last, refused + f" Showing the last {days} days instead.")


@allowed("admin")
async def errors_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/errors: launch and write-back failures by reason, configuration and day; near misses.
    Days are the organisation's (its time zone, else the gateway's); periods end on its today."""
    session = await access.portal_session(request, "admin")
    async with request.app[DB].acquire() as conn:
        zone = await organisation_zone(conn, session.organisation_id, request.app[SETTINGS].time_zone)
        period = period_of(request.query, dt.datetime.now(zone).date())
        found = await report(conn, session.organisation_id, period.first, period.last)
    return no_store(aiohttp_jinja2.render_template("portal_errors.html", request, {
        "session": session, "here": "errors", "report": found, "period": period, "periods": PERIODS,
        "max_range_days": MAX_RANGE_DAYS, "zone": zone.key, "differences": DIFFERENCES}))


def add_routes(app: web.Application) -> None:
    """Mount the error report."""
    app.router.add_get("/portal/{org}/errors", errors_page)
