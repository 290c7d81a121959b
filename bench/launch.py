#!/usr/bin/env python
"""Benchmark: full SMART provider launches through the gateway against a bare aiohttp 302 handler.

Run from the repository root with the project's environment:

    .venv/bin/python bench/launch.py            # the whole benchmark, a couple of minutes at most
    .venv/bin/python bench/launch.py --quick    # shorter phases, for a smoke test
    .venv/bin/python bench/launch.py --profile cprofile   # also dump a cProfile of the gateway

What runs (every process on 127.0.0.1, every one started and ended by this script):

- PostgreSQL, embedded (pgserver), in a fresh directory under /tmp;
- the sandbox EHR (`python -m sandbox --test-controls`) in its own process;
- the gateway (`visitgate serve`, uvloop, settings from the environment) in its own process;
- the baseline: a bare aiohttp handler that returns a 302 (uvloop too) in its own process;
- the load generator: aiohttp ClientSession(s) with keep-alive on uvloop, in its own process(es).

A "full provider launch" is what a browser does when a clinician opens the visit from the EHR:
GET /launch (302 to the EHR's authorize), GET the EHR's authorize URL (302 with the code; the EHR's leg,
counted in the launch but served by the sandbox), GET /launch/callback (303 to the provider view, which
is not fetched). Discovery is cached by a warm-up before anything is measured.

Figures: peak rate from a closed loop (fixed number of workers, bounded duration); p99 from an open loop
(paced arrivals at half the peak, latency counted from each arrival's scheduled time so a stalled server
cannot hide its queue). The launch p99 is of the whole launch (all three legs, the EHR's included); the
p99 of the two gateway legs summed is printed too. Each launch phase and its baseline run in alternating
blocks (--rounds, 3 by default) and are merged, so a noisy spell falls on both rather than on one.

The machine has 2 cores shared by everything above, so the absolute rates say as much about the
neighbours as about the gateway; only the ratios against the baseline of the same run are comparable.
It is also a VM whose host steals CPU time from it: each phase prints how much (_common.CpuSteal), and the
RESULT line ends with steal_pct_<phase> (share of all CPU ticks in the timed windows) and steal_max1s_<phase>
(their worst second) for the peaks (launch and bare together) and the p99 phases (the same).
The last line is `RESULT launch ...` (see BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuSteal, free_port, percentile, stop_process  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The working tree's packages, whatever the editable install lists (a part added since would be missing).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
CLIENT_ID = "bench"
OK_LAUNCH = 302
OK_AUTHORIZE = 302
OK_CALLBACK = 303
REQUEST_TIMEOUT = 10.0  # seconds, per request in the load generator
MAX_IN_FLIGHT = 2000  # open loop: arrivals beyond this many outstanding ones are counted as errors
NOISY_SHARE = 0.15  # a phase where processes not ours took more than this share of the machine is flagged
TOTAL_DEADLINE = 300.0  # the whole run, start-up included, never takes longer than this


# ------------------------------------------------------------------------------------------------
# Child process: the bare baseline server
# ------------------------------------------------------------------------------------------------


def bare_main(port: int) -> None:
    """A bare aiohttp server whose one handler returns a 302, on uvloop like the gateway."""
    import asyncio

    import uvloop
    from aiohttp import web

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/x"})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", redirect)
    app.router.add_get("/healthz", healthz)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


def sandbox_main(argv: list[str]) -> None:
    """The sandbox EHR exactly as `python -m sandbox` runs it, but on uvloop (it is only a neighbour here:
    a real EHR runs elsewhere, so the less CPU it takes from the gateway on this 2-core box the better)."""
    import asyncio
    import runpy

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.argv = ["sandbox", *argv]
    runpy.run_module("sandbox", run_name="__main__", alter_sys=True)


def gateway_profiled_main(kind: str, out: str) -> None:
    """`visitgate serve` under a profiler; the stats are written when the server stops (SIGTERM)."""
    from gateway.cli import main

    if kind == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            main(["serve"])
        finally:
            profiler.disable()
            profiler.dump_stats(out)
    elif kind == "yappi":
        import yappi  # type: ignore[import-not-found]

        yappi.set_clock_type("cpu")
        yappi.start()
        try:
            main(["serve"])
        finally:
            yappi.stop()
            yappi.get_func_stats().save(out, type="pstat")
    else:
        raise SystemExit(f"unknown profiler {kind}")


# ------------------------------------------------------------------------------------------------
# Child process: the load generator
# ------------------------------------------------------------------------------------------------


def load_main(spec_path: str, out_path: str) -> None:
    """Run one load phase as the spec says and write what was seen as JSON."""
    import asyncio

    import uvloop

    spec = json.loads(Path(spec_path).read_text())
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(_load(spec))
    Path(out_path).write_text(json.dumps(result))


class _Errors:
    def __init__(self) -> None:
        self.count = 0
        self.kinds: dict[str, int] = {}
        self.samples: list[str] = []

    def add(self, kind: str, detail: str = "") -> None:
        self.count += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail}"[:300])


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    import aiohttp
    from yarl import URL

    mode: str = spec["mode"]  # "bare" | "launch"
    kind: str = spec["kind"]  # "closed" | "open"
    duration: float = spec["duration"]
    errors = _Errors()
    total_ms: list[float] = []  # per op: whole op (launch: all three legs), from start or scheduled arrival
    gateway_ms: list[float] = []  # launch only: the two gateway legs summed
    done_at: list[float] = []  # completion times (monotonic) of successful ops, for the rate

    limit = spec["concurrency"] if kind == "closed" else MAX_IN_FLIGHT
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=3600)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                    cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
    perf = time.perf_counter

    async def get(url: Any, cookie: str | None = None) -> tuple[int, str | None]:
        return (await leg(url, cookie))[:2]

    async def leg(url: Any, cookie: str | None = None) -> tuple[int, str | None, str]:
        """One request: status, Location, and the name=value of the cookie it set ("" if none)."""
        async with session.get(url, allow_redirects=False,
                               headers={"Cookie": cookie} if cookie else None) as response:
            await response.read()
            return (response.status, response.headers.get("Location"),
                    response.headers.get("Set-Cookie", "").split(";", 1)[0])

    bare_url = URL(spec.get("bare_url", "http://127.0.0.1/"), encoded=True)

    async def bare_op() -> float | None:
        status, location = await get(bare_url)
        if status != 302 or location != "/x":
            errors.add("bare_status", f"{status} {location}")
            return None
        return 0.0

    launch_urls = [URL(u, encoded=True) for u in spec.get("launch_urls", [])]
    gateway_origin = spec.get("gateway_origin", "")
    sandbox_origin = spec.get("sandbox_origin", "")
    seq = [spec.get("offset", 0)]

    async def launch_op() -> float | None:
        index = seq[0]
        seq[0] += 1
        t0 = perf()
        # Each launch is its own browser: the key /launch sets goes back with the callback, by hand (no jar,
        # so launches stay apart and a jar costs the generator nothing).
        status, location, browser_key = await leg(launch_urls[index % len(launch_urls)])
        t1 = perf()
        if status != OK_LAUNCH or not location or not location.startswith(sandbox_origin + "/oauth/authorize?"):
            errors.add("launch_status", f"{status} {(location or '')[:80]}")
            return None
        status, location = await get(URL(location, encoded=True))
        if status != OK_AUTHORIZE or not location or \
                not location.startswith(gateway_origin + "/launch/callback?") or "code=" not in location:
            errors.add("authorize_status", f"{status} {(location or '')[:120]}")
            return None
        t2 = perf()
        status, location = await get(URL(location, encoded=True), browser_key)
        t3 = perf()
        if status != OK_CALLBACK or not location or not location.startswith("/provider/"):
            errors.add("callback_status", f"{status} {(location or '')[:80]}")
            return None
        return ((t1 - t0) + (t3 - t2)) * 1000.0

    op = bare_op if mode == "bare" else launch_op

    # Open the connections before the clock starts, so the phase measures requests, not connects.
    warm = [spec["warm_url"]] + ([spec["warm_url_sandbox"]] if mode == "launch" else [])
    try:
        await asyncio.gather(*(get(URL(u, encoded=True)) for u in warm
                               for _ in range(min(spec["concurrency"], 64))))
    except (aiohttp.ClientError, TimeoutError) as exc:
        errors.add("warmup", repr(exc))

    # All generator processes share one wall-clock start.
    now_wall, now_mono = time.time(), perf()
    start = now_mono + max(0.0, spec["start_at"] - now_wall)
    end = start + duration
    max_ops = int(spec["max_ops"])

    async def run_op(scheduled: float) -> None:
        try:
            gw = await op()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            errors.add(type(exc).__name__, str(exc))
            return
        finished = perf()
        if gw is None:
            return
        done_at.append(finished)
        total_ms.append((finished - scheduled) * 1000.0)
        if mode == "launch":
            gateway_ms.append(gw)

    started = [0]

    async def closed_worker() -> None:
        while started[0] < max_ops:
            now = perf()
            if now >= end:
                return
            started[0] += 1
            await run_op(now)

    await asyncio.sleep(max(0.0, start - perf()))
    cpu_start = time.process_time()
    late_max = 0.0
    if kind == "closed":
        workers = [asyncio.create_task(closed_worker()) for _ in range(spec["concurrency"])]
        await asyncio.wait(workers, timeout=duration + 2 * REQUEST_TIMEOUT)
        for w in workers:
            w.cancel()
    else:
        rate: float = spec["rate"]
        phase: float = spec.get("phase", 0.0)
        count = min(max_ops, int(duration * rate))
        in_flight: set[asyncio.Task[None]] = set()
        i = 0
        while i < count:
            now = perf()
            if now > end + 2.0:  # the generator itself fell hopelessly behind
                errors.add("generator_behind", f"{count - i} arrivals not sent")
                break
            while i < count and start + (i + phase) / rate <= now:
                scheduled = start + (i + phase) / rate
                late_max = max(late_max, now - scheduled)
                if len(in_flight) >= MAX_IN_FLIGHT:
                    errors.add("overload", f"more than {MAX_IN_FLIGHT} requests outstanding")
                else:
                    task = asyncio.create_task(run_op(scheduled))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                i += 1
            if i < count:
                await asyncio.sleep(max(0.0, start + (i + phase) / rate - perf()))
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=2 * REQUEST_TIMEOUT)
            for task in in_flight:
                task.cancel()
                errors.add("unfinished", "still outstanding at the end")
    cpu_s = time.process_time() - cpu_start  # the generator's own CPU, measured phase (and its tail)
    await session.close()
    in_window = sum(1 for t in done_at if start <= t <= end)
    return {
        "ok": len(done_at), "in_window": in_window, "duration": duration,
        "errors": errors.count, "error_kinds": errors.kinds, "error_samples": errors.samples,
        "total_ms": [round(x, 3) for x in total_ms], "gateway_ms": [round(x, 3) for x in gateway_ms],
        "late_max_ms": round(late_max * 1000.0, 2), "cpu_s": cpu_s,
    }


# ------------------------------------------------------------------------------------------------
# The orchestrator
# ------------------------------------------------------------------------------------------------


class Deadline(Exception):
    """The run would exceed its time bound."""


class Run:
    """Every resource the run holds, released by close() whatever happened."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="vgb-", dir="/tmp"))
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.pg: Any = None
        self.logs: dict[str, Path] = {}
        self.phases: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    # --- bounds and helpers -------------------------------------------------------------------

    def left(self) -> float:
        return TOTAL_DEADLINE - (time.monotonic() - self.t0)

    def check_time(self, need: float) -> None:
        if self.left() < need:
            raise Deadline(f"stopping: the next step needs ~{need:.0f}s, {self.left():.0f}s are left")

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as sink:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        stop_process(proc, grace)

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.logs.get(name)
        if path is None or not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(f"    {name}| {line}" for line in text[-lines:])

    def close(self) -> None:
        # Servers stop in reverse order of start; PostgreSQL last, then the temp dir.
        for _name, proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if this script dies without cleaning up (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def wait_ready(run: Run, name: str, proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + min(timeout, run.left())
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready\n{run.tail(name)}")
        try:
            status, _ = http("GET", url, timeout=2)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready at {url} after {timeout:.0f}s ({last})\n{run.tail(name)}")


def cpu_snapshot(run: Run) -> dict[str, float]:
    """CPU seconds so far of the gateway, the sandbox, the bare server, PostgreSQL (all its processes) and
    the machine as a whole, so a phase can say where the cores went and how much went to strangers."""
    import psutil

    def tree(pid: int) -> float:
        total = 0.0
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system
        except psutil.Error:
            pass
        return total

    snap: dict[str, float] = {}
    for name, proc in run.procs:
        if name in ("gateway", "sandbox", "bare"):
            snap[name] = tree(proc.pid)
        elif name.startswith("py-spy"):
            snap["profiler"] = snap.get("profiler", 0.0) + tree(proc.pid)
    with contextlib.suppress(Exception):
        snap["postgres"] = tree(run.pg.get_pid())
    machine = psutil.cpu_times()
    snap["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    return snap


def run_phase(run: Run, label: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One load phase across the generator processes; merged figures, printed and kept."""
    merged = _run_block(run, label, spec)
    _finish_phase(run, label, spec, merged)
    return merged


def run_alternating(run: Run, phases: list[tuple[str, dict[str, Any]]], rounds: int) -> list[dict[str, Any]]:
    """Run each phase in `rounds` blocks, alternating with the others (A B, B A, A B, ...), and merge each
    phase's blocks. A noisy spell on this shared machine then falls on launch and baseline alike, instead of
    on whichever phase happened to run during it."""
    blocks: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in phases}
    for r in range(rounds):
        order = phases if r % 2 == 0 else list(reversed(phases))
        for label, spec in order:
            part = dict(spec, duration=spec["duration"] / rounds)
            blocks[label].append(_run_block(run, f"{label} {r + 1}", part))
    results = []
    for label, spec in phases:
        merged = _merge_blocks(blocks[label], spec["duration"])
        _finish_phase(run, f"{label} (x{rounds})", spec, merged)
        results.append(merged)
    return results


def _merge_blocks(parts: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    merged: dict[str, Any] = {"ok": 0, "in_window": 0, "errors": 0, "error_kinds": {}, "error_samples": [],
                              "total_ms": [], "gateway_ms": [], "late_max_ms": 0.0, "cpu_generator_s": 0.0,
                              "cpu": {}}
    for part in parts:
        _fold(merged, part)
        merged["cpu_generator_s"] += part["cpu_generator_s"]
        for name, seconds in part["cpu"].items():
            merged["cpu"][name] = merged["cpu"].get(name, 0.0) + seconds
    merged["steal"] = CpuSteal.merged(part["steal"] for part in parts)
    _figures(merged, duration)
    return merged


def _fold(merged: dict[str, Any], part: dict[str, Any]) -> None:
    """Add one generator's (or one block's) counts, errors and latencies to the merged figures."""
    for key in ("ok", "in_window", "errors"):
        merged[key] += part[key]
    for kind, n in part["error_kinds"].items():
        merged["error_kinds"][kind] = merged["error_kinds"].get(kind, 0) + n
    merged["error_samples"] += part["error_samples"]
    merged["total_ms"] += part["total_ms"]
    merged["gateway_ms"] += part["gateway_ms"]
    merged["late_max_ms"] = max(merged["late_max_ms"], part["late_max_ms"])


def _figures(merged: dict[str, Any], duration: float) -> None:
    merged["rate"] = merged["in_window"] / duration
    merged["p50_ms"] = percentile(merged["total_ms"], 50)
    merged["p99_ms"] = percentile(merged["total_ms"], 99)
    merged["gw_p50_ms"] = percentile(merged["gateway_ms"], 50)
    merged["gw_p99_ms"] = percentile(merged["gateway_ms"], 99)


def _finish_phase(run: Run, label: str, spec: dict[str, Any], merged: dict[str, Any]) -> None:
    run.phases.append((label, spec, merged))
    describe(label, spec, merged)


def _run_block(run: Run, label: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One stretch of load across the generator processes; merged figures, not printed."""
    procs = run.args.procs
    duration = spec["duration"]
    run.check_time(duration + 15)
    start_at = time.time() + 2.5  # time for the generators to import, connect and warm up
    children = []
    for k in range(procs):
        part = dict(spec, start_at=start_at, offset=k * 7919)
        if spec["kind"] == "closed":
            part["concurrency"] = spec["concurrency"] // procs + (1 if k < spec["concurrency"] % procs else 0)
            part["max_ops"] = spec["max_ops"] // procs
        else:
            part["rate"] = spec["rate"] / procs
            part["phase"] = k / procs
            part["max_ops"] = spec["max_ops"] // procs
        spec_path = run.tmp / f"spec-{label}-{k}.json"
        out_path = run.tmp / f"out-{label}-{k}.json"
        spec_path.write_text(json.dumps(part))
        name = f"load-{label}-{k}"
        children.append((name, out_path, run.spawn(name, [sys.executable, __file__, "_load", str(spec_path),
                                                          str(out_path)])))
    # CPU of each of our servers and of the whole machine across the measured window.
    time.sleep(max(0.0, start_at - time.time()))
    with CpuSteal() as steal:
        before = cpu_snapshot(run)
        time.sleep(max(0.0, start_at + duration - time.time()))
        after = cpu_snapshot(run)
    merged: dict[str, Any] = {"ok": 0, "in_window": 0, "errors": 0, "error_kinds": {}, "error_samples": [],
                              "total_ms": [], "gateway_ms": [], "late_max_ms": 0.0,
                              "cpu_generator_s": 0.0}
    for name, out_path, proc in children:
        try:
            proc.wait(timeout=duration + 2 * REQUEST_TIMEOUT + 20)
        except subprocess.TimeoutExpired:
            run.stop(proc, grace=2)
        if proc.returncode != 0 or not out_path.exists():
            merged["errors"] += 1
            merged["error_kinds"]["generator_failed"] = merged["error_kinds"].get("generator_failed", 0) + 1
            merged["error_samples"].append(f"{name} exited {proc.returncode}\n{run.tail(name)}")
            continue
        part = json.loads(out_path.read_text())
        _fold(merged, part)
        merged["cpu_generator_s"] += part["cpu_s"]
    _figures(merged, duration)
    cpu = {name: max(0.0, after[name] - before.get(name, after[name])) for name in after}
    cpu["generator"] = merged["cpu_generator_s"]
    ours = sum(v for k, v in cpu.items() if k != "machine")
    cpu["other"] = max(0.0, cpu["machine"] - ours)
    merged["cpu"] = cpu
    merged["steal"] = steal
    return merged


def describe(label: str, spec: dict[str, Any], m: dict[str, Any]) -> None:
    load = f"{spec['concurrency']} workers" if spec["kind"] == "closed" else f"{spec['rate']:.0f}/s paced"
    line = (f"  {label:<22} {spec['kind']:<6} {load:<14} {spec['duration']:>4.0f}s  "
            f"ok={m['ok']:<6} rate={m['rate']:>8.1f}/s  p50={m['p50_ms']:.2f}ms p99={m['p99_ms']:.2f}ms")
    if spec["mode"] == "launch":
        line += f"  (gateway legs p50={m['gw_p50_ms']:.2f}ms p99={m['gw_p99_ms']:.2f}ms)"
    if spec["kind"] == "open":
        line += f"  late<= {m['late_max_ms']:.1f}ms"
    if m["errors"]:
        line += f"  ERRORS={m['errors']} {m['error_kinds']}"
    print(line, flush=True)
    cpu, d = m["cpu"], spec["duration"]
    split = "  ".join(f"{k} {cpu[k] / d * 100:.0f}%" for k in
                      ("gateway", "sandbox", "postgres", "bare", "generator", "profiler", "other") if k in cpu)
    per_op = ""
    if spec["mode"] == "launch" and m["in_window"]:
        per_op = "  | CPU ms per launch: " + " ".join(
            f"{k} {cpu[k] * 1000 / m['in_window']:.2f}" for k in ("gateway", "sandbox", "postgres") if k in cpu)
    noisy = cpu["other"] / d > NOISY_SHARE * (os.cpu_count() or 1)
    m["noisy"] = noisy
    print(f"      CPU (% of one core; {100 * (os.cpu_count() or 1)}% = the machine): {split}  "
          f"[machine {cpu['machine'] / d * 100:.0f}%]" + per_op
          + ("  NOISY: other processes took a large share" if noisy else ""), flush=True)
    # psutil's machine total counts stolen time as busy, so "other" above includes it.
    print(f"      {m['steal'].describe()}", flush=True)
    for sample in m["error_samples"][:3]:
        print(f"      e.g. {sample}", flush=True)


def start_everything(run: Run) -> dict[str, Any]:
    """PostgreSQL, the configuration, the sandbox, the gateway, the bare server; returns the URLs."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    from gateway.security import generate_signing_key_pem

    args = run.args
    t = time.monotonic()
    run.pg = pgserver.get_server(str(run.tmp / "pg"), cleanup_mode="delete")
    dsn = run.pg.get_uri()
    print(f"  PostgreSQL (pgserver) up in {time.monotonic() - t:.1f}s", flush=True)

    gateway_port, sandbox_port, bare_port = free_port(), free_port(), free_port()
    gateway_origin = f"http://{HOST}:{gateway_port}"
    sandbox_origin = f"http://localhost:{sandbox_port}"  # /etc/hosts maps it to 127.0.0.1
    fhir_base = f"{sandbox_origin}/fhir"
    env = dict(os.environ)
    env.update({
        "VISITGATE_PUBLIC_URL": gateway_origin,
        "VISITGATE_SECRET_KEY": base64.b64encode(os.urandom(32)).decode(),
        "VISITGATE_SIGNING_KEY": generate_signing_key_pem().decode(),
        "DATABASE_URL": dsn,
        "VISITGATE_HOST": HOST,
        "VISITGATE_PORT": str(gateway_port),
        "VISITGATE_LOG_LEVEL": args.log_level,
        "VISITGATE_DATA_DIR": str(run.tmp / "data"),
        "PYTHONWARNINGS": "ignore",
    })
    visitgate = str(BIN / "visitgate")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    added = subprocess.run([visitgate, "config", "add", "--fhir-base-url", fhir_base, "--environment", "test",
                            "--client-id", CLIENT_ID, "--client-auth", "private_key_jwt", "--approved-by", "bench"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=min(60, run.left()))
    if added.returncode != 0:
        raise RuntimeError(f"visitgate config add failed:\n{added.stdout}\n{added.stderr}")
    print(f"  {added.stdout.strip()}", flush=True)

    clients = [{"client_id": CLIENT_ID, "redirect_uris": [f"{gateway_origin}/launch/callback"],
                "auth_method": "private_key_jwt", "jwks_url": f"{gateway_origin}/.well-known/jwks.json"}]
    sandbox_args = ["--host", HOST, "--port", str(sandbox_port), "--base-url", sandbox_origin,
                    "--app-launch-url", f"{gateway_origin}/launch", "--client-json", json.dumps(clients),
                    "--test-controls",
                    # The sandbox scans every live access token on each issue (O(n)); a short lifetime keeps that
                    # stand-in cost from growing through the run. Nothing here uses the tokens afterwards.
                    "--access-token-lifetime", "60"]
    if args.sandbox_uvloop:
        sandbox = run.spawn("sandbox", [sys.executable, __file__, "_sandbox", *sandbox_args])
    else:
        sandbox = run.spawn("sandbox", [sys.executable, "-m", "sandbox", *sandbox_args])
    if args.profile in ("cprofile", "yappi"):
        gateway = run.spawn("gateway", [sys.executable, __file__, "_gateway_profiled", args.profile,
                                        str(run.tmp / "gateway.prof")], env=env)
    else:
        gateway = run.spawn("gateway", [visitgate, "serve"], env=env)
    bare = run.spawn("bare", [sys.executable, __file__, "_bare", str(bare_port)])
    wait_ready(run, "sandbox", sandbox, f"http://{HOST}:{sandbox_port}/fhir/.well-known/smart-configuration", 30)
    wait_ready(run, "gateway", gateway, f"{gateway_origin}/readyz", 30)
    wait_ready(run, "bare", bare, f"http://{HOST}:{bare_port}/healthz", 30)

    # One launch context per encounter; launch i uses context i % N, so concurrent launches seldom meet on
    # one visit row (a clinic launches different encounters; the same one over and over would measure a
    # row lock). Launch ids stay valid for 10 minutes, longer than this run.
    launch_urls = []
    for i in range(args.encounters):
        status, body = http("POST", f"http://{HOST}:{sandbox_port}/_sandbox/launches",
                            {"practitioner_id": "prac-1", "patient_id": f"pat-{i % 5 + 1}",
                             "encounter_id": f"bench-enc-{i}"})
        if status != 200:
            raise RuntimeError(f"the sandbox refused a launch: {status} {body[:200]!r}")
        launch = json.loads(body)["launch"]
        launch_urls.append(f"{gateway_origin}/launch?iss={urllib.parse.quote(fhir_base, safe='')}&launch={launch}")
    return {
        "gateway_origin": gateway_origin, "sandbox_origin": sandbox_origin,
        "launch_urls": launch_urls, "bare_url": f"http://{HOST}:{bare_port}/",
        "warm_gateway": f"{gateway_origin}/healthz", "warm_bare": f"http://{HOST}:{bare_port}/healthz",
        "warm_sandbox": f"{sandbox_origin}/fhir/.well-known/smart-configuration",
    }


def start_py_spy(run: Run, duration: float) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    """Sample the gateway and the sandbox with py-spy during the next phase (pip install py-spy)."""
    spy = BIN / "py-spy"
    if not spy.exists():
        print("  (py-spy is not installed in the environment; no samples)", flush=True)
        return []
    spies = []
    for name, proc in run.procs:
        if name in ("gateway", "sandbox"):
            out = run.tmp / f"py-spy-{name}.txt"
            spies.append((name, run.spawn(f"py-spy-{name}", [
                str(spy), "record", "--pid", str(proc.pid), "--rate", "250", "--duration",
                str(int(duration + 2)), "--format", "raw", "--nonblocking", "--output", str(out)]), out))
    return spies


def main_run(args: argparse.Namespace) -> int:
    run = Run(args)
    result_line = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        print(f"launch benchmark: {os.cpu_count()} cores, shared by PostgreSQL, the sandbox EHR, the gateway, "
              f"the bare server and {args.procs} load generator process(es); temp dir {run.tmp}", flush=True)
        urls = start_everything(run)
        D = args.duration
        bare_spec = {"mode": "bare", "bare_url": urls["bare_url"], "warm_url": urls["warm_bare"],
                     "max_ops": 2_000_000}
        launch_spec = {"mode": "launch", "launch_urls": urls["launch_urls"], "warm_url": urls["warm_gateway"],
                       "warm_url_sandbox": urls["warm_sandbox"], "gateway_origin": urls["gateway_origin"],
                       "sandbox_origin": urls["sandbox_origin"], "max_ops": 200_000}

        print("warm-up (discovery, JWKS, visits, connections):", flush=True)
        warm = run_phase(run, "launch warm-up", dict(launch_spec, kind="closed", concurrency=8,
                                                     duration=args.warmup))
        if warm["ok"] == 0:
            raise RuntimeError("no launch succeeded during the warm-up\n" + run.tail("gateway") + "\n"
                               + run.tail("sandbox"))

        print("launch peak, closed loop:", flush=True)
        best_c, best_rate = args.concurrency[0], -1.0
        if len(args.concurrency) > 1:
            for c in args.concurrency:
                m = run_phase(run, f"launch sweep c={c}", dict(launch_spec, kind="closed", concurrency=c,
                                                               duration=args.sweep))
                if m["rate"] > best_rate:
                    best_c, best_rate = c, m["rate"]
            print(f"  -> {best_c} workers give the peak", flush=True)
        rounds = 1 if args.profile != "none" else args.rounds
        print(f"peaks, closed loop, {best_c} workers, launch and bare 302 alternating in {rounds} round(s):",
              flush=True)
        spies = start_py_spy(run, D / rounds) if args.profile == "py-spy" else []
        launch_peak, bare_peak = run_alternating(run, [
            ("launch peak", dict(launch_spec, kind="closed", concurrency=best_c, duration=D)),
            ("bare peak", dict(bare_spec, kind="closed", concurrency=best_c, duration=D))], rounds)
        for name, proc, out in spies:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.stop(proc, grace=2)
            if out.exists():
                kept = Path(f"{args.profile_out}.{name}.txt")
                shutil.copy(out, kept)
                print(f"  py-spy samples of the {name} (collapsed stacks) written to {kept}", flush=True)

        print(f"p99 at half of each one's peak, open loop, alternating in {rounds} round(s):", flush=True)
        launch_half, bare_half = run_alternating(run, [
            ("launch at half peak", dict(launch_spec, kind="open", concurrency=best_c,
                                         rate=max(1.0, launch_peak["rate"] / 2), duration=D)),
            ("bare at half peak", dict(bare_spec, kind="open", concurrency=best_c,
                                       rate=max(1.0, bare_peak["rate"] / 2), duration=D))], rounds)

        errors = sum(m["errors"] for _, _, m in run.phases)
        ratio = launch_peak["rate"] / bare_peak["rate"] if bare_peak["rate"] else math.nan
        p99_ratio = launch_half["p99_ms"] / bare_half["p99_ms"] if bare_half["p99_ms"] else math.nan
        print()
        print(f"launches/s at peak ({best_c} workers, closed loop): {launch_peak['rate']:.1f}; "
              f"bare 302 req/s (same): {bare_peak['rate']:.1f}; ratio {ratio:.4f} (goal >= 0.07)")
        print(f"p99 at half peak (open loop, from scheduled arrival): whole launch {launch_half['p99_ms']:.2f} ms "
              f"(gateway legs summed {launch_half['gw_p99_ms']:.2f} ms); bare 302 {bare_half['p99_ms']:.2f} ms; "
              f"ratio {p99_ratio:.2f} (goal <= 10; launch p99 is of the whole launch, EHR leg included)")
        print(f"gateway log level {args.log_level}; sandbox on {'uvloop' if args.sandbox_uvloop else 'asyncio'}; "
              f"{args.encounters} encounters; {args.procs} generator process(es); 2 cores shared by all, "
              f"so the generator and the neighbours take CPU from the server under test (the bare server "
              f"shares them only with the generator)")
        bare_cpu = bare_peak["cpu"]
        if bare_cpu["generator"] > bare_cpu.get("bare", 0.0):
            print(f"the bare peak is bound by the load generator (generator {bare_cpu['generator'] / D * 100:.0f}% "
                  f"of a core vs bare server {bare_cpu.get('bare', 0.0) / D * 100:.0f}%): bare_per_s understates "
                  f"a bare aiohttp server, so the ratio flatters the gateway")
        noisy = [label for label, _, m in run.phases if m.get("noisy")]
        if noisy:
            print(f"NOISY MACHINE: processes not started by this run took more than {NOISY_SHARE:.0%} of the cores "
                  f"during: {', '.join(noisy)}; compare ratios only between quiet runs")
        if errors:
            print(f"THIS RUN HAD ERRORS: {errors} (see above); its figures are not clean")
        result_line = (f"RESULT launch ratio={ratio:.4f} p99_ratio={p99_ratio:.2f} "
                       f"launches_per_s={launch_peak['rate']:.1f} bare_per_s={bare_peak['rate']:.1f} "
                       f"launch_p99_ms={launch_half['p99_ms']:.2f} bare_p99_ms={bare_half['p99_ms']:.2f} "
                       f"errors={errors}")
        for name, parts in (("peak", (launch_peak, bare_peak)), ("p99", (launch_half, bare_half))):
            steal = CpuSteal.merged(m["steal"] for m in parts)
            result_line += f" steal_pct_{name}={steal.steal_pct:.1f} steal_max1s_{name}={steal.worst_pct:.1f}"
        if args.profile in ("cprofile", "yappi"):
            gateway = next(p for n, p in run.procs if n == "gateway")
            run.stop(gateway, grace=30)
            prof = run.tmp / "gateway.prof"
            if prof.exists() and args.profile_out:
                shutil.copy(prof, args.profile_out)
                print(f"gateway profile written to {args.profile_out}")
    except (KeyboardInterrupt, Deadline, RuntimeError) as exc:
        print(f"\naborted: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    except Exception:  # a bug here must still clean up and end with a RESULT line
        import traceback

        traceback.print_exc()
    finally:
        signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(KeyboardInterrupt):
            run.close()
    if result_line is None:
        print("RESULT launch ratio=nan p99_ratio=nan launches_per_s=nan bare_per_s=nan launch_p99_ms=nan "
              "bare_p99_ms=nan errors=1")
        return 1
    print(result_line, flush=True)
    return 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per measured phase (10-15)")
    parser.add_argument("--sweep", type=float, default=5.0, help="seconds per concurrency tried for the peak")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="blocks each measured phase is cut into, alternating launch and baseline")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64],
                        help="workers to try for the launch peak, comma-separated (the best is kept)")
    parser.add_argument("--procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--encounters", type=int, default=64)
    parser.add_argument("--log-level", default="INFO", help="the gateway's VISITGATE_LOG_LEVEL (INFO as shipped)")
    parser.add_argument("--no-sandbox-uvloop", dest="sandbox_uvloop", action="store_false")
    parser.add_argument("--profile", choices=["none", "py-spy", "cprofile", "yappi"], default="none")
    parser.add_argument("--profile-out", default="/tmp/visitgate-launch.prof")
    parser.add_argument("--quick", action="store_true", help="short phases (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.sweep, args.warmup, args.concurrency, args.rounds = 4.0, 2.0, 2.0, [32], 2
    args.duration = min(max(args.duration, 1.0), 30.0)
    args.sweep = min(max(args.sweep, 1.0), 15.0)
    args.warmup = min(max(args.warmup, 1.0), 10.0)
    args.rounds = min(max(args.rounds, 1), 6)
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        bare_main(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_sandbox":
        sandbox_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_gateway_profiled":
        gateway_profiled_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_load":
        load_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main_run(parse_args(sys.argv[1:])))
