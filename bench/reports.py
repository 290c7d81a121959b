#!/usr/bin/env python
"""Benchmark: the 90-day usage report and its CSV at 1,000,000 visits.

Run from the repository root with the project's environment:

    .venv/bin/python bench/reports.py            # 1,000,000 visits, several minutes
    .venv/bin/python bench/reports.py --quick    # 50,000 visits, a smoke test

What runs, all on 127.0.0.1 and all started and ended here (the processes through tests.harness): PostgreSQL
(pgserver, fresh directory under /tmp) and `visitgate serve` (uvloop, as shipped) in its own process.

1. seed: one organisation (New York time) with a test and a production configuration, and N visits made over
   the last 88 days with their participants, invitations, the messages sent about them (the invitation; for
   half the visits an appointment's confirmation and reminder by SMS and email; counted on visit_usage as the
   senders count them), presence events (about six a visit, in time order across visits, as they would have
   arrived) and ends: 75% completed, 15% no-shows, 10% cancelled, six
   departments. Written by SQL on the server (the launch and the sockets are not what this measures).
2. follow: the usage follower (presence.usage, the code every gateway process runs) counts every event into
   visit_usage, from the first event id; its rate is printed (`follow_per_s`).
3. report, five times, alternating with the baseline: GET /portal/{org}/reports/usage?period=90 through the
   served gateway with a report reader's session (session check, time zone, the four aggregates, the newest
   visits, the page with its charts), timed to the last byte. Baseline, the bare SQL aggregate: the same figures
   (totals and, by day, department and environment: visits, each status, median and 90th percentile of lobby
   wait and of duration, most attendees, SMS, email) over the same visit_usage rows, hand-written here and run
   on one connection from this process; of two forms (four statements, or one with GROUPING SETS) the faster
   one's median is the baseline. `report_ratio` = median report time / that.
4. CSV: GET /portal/{org}/reports/usage.csv?period=90 read to the end (every visit, N rows), and its baseline,
   PostgreSQL's own CSV writer (COPY ... TO STDOUT) over the same rows, read to the end here (`csv_ratio`,
   reported). `csv_peak_mb` is the
   served process's peak resident memory during the download (VmHWM, reset just before through clear_refs)
   minus its resident memory before it.

Each timed phase also prints the CPU the hypervisor stole meanwhile (bench.stats.CpuSteal). The last line is
`RESULT reports report_ratio=... csv_peak_mb=... ...` (see shared BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The working tree's packages first, and never this folder.
sys.path[:] = [str(ROOT)] + [p for p in sys.path
                             if p and Path(p).resolve() not in (ROOT, Path(__file__).parent.resolve())]

from bench import procs  # noqa: E402
from bench.stats import CpuSteal  # noqa: E402

ZONE = "America/New_York"
SLUG = "bench-health"
ROUNDS = 5

SEED = """
SET work_mem = '256MB';
-- Bulk load: the rows are consistent by construction, so the foreign keys' triggers are skipped (replica role).
SET session_replication_role = replica;
CREATE TEMP TABLE plan AS
SELECT i, gen_random_uuid() AS visit_id, gen_random_uuid() AS provider_id, gen_random_uuid() AS patient_id,
       now() - interval '1 day' - random() * interval '87 days' AS t0,
       CASE WHEN r < 0.75 THEN 'completed' WHEN r < 0.90 THEN 'no_show' ELSE 'cancelled' END AS outcome,
       make_interval(secs => 30 + (random() * 270)::int) AS lobby,
       make_interval(secs => (random() * 900)::int) AS wait,
       make_interval(secs => 120 + (random() * 2280)::int) AS length,
       (ARRAY['cardiology', 'dermatology', 'oncology', 'paediatrics', 'primary-care', NULL])[1 + i % 6] AS department,
       CASE WHEN i % 3 = 0 THEN $2::bigint ELSE $3::bigint END AS configuration_id,
       (ARRAY['sms', 'email', 'copy', NULL])[1 + i % 4] AS channel
FROM (SELECT i, random() AS r FROM generate_series(1, $1::int) i) s;

INSERT INTO visits (id, configuration_id, encounter_key, encounter_ref, meeting_provider, created_at, department)
SELECT visit_id, configuration_id, sha256(visit_id::text::bytea), '\\x00'::bytea, 'builtin', t0, department FROM plan;

INSERT INTO participants (id, visit_id, role, fhir_user, created_at)
SELECT provider_id, visit_id, 'provider', 'Practitioner/bench', t0 FROM plan
UNION ALL
SELECT patient_id, visit_id, 'patient', NULL, t0 FROM plan;

INSERT INTO sent_invitations (participant_id, visit_id, channel, sent_at)
SELECT patient_id, visit_id, channel, t0 FROM plan WHERE channel IS NOT NULL;

-- The messages sent about each visit, counted on its usage row as the senders count them (gateway.sent_counts),
-- before its first event: the invitation by SMS or email, and for every other visit an appointment's booking
-- confirmation and day-before reminder, each by SMS and email. The follower makes the other rows.
INSERT INTO visit_usage (visit_id, organisation_id, opened_at, environment, meeting_provider, department,
                         sms_sent, email_sent)
SELECT p.visit_id, c.organisation_id, p.t0, c.environment, 'builtin', p.department,
       (p.channel IS NOT DISTINCT FROM 'sms')::int + CASE WHEN p.i % 2 = 0 THEN 2 ELSE 0 END,
       (p.channel IS NOT DISTINCT FROM 'email')::int + CASE WHEN p.i % 2 = 0 THEN 2 ELSE 0 END
FROM plan p JOIN configurations c ON c.id = p.configuration_id
WHERE p.channel IN ('sms', 'email') OR p.i % 2 = 0;

INSERT INTO presence_events (visit_id, participant_id, kind, at)
SELECT visit_id, participant_id, kind, at FROM (
    SELECT p.visit_id, e.participant_id, e.kind, p.t0 + e.after AS at
    FROM plan p CROSS JOIN LATERAL (VALUES
        (p.provider_id, 'connected', interval '20 seconds'),
        (p.patient_id, 'lobby_entered', p.lobby),
        (p.patient_id, 'admitted', p.lobby + p.wait),
        (p.patient_id, 'connected', p.lobby + p.wait + interval '2 seconds'),
        (p.provider_id, 'disconnected', p.lobby + p.wait + p.length - interval '5 seconds'),
        (NULL, 'visit_ended', p.lobby + p.wait + p.length + interval '10 seconds'),
        (p.patient_id, 'disconnected', p.lobby + p.wait + p.length + interval '12 seconds')
    ) e(participant_id, kind, after)
    WHERE p.outcome = 'completed'
    UNION ALL
    SELECT p.visit_id, e.participant_id, e.kind, p.t0 + e.after
    FROM plan p CROSS JOIN LATERAL (VALUES
        (p.provider_id, 'connected', interval '30 seconds'),
        (p.provider_id, 'disconnected', interval '900 seconds'),
        (NULL, 'visit_ended', interval '4000 seconds')
    ) e(participant_id, kind, after)
    WHERE p.outcome = 'no_show'
    UNION ALL
    SELECT p.visit_id, e.participant_id, e.kind, p.t0 + e.after
    FROM plan p CROSS JOIN LATERAL (VALUES
        (p.provider_id, 'connected', interval '40 seconds'),
        (p.patient_id, 'lobby_entered', interval '90 seconds'),
        (p.patient_id, 'left', interval '300 seconds'),
        (p.provider_id, 'disconnected', interval '400 seconds'),
        (NULL, 'visit_ended', interval '500 seconds')
    ) e(participant_id, kind, after)
    WHERE p.outcome = 'cancelled'
) x
ORDER BY at;

INSERT INTO visit_ends (visit_id, event_id, reason, no_show, ended_at)
SELECT e.visit_id, e.id, CASE WHEN p.outcome = 'no_show' THEN 'window' ELSE 'clinician' END,
       p.outcome = 'no_show', e.at
FROM presence_events e JOIN plan p ON p.visit_id = e.visit_id
WHERE e.kind = 'visit_ended';

SET session_replication_role = origin;

ANALYZE
"""

# The bare aggregate, hand-written: the report's figures over the same rows. $1 organisation, [$2, $3) range.
FIGURES = """count(*), count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'no_show'),
       count(*) FILTER (WHERE status = 'cancelled'),
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY lobby_wait_s),
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY duration_s),
       max(attendees), sum(sms_sent), sum(email_sent)"""
RANGE = "FROM visit_usage WHERE organisation_id = $1 AND opened_at >= $2 AND opened_at < $3"
BARE_FOUR = [f"SELECT {FIGURES} {RANGE}",
             f"SELECT (opened_at AT TIME ZONE '{ZONE}')::date, {FIGURES} {RANGE} GROUP BY 1",
             f"SELECT department, {FIGURES} {RANGE} GROUP BY 1",
             f"SELECT environment, {FIGURES} {RANGE} GROUP BY 1"]
BARE_GROUPING_SETS = (f"SELECT (opened_at AT TIME ZONE '{ZONE}')::date AS day, department, environment, {FIGURES} "
                      f"{RANGE} GROUP BY GROUPING SETS ((), (1), (department), (environment))")
BARE_ROWS = ("SELECT visit_id, opened_at, started_at, ended_at, duration_s, lobby_wait_s, status, attendees, department,"
             f" environment, meeting_provider, sms_sent, email_sent {RANGE} ORDER BY opened_at, visit_id")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


async def run(args: argparse.Namespace) -> str:
    import aiohttp
    import asyncpg

    from config_portal import reports
    from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
    from gateway.db import migrate
    from gateway.security import Sealer, generate_signing_key_pem, token_hash
    from presence import usage

    run_ = procs.new_run("vg-bench-reports-")
    try:
        admin = await asyncpg.connect(run_.postgres())
        await admin.execute("CREATE DATABASE bench")
        await admin.close()
        dsn = run_.pg.get_uri("bench")
        secret = secrets.token_bytes(32)
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        org_id = await conn.fetchval(
            "INSERT INTO organisations (slug, name, idp_kind, issuer, client_id, client_secret, time_zone)"
            " VALUES ($1, 'Bench Health', 'oidc', 'https://idp.example', 'portal', '\\x00', $2) RETURNING id",
            SLUG, ZONE)
        configs = []
        for environment in ("test", "production"):
            config_id = await add_approved(conn, Sealer(secret), NewConfiguration(
                fhir_base_url=f"https://ehr-{environment}.example.org/fhir/R4", environment=environment,
                client_id="bench", client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="bench")
            await conn.execute("UPDATE configurations SET organisation_id = $1 WHERE id = $2", org_id, config_id)
            configs.append(config_id)

        started = time.monotonic()
        async with conn.transaction():
            for statement in filter(None, (s.strip() for s in SEED.split(";\n"))):
                args_ = (args.visits, configs[0], configs[1]) if "generate_series" in statement else ()
                await conn.execute(statement, *args_)
        events = await conn.fetchval("SELECT count(*) FROM presence_events")
        print(f"seeded {args.visits} visits, {events} events in {time.monotonic() - started:.1f}s", flush=True)

        counted = "SELECT sum(sms_sent), sum(email_sent), count(*) FROM visit_usage"
        messages = tuple(await conn.fetchrow(counted))
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        started = time.monotonic()
        with CpuSteal() as follow_steal:
            followed = await usage.catch_up(pool, batch=args.batch)
        follow_s = time.monotonic() - started
        assert followed == events, (followed, events)
        # The follower makes the rows the messages did not and leaves the senders' counts as they were.
        after = tuple(await conn.fetchrow(counted))
        assert after[:2] == messages[:2] and after[2] == args.visits, (messages, after)
        print(f"follow: {followed} events counted in {follow_s:.1f}s ({followed / follow_s:.0f}/s)", flush=True)
        print(f"  {follow_steal.describe()}", flush=True)
        await pool.close()
        await conn.execute("VACUUM ANALYZE visit_usage")

        port = procs.free_port()
        env = procs.gateway_env(dsn, port, secret, generate_signing_key_pem(), run_.dir / "gw")
        gateway = procs.start_gateway(run_, "gateway", env)
        token = secrets.token_urlsafe(32)
        await conn.execute("INSERT INTO portal_sessions (session_hash, organisation_id, subject, roles)"
                           " VALUES ($1, $2, 'bench-reader', ARRAY['report_reader'])", token_hash(token), org_id)
        base = f"http://{procs.HOST}:{port}/portal/{SLUG}/reports"
        headers = {"Cookie": f"__Host-vg_portal={token}"}
        span = reports.parse_range({"period": "90"}, ZONE, reports.today_in(ZONE))
        start, end = span.bounds()
        in_range = await conn.fetchval(f"SELECT count(*) {RANGE}", org_id, start, end)

        async def bare(statements: list[str]) -> float:
            t = time.perf_counter()
            for statement in statements:
                await conn.fetch(statement, org_id, start, end)
            return time.perf_counter() - t

        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
            async def report() -> float:
                t = time.perf_counter()
                async with http.get(f"{base}/usage?period=90") as r:
                    body = await r.read()
                    assert r.status == 200, body[:2000]
                return time.perf_counter() - t

            await report()  # warm: the gateway's first page, PostgreSQL's caches
            await bare(BARE_FOUR)
            await bare([BARE_GROUPING_SETS])
            report_times, four_times, sets_times = [], [], []
            with CpuSteal() as report_steal:
                for _ in range(ROUNDS):
                    four_times.append(await bare(BARE_FOUR))
                    sets_times.append(await bare([BARE_GROUPING_SETS]))
                    report_times.append(await report())
            four, sets, page = (statistics.median(x) for x in (four_times, sets_times, report_times))
            baseline = min(four, sets)
            print(f"report over {in_range} visits: page {page * 1000:.0f} ms; bare aggregate {baseline * 1000:.0f} ms "
                  f"(four statements {four * 1000:.0f} ms, grouping sets {sets * 1000:.0f} ms)", flush=True)
            print(f"  page times {[round(x * 1000) for x in report_times]}", flush=True)
            print(f"  {report_steal.describe()}", flush=True)

            # The CSV's baseline: PostgreSQL's own CSV writer over the same rows (COPY), read to the end here.
            with CpuSteal() as csv_steal:
                copied = 0

                async def sink(data: bytes) -> None:
                    nonlocal copied
                    copied += data.count(b"\n")

                t = time.perf_counter()
                await conn.copy_from_query(BARE_ROWS, org_id, start, end, output=sink, format="csv", header=True)
                bare_csv = time.perf_counter() - t
                rows = copied - 1
                pid = gateway.proc.pid
                rss_before = _status_kb(pid, "VmRSS")
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                t = time.perf_counter()
                lines, size = 0, 0
                async with http.get(f"{base}/usage.csv?period=90") as r:
                    assert r.status == 200, await r.text()
                    async for chunk in r.content.iter_chunked(1 << 16):
                        lines += chunk.count(b"\n")
                        size += len(chunk)
                csv_s = time.perf_counter() - t
                peak = _status_kb(pid, "VmHWM")
            assert lines == in_range + 1 and rows == in_range, (lines, rows, in_range)
            csv_peak_mb = (peak - rss_before) / 1024
            print(f"csv: {lines - 1} rows, {size / 1e6:.0f} MB in {csv_s:.1f}s; bare COPY {bare_csv:.1f}s; "
                  f"gateway RSS {rss_before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB", flush=True)
            print(f"  {csv_steal.describe()}", flush=True)
        await conn.close()
        return (f"RESULT reports report_ratio={page / baseline:.3f} csv_peak_mb={csv_peak_mb:.1f} "
                f"report_ms={page * 1000:.0f} bare_ms={baseline * 1000:.0f} visits={in_range} "
                f"csv_ratio={csv_s / bare_csv:.2f} csv_s={csv_s:.1f} follow_per_s={followed / follow_s:.0f} "
                f"steal_pct_report={report_steal.steal_pct:.1f} steal_max1s_report={report_steal.worst_pct:.1f} "
                f"steal_pct_csv={csv_steal.steal_pct:.1f}")
    finally:
        await run_.close_async()


def main() -> int:
    """Run the benchmark and print its RESULT line last."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--visits", type=int, default=None)
    parser.add_argument("--batch", type=int, default=20000)
    args = parser.parse_args()
    args.visits = args.visits or (50_000 if args.quick else 1_000_000)
    try:
        line = asyncio.run(run(args))
    except Exception as exc:  # still end with a RESULT line
        print(f"bench failed: {type(exc).__name__}: {exc}", flush=True)
        print("RESULT reports report_ratio=nan csv_peak_mb=nan")
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
