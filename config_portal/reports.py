"""The usage report: an organisation's visits in a range of days of its own time zone, with totals and trends by
day, department and environment, charts, one row per visit, and the same rows as a streamed CSV.

Every figure comes from the per-visit rows presence.usage keeps as events arrive (`visit_usage`); the report's
database work is one aggregate (grouping sets) over one index range of those rows and never reads the event log. Nothing here
is patient data: opaque visit ids, times, counts, the department's identifier from the launch context, the
configuration's environment and meeting provider.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import re
import zoneinfo
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import asyncpg
from aiohttp import web

import sql
from gateway.appkeys import DB, SETTINGS
from gateway.configurations import organisation_zone

from . import access
from .charts import Series, bar_chart, line_chart
from .errors import PortalError
from .access import allowed, no_store
from .store import PortalSession

Q = sql.queries("reports")

PERIODS = (7, 30, 90)
DEFAULT_PERIOD = 30
MAX_DAYS = 366
NEWEST_ROWS = 50  # visits listed on the page; the CSV holds every one
CSV_PREFETCH = 2000  # rows the server-side cursor fetches at a time
CSV_CHUNK = 1000  # rows written to the response at a time
CSV_COLUMNS = ("visit_id", "opened_at", "started_at", "ended_at", "duration_seconds", "lobby_wait_seconds",
               "status", "attendees", "department", "environment", "meeting_provider", "sms_sent", "email_sent")
STATUS_NAMES = {"open": "Open", "completed": "Completed", "no_show": "No-show", "cancelled": "Cancelled"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BadRange(PortalError):
    """A report range that cannot be read."""

    status = 400
    reason = "bad_report_range"
    title = "That range could not be read"


@dataclass(frozen=True)
class Range:
    """Whole days of the organisation's time zone, first to last inclusive."""

    first: dt.date
    last: dt.date
    period: int | None  # 7, 30 or 90 when chosen as such; None for a chosen range
    zone: str

    @property
    def days(self) -> list[dt.date]:
        """Every day of the range, in order."""
        return [self.first + dt.timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """The range as instants: the first day's midnight to the midnight after the last, in the zone."""
        tz = zoneinfo.ZoneInfo(self.zone)
        return (dt.datetime.combine(self.first, dt.time(), tz),
                dt.datetime.combine(self.last + dt.timedelta(days=1), dt.time(), tz))

    def query(self) -> dict[str, str]:
        """The range as query parameters (for the CSV link)."""
        if self.period is not None:
            return {"period": str(self.period)}
        return {"from": self.first.isoformat(), "to": self.last.isoformat()}


def _date(value: str, what: str) -> dt.date:
    if not _DATE.match(value):
        raise BadRange(f"The {what} date must be written as YYYY-MM-DD.")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise BadRange(f"The {what} date is not a date.") from exc


def parse_range(query: Mapping[str, str], zone: str, today: dt.date) -> Range:
    """The range a request asks for (7, 30 or 90 days up to today, or from and to), each part checked."""
    first, last = query.get("from", "").strip(), query.get("to", "").strip()
    if first or last:
        if not (first and last):
            raise BadRange("Give both a from and a to date, or choose 7, 30 or 90 days.")
        start, end = _date(first, "from"), _date(last, "to")
        if start > end:
            raise BadRange("The from date is after the to date.")
        if (end - start).days + 1 > MAX_DAYS:
            raise BadRange(f"A range may span at most {MAX_DAYS} days.")
        return Range(start, end, None, zone)
    raw = query.get("period", "").strip()
    if raw and raw not in {str(p) for p in PERIODS}:
        raise BadRange("Choose 7, 30 or 90 days.")
    period = int(raw) if raw else DEFAULT_PERIOD
    return Range(today - dt.timedelta(days=period - 1), today, period, zone)


@dataclass(frozen=True)
class Figures:
    """One line of the report: a day, a department, an environment, or the whole range."""

    key: Any
    visits: int = 0
    completed: int = 0
    no_shows: int = 0
    cancelled: int = 0
    wait_median: float | None = None
    wait_p90: float | None = None
    duration_median: float | None = None
    duration_p90: float | None = None
    attendees: int = 0
    sms: int = 0
    email: int = 0

    @property
    def ended(self) -> int:
        """Visits that ended (the no-show rate's denominator)."""
        return self.completed + self.no_shows + self.cancelled

    @property
    def open(self) -> int:
        """Visits not ended yet."""
        return self.visits - self.ended

    @property
    def no_show_rate(self) -> float | None:
        """No-shows as a share of the visits that ended (None when none did)."""
        return self.no_shows / self.ended if self.ended else None


def _figures(row: asyncpg.Record, key: Any) -> Figures:
    wait, duration = row["lobby_wait"] or (None, None), row["duration"] or (None, None)
    return Figures(key, row["visits"], row["completed"], row["no_shows"], row["cancelled"], wait[0], wait[1],
                   duration[0], duration[1], row["attendees"] or 0, row["sms"] or 0, row["email"] or 0)


# The GROUPING() value of each kind of line of usage_figures (a bit set per column the line is not grouped by).
_TOTALS, _DAY, _DEPARTMENT, _ENVIRONMENT = 7, 3, 5, 6


@dataclass(frozen=True)
class UsageReport:
    """Everything the report page shows."""

    range: Range
    totals: Figures
    by_day: list[Figures]
    by_department: list[Figures]
    by_environment: list[Figures]
    newest: list[asyncpg.Record]


def today_in(zone: str) -> dt.date:
    """Today's date in a time zone."""
    return dt.datetime.now(zoneinfo.ZoneInfo(zone)).date()


async def usage_report(conn: asyncpg.Connection, org_id: int, span: Range) -> UsageReport:
    """The report's figures for a range (one aggregate over the range's visit_usage rows) and its newest visits."""
    start, end = span.bounds()
    totals = Figures(None)
    days: dict[dt.date, Figures] = {}
    departments, environments = [], []
    for row in await conn.fetch(Q["usage_figures"], org_id, start, end, span.zone):
        kind = row["grouping"]
        if kind == _TOTALS:
            totals = _figures(row, None)
        elif kind == _DAY:
            days[row["day"]] = _figures(row, row["day"])
        elif kind == _DEPARTMENT:
            departments.append(_figures(row, row["department"]))
        elif kind == _ENVIRONMENT:
            environments.append(_figures(row, row["environment"]))
    departments.sort(key=lambda f: (f.key is None, f.key or ""))  # the visits that named none last
    environments.sort(key=lambda f: str(f.key))
    newest = list(await conn.fetch(Q["newest_rows"], org_id, start, end, NEWEST_ROWS))
    # Days without a visit are shown as such, so the trend's axis has every day.
    by_day = [days.get(day) or Figures(day) for day in span.days]
    return UsageReport(span, totals, by_day, departments, environments, newest)


async def csv_chunks(pool: asyncpg.Pool, org_id: int, span: Range) -> AsyncGenerator[bytes, None]:
    """The range's visits as CSV, oldest first, in chunks: lines read through a server-side cursor in one
    transaction, so memory stays flat however many rows there are. Cells a spreadsheet would run are quoted as
    text (sql/queries/reports.sql formats the lines)."""
    start, end = span.bounds()
    yield (",".join(CSV_COLUMNS) + "\r\n").encode()
    lines: list[str] = []
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(Q["csv_time_zone"], span.zone)
        async for r in conn.cursor(Q["usage_csv_lines"], org_id, start, end, prefetch=CSV_PREFETCH):
            lines.append(r[0])
            if len(lines) == CSV_CHUNK:
                yield "".join(lines).encode()
                lines.clear()
    yield "".join(lines).encode()


# --- the pages ------------------------------------------------------------------------------------------------

READERS = ("admin", "report_reader")


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 60


def charts(report: UsageReport) -> list[dict[str, Any]]:
    """The report's four charts, each with the caption and the columns of the table of its figures."""
    days = [f.key for f in report.by_day]
    visits = [float(f.visits) for f in report.by_day]
    wait = (Series("Median", [_minutes(f.wait_median) for f in report.by_day]),
            Series("90th percentile", [_minutes(f.wait_p90) for f in report.by_day]))
    duration = (Series("Median", [_minutes(f.duration_median) for f in report.by_day]),
                Series("90th percentile", [_minutes(f.duration_p90) for f in report.by_day]))
    rate = [None if f.no_show_rate is None else 100 * f.no_show_rate for f in report.by_day]
    return [
        {"id": "chart-visits", "title": "Visits per day",
         "svg": bar_chart("chart-visits", "Visits per day", "A bar per day: how many visits were made that day.",
                          days, Series("Visits", visits)),
         "columns": ("Visits",), "rows": [(d, (f.visits,)) for d, f in zip(days, report.by_day)]},
        {"id": "chart-wait", "title": "Lobby wait (minutes)",
         "svg": line_chart("chart-wait", "Lobby wait in minutes, median and 90th percentile",
                           "Two lines over the days: the median and the 90th percentile of the wait from the "
                           "first lobby entry to admission.", days, wait, " min"),
         "columns": ("Median", "90th percentile"),
         "rows": [(d, (_fmt(a), _fmt(b))) for d, a, b in zip(days, wait[0].values, wait[1].values)]},
        {"id": "chart-duration", "title": "Visit duration (minutes)",
         "svg": line_chart("chart-duration", "Visit duration in minutes, median and 90th percentile",
                           "Two lines over the days: the median and the 90th percentile of the time from the start "
                           "(both sides present) to the last leave.", days, duration, " min"),
         "columns": ("Median", "90th percentile"),
         "rows": [(d, (_fmt(a), _fmt(b))) for d, a, b in zip(days, duration[0].values, duration[1].values)]},
        {"id": "chart-no-show", "title": "No-show rate (%)",
         "svg": line_chart("chart-no-show", "No-show rate in percent",
                           "A line over the days: the share of the visits that ended whose patient never came.",
                           days, (Series("No-show rate", rate),), "%"),
         "columns": ("No-show rate",), "rows": [(d, (_fmt(r, "%"),)) for d, r in zip(days, rate)]},
    ]


def _fmt(value: float | None, unit: str = "") -> str:
    return "no data" if value is None else f"{value:.1f}{unit}"


async def _report_range(request: web.Request, session: PortalSession) -> Range:
    default = request.app[SETTINGS].time_zone
    async with request.app[DB].acquire() as conn:
        zone = (await organisation_zone(conn, session.organisation_id, default)).key
    return parse_range(request.query, zone, today_in(zone))


@allowed(*READERS)
async def usage_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/reports/usage: the usage report of a range, with charts and tables."""
    session = await access.portal_session(request, *READERS)
    span = await _report_range(request, session)
    async with request.app[DB].acquire() as conn:
        report = await usage_report(conn, session.organisation_id, span)
    context = {"session": session, "here": "usage", "report": report, "charts": charts(report),
               "periods": PERIODS, "status_names": STATUS_NAMES, "csv_query": urlencode(span.query()),
               "zone": zoneinfo.ZoneInfo(span.zone), "fmt": _fmt, "minutes": _minutes}
    return no_store(aiohttp_jinja2.render_template("portal_usage.html", request, context))


@allowed(*READERS)
async def usage_csv(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/reports/usage.csv: one row per visit of the range, streamed."""
    session = await access.portal_session(request, *READERS)
    span = await _report_range(request, session)
    name = f"visitgate-usage-{session.organisation_slug}-{span.first.isoformat()}-{span.last.isoformat()}.csv"
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="{name}"'})
    await response.prepare(request)
    # aclosing: a download given up half way still ends the cursor's transaction and gives the connection back.
    async with contextlib.aclosing(csv_chunks(request.app[DB], session.organisation_id, span)) as chunks:
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    """Mount the usage report's page and its CSV."""
    app.router.add_get("/portal/{org}/reports/usage", usage_page)
    app.router.add_get("/portal/{org}/reports/usage.csv", usage_csv)
