"""The audit trail as an organisation's admins read it: filtered, paged by id, exported as CSV.

Only rows written for the organisation are shown (rows from before audit rows named one have none and are read
by operators in SQL). The trail itself stays append-only: nothing here writes to it.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

import sql

from .errors import PortalError

Q = sql.queries("audit")

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
CSV_BATCH = 500
CSV_COLUMNS = ("id", "at", "actor", "action", "subject", "details")
_ACTION = re.compile(r"^[a-z_.]{1,64}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection); tab and carriage
# return too, as OWASP lists them.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class BadFilter(PortalError):
    """A filter of the audit page that cannot be read."""

    status = 400
    reason = "bad_audit_filter"
    title = "That filter could not be read"


@dataclass(frozen=True)
class Filters:
    """What the audit page was asked to show; None: any."""

    action: str | None = None
    actor: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None  # inclusive
    configuration: int | None = None
    before_id: int | None = None
    page_size: int = PAGE_SIZE

    def query(self, *, before_id: int | None = None) -> dict[str, str]:
        """The filters as query parameters (for the next page's link and the CSV link)."""
        params = {"action": self.action or "", "actor": self.actor or "",
                  "from": self.date_from.isoformat() if self.date_from else "",
                  "to": self.date_to.isoformat() if self.date_to else "",
                  "configuration": str(self.configuration) if self.configuration is not None else ""}
        if before_id is not None:
            params["before"] = str(before_id)
        return {k: v for k, v in params.items() if v}


def _date(value: str, what: str) -> dt.date | None:
    if not value:
        return None
    if not _DATE.match(value):
        raise BadFilter(f"The {what} date must be written as YYYY-MM-DD.")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise BadFilter(f"The {what} date is not a date.") from exc


def _number(value: str, what: str, *, low: int, high: int) -> int | None:
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18 or not low <= int(value) <= high:
        raise BadFilter(f"The {what} must be a whole number from {low} to {high}.")
    return int(value)


def parse_filters(query: Mapping[str, str]) -> Filters:
    """The filters of a request's query string, each checked; a bad one is a 400 that says which."""
    action = query.get("action", "").strip()
    if action and not _ACTION.match(action):
        raise BadFilter("That is not an action the audit log records.")
    actor = query.get("actor", "").strip()
    if len(actor) > 400:
        raise BadFilter("The actor is too long.")
    date_from, date_to = _date(query.get("from", ""), "from"), _date(query.get("to", ""), "to")
    if date_from and date_to and date_from > date_to:
        raise BadFilter("The from date is after the to date.")
    size = _number(query.get("size", ""), "page size", low=1, high=MAX_PAGE_SIZE)
    return Filters(action=action or None, actor=actor or None, date_from=date_from, date_to=date_to,
                   configuration=_number(query.get("configuration", ""), "configuration", low=1, high=2**62),
                   before_id=_number(query.get("before", ""), "page position", low=1, high=2**62),
                   page_size=size or PAGE_SIZE)


@dataclass(frozen=True)
class Entry:
    """One audit row."""

    id: int
    at: dt.datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]

    def changes(self) -> list[tuple[str, str, str]]:
        """(field, before, after) rows for a change with before and after; otherwise (field, "", value)."""
        if "before" in self.details or "after" in self.details:
            before = self.details.get("before") or {}
            after = self.details.get("after") or {}
            if not isinstance(before, dict) or not isinstance(after, dict):
                return [("", _text(before), _text(after))]
            names = [*before, *(k for k in after if k not in before)]
            extra = [(k, "", _text(v)) for k, v in self.details.items() if k not in ("before", "after")]
            return [(k, _text(before.get(k)), _text(after.get(k))) for k in names] + extra
        return [(k, "", _text(v)) for k, v in self.details.items()]

    @property
    def has_before_after(self) -> bool:
        """Whether this row records a change with a before and an after."""
        return "before" in self.details or "after" in self.details


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _bounds(f: Filters) -> tuple[dt.datetime | None, dt.datetime | None]:
    start = dt.datetime.combine(f.date_from, dt.time(), dt.timezone.utc) if f.date_from else None
    end = (dt.datetime.combine(f.date_to + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
           if f.date_to else None)
    return start, end


async def page(conn: asyncpg.Connection, org_id: int, f: Filters, *, before_id: int | None = None,
               limit: int | None = None) -> list[Entry]:
    """One page of the organisation's audit rows matching the filters, newest first, below before_id."""
    start, end = _bounds(f)
    subject = f"configuration:{f.configuration}" if f.configuration is not None else None
    rows = await conn.fetch(Q["page"], org_id, before_id if before_id is not None else f.before_id, f.action,
                            f.actor, start, end, subject, limit or f.page_size)
    return [Entry(r["id"], r["at"], r["actor"], r["action"], r["subject"], json.loads(r["details"])) for r in rows]


async def actions_of(conn: asyncpg.Connection, org_id: int) -> list[str]:
    """The actions the organisation's trail holds (for the filter's choices)."""
    return [r["action"] for r in await conn.fetch(Q["actions_of"], org_id)]


def safe_cell(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: one that would start a formula gets a leading quote."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def csv_line(values: list[str]) -> bytes:
    """One CSV line of safe cells."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([safe_cell(v) for v in values])
    return out.getvalue().encode()


async def csv_lines(pool: asyncpg.Pool, org_id: int, f: Filters) -> AsyncIterator[bytes]:
    """The whole filtered trail as CSV lines, read in batches (a connection per batch, never for the whole
    download)."""
    yield csv_line(list(CSV_COLUMNS))
    before = f.before_id
    while True:
        async with pool.acquire() as conn:
            batch = await page(conn, org_id, f, before_id=before, limit=CSV_BATCH)
        for e in batch:
            yield csv_line([str(e.id), e.at.isoformat(), e.actor, e.action, e.subject,
                            json.dumps(e.details, sort_keys=True)])
        if len(batch) < CSV_BATCH:
            return
        before = batch[-1].id
