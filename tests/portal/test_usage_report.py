"""The usage report: its figures for a seeded set of visits checked against figures worked out here from the
plan of each visit, days in the organisation's time zone, the CSV's columns and rows, the follower counting
each event once, and no patient data in the page or the CSV."""
from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import math
import os
import uuid
import zoneinfo
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
import pytest

import sql
from config_portal import reports
from gateway.appkeys import DB, SEALER
from gateway.configurations import DEFAULT_SCOPES, set_organisation_zone
from gateway.db import migrate
from gateway.sent_counts import count_sent
from presence import usage
from tests.conftest import Postgres, reason_code

from .conftest import ADMIN, GENERIC_ORG, ORG, Portal
from .usage_seed import (
    CANARY_ENCOUNTER, CANARY_PATIENT, ZONE, PlannedVisit, configurations, open_visit, plan_visits, write_visits,
)

FIRST_DAY = dt.date(2026, 3, 1)  # across the change to summer time (8 March in New York)
DAYS = 12


def percentile(values: list[float], q: float) -> float | None:
    """A continuous percentile (linear between the closest ranks), as SQL's percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def expected(plans: Iterable[PlannedVisit]) -> dict[str, Any]:
    """The figures of a group of visits, worked out from the plans alone."""
    group = list(plans)
    waits = [w for p in group if (w := p.lobby_wait_s) is not None]
    durations = [d for p in group if (d := p.duration_s) is not None]
    return {"visits": len(group), "completed": sum(p.status == "completed" for p in group),
            "no_shows": sum(p.status == "no_show" for p in group),
            "cancelled": sum(p.status == "cancelled" for p in group),
            "wait_median": percentile(waits, 0.5), "wait_p90": percentile(waits, 0.9),
            "duration_median": percentile(durations, 0.5), "duration_p90": percentile(durations, 0.9),
            "attendees": max((p.attendees for p in group), default=0),
            "sms": sum(list(p.invitations.values()).count("sms") for p in group),
            "email": sum(list(p.invitations.values()).count("email") for p in group)}


def shown(f: reports.Figures) -> dict[str, Any]:
    """The same figures as the report has them."""
    return {k: getattr(f, k) for k in ("visits", "completed", "no_shows", "cancelled", "wait_median", "wait_p90",
                                       "duration_median", "duration_p90", "attendees", "sms", "email")}


def same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    """Equal, floats to a millionth."""
    return got.keys() == want.keys() and all(
        (g is None and w is None) or (g is not None and w is not None and math.isclose(g, w, rel_tol=1e-6))
        for g, w in ((got[k], want[k]) for k in got))


async def settle(portal: Portal) -> None:
    """Let the usage follower count every event written so far (the background one may be busy with it)."""
    pool = portal.gateway_app[DB]
    for _ in range(200):
        await usage.catch_up(pool)
        rows = await portal.sql("SELECT (SELECT last_id FROM usage_follower) >= "
                                "(SELECT coalesce(max(id), 0) FROM presence_events) AS done")
        if rows[0]["done"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the usage follower did not catch up")


async def seeded(portal: Portal) -> tuple[list[PlannedVisit], int]:
    """The organisation (in New York time) with a dozen days of visits, one visit before the range, one of another
    organisation, all counted by the follower; answers the plans in range and the organisation's id."""
    app = portal.gateway_app
    async with app[DB].acquire() as conn:
        org_id = await conn.fetchval("SELECT id FROM organisations WHERE slug = $1", ORG)
        await set_organisation_zone(conn, org_id, ZONE, "test-operator")
        configs = await configurations(conn, app[SEALER], ORG, "usage")
        others = await configurations(conn, app[SEALER], GENERIC_ORG, "other")
        plans = plan_visits(configs, FIRST_DAY, DAYS)
        # 23:50 New York on the day before: 03:50 or 04:50 UTC of the first day, still outside the range.
        before = plan_visits(configs, FIRST_DAY - dt.timedelta(days=1), 1, seed=3)
        before[0].opened_at = dt.datetime.combine(FIRST_DAY - dt.timedelta(days=1), dt.time(23, 50),
                                                  zoneinfo.ZoneInfo(ZONE)).astimezone(dt.timezone.utc)
        elsewhere = plan_visits(others, FIRST_DAY, 2, seed=5)
        await write_visits(conn, app[SEALER], [*plans, before[0], *elsewhere])
    await settle(portal)
    return plans, org_id


def grouped(plans: list[PlannedVisit], key: Callable[[PlannedVisit], Any]) -> dict[Any, list[PlannedVisit]]:
    """Plans by a key."""
    out: dict[Any, list[PlannedVisit]] = {}
    for p in plans:
        out.setdefault(key(p), []).append(p)
    return out


async def test_the_reports_figures_are_those_worked_out_from_the_visits(portal: Portal) -> None:
    plans, org_id = await seeded(portal)
    span = reports.Range(FIRST_DAY, FIRST_DAY + dt.timedelta(days=DAYS - 1), None, ZONE)
    async with portal.gateway_app[DB].acquire() as conn:
        report = await reports.usage_report(conn, org_id, span)
    assert same(shown(report.totals), expected(plans)), (shown(report.totals), expected(plans))
    assert report.totals.no_show_rate == pytest.approx(
        expected(plans)["no_shows"] / len(plans))  # every seeded visit ended
    days = grouped(plans, lambda p: p.local_day())
    assert [f.key for f in report.by_day] == span.days
    for f in report.by_day:
        assert same(shown(f), expected(days.get(f.key, []))), (f.key, shown(f), expected(days.get(f.key, [])))
    departments = grouped(plans, lambda p: p.department)
    assert [f.key for f in report.by_department] == [*sorted(k for k in departments if k), None]
    for f in report.by_department:
        assert same(shown(f), expected(departments[f.key])), f.key
    environments = grouped(plans, lambda p: p.environment)
    assert [f.key for f in report.by_environment] == sorted(environments)
    for f in report.by_environment:
        assert same(shown(f), expected(environments[f.key])), f.key


async def test_the_page_shows_the_totals_charts_and_their_tables(portal: Portal) -> None:
    plans, _org = await seeded(portal)
    assert (await portal.sign_in(ADMIN)).status == 303
    last = FIRST_DAY + dt.timedelta(days=DAYS - 1)
    r = await portal.get(f"/portal/{ORG}/reports/usage?from={FIRST_DAY}&to={last}")
    page = await r.text()
    assert r.status == 200, page
    want = expected(plans)
    assert f'<dd id="total-visits">{want["visits"]}</dd>' in page
    assert f'<dd id="total-no-shows">{want["no_shows"]}</dd>' in page
    assert f'<dd id="total-wait-median">{want["wait_median"] / 60:.1f} min</dd>' in page
    for chart in ("chart-visits", "chart-wait", "chart-duration", "chart-no-show"):
        assert f'<svg class="chart" id="{chart}"' in page and f'<table id="{chart}-table">' in page
    assert page.count("<tr><th scope=\"row\">2026-03-") >= DAYS  # a row per day in the charts' tables
    assert f"{ZONE}" in page and "cdn" not in page.lower() and "<script" not in page
    assert 'aria-current="page">Usage report</a>' in page
    for canary in (CANARY_PATIENT, CANARY_ENCOUNTER):
        assert canary not in page


async def test_the_csv_has_a_row_per_visit_with_its_figures(portal: Portal) -> None:
    plans, _org = await seeded(portal)
    async with portal.gateway_app[DB].acquire() as conn:
        now = dt.datetime.now(dt.timezone.utc)
        config_id = await conn.fetchval("SELECT id FROM configurations WHERE environment = 'test' AND fhir_base_url"
                                        " LIKE 'https://ehr-usage-%'")
        going_on = open_visit(config_id, "test", now - dt.timedelta(minutes=10))
        await write_visits(conn, portal.gateway_app[SEALER], [going_on])
    await settle(portal)
    assert (await portal.sign_in(ADMIN)).status == 303
    last = FIRST_DAY + dt.timedelta(days=DAYS - 1)
    r = await portal.get(f"/portal/{ORG}/reports/usage.csv?from={FIRST_DAY}&to={last}")
    body = await r.text()
    assert r.status == 200, body
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8" and "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body)))
    assert tuple(rows[0].keys()) == reports.CSV_COLUMNS
    assert [row["visit_id"] for row in rows] == [str(p.visit_id) for p in sorted(plans, key=lambda p: p.opened_at)]
    tz = zoneinfo.ZoneInfo(ZONE)
    for row, p in zip(rows, sorted(plans, key=lambda p: p.opened_at)):
        assert row["opened_at"] == p.opened_at.astimezone(tz).isoformat(timespec="seconds")
        assert row["started_at"] == (p.started_at.astimezone(tz).isoformat(timespec="seconds") if p.started_at else "")
        assert row["status"] == p.status and int(row["attendees"]) == p.attendees
        assert row["duration_seconds"] == ("" if p.duration_s is None else str(round(p.duration_s)))
        assert row["lobby_wait_seconds"] == ("" if p.lobby_wait_s is None else str(round(p.lobby_wait_s)))
        assert row["department"] == {"=dermatology": "'=dermatology", None: ""}.get(p.department, p.department)
        assert (row["environment"], row["meeting_provider"]) == (p.environment, "builtin")
        assert (int(row["sms_sent"]), int(row["email_sent"])) == (list(p.invitations.values()).count("sms"),
                                                                  list(p.invitations.values()).count("email"))
    assert CANARY_PATIENT not in body and CANARY_ENCOUNTER not in body
    # Today's 7 days hold the visit going on: open, started, no duration yet, two attendees.
    r = await portal.get(f"/portal/{ORG}/reports/usage.csv?period=7")
    today = list(csv.DictReader(io.StringIO(await r.text())))
    assert [(row["visit_id"], row["status"], row["attendees"], row["duration_seconds"]) for row in today] == [
        (str(going_on.visit_id), "open", "2", "")]


async def test_the_usage_follower_counts_each_event_once_across_followers(portal: Portal) -> None:
    plans, org_id = await seeded(portal)
    before = await portal.sql("SELECT * FROM visit_usage ORDER BY visit_id")
    # Followers in several processes at once, and the position read again: nothing counted twice.
    pool = portal.gateway_app[DB]
    await asyncio.gather(*(usage.catch_up(pool) for _ in range(4)))
    assert await portal.sql("SELECT * FROM visit_usage ORDER BY visit_id") == before
    async with pool.acquire() as conn:
        last = await conn.fetchval("SELECT last_id FROM usage_follower")
        assert last == await conn.fetchval("SELECT max(id) FROM presence_events")
    # A row for every visit (each had events), this organisation's and the other's.
    assert len(before) == (await portal.sql("SELECT count(*) AS n FROM visits"))[0]["n"]
    assert len([r for r in before if r["organisation_id"] == org_id]) == len(plans) + 1


async def test_a_message_counted_while_the_follower_saves_the_same_row_is_kept(portal: Portal) -> None:
    # The sender's increment is uncommitted while a follower reads the row and then waits on it to save its
    # figures: the follower does not write the counts, so the increment survives its save.
    pool = portal.gateway_app[DB]
    async with pool.acquire() as conn:
        configs = await configurations(conn, portal.gateway_app[SEALER], ORG, "usage")
        visit = open_visit(configs["test"], "test", dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10))
        await write_visits(conn, portal.gateway_app[SEALER], [visit])  # its invitation: one SMS
    async with pool.acquire() as sender:
        async with sender.transaction():
            await count_sent(sender, visit.visit_id, "sms")
            await count_sent(sender, visit.visit_id, "email")
            follower = asyncio.create_task(usage.catch_up(pool))
            await asyncio.sleep(0.5)  # a follower has read the row and waits on its lock
        await follower
    await settle(portal)
    [row] = await portal.sql("SELECT sms_sent, email_sent, attendees, started_at FROM visit_usage WHERE visit_id = $1",
                             visit.visit_id)
    assert (row["sms_sent"], row["email_sent"]) == (2, 1)
    assert row["attendees"] == 2 and row["started_at"] == visit.started_at  # and the follower's figures are in


@pytest.mark.parametrize("query", ["period=8", "period=-1", "from=2026-13-01&to=2026-03-02", "from=2026-03-01",
                                   "from=2026-03-05&to=2026-03-01", "from=2020-01-01&to=2026-01-01",
                                   "from=2026-3-1&to=x", "period=" + "9" * 500])
async def test_a_range_that_cannot_be_read_is_a_clear_400(portal: Portal, query: str) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    for path in ("usage", "usage.csv"):
        r = await portal.get(f"/portal/{ORG}/reports/{path}?{query}")
        body = await r.text()
        assert r.status == 400 and reason_code(body) == "bad_report_range", body


def test_a_period_counts_whole_days_up_to_today_in_the_zone() -> None:
    span = reports.parse_range({"period": "7"}, ZONE, dt.date(2026, 3, 10))
    assert (span.first, span.last) == (dt.date(2026, 3, 4), dt.date(2026, 3, 10))
    start, end = span.bounds()
    assert start == dt.datetime(2026, 3, 4, 5, 0, tzinfo=dt.timezone.utc)  # EST: UTC-5
    assert end == dt.datetime(2026, 3, 11, 4, 0, tzinfo=dt.timezone.utc)  # EDT from 8 March: UTC-4
    assert reports.parse_range({}, ZONE, dt.date(2026, 3, 10)).period == reports.DEFAULT_PERIOD


async def test_a_department_with_commas_quotes_and_lines_comes_back_whole_from_the_csv(portal: Portal) -> None:
    async with portal.gateway_app[DB].acquire() as conn:
        configs = await configurations(conn, portal.gateway_app[SEALER], ORG, "usage")
        visit = open_visit(configs["production"], "production", dt.datetime.now(dt.timezone.utc))
        visit.department = 'Cardio, "East"\r\nwing'
        hostile = open_visit(configs["production"], "production", dt.datetime.now(dt.timezone.utc))
        hostile.department = "@SUM(A1:A9)"
        await write_visits(conn, portal.gateway_app[SEALER], [visit, hostile])
    await settle(portal)
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await portal.get(f"/portal/{ORG}/reports/usage.csv?period=7")
    rows = {row["visit_id"]: row for row in csv.DictReader(io.StringIO(await r.text(), newline=""))}
    assert rows[str(visit.visit_id)]["department"] == 'Cardio, "East"\r\nwing'
    assert rows[str(hostile.visit_id)]["department"] == "'@SUM(A1:A9)"
    assert len(rows) == 2


async def test_0031_starts_the_message_counts_from_the_invitations_of_every_visit(
        postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before 0031 the follower wrote each invitation once (last channel) and only on visits with an event:
    # the counters start from that figure for every visit with an invitation, a row made where none was.
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.dsn("postgres"))
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(postgres.dsn(name))
    try:
        every = sql.migrations()
        monkeypatch.setattr(sql, "migrations", lambda: [m for m in every if m[0] < 31])
        await migrate(conn)
        config_id = await conn.fetchval(
            "INSERT INTO configurations (fhir_base_url, environment, client_id, client_auth, scopes, status)"
            " VALUES ('https://ehr.example.org/fhir', 'test', 'c', 'private_key_jwt', $1, 'approved') RETURNING id",
            DEFAULT_SCOPES)
        counted, uncounted, quiet = [await conn.fetchval(
            "INSERT INTO visits (configuration_id, encounter_key, encounter_ref, meeting_provider, department)"
            " VALUES ($1, $2, '\\x00', 'builtin', 'cardiology') RETURNING id", config_id, os.urandom(8))
            for _ in range(3)]
        sent = {counted: ["sms", "email", "copy"], uncounted: ["sms", "sms"]}
        for visit_id, channels in sent.items():
            for channel in channels:
                participant = await conn.fetchval(
                    "INSERT INTO participants (visit_id, role, guest_kind) VALUES ($1, 'guest', 'family')"
                    " RETURNING id", visit_id)
                await conn.execute("INSERT INTO sent_invitations (participant_id, visit_id, channel)"
                                   " VALUES ($1, $2, $3)", participant, visit_id, channel)
        # The counted visit had events: its row is there, with figures of its own (as the follower left them).
        await conn.execute("INSERT INTO visit_usage (visit_id, opened_at, environment, meeting_provider, status,"
                           " attendees, sms_sent, email_sent) VALUES ($1, now(), 'test', 'builtin', 'completed',"
                           " 2, 0, 0)", counted)
        monkeypatch.undo()
        assert "0031_messages_counted.sql" in await migrate(conn)
        rows = {r["visit_id"]: r for r in await conn.fetch("SELECT * FROM visit_usage")}
        assert set(rows) == {counted, uncounted}  # a visit with no invitation and no event still has none
        assert (rows[counted]["sms_sent"], rows[counted]["email_sent"]) == (1, 1)
        assert (rows[counted]["status"], rows[counted]["attendees"]) == ("completed", 2)
        assert (rows[uncounted]["sms_sent"], rows[uncounted]["email_sent"], rows[uncounted]["status"]) == (2, 0, "open")
        assert (rows[uncounted]["department"], rows[uncounted]["environment"]) == ("cardiology", "test")
        assert quiet not in rows
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
