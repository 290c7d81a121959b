#!/usr/bin/env python
"""Benchmark: presence websockets in the gateway against bare aiohttp websockets (see BENCHMARKS.md).

    .venv/bin/python bench/presence.py                # the whole benchmark, about two minutes
    .venv/bin/python bench/presence.py --quick        # smaller and shorter, for a smoke test
    .venv/bin/python bench/presence.py --profile      # also sample the gateway with py-spy (sustained, p99)

Every process runs on 127.0.0.1 and is started and ended by this script: PostgreSQL (pgserver) in a fresh
/tmp directory, `visitgate serve` (uvloop, as shipped), a bare aiohttp websocket server (uvloop), and load
client processes (bench/load.py: a lean asyncio websocket client, so the clients leave the cores to the
servers as far as possible). Visits and provider sessions are seeded straight into the schema with known
handles, as a provider launch leaves them; from the socket on, everything is the gateway's real code.

Figures
- mem_ratio: RSS growth of the server process per idle socket, gateway ÷ bare. Gateway sockets are real
  presence sockets (auth as a provider view, then subscribe; 4 sockets per visit); bare sockets are a
  `WebSocketResponse(compress=False)` handler that only awaits receive. Both servers first hold 200 warm-up
  sockets, so the figure is the cost of one more socket at steady state.
- fanout_ratio: one event to 1,000 subscribers of one visit, in this process: sends/s of `Hub.publish` of a
  prebuilt PresenceEvent to 1,000 real sockets of a real aiohttp server ÷ a bare `await ws.send_str(text)`
  loop over 1,000 sockets of the same server; same text; interleaved blocks; a client process drains all.
- p99_ms_3sub: 100 visits x 3 provider-view subscribers on a gateway process; events written by this
  process with presence.eventlog.record_event (insert transaction, NOTIFY after commit) at half of the peak
  end-to-end rate (open loop, paced arrivals); latency from each event's commit until the last of its 3
  subscribers received it (client and writer share CLOCK_MONOTONIC; from the scheduled write, the write
  included, is printed too). Neither load process collects cycles while this is timed (no_gc): their
  bookkeeping grows with every event, and a full collection of it is a pause of the apparatus.
- sustained_ratio: events/s the gateway delivers across the same 100 visits x 3 subscribers (events already
  in the database, one NOTIFY: bus reads in batches -> hub -> sockets -> clients, measured at the clients)
  ÷ a bare server sending the same 300 sockets the same pattern (event i to the 3 sockets of visit i % 100,
  same text size) in a bare send loop. The end-to-end peak including one write transaction per event is
  printed too (it is bound by PostgreSQL writes, not by presence).

Each timed phase also prints the CPU the hypervisor stole from this shared VM meanwhile (CpuSteal): a
stolen quarter of the machine moves a p99 far more than the code does. The RESULT line ends with
steal_pct_<phase> (share of all CPU ticks in the timed window) and steal_max1s_<phase> (its worst second)
for fanout, p99 and sustained.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import secrets
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The working tree's packages first, and never this folder (bench/presence.py would shadow the `presence` package).
sys.path[:] = [str(ROOT)] + [p for p in sys.path
                             if p and Path(p).resolve() not in (ROOT, Path(__file__).parent.resolve())]

from bench.load import auth_frames, ClientDriver  # noqa: E402
from bench.procs import (  # noqa: E402
    choose_loop, cpu_seconds, free_port, gateway_env, HOST, new_run, raise_more_files, rss_bytes, start_gateway)
from bench.seed import seed, write_closed_loop, write_open_loop  # noqa: E402
from bench.spy import inclusive_frames, py_spy, top_frames  # noqa: E402
from bench.stats import CpuSteal, describe, latencies, no_gc, percentile  # noqa: E402
from tests.harness import Processes  # noqa: E402

DEADLINE = 420.0


def say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------------------
# The bare websocket server (its own process, like the gateway)
# ------------------------------------------------------------------------------------------------


def bare_main(port: int, loop: str) -> None:
    from aiohttp import web

    from presence.eventlog import PresenceEvent

    groups: dict[str, list[web.WebSocketResponse]] = defaultdict(list)
    running: set[asyncio.Task[None]] = set()

    async def socket_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        group = groups[request.query.get("g", "")]
        group.append(ws)
        try:
            while True:
                msg = await ws.receive()
                if msg.type in (web.WSMsgType.CLOSE, web.WSMsgType.CLOSING, web.WSMsgType.CLOSED,
                                web.WSMsgType.ERROR):
                    break
        finally:
            group.remove(ws)
        return ws

    async def blast(request: web.Request) -> web.Response:
        body = await request.json()
        events = int(body["events"])
        keys = sorted((k for k in groups if k), key=int)
        at = dt.datetime.now(dt.timezone.utc)
        texts = [PresenceEvent(id=10_000_000 + i, visit_id=uuid.uuid4(), participant_id=uuid.uuid4(),
                               kind="device_test_passed", at=at, role="patient", guest_kind=None).to_json()
                 for i in range(len(keys))]
        socks = [groups[k] for k in keys]

        async def run() -> None:
            n = len(keys)
            for i in range(events):
                for ws in socks[i % n]:
                    await ws.send_str(texts[i % n])
                if i % 500 == 499:
                    await asyncio.sleep(0)

        task = asyncio.create_task(run())
        running.add(task)
        task.add_done_callback(running.discard)
        return web.json_response({"ok": True, "text_bytes": len(texts[0]) if texts else 0})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ws", socket_handler)
    app.router.add_post("/blast", blast)
    app.router.add_get("/healthz", healthz)
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, backlog=4096)


# ------------------------------------------------------------------------------------------------
# Fan-out, in this process
# ------------------------------------------------------------------------------------------------


async def fanout_phase(run: Processes, args: argparse.Namespace) -> dict[str, float]:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from presence.eventlog import PresenceEvent
    from presence.hub import Connection, Hub

    n = args.fanout_subs
    hub = Hub()
    visit_id = uuid.uuid4()
    bare: list[web.WebSocketResponse] = []

    async def hub_socket(request: web.Request) -> web.WebSocketResponse:
        # As presence_socket builds it, minus authentication (no database here).
        ws = web.WebSocketResponse(compress=False, heartbeat=20.0, max_msg_size=16 * 1024)
        await ws.prepare(request)
        conn = Connection(ws, request.transport, visit_id, uuid.uuid4(), "provider", "view")
        hub.add(conn)
        await hub.mark_ready(conn, 0)
        try:
            async for _ in ws:
                pass
        finally:
            hub.remove(conn)
        return ws

    async def bare_socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        bare.append(ws)
        try:
            async for _ in ws:
                pass
        finally:
            bare.remove(ws)
        return ws

    app = web.Application()
    app.router.add_get("/hub", hub_socket)
    app.router.add_get("/bare", bare_socket)
    server = TestServer(app, host=HOST, port=free_port())
    await server.start_server(access_log=None)
    client = await ClientDriver.start("fanout-client", run.dir / "fanout-client.log")
    try:
        origin = f"http://{HOST}:{server.port}"
        for path in ("/hub", "/bare"):
            opened = await client.call("open", host=HOST, port=server.port, path=path, origin=origin,
                                       sockets=[{} for _ in range(n)], expect="upgrade", local_addr=None,
                                       concurrency=100, rate=5000.0, timeout=60.0)
            if opened["ok"] != n:
                raise RuntimeError(f"fan-out: only {opened['ok']} of {n} sockets opened on {path}: {opened['errors']}")
        for _ in range(100):
            if hub.count() == n and len(bare) == n:
                break
            await asyncio.sleep(0.05)
        if hub.count() != n or len(bare) != n:
            raise RuntimeError(f"fan-out: hub has {hub.count()}, bare has {len(bare)} of {n}")
        at = dt.datetime.now(dt.timezone.utc)
        participant = uuid.uuid4()
        events = [PresenceEvent(id=i + 1, visit_id=visit_id, participant_id=participant, kind="connected",
                                at=at, role="provider", guest_kind=None) for i in range(args.fanout_rounds * 2 + 20)]
        texts = [e.to_json() for e in events]
        transports = [ws._req.transport for ws in bare if ws._req is not None]  # noqa: SLF001 (measurement only)

        async def settle() -> None:
            # Every kernel buffer accepted what was sent, so each timed send starts from the same state.
            for _ in range(500):
                if all(t is None or t.get_write_buffer_size() == 0 for t in transports) and all(
                        c.transport is None or c.transport.get_write_buffer_size() == 0  # type: ignore[union-attr]
                        for subs in hub._visits.values() for c in subs):  # noqa: SLF001
                    break
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.002)

        hub_times: list[float] = []
        bare_times: list[float] = []
        next_event = 0
        block = 20
        await client.call("reset", mode="count")
        with CpuSteal() as steal:
            for _ in range(math.ceil(args.fanout_rounds / block)):
                for _ in range(block):
                    event = events[next_event]
                    next_event += 1
                    await settle()
                    t0 = time.perf_counter()
                    await hub.publish(event)
                    hub_times.append(time.perf_counter() - t0)
                for _ in range(block):
                    text = texts[next_event]
                    await settle()
                    t0 = time.perf_counter()
                    for ws in bare:
                        await ws.send_str(text)
                    bare_times.append(time.perf_counter() - t0)
        expected = n * (len(hub_times) + len(bare_times))
        got = await client.call("wait_count", count=expected, timeout=30.0)
        dropped = n - hub.count()
        hub_rate = n * len(hub_times) / sum(hub_times)
        bare_rate = n * len(bare_times) / sum(bare_times)
        hub_p99 = percentile(hub_times, 99) * 1000
        bare_p99 = percentile(bare_times, 99) * 1000
        say(f"  one event to {n} subscribers, {len(hub_times)} events each side, interleaved in blocks of {block}:")
        say(f"    Hub.publish: {hub_rate:,.0f} sends/s (per event p50 {percentile(hub_times, 50) * 1000:.2f} ms, "
            f"p99 {hub_p99:.2f} ms); bare send_str loop: {bare_rate:,.0f} sends/s (p50 "
            f"{percentile(bare_times, 50) * 1000:.2f} ms, p99 {bare_p99:.2f} ms); text {len(texts[0])} bytes")
        say(f"    clients received {got['count']:,} of {expected:,} frames; hub sockets dropped: {dropped}")
        say(f"    {steal.describe()}")
        if got["count"] != expected or dropped:
            say("    WARNING: not every frame arrived or a socket was dropped; the figure is not clean")
        await client.call("close")
        return {"fanout_ratio": hub_rate / bare_rate, "hub_rate": hub_rate, "bare_rate": bare_rate,
                "steal_pct_fanout": steal.steal_pct, "steal_max1s_fanout": steal.worst_pct}
    finally:
        await client.stop()
        await hub.close_all()
        await server.close()


# ------------------------------------------------------------------------------------------------
# The gateway: sustained delivery and end-to-end latency with 100 visits x 3 subscribers
# ------------------------------------------------------------------------------------------------


async def patient_ids(pool: Any, visits: list[uuid.UUID]) -> list[uuid.UUID]:
    from gateway.participants import patient_participant

    async with pool.acquire() as conn:
        return [await patient_participant(conn, v) for v in visits]


async def blast_gateway(pool: Any, client: ClientDriver, visits: list[uuid.UUID], patients: list[uuid.UUID],
                        events: int, subs: int, steal: CpuSteal) -> tuple[float, dict[str, Any]]:
    """Insert `events` events round-robin over the visits in one transaction, then one NOTIFY: the bus
    reads them in batches and the hub sends them. Returns events/s measured at the clients; `steal` times
    the delivery (not the insert)."""
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO presence_events (visit_id, participant_id, kind)"
            " SELECT v.visit, v.patient, 'device_test_passed'"
            " FROM generate_series(0, $3 - 1) AS g(i)"
            " JOIN unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS v(visit, patient, k)"
            "   ON v.k = (g.i % cardinality($1::uuid[])) + 1"
            " ORDER BY g.i", visits, patients, events)
        last = await conn.fetchval("SELECT max(id) FROM presence_events")
        await client.call("reset", mode="count")
        with steal:
            t0 = time.monotonic()
            await conn.execute("SELECT pg_notify('presence_events', $1::text)", str(last))
            got = await client.call("wait_count", count=events * subs, timeout=60.0)
    seconds = got["last_t"] - t0
    return (got["count"] / subs) / seconds if seconds > 0 else math.nan, got


async def blast_bare(port: int, client: ClientDriver, events: int, subs: int,
                     steal: CpuSteal) -> tuple[float, dict[str, Any]]:
    import aiohttp

    await client.call("reset", mode="count")
    with steal:
        async with aiohttp.ClientSession() as http:
            t0 = time.monotonic()
            async with http.post(f"http://{HOST}:{port}/blast", json={"events": events}) as response:
                await response.read()
        got = await client.call("wait_count", count=events * subs, timeout=60.0)
    seconds = got["last_t"] - t0
    return (got["count"] / subs) / seconds if seconds > 0 else math.nan, got


async def gateway_phase(run: Processes, args: argparse.Namespace, dsn: str, secret: bytes, pem: bytes) -> dict[str, float]:
    from gateway.db import create_pool

    port, bare_port = free_port(), free_port()
    env = gateway_env(dsn, port, secret, pem, run.dir / "data", args.log_level)
    gateway = start_gateway(run, "gateway", env, std_loop=args.loop == "asyncio")
    bare = run.spawn("bare", [sys.executable, __file__, "_bare", str(bare_port), args.loop],
                     ready_url=f"http://{HOST}:{bare_port}/healthz")
    bare.wait_ready()
    seeded = await seed(dsn, secret, args.visits, 3)
    visits = [v for v, _ in seeded]
    # The gateway's own kind of pool (no reset query on release), so the writes cost what the gateway's do.
    pool = await create_pool(dsn, args.writers, min_size=args.writers,
                             server_settings={"synchronous_commit": args.synchronous_commit})
    patients = await patient_ids(pool, visits)
    gw_client = await ClientDriver.start("gw-client", run.dir / "gw-client.log")
    bare_client = await ClientDriver.start("bare-client", run.dir / "bare-client.log")
    subs = 3
    out: dict[str, float] = {}
    try:
        origin = f"http://{HOST}:{port}"
        specs = [{"frames": auth_frames(h), "group": k} for k, (_, handles) in enumerate(seeded) for h in handles]
        opened = await gw_client.call("open", host=HOST, port=port, path="/ws", origin=origin, sockets=specs,
                                      expect="snapshot", local_addr=None, concurrency=50, rate=2000.0, timeout=60.0)
        if opened["ok"] != len(specs):
            raise RuntimeError(f"gateway: {opened['ok']} of {len(specs)} sockets subscribed: {opened['errors']}")
        bare_specs = [{"path": f"/ws?g={k}", "group": k} for k in range(args.visits) for _ in range(subs)]
        opened = await bare_client.call("open", host=HOST, port=bare_port, path="/ws", origin=origin,
                                        sockets=bare_specs, expect="upgrade", local_addr=None, concurrency=50,
                                        rate=5000.0, timeout=60.0)
        if opened["ok"] != len(bare_specs):
            raise RuntimeError(f"bare: {opened['ok']} of {len(bare_specs)} sockets opened: {opened['errors']}")
        await asyncio.sleep(0.5)  # the connected events of the subscribers themselves go by

        say(f"  sustained: {args.visits} visits x {subs} subscribers, {args.blast:,} events per run, gateway and bare "
            f"alternating, best of {args.blast_rounds}:")
        spy = None
        if args.profile:
            spy_out = run.dir / "spy-sustained.txt"
            spy = (py_spy(run, gateway.pid, 4 * args.blast_rounds + 4, spy_out), spy_out)
        gw_rates, bare_rates = [], []
        steal = CpuSteal()  # gateway and bare runs together: the ratio is of both
        for r in range(args.blast_rounds):
            rate, got = await blast_gateway(pool, gw_client, visits, patients, args.blast, subs, steal)
            gw_rates.append(rate)
            say(f"    gateway run {r + 1}: {rate:,.0f} events/s ({got['count']:,} frames; sockets open {got['open']}, "
                f"closes {got['closes']})")
            rate, got = await blast_bare(bare_port, bare_client, args.blast, subs, steal)
            bare_rates.append(rate)
            say(f"    bare    run {r + 1}: {rate:,.0f} events/s ({got['count']:,} frames; sockets open {got['open']})")
        say(f"    {steal.describe()}")
        out["steal_pct_sustained"], out["steal_max1s_sustained"] = steal.steal_pct, steal.worst_pct
        out["sustained_ratio"] = max(gw_rates) / max(bare_rates)
        out["sustained_gw"], out["sustained_bare"] = max(gw_rates), max(bare_rates)
        if spy and spy[0] is not None:
            await asyncio.to_thread(spy[0].wait, 30)
            report_profile("gateway during sustained delivery", spy[1])

        # End to end, with a write transaction per event: the peak (closed loop), then p99 at half of it.
        await gw_client.call("reset", mode="count")
        with CpuSteal() as steal:
            t0 = time.monotonic()
            written = await write_closed_loop(pool, visits, patients, args.writers, args.peak_seconds)
            write_s = time.monotonic() - t0
            got = await gw_client.call("wait_count", count=written * subs, timeout=30.0)
        delivered_s = max(got["last_t"], t0 + write_s) - t0
        peak = min(written / write_s, (got["count"] / subs) / delivered_s)
        say(f"  end to end peak ({args.writers} writers, record_event, closed loop {args.peak_seconds:.0f}s): "
            f"{written / write_s:,.0f} events/s written, {got['count'] / subs / delivered_s:,.0f} events/s delivered "
            f"to all {subs}; peak {peak:,.0f}/s")
        say(f"    {steal.describe()}")
        out["peak_e2e"] = peak

        rate = peak / 2
        await gw_client.call("reset", mode="record")
        if args.profile:
            spy_out = run.dir / "spy-p99.txt"
            spy = (py_spy(run, gateway.pid, args.p99_seconds + 1, spy_out), spy_out)
        with no_gc(), CpuSteal() as steal:
            written_at, overruns = await write_open_loop(pool, visits, patients, rate, args.p99_seconds)
            await gw_client.call("wait_count", count=len(written_at) * subs, timeout=15.0)
        recs = (await gw_client.call("records"))["records"]
        received: dict[int, list[float]] = defaultdict(list)
        for _sock, event_id, _kind, t in recs:
            received[event_id].append(t)
        lat = latencies(written_at, received, subs)
        commits = [(c - d) * 1000 for d, c, _n in written_at.values()]
        say(f"  at half peak ({rate:,.0f} events/s open loop, {args.p99_seconds:.0f}s, {len(written_at):,} events, "
            f"writer overruns {overruns}, events missing a subscriber {lat['lost']}), until all {subs} received:")
        say(f"    from commit (the figure): {describe(lat['from_commit'])}")
        say(f"    from every earlier id committed (bus+hub+socket only): {describe(lat['from_ready'])}")
        say(f"    from scheduled write (incl. the write itself): {describe(lat['from_write'])}; the write's own "
            f"transaction took {describe(commits)}")
        say(f"    {steal.describe()}")
        out["steal_pct_p99"], out["steal_max1s_p99"] = steal.steal_pct, steal.worst_pct
        out["p99_ms_3sub"] = percentile(lat["from_commit"], 99) if not lat["lost"] else math.nan
        out["p99_ready"] = percentile(lat["from_ready"], 99)
        if args.profile and spy[0] is not None:
            await asyncio.to_thread(spy[0].wait, 30)
            report_profile("gateway at half peak (end to end)", spy[1])
        await gw_client.call("close")
        await bare_client.call("close")
    finally:
        await gw_client.stop()
        await bare_client.stop()
        await pool.close()
        gateway.kill()
        bare.kill()
    return out


def report_profile(label: str, path: Path) -> None:
    frames = top_frames(path, 15)
    if not frames:
        say(f"  (no py-spy samples for {label})")
        return
    say(f"  py-spy, {label}: hottest frames by own time")
    for share, frame in frames:
        say(f"    {share * 100:5.1f}%  {frame}")
    incl = inclusive_frames(path, ("publish (presence/hub.py", "send (presence/hub.py", "send_str (", "_drain_once",
                                     "all_events_after", "_event (presence/eventlog.py", "to_json", "record_event",
                                     "presence_socket", "_authenticate", "_subscribe"))
    say("    inclusive: " + ", ".join(f"{k.split(' (')[0]} {v * 100:.1f}%" for k, v in incl.items() if v))


# ------------------------------------------------------------------------------------------------
# Memory per idle socket
# ------------------------------------------------------------------------------------------------


async def open_many(clients: list[ClientDriver], port: int, path: str, origin: str, specs: list[dict[str, Any]],
                    expect: str, rate: float, concurrency: int, timeout: float) -> tuple[int, dict[str, int]]:
    share = math.ceil(len(specs) / len(clients))
    calls = []
    for k, client in enumerate(clients):
        part = specs[k * share:(k + 1) * share]
        if part:
            calls.append(client.call("open", wait=timeout + 30, host=HOST, port=port, path=path, origin=origin,
                                     sockets=part, expect=expect, local_addr=f"127.0.0.{2 + k}",
                                     concurrency=concurrency, rate=rate / len(clients), timeout=timeout))
    answers = await asyncio.gather(*calls)
    errors: dict[str, int] = {}
    for a in answers:
        for kind, count in a["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    return sum(a["ok"] for a in answers), errors


def settle_cpu(pid: int, limit: float = 20.0) -> None:
    """Wait until a process is nearly idle (under 5% of a core over 0.5 s), at most `limit` seconds."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


async def memory_phase(run: Processes, args: argparse.Namespace, dsn: str, secret: bytes, pem: bytes) -> dict[str, float]:
    n, warm = args.sockets, 200
    out: dict[str, float] = {}
    # Every socket is a descriptor of the server, and no process here may open more than the hard limit
    # (20,000 on this machine kind). Past it the server cannot accept and the client sees the connection end
    # (the "~1% closed before ready" of earlier runs). So ask each server for what fits beside its warm-up
    # sockets and its own descriptors (database connections, logs, the event loop's).
    limit = raise_more_files()
    fits = limit - warm - 150
    if n > fits:
        say(f"  memory: each process may open {limit:,} files here, so each server holds {fits:,} idle sockets, "
            f"not {n:,}")
        n = fits
    nclients = max(1, math.ceil(n / 10_000))

    async def measure(label: str, pid: int, port: int, path_of: Any, specs: list[dict[str, Any]],
                      warm_specs: list[dict[str, Any]], expect: str, rate: float) -> float:
        clients = [await ClientDriver.start(f"mem-{label}-{k}", run.dir / f"mem-{label}-{k}.log")
                   for k in range(nclients)]
        try:
            origin = f"http://{HOST}:{port}"
            ok, errors = await open_many(clients[:1], port, "/ws", origin, warm_specs, expect, 1000.0, 50, 60.0)
            if ok != len(warm_specs):
                raise RuntimeError(f"{label}: warm-up opened {ok} of {len(warm_specs)}: {errors}")
            await asyncio.to_thread(settle_cpu, pid, 10)
            before = rss_bytes(pid)
            t0 = time.monotonic()
            ok, errors = await open_many(clients, port, "/ws", origin, specs, expect, rate, 50, args.open_timeout)
            took = time.monotonic() - t0
            await asyncio.to_thread(settle_cpu, pid, 20)
            after = rss_bytes(pid)
            stats = await asyncio.gather(*(c.call("stats") for c in clients))
            still = sum(s["open"] for s in stats)
            per = (after - before) / max(1, ok)
            say(f"    {label}: {ok:,} of {len(specs):,} sockets in {took:.1f}s ({ok / took:,.0f}/s), {still:,} still open "
                f"after settling; RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB; {per / 1024:.2f} KiB per socket"
                + (f"; errors {errors}" if errors else ""))
            out[f"{label}_sockets"] = ok
            return per
        finally:
            for c in clients:
                await c.stop()

    say(f"  memory: {n:,} idle sockets on each server after {warm} warm-up sockets; {nclients} client process(es), "
        f"source addresses 127.0.0.2..127.0.0.{1 + nclients}:")
    bare_port = free_port()
    bare = run.spawn("bare-mem", [sys.executable, __file__, "_bare", str(bare_port), args.loop],
                     ready_url=f"http://{HOST}:{bare_port}/healthz")
    bare.wait_ready()
    try:
        bare_per = await measure("bare", bare.pid, bare_port, None, [{} for _ in range(n)], [{} for _ in range(warm)],
                                 "upgrade", 4000.0)
    finally:
        bare.kill()

    per_visit = 4
    seeded = await seed(dsn, secret, math.ceil(n / per_visit) + warm // per_visit, 1)
    specs = [{"frames": auth_frames(handles[0])} for _, handles in seeded for _ in range(per_visit)]
    warm_specs, specs = specs[:warm], specs[warm:warm + n]
    port = free_port()
    # Memory per socket does not depend on how durable the `connected` events are; without a disk flush per
    # socket the ramp to 20,000 fits in the run on this machine's disk. Everything else is as shipped.
    mem_dsn = dsn + ("&" if "?" in dsn else "?") + "synchronous_commit=off"
    env = gateway_env(mem_dsn, port, secret, pem, run.dir / "data", args.log_level)
    gateway = start_gateway(run, "gateway-mem", env, std_loop=args.loop == "asyncio")
    try:
        gw_per = await measure("gateway", gateway.pid, port, None, specs, warm_specs, "snapshot", args.open_rate)
    finally:
        gateway.kill()
    out["mem_ratio"] = gw_per / bare_per if bare_per > 0 else math.nan
    out["sockets"] = min(out.get("gateway_sockets", 0), out.get("bare_sockets", 0))
    out["gw_kib"], out["bare_kib"] = gw_per / 1024, bare_per / 1024
    return out


# ------------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    from gateway.security import generate_signing_key_pem

    raise_more_files()
    run = new_run("vg-bench-presence-")
    figures: dict[str, float] = {}
    failed: list[str] = []
    try:
        say(f"presence benchmark: {os.cpu_count()} cores shared by PostgreSQL, the servers and the load clients; "
            f"temp dir {run.dir}")
        t = time.monotonic()
        dsn = run.postgres()
        say(f"  PostgreSQL up in {time.monotonic() - t:.1f}s")
        secret, pem = secrets.token_bytes(32), generate_signing_key_pem()
        # Migrate once before anything is timed (the gateway would too).
        import asyncpg

        from gateway.db import migrate

        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()

        phases = [("fan-out (in process)", lambda: fanout_phase(run, args)),
                  ("gateway process: sustained and latency", lambda: gateway_phase(run, args, dsn, secret, pem)),
                  ("memory per idle socket", lambda: memory_phase(run, args, dsn, secret, pem))]
        for label, phase in phases:
            if args.only and not any(word in label for word in args.only.split(",")):
                continue
            say(f"{label}:")
            try:
                figures.update(await asyncio.wait_for(phase(), DEADLINE))
            except Exception as exc:  # one phase failing still lets the others report
                failed.append(label)
                say(f"  FAILED: {type(exc).__name__}: {exc}")
    finally:
        run.close()

    def f(key: str, fmt: str) -> str:
        value = figures.get(key, math.nan)
        return format(value, fmt) if not math.isnan(value) else "nan"

    say("")
    say(f"mem: gateway {f('gw_kib', '.2f')} KiB/socket, bare {f('bare_kib', '.2f')} KiB/socket -> mem_ratio "
        f"{f('mem_ratio', '.3f')} (goal <= 1.5) at {int(figures.get('sockets', 0)):,} sockets")
    say(f"fan-out: Hub.publish {f('hub_rate', ',.0f')} sends/s, bare {f('bare_rate', ',.0f')} -> fanout_ratio "
        f"{f('fanout_ratio', '.3f')} (goal >= 0.8)")
    say(f"latency: p99 {f('p99_ms_3sub', '.2f')} ms at half of the {f('peak_e2e', ',.0f')}/s end-to-end peak (goal <= 5)")
    say(f"sustained: gateway {f('sustained_gw', ',.0f')} events/s, bare {f('sustained_bare', ',.0f')} -> sustained_ratio "
        f"{f('sustained_ratio', '.3f')} (goal >= 0.7)")
    say(f"CPU stolen by the hypervisor (% of the timed window; worst 1 s): fan-out {f('steal_pct_fanout', '.1f')}% "
        f"({f('steal_max1s_fanout', '.1f')}%), p99 {f('steal_pct_p99', '.1f')}% ({f('steal_max1s_p99', '.1f')}%), "
        f"sustained {f('steal_pct_sustained', '.1f')}% ({f('steal_max1s_sustained', '.1f')}%)")
    if failed:
        say(f"FAILED PHASES: {', '.join(failed)}")
    steal = " ".join(f"{key}={f(key, '.1f')}" for key in ("steal_pct_fanout", "steal_max1s_fanout", "steal_pct_p99",
                                                          "steal_max1s_p99", "steal_pct_sustained",
                                                          "steal_max1s_sustained"))
    say(f"RESULT presence mem_ratio={f('mem_ratio', '.3f')} fanout_ratio={f('fanout_ratio', '.3f')} "
        f"p99_ms_3sub={f('p99_ms_3sub', '.2f')} sustained_ratio={f('sustained_ratio', '.3f')} "
        f"sockets={int(figures.get('sockets', 0))} {steal}")
    return 1 if failed else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=20_000, help="idle sockets per server for mem_ratio")
    p.add_argument("--open-rate", type=float, default=1500.0, help="gateway sockets opened per second (ramp)")
    p.add_argument("--open-timeout", type=float, default=150.0)
    p.add_argument("--fanout-subs", type=int, default=1000)
    p.add_argument("--fanout-rounds", type=int, default=300)
    p.add_argument("--visits", type=int, default=100)
    p.add_argument("--blast", type=int, default=60_000, help="events per sustained run")
    p.add_argument("--blast-rounds", type=int, default=2)
    p.add_argument("--writers", type=int, default=16)
    p.add_argument("--peak-seconds", type=float, default=5.0)
    # Long enough that one stall of this shared VM (tens of ms, every few seconds) weighs as what it is, not
    # as a whole percent of the sample: ~30k events at half peak.
    p.add_argument("--p99-seconds", type=float, default=20.0)
    p.add_argument("--synchronous-commit", default="on", choices=["on", "off"],
                   help="for this benchmark's own writes only (the gateway's stay as configured): off takes the "
                        "disk's flush latency out of the end-to-end phases")
    p.add_argument("--log-level", default="INFO", help="the gateway's VISITGATE_LOG_LEVEL (INFO as shipped)")
    p.add_argument("--profile", action="store_true", help="sample the gateway with py-spy (sustained, p99)")
    p.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                   help="event loop of the servers: uvloop as shipped; auto falls back to asyncio's loop when "
                        "presence.hub is found to drop every socket served on uvloop")
    p.add_argument("--only", default="", help="comma-separated words picking phases: fan-out,sustained,memory")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.sockets, args.fanout_rounds, args.blast, args.blast_rounds = 2000, 100, 20_000, 1
        args.peak_seconds, args.p99_seconds = 3.0, 4.0
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])
    args.loop = choose_loop(args.loop)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "_bare":
        bare_main(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
