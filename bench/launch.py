#!/usr/bin/env python
"""Benchmark: full SMART provider launches through the gateway against a bare aiohttp 302 handler.

Run from the repository root with the project's environment:

    .venv/bin/python bench/launch.py            # the whole benchmark, a couple of minutes at most
    .venv/bin/python bench/launch.py --quick    # shorter phases, for a smoke test
    .venv/bin/python bench/launch.py --profile cprofile   # also dump a cProfile of the gateway

What runs (every process on 127.0.0.1, every one started, logged and ended through tests.harness):

- PostgreSQL, embedded (pgserver), in a fresh directory under /tmp;
- the sandbox EHR (`python -m sandbox --test-controls`, on uvloop) in its own process;
- the gateway (`visitgate serve`, uvloop, settings from the environment) in its own process;
- the baseline: a bare aiohttp handler that returns a 302 (uvloop too) in its own process;
- the load generator (bench/load.py): aiohttp ClientSession(s) with keep-alive on uvloop, in its own process(es).

A "provider launch" in the throughput phases is what a browser does when a clinician opens the visit from
the EHR: GET /launch (302 to the EHR's authorize), GET the EHR's authorize URL (302 with the code; the EHR's
leg, counted in the launch but served by the sandbox), GET /launch/callback (303 to the provider view, which
is not fetched there). Discovery is cached by a warm-up before anything is measured.

Figures: peak rate from a closed loop (fixed number of workers, bounded duration); p99 from an open loop
(paced arrivals at half the peak, latency counted from each arrival's scheduled time so a stalled server
cannot hide its queue). The launch p99 is of the whole launch (all three legs, the EHR's included); the
p99 of the two gateway legs summed is printed too. Each launch phase and its baseline run in alternating
blocks (--rounds, 3 by default) and are merged, so a noisy spell falls on both rather than on one.
`cpu_ms_per_launch` is the gateway's CPU per launch (both legs) at the peak.

Latency ("a launch adds no waiting of its own"): a few browsers (--latency-workers, each with its own
cookies) make full launches one after another, through the provider view (which reads the Encounter and
the Patient, then the Appointment), with the sandbox answering every request (discovery, authorize, token,
JWKS, FHIR) 50 ms after it arrived (its `ehr_answer_after` switch). `latency_ratio` = ideal / the median
launch, the ideal being the EHR round trips that must follow one another x 50 ms (printed: authorize, token,
Encounter + Patient, Appointment = 200 ms; discovery and JWKS are cached by then). The median of each
request is printed too, and `cpu_ms_per_full_launch`, the gateway's CPU per such launch.

Teams (`teams_latency_ratio`): the configuration is then switched to Microsoft Teams, with the clinician
already linked to their Microsoft 365 account, and the same full launches run for new encounters, the EHR and
the Graph and Entra double (sandbox/graph.py, a child process on https, answering every request 50 ms after it
arrived) both slow: every launch makes its visit's meeting (createOrGet), which runs beside the view's FHIR
reads, so the ideal is the same 200 ms. The number of createOrGet calls is printed. `--teams-only` runs just the
two latency phases (built-in, then Teams) in the same conditions.

The machine has 2 cores shared by everything above, so the absolute rates say as much about the
neighbours as about the gateway; only the ratios against the baseline of the same run are comparable.
It is also a VM whose host steals CPU time from it: each phase prints how much (bench.stats.CpuSteal), and
the RESULT line ends with steal_pct_<phase> (share of all CPU ticks in the timed windows) and
steal_max1s_<phase> (their worst second) for the peaks (launch and bare together), the p99 phases (the
same) and the latency phase.
The last line is `RESULT launch ...` (see BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The working tree's packages first, and never this folder (bench/launch.py would shadow the `launch` package).
sys.path[:] = [str(ROOT)] + [p for p in sys.path
                             if p and Path(p).resolve() not in (ROOT, Path(__file__).parent.resolve())]

from bench.load import REQUEST_TIMEOUT  # noqa: E402
from bench.stats import CpuSteal, percentile  # noqa: E402
from tests.harness import (  # noqa: E402
    BIN, HOST, ProcessFailed, Processes, ServedProcess, free_port, gateway_env)

CLIENT_ID = "bench"
NOISY_SHARE = 0.15  # a phase where processes not ours took more than this share of the machine is flagged
TOTAL_DEADLINE = 300.0  # the whole run, start-up included, never takes longer than this
EHR_LATENCY = 0.05  # seconds: the sandbox EHR answers every request this long after it arrived (latency phase)
GRAPH_LATENCY = 0.05  # seconds: the Graph and Entra double answers this long after a request arrived (Teams phase)
TEAMS_TENANT = "5b0c7a52-8d3e-4a8e-9b6c-2d8f0e6a1b11"
TEAMS_CLIENT = "c6e1f0c2-11b4-4c5e-8a2d-7f3b9c0d4e22"
TEAMS_SECRET = "bench-graph-secret-" + "s" * 16
TEAMS_OID = "0b2d9e4f-5a6c-4d7e-8f90-a1b2c3d4e5ff"


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


def graph_main(port: int, control_port: int, folder: str, latency: float) -> None:
    """The Graph and Entra double (sandbox/graph.py) over https, answering every request after `latency`
    seconds, with one tenant, one application (a secret, the meetings role, an access policy for the whole
    tenant) and the clinician; a plain-http control port answers /healthz and /stats (createOrGet calls)."""
    import asyncio

    import uvloop
    from aiohttp import web

    from sandbox.appkeys import ENTRA, GRAPH
    from sandbox.demo import make_idp_tls
    from sandbox.entra import EntraApp, EntraUser
    from sandbox.graph import create_graph_double_app, set_base

    server_tls, _ca = make_idp_tls(Path(folder))
    app = create_graph_double_app()
    set_base(app, f"https://{HOST}:{port}")
    tenant = app[ENTRA].tenant(TEAMS_TENANT)
    tenant.apps[TEAMS_CLIENT] = EntraApp(TEAMS_CLIENT, secret=TEAMS_SECRET, roles={"OnlineMeetings.ReadWrite.All"})
    tenant.users[TEAMS_OID] = EntraUser(TEAMS_OID, "Dr Bench", "bench@clinic.example")
    graph = app[GRAPH]
    graph.grant_policy(TEAMS_TENANT, TEAMS_CLIENT)
    graph.latency = latency

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"create_calls": graph.create_calls, "meetings": len(graph.meetings),
                                  "graph_calls": graph.graph_calls, "tokens": app[ENTRA].tokens_issued})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def serve() -> None:
        control = web.Application()
        control.router.add_get("/healthz", healthz)
        control.router.add_get("/stats", stats)
        runners = [web.AppRunner(app, access_log=None), web.AppRunner(control, access_log=None)]
        for runner in runners:
            await runner.setup()
        await web.TCPSite(runners[0], HOST, port, ssl_context=server_tls).start()
        await web.TCPSite(runners[1], HOST, control_port).start()
        await asyncio.Event().wait()

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve())


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
# The orchestrator
# ------------------------------------------------------------------------------------------------


class Deadline(Exception):
    """The run would exceed its time bound."""


class _TeamsOnlyDone(Exception):
    """--teams-only: the Teams phase ran; skip the rest of the run."""


class Run:
    """Every resource the run holds (its processes through tests.harness), released by close() whatever happened."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.procs = Processes(prefix="vgb-")
        self.tmp = self.procs.dir
        self.served: dict[str, ServedProcess] = {}
        self.phases: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    # --- bounds and helpers -------------------------------------------------------------------

    def left(self) -> float:
        return TOTAL_DEADLINE - (time.monotonic() - self.t0)

    def check_time(self, need: float) -> None:
        if self.left() < need:
            raise Deadline(f"stopping: the next step needs ~{need:.0f}s, {self.left():.0f}s are left")

    def keep(self, child: ServedProcess) -> ServedProcess:
        self.served[child.name] = child
        return child

    def spawn(self, name: str, argv: list[str], ready_url: str | None = None) -> ServedProcess:
        return self.keep(self.procs.spawn(name, argv, ready_url=ready_url))

    def ready(self, child: ServedProcess, timeout: float = 30.0) -> None:
        child.wait_ready(min(timeout, max(1.0, self.left())))

    def tail(self, name: str, lines: int = 15) -> str:
        child = self.served.get(name)
        return "\n".join(f"    {line}" for line in child.tail(lines).splitlines()) if child else ""

    def close(self) -> None:
        # Servers stop in reverse order of start; PostgreSQL last, then the temp dir.
        self.procs.close()


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
    for name, proc in run.served.items():
        if name in ("gateway", "sandbox", "bare"):
            snap[name] = tree(proc.pid)
        elif name.startswith("py-spy"):
            snap["profiler"] = snap.get("profiler", 0.0) + tree(proc.pid)
    with contextlib.suppress(Exception):
        snap["postgres"] = tree(run.procs.pg.get_pid())
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
                              "total_ms": [], "gateway_ms": [], "legs_ms": [], "late_max_ms": 0.0,
                              "cpu_generator_s": 0.0,
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
    merged["legs_ms"] += part.get("legs_ms", [])
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
        children.append((name, out_path, run.spawn(name, [sys.executable, "-m", "bench.load", "http", str(spec_path),
                                                          str(out_path)])))
    # CPU of each of our servers and of the whole machine across the measured window.
    time.sleep(max(0.0, start_at - time.time()))
    with CpuSteal() as steal:
        before = cpu_snapshot(run)
        time.sleep(max(0.0, start_at + duration - time.time()))
        after = cpu_snapshot(run)
    merged: dict[str, Any] = {"ok": 0, "in_window": 0, "errors": 0, "error_kinds": {}, "error_samples": [],
                              "total_ms": [], "gateway_ms": [], "legs_ms": [], "late_max_ms": 0.0,
                              "cpu_generator_s": 0.0}
    for name, out_path, proc in children:
        if proc.wait(timeout=duration + 2 * REQUEST_TIMEOUT + 20) is None:
            proc.stop(grace=2)
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
    from gateway.security import generate_signing_key_pem

    args = run.args
    t = time.monotonic()
    dsn = run.procs.postgres()
    print(f"  PostgreSQL (pgserver) up in {time.monotonic() - t:.1f}s", flush=True)

    gateway_port, sandbox_port, bare_port = free_port(), free_port(), free_port()
    graph_port, graph_control = free_port(), free_port()
    gateway_origin = f"http://{HOST}:{gateway_port}"
    sandbox_origin = f"http://localhost:{sandbox_port}"  # /etc/hosts maps it to 127.0.0.1
    fhir_base = f"{sandbox_origin}/fhir"
    graph_origin = f"https://{HOST}:{graph_port}"
    graph_tls = run.tmp / "graph-tls"
    secret = os.urandom(32)
    # The Graph and Entra double, answering GRAPH_LATENCY after each request (for the Teams phase only: the
    # configuration is switched to Teams just before it); the gateway trusts its CA.
    graph = run.spawn("graph", [sys.executable, __file__, "_graph", str(graph_port), str(graph_control),
                                str(graph_tls), str(GRAPH_LATENCY)], ready_url=f"http://{HOST}:{graph_control}/healthz")
    run.ready(graph)
    env = gateway_env(public_url=gateway_origin, secret=secret, signing_key_pem=generate_signing_key_pem(),
                      database_url=dsn, data_dir=run.tmp / "data", log_level=args.log_level)
    env.update({"VISITGATE_GRAPH_URL": graph_origin, "VISITGATE_ENTRA_AUTHORITY_HOST": graph_origin,
                "VISITGATE_IDP_CA_FILE": str(graph_tls / "demo-ca.pem")})
    visitgate = str(BIN / "visitgate")
    added = subprocess.run([visitgate, "config", "add", "--fhir-base-url", fhir_base, "--environment", "test",
                            "--client-id", CLIENT_ID, "--client-auth", "private_key_jwt", "--approved-by", "bench",
                            "--no-live-check"],  # the sandbox starts after this
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=min(60, run.left()))
    if added.returncode != 0:
        raise RuntimeError(f"visitgate config add failed:\n{added.stdout}\n{added.stderr}")
    print(f"  {added.stdout.strip()}", flush=True)

    clients = [{"client_id": CLIENT_ID, "redirect_uris": [f"{gateway_origin}/launch/callback"],
                "auth_method": "private_key_jwt", "jwks_url": f"{gateway_origin}/.well-known/jwks.json"}]
    sandbox = run.keep(run.procs.sandbox(
        "sandbox", port=sandbox_port, base_url=sandbox_origin, app_launch_url=f"{gateway_origin}/launch",
        clients=clients, test_controls=True,
        # The sandbox scans every live access token on each issue (O(n)); a short lifetime keeps that
        # stand-in cost from growing through the run. Nothing here uses the tokens afterwards.
        extra_args=["--access-token-lifetime", "60"],
        argv=[sys.executable, __file__, "_sandbox"] if args.sandbox_uvloop else None))
    profiled = None
    if args.profile in ("cprofile", "yappi"):
        profiled = [sys.executable, __file__, "_gateway_profiled", args.profile, str(run.tmp / "gateway.prof")]
    gateway = run.keep(run.procs.gateway("gateway", env, argv=profiled))
    bare = run.spawn("bare", [sys.executable, __file__, "_bare", str(bare_port)],
                     ready_url=f"http://{HOST}:{bare_port}/healthz")
    for child in (sandbox, gateway, bare):
        run.ready(child)

    launch_urls = make_launches(args.encounters, "bench-enc", sandbox_port, gateway_origin, fhir_base)
    return {
        "gateway_origin": gateway_origin, "sandbox_origin": sandbox_origin,
        "launch_urls": launch_urls, "bare_url": f"http://{HOST}:{bare_port}/",
        "warm_gateway": f"{gateway_origin}/healthz", "warm_bare": f"http://{HOST}:{bare_port}/healthz",
        "warm_sandbox": f"{sandbox_origin}/fhir/.well-known/smart-configuration",
        "full_launch_urls": launch_urls, "sandbox_control": f"http://{HOST}:{sandbox_port}",
        "dsn": dsn, "secret": secret, "fhir_base": fhir_base, "sandbox_port": sandbox_port,
        "graph_control": f"http://{HOST}:{graph_control}",
    }


def make_launches(count: int, prefix: str, sandbox_port: int, gateway_origin: str, fhir_base: str) -> list[str]:
    """One launch context per new encounter in the sandbox; answers the gateway's /launch URLs."""
    # One launch context per encounter; launch i uses context i % N, so concurrent launches seldom meet on
    # one visit row (a clinic launches different encounters; the same one over and over would measure a
    # row lock). Launch ids stay valid for 10 minutes, longer than this run.
    launch_urls = []
    for i in range(count):
        # The Encounter in the EHR, pointing at one of the seeded Appointments, so that the provider view (in
        # the latency phase) makes every read it makes for a real visit.
        status, body = http("POST", f"http://{HOST}:{sandbox_port}/_sandbox/resources", {
            "resourceType": "Encounter", "id": f"{prefix}-{i}", "status": "planned",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
            "subject": {"reference": f"Patient/pat-{i % 5 + 1}"},
            "participant": [{"individual": {"reference": "Practitioner/prac-1"}}],
            "appointment": [{"reference": f"Appointment/appt-{i % 6 + 1}"}]})
        if status != 200:
            raise RuntimeError(f"the sandbox refused an Encounter: {status} {body[:200]!r}")
        status, body = http("POST", f"http://{HOST}:{sandbox_port}/_sandbox/launches",
                            {"practitioner_id": "prac-1", "patient_id": f"pat-{i % 5 + 1}",
                             "encounter_id": f"{prefix}-{i}"})
        if status != 200:
            raise RuntimeError(f"the sandbox refused a launch: {status} {body[:200]!r}")
        launch = json.loads(body)["launch"]
        launch_urls.append(f"{gateway_origin}/launch?iss={urllib.parse.quote(fhir_base, safe='')}&launch={launch}")
    return launch_urls


def start_py_spy(run: Run, duration: float) -> list[tuple[str, ServedProcess, Path]]:
    """Sample the gateway and the sandbox with py-spy during the next phase (pip install py-spy)."""
    spy = BIN / "py-spy"
    if not spy.exists():
        print("  (py-spy is not installed in the environment; no samples)", flush=True)
        return []
    spies = []
    for name, proc in list(run.served.items()):
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

        if args.teams_only:
            warm = run_phase(run, "launch warm-up", dict(launch_spec, kind="closed", concurrency=2,
                                                         duration=args.warmup))
            if warm["ok"] == 0:
                raise RuntimeError("no launch succeeded during the warm-up\n" + run.tail("gateway"))
            # The built-in launch's latency first, in the same conditions, for comparison.
            latency = latency_phase(run, launch_spec, urls)
            teams = teams_latency_phase(run, launch_spec, urls)
            result_line = (f"RESULT launch latency_ratio={latency['ratio']:.3f} "
                           f"full_launch_p50_ms={latency['p50_ms']:.1f} teams_latency_ratio={teams['ratio']:.3f} "
                           f"teams_full_launch_p50_ms={teams['p50_ms']:.1f} ideal_ms={teams['ideal_ms']:.0f} "
                           f"teams_create_calls={teams['create_calls']} "
                           f"errors={sum(m['errors'] for _, _, m in run.phases)}")
            steal = CpuSteal.merged([teams["phase"]["steal"]])
            result_line += f" steal_pct_teams={steal.steal_pct:.1f} steal_max1s_teams={steal.worst_pct:.1f}"
            raise _TeamsOnlyDone
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
            if proc.wait(timeout=30) is None:
                proc.stop(grace=2)
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

        latency = latency_phase(run, launch_spec, urls)
        teams = teams_latency_phase(run, launch_spec, urls)

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
        gateway_cpu = launch_peak["cpu"].get("gateway", math.nan)
        cpu_ms_per_launch = gateway_cpu * 1000 / launch_peak["in_window"] if launch_peak["in_window"] else math.nan
        print(f"gateway CPU per launch (both legs, discovery cached, at peak): {cpu_ms_per_launch:.2f} ms; "
              f"per full launch with the provider view and the EHR 50 ms away: {latency['cpu_ms']:.2f} ms")
        result_line += (f" latency_ratio={latency['ratio']:.3f} full_launch_p50_ms={latency['p50_ms']:.1f} "
                        f"ideal_ms={latency['ideal_ms']:.0f} cpu_ms_per_launch={cpu_ms_per_launch:.2f} "
                        f"cpu_ms_per_full_launch={latency['cpu_ms']:.2f} "
                        f"teams_latency_ratio={teams['ratio']:.3f} teams_full_launch_p50_ms={teams['p50_ms']:.1f}")
        for name, parts in (("peak", (launch_peak, bare_peak)), ("p99", (launch_half, bare_half)),
                            ("latency", (latency["phase"],)), ("teams", (teams["phase"],))):
            steal = CpuSteal.merged(m["steal"] for m in parts)
            result_line += f" steal_pct_{name}={steal.steal_pct:.1f} steal_max1s_{name}={steal.worst_pct:.1f}"
        if args.profile in ("cprofile", "yappi"):
            run.served["gateway"].stop(grace=30)
            prof = run.tmp / "gateway.prof"
            if prof.exists() and args.profile_out:
                shutil.copy(prof, args.profile_out)
                print(f"gateway profile written to {args.profile_out}")
    except _TeamsOnlyDone:
        pass  # --teams-only: its RESULT line is made
    except (KeyboardInterrupt, Deadline, RuntimeError, ProcessFailed) as exc:
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
              "bare_p99_ms=nan errors=1 latency_ratio=nan cpu_ms_per_launch=nan")
        return 1
    print(result_line, flush=True)
    return 0


# The EHR round trips a warm provider launch must make one after another, each answered EHR_LATENCY after it
# arrives. Discovery and the EHR's JWKS are not among them: both are cached by the first launch (an hour),
# and the warm-up made that launch. Nor is the gateway's own JWKS, which the EHR fetches to check our client
# assertion inside its token request (and caches).
SERIAL_ROUND_TRIPS = (
    ("authorize", "the browser at the EHR's authorize endpoint, which answers with the code"),
    ("token", "the gateway exchanges the code (needs the code); the id_token is checked with the cached JWKS"),
    ("Encounter + Patient", "the provider view reads both at once (needs the access token)"),
    ("Appointment", "the provider view reads it (its id is in the Encounter, so it waits for that read)"),
)


def latency_phase(run: Run, launch_spec: dict[str, Any], urls: dict[str, Any]) -> dict[str, Any]:
    """Full launches, through the provider view, with the sandbox EHR answering every request after
    EHR_LATENCY: latency_ratio = ideal (the serial round trips x EHR_LATENCY) / the median launch."""
    args = run.args
    ideal_ms = len(SERIAL_ROUND_TRIPS) * EHR_LATENCY * 1000
    print(f"full launches through the provider view, the EHR answering every request {EHR_LATENCY * 1000:.0f} ms "
          f"after it arrives, closed loop, {args.latency_workers} browsers:", flush=True)
    print(f"  ideal {ideal_ms:.0f} ms = {len(SERIAL_ROUND_TRIPS)} EHR round trips one after another x "
          f"{EHR_LATENCY * 1000:.0f} ms:", flush=True)
    for name, why in SERIAL_ROUND_TRIPS:
        print(f"    {name}: {why}", flush=True)
    faults = f"{urls['sandbox_control']}/_sandbox/faults"
    status, body = http("POST", faults, {"ehr_answer_after": EHR_LATENCY})
    if status != 200:
        raise RuntimeError(f"the sandbox refused its latency switch: {status} {body[:200]!r}")
    try:
        phase = run_phase(run, "full launch, EHR 50 ms", dict(
            launch_spec, launch_urls=urls["full_launch_urls"], kind="closed", full=True,
            concurrency=args.latency_workers, duration=args.latency_duration))
    finally:
        http("POST", faults, {"ehr_answer_after": 0})
    legs = phase["legs_ms"]
    medians = [statistics.median(leg[k] for leg in legs) if legs else math.nan for k in range(4)]
    p50 = phase["p50_ms"]
    ratio = ideal_ms / p50 if p50 and not math.isnan(p50) else math.nan
    done = phase["in_window"]  # the launches that finished inside the window the CPU was read over
    cpu_ms = phase["cpu"].get("gateway", math.nan) * 1000 / done if done else math.nan
    print(f"  median full launch {p50:.1f} ms (p99 {phase['p99_ms']:.1f} ms) over {phase['ok']} launches; "
          f"ideal {ideal_ms:.0f} ms; latency_ratio {ratio:.3f} (goal >= 0.9)", flush=True)
    print(f"  median of each request (the EHR's wait in it): GET /launch {medians[0]:.1f} ms (0), authorize "
          f"{medians[1]:.1f} ms (50), callback {medians[2]:.1f} ms (50: token), provider view {medians[3]:.1f} ms "
          f"(100: Encounter + Patient, then Appointment)", flush=True)
    print(f"  gateway CPU per full launch (both legs and the provider view): {cpu_ms:.2f} ms", flush=True)
    return {"ratio": ratio, "p50_ms": p50, "ideal_ms": ideal_ms, "cpu_ms": cpu_ms, "phase": phase}


async def _teams_setup(urls: dict[str, Any]) -> None:
    """Switch the configuration to Teams: an organisation with the double's application, the clinician already
    linked to their Microsoft 365 account (the phase measures every launch after the first one)."""
    import asyncpg

    from config_portal.organisations import NewOrganisation, add_organisation
    from gateway import teams
    from gateway.graph import SecretCredential, TeamsTenant
    from gateway.security import Sealer

    sealer = Sealer(urls["secret"])
    conn = await asyncpg.connect(urls["dsn"])
    try:
        org_id = await add_organisation(conn, sealer, NewOrganisation(
            slug="bench-teams", name="Bench Teams", idp_kind="entra", tenant_id=TEAMS_TENANT,
            client_id="bench-portal", client_secret="bench-portal-secret"), "bench")
        await conn.execute("UPDATE configurations SET meeting_provider = 'teams', organisation_id = $1 "
                           "WHERE fhir_base_url = $2", org_id, urls["fhir_base"])
        tenant = TeamsTenant(TEAMS_TENANT, TEAMS_CLIENT, SecretCredential(TEAMS_SECRET))
        await teams.save_tenant(conn, sealer, org_id, tenant, "bench", None)
        # The sandbox's fhirUser for prac-1 (the practitioner of every launch here).
        await teams.save_link(conn, sealer, org_id, f"{urls['fhir_base']}/Practitioner/prac-1", TEAMS_OID,
                              TEAMS_TENANT)
    finally:
        await conn.close()


def teams_latency_phase(run: Run, launch_spec: dict[str, Any], urls: dict[str, Any]) -> dict[str, Any]:
    """Full Teams launches of new encounters (each makes its visit's meeting with createOrGet), the EHR and
    Graph both answering after 50 ms: teams_latency_ratio = the same ideal as latency_ratio / the median.
    createOrGet is not among the serial round trips: it runs while the FHIR reads do."""
    import asyncio

    args = run.args
    ideal_ms = len(SERIAL_ROUND_TRIPS) * EHR_LATENCY * 1000
    asyncio.run(_teams_setup(urls))
    # More new encounters than the phase can launch, so that every measured launch makes its meeting.
    count = int(args.latency_workers * args.latency_duration / (ideal_ms / 1000)) + 40
    fresh = make_launches(count, "bench-teams-enc", urls["sandbox_port"], urls["gateway_origin"], urls["fhir_base"])
    print(f"Teams launches: {count} new encounters; the EHR and Graph both answering {EHR_LATENCY * 1000:.0f} ms "
          f"after each request; ideal {ideal_ms:.0f} ms (createOrGet runs beside the Encounter and Patient reads)",
          flush=True)
    # One warm launch: the app token (Entra, through MSAL) is fetched once and cached.
    run_phase(run, "Teams warm-up", dict(launch_spec, launch_urls=fresh[:2], kind="closed", full=True,
                                         concurrency=1, duration=1.0))
    _, before = http("GET", f"{urls['graph_control']}/stats")
    faults = f"{urls['sandbox_control']}/_sandbox/faults"
    status, body = http("POST", faults, {"ehr_answer_after": EHR_LATENCY})
    if status != 200:
        raise RuntimeError(f"the sandbox refused its latency switch: {status} {body[:200]!r}")
    try:
        phase = run_phase(run, "full Teams launch, EHR and Graph 50 ms", dict(
            launch_spec, launch_urls=fresh[2:], kind="closed", full=True, concurrency=args.latency_workers,
            duration=args.latency_duration))
    finally:
        http("POST", faults, {"ehr_answer_after": 0})
    _, after = http("GET", f"{urls['graph_control']}/stats")
    made = json.loads(after)["create_calls"] - json.loads(before)["create_calls"]
    p50 = phase["p50_ms"]
    ratio = ideal_ms / p50 if p50 and not math.isnan(p50) else math.nan
    legs = phase["legs_ms"]
    medians = [statistics.median(leg[k] for leg in legs) if legs else math.nan for k in range(4)]
    print(f"  median full Teams launch {p50:.1f} ms (p99 {phase['p99_ms']:.1f} ms) over {phase['ok']} launches, "
          f"{made} createOrGet calls; ideal {ideal_ms:.0f} ms; teams_latency_ratio {ratio:.3f} (goal >= 0.9)",
          flush=True)
    print(f"  median of each request: GET /launch {medians[0]:.1f} ms, authorize {medians[1]:.1f} ms, callback "
          f"{medians[2]:.1f} ms (token, then createOrGet beside the reads), provider view {medians[3]:.1f} ms",
          flush=True)
    if phase["ok"] and made < phase["ok"]:
        print("  NOTE: fewer createOrGet calls than launches: some launches found their meeting made", flush=True)
    return {"ratio": ratio, "p50_ms": p50, "ideal_ms": ideal_ms, "phase": phase, "create_calls": made}


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
    parser.add_argument("--latency-workers", type=int, default=4,
                        help="browsers launching one after another in the latency phase (few: it measures waiting)")
    parser.add_argument("--latency-duration", type=float, default=10.0, help="seconds of the latency phase")
    parser.add_argument("--quick", action="store_true", help="short phases (smoke test)")
    parser.add_argument("--teams-only", action="store_true",
                        help="only the latency phases, built-in then Teams (latency_ratio, teams_latency_ratio), "
                             "after a short warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.sweep, args.warmup, args.concurrency, args.rounds = 4.0, 2.0, 2.0, [32], 2
        args.latency_duration = 4.0
    args.duration = min(max(args.duration, 1.0), 30.0)
    args.sweep = min(max(args.sweep, 1.0), 15.0)
    args.warmup = min(max(args.warmup, 1.0), 10.0)
    args.rounds = min(max(args.rounds, 1), 6)
    args.latency_workers = min(max(args.latency_workers, 1), 32)
    args.latency_duration = min(max(args.latency_duration, 2.0), 30.0)
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_graph":
        graph_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_bare":
        bare_main(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_sandbox":
        sandbox_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_gateway_profiled":
        gateway_profiled_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main_run(parse_args(sys.argv[1:])))
