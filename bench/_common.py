#!/usr/bin/env python
"""Shared pieces of the presence benchmarks: processes, seeding, and a lean websocket load client.

Processes: PostgreSQL (pgserver) in a fresh /tmp directory, `visitgate serve` processes configured through
the environment, and client worker processes. Every process is started by the benchmark, gets SIGTERM if
the benchmark dies (PR_SET_PDEATHSIG), and is ended by its pid.

The load client (`python bench/_common.py client`) holds thousands of websockets with a small asyncio
Protocol rather than aiohttp's client, so that the client spends as little of the 2 cores as it can and
the server under test gets the rest. It speaks just enough RFC 6455 for this: an upgrade request, masked
text frames out, unfragmented frames in, pong for ping, and close. It is driven by JSON lines on stdin and
answers with one JSON line on stdout per command.
"""
from __future__ import annotations

import asyncio
import gc
import base64
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The working tree's packages first, and never this folder: bench/launch.py and bench/presence.py would
# shadow the `launch` and `presence` packages (a script's folder is put first on sys.path).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() not in (ROOT, Path(__file__).resolve().parent)]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
NOFILE = 65536  # descriptors for every process of ours: 20,000 sockets and then some


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


def raise_nofile(n: int = NOFILE) -> int:
    """Raise this process's descriptor limit (the hard one too, when we may); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        return want
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:
    """In the child, before exec: SIGTERM if the benchmark dies, and a high descriptor limit."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    raise_nofile()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """No cycle collection in this (load-generating) process while a latency is being timed.

    The benchmark's bookkeeping (a record per event written) makes each full collection longer as a phase
    goes on: a pause of the apparatus, not of the gateway, which freezes its start-up heap."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100.0 * len(ordered))) - 1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_ticks() -> tuple[int, ...] | None:
    """The machine's `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal), or None."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    # guest and guest_nice are left out: the kernel already counts them in user and nice.
    return tuple(int(x) for x in fields[1:9])


def _steal_share(before: tuple[int, ...], after: tuple[int, ...]) -> float:
    """Stolen ticks as a percentage of all ticks between two readings (nan if no tick passed)."""
    total = sum(after) - sum(before)
    return (after[7] - before[7]) / total * 100 if total > 0 else math.nan


class CpuSteal:
    """CPU time the hypervisor stole, and how busy the machine was, over the stretches timed with `with`.

    This VM's host takes up to a quarter of its CPU at times, which moves a p99 far more than our code does,
    so a timed phase says how much it lost. /proc/stat is read at both ends of a stretch, and every `interval`
    seconds in between by a daemon thread that keeps the worst ~1 s of steal: a p99 is made by the worst
    second, which an average over the phase hides. One object may time several stretches (alternating
    blocks) and adds them up. Without /proc/stat every figure is nan.
    """

    WINDOW = 1.0  # seconds: the span of the worst-window figure

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._ticks = [0] * 8  # summed over every stretch timed
        self._worst = math.nan
        self._first: tuple[int, ...] | None = None
        self._recent: deque[tuple[float, tuple[int, ...]]] = deque()
        self._windows = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CpuSteal":
        self._first = _cpu_ticks()
        # Enough readings to reach back one window at the sampling pace, never more.
        self._recent = deque(maxlen=math.ceil(self.WINDOW / self.interval) + 2)
        self._windows = 0
        if self._first is not None:
            self._recent.append((time.monotonic(), self._first))
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, name="cpu-steal", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        last = _cpu_ticks()
        if self._first is None or last is None:
            return
        self._ticks = [t + (b - a) for t, a, b in zip(self._ticks, self._first, last)]
        self._reading(time.monotonic(), last)
        if not self._windows:  # a stretch shorter than the window: the stretch is its own worst
            self._note(_steal_share(self._first, last))
        self._first = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            ticks = _cpu_ticks()
            if ticks is None:
                return
            self._reading(time.monotonic(), ticks)

    def _reading(self, now: float, ticks: tuple[int, ...]) -> None:
        # The shortest span back from this reading that covers the window (a late wake-up only widens it).
        # The jitter allowance keeps a 0.5 s pace from reaching three readings back.
        for then, earlier in reversed(self._recent):
            if now - then >= self.WINDOW * 0.95:
                self._windows += 1
                self._note(_steal_share(earlier, ticks))
                break
        self._recent.append((now, ticks))

    def _note(self, share: float) -> None:
        if not math.isnan(share) and (math.isnan(self._worst) or share > self._worst):
            self._worst = share

    @classmethod
    def merged(cls, parts: Iterable["CpuSteal"]) -> "CpuSteal":
        """One CpuSteal covering all of the given (already timed) stretches."""
        whole = cls()
        for part in parts:
            whole._ticks = [a + b for a, b in zip(whole._ticks, part._ticks)]
            whole._note(part._worst)
        return whole

    @property
    def steal_pct(self) -> float:
        """Stolen ticks as a percentage of all ticks in the timed stretches."""
        total = sum(self._ticks)
        return self._ticks[7] / total * 100 if total > 0 else math.nan

    @property
    def worst_pct(self) -> float:
        """The most stolen in any ~1 s window, as a percentage of that window's ticks."""
        return self._worst

    @property
    def busy_pct(self) -> float:
        """Ticks spent running something here (user, nice, system, irq, softirq) as a percentage of all ticks."""
        t = self._ticks
        total = sum(t)
        return (t[0] + t[1] + t[2] + t[5] + t[6]) / total * 100 if total > 0 else math.nan

    def describe(self) -> str:
        """One line for a phase's report."""
        if math.isnan(self.steal_pct):
            return "CPU stolen by the hypervisor: unknown (no readable /proc/stat)"
        return (f"CPU stolen by the hypervisor: {self.steal_pct:.1f}% of the window (worst 1 s: "
                f"{self.worst_pct:.1f}%); machine busy {self.busy_pct:.0f}%")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0, kill: bool = False) -> None:
    """Terminate (or kill) a child and wait for it, killing it if it outlives grace seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill() if kill else proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


class Procs:
    """The processes and temporary directory of one benchmark run; close() ends them all."""

    def __init__(self, prefix: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: dict[str, Path] = {}
        self.pg: Any = None

    def start_postgres(self) -> str:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        self.pg = pgserver.get_server(str(self.tmp / "pg"), cleanup_mode="delete")
        dsn: str = self.pg.get_uri()
        return dsn

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as sink:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_child_setup)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0, kill: bool = False) -> None:
        stop_process(proc, grace, kill)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.logs.get(name)
        if path is None or not path.exists():
            return ""
        return "\n".join(f"    {name}| {line}" for line in path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        for _name, proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc, grace=3, kill=True)
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


def gateway_env(dsn: str, port: int, secret: bytes, signing_pem: bytes, data_dir: Path,
                log_level: str = "WARNING", app_name: str | None = None) -> dict[str, str]:
    """The environment of one `visitgate serve` on 127.0.0.1:port."""
    env = dict(os.environ)
    if app_name:
        dsn += ("&" if "?" in dsn else "?") + f"application_name={app_name}"
    env.update({
        "VISITGATE_PUBLIC_URL": f"http://{HOST}:{port}",
        "VISITGATE_SECRET_KEY": base64.b64encode(secret).decode(),
        "VISITGATE_SIGNING_KEY": signing_pem.decode(),
        "DATABASE_URL": dsn,
        "VISITGATE_HOST": HOST,
        "VISITGATE_PORT": str(port),
        "VISITGATE_LOG_LEVEL": log_level,
        "VISITGATE_DATA_DIR": str(data_dir),
        "PYTHONWARNINGS": "ignore",
        "VISITGATE_METRICS_TOKEN": METRICS_TOKEN,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    })
    return env


METRICS_TOKEN = "bench-metrics-token"


def scrape(port: int) -> dict[str, float]:
    """A gateway's unlabelled /metrics samples by name (empty if it does not answer)."""
    request = urllib.request.Request(f"http://{HOST}:{port}/metrics",
                                     headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    found: dict[str, float] = {}
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return found
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            found[name] = float(value)
    return found


def wait_http(procs: Procs, name: str, proc: subprocess.Popen[bytes], url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready\n{procs.tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"status {response.status}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready at {url} after {timeout:.0f}s ({last})\n{procs.tail(name)}")


def start_gateway(procs: Procs, name: str, env: dict[str, str], std_loop: bool = False) -> subprocess.Popen[bytes]:
    """`visitgate serve` (uvloop, as shipped), or the same on asyncio's own loop when std_loop."""
    argv = [sys.executable, str(Path(__file__).resolve()), "gateway_std_loop"] if std_loop else [str(BIN / "visitgate"), "serve"]
    proc = procs.spawn(name, argv, env=env)
    wait_http(procs, name, proc, f"http://{HOST}:{env['VISITGATE_PORT']}/readyz")
    return proc


def gateway_std_loop_main() -> int:
    """`visitgate serve` exactly, except that uvloop is not installed (the cli's own fallback path)."""
    from gateway import cli

    cli._install_uvloop = lambda: None  # noqa: SLF001
    return cli.main(["serve"])


async def _hub_probe() -> bool:
    """One real aiohttp websocket in a presence Hub on the running loop, one event published: still there?"""
    import datetime as dt

    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from presence.eventlog import PresenceEvent
    from presence.hub import Connection, Hub

    hub = Hub()
    visit = uuid.uuid4()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        conn = Connection(ws, request.transport, visit, uuid.uuid4(), "provider", "view")
        hub.add(conn)
        await hub.mark_ready(conn, 0)
        async for _ in ws:
            pass
        hub.remove(conn)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = TestServer(app, host=HOST, port=free_port())
    await server.start_server(access_log=None)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"http://{HOST}:{server.port}/ws") as ws:
            for _ in range(100):
                if hub.count():
                    break
                await asyncio.sleep(0.01)
            await hub.publish(PresenceEvent(id=1, visit_id=visit, participant_id=None, kind="connected",
                                            at=dt.datetime.now(dt.timezone.utc), role=None, guest_kind=None))
            msg = await asyncio.wait_for(ws.receive(), 5)
            return msg.type == aiohttp.WSMsgType.TEXT and hub.count() == 1
    finally:
        await hub.close_all()
        await server.close()


def hub_works_on_uvloop() -> bool:
    """Whether presence.hub delivers to a socket served on uvloop (as `visitgate serve` runs) or drops it."""
    import logging

    import uvloop

    logging.getLogger("presence.hub").setLevel(logging.WARNING)
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(_hub_probe())
    finally:
        loop.close()


def choose_loop(requested: str) -> str:
    """uvloop as `visitgate serve` ships, unless presence.hub cannot deliver on it (then say so, loudly)."""
    loop = requested
    if loop == "auto":
        if hub_works_on_uvloop():
            loop = "uvloop"
        else:
            loop = "asyncio"
            print("BUG: presence.hub drops every socket served on uvloop (Hub.send: isinstance(transport, "
                  "asyncio.WriteTransport) is False for uvloop transports), and `visitgate serve` installs uvloop. "
                  "Measuring on asyncio's own loop instead (servers and in-process parts), so the figures mean "
                  "something; pass --loop uvloop to measure the shipped, broken combination.", flush=True)
    if loop == "uvloop":
        import uvloop

        uvloop.install()
    print(f"servers' event loop: {loop}", flush=True)
    return loop


def py_spy(procs: Procs, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample a process with py-spy for a while (raw collapsed stacks), if py-spy is installed."""
    spy = BIN / "py-spy"
    if not spy.exists():
        return None
    return procs.spawn(f"py-spy-{pid}", [str(spy), "record", "--pid", str(pid), "--rate", "200", "--duration",
                                          str(max(1, int(seconds))), "--format", "raw", "--nonblocking",
                                          "--output", str(out)])


def _samples(path: Path) -> list[tuple[str, int]]:
    """(stack, count) for each line of py-spy's collapsed output."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            found.append((stack, int(count)))
    return found


def top_frames(path: Path, n: int = 12) -> list[tuple[float, str]]:
    """The n functions with the most samples of their own (self time), as (share, frame)."""
    own: dict[str, int] = {}
    samples = _samples(path)
    total = sum(count for _, count in samples)
    for stack, count in samples:
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + count
    return sorted(((c / total, f) for f, c in own.items()), reverse=True)[:n] if total else []


def inclusive_frames(path: Path, needles: tuple[str, ...]) -> dict[str, float]:
    """Share of samples whose stack passes through a function whose frame text contains each needle."""
    samples = _samples(path)
    total = sum(count for _, count in samples)
    hits = dict.fromkeys(needles, 0)
    for stack, count in samples:
        for needle in needles:
            if needle in stack:
                hits[needle] += count
    return {k: v / total for k, v in hits.items()} if total else {}


# ------------------------------------------------------------------------------------------------
# Seeding: visits and provider sessions straight into the schema (the launch is not what is measured)
# ------------------------------------------------------------------------------------------------


async def seed(dsn: str, secret: bytes, visits: int, handles_per_visit: int) -> list[tuple[uuid.UUID, list[str]]]:
    """An approved configuration, `visits` visits, and live provider sessions with known handles.

    The rows are what a provider launch leaves behind (provider_sessions and provider_handles, by the SHA-256
    of the handle), so a socket authenticating with one of these handles runs the gateway's real code from
    there on.
    """
    import asyncpg

    from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
    from gateway.security import Sealer, new_token, token_hash

    conn = await asyncpg.connect(dsn)
    try:
        config_id = await conn.fetchval("SELECT id FROM configurations WHERE fhir_base_url = $1",
                                        "http://localhost:1/fhir")
        if config_id is None:
            config_id = await add_approved(conn, Sealer(secret), NewConfiguration(
                fhir_base_url="http://localhost:1/fhir", environment="test", client_id="bench",
                client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="bench")
        out: list[tuple[uuid.UUID, list[str]]] = []
        visit_rows, session_rows = [], []
        for _ in range(visits):
            visit_id = uuid.uuid4()
            visit_rows.append((visit_id, config_id, os.urandom(32), os.urandom(48), "builtin"))
            handles = [new_token() for _ in range(handles_per_visit)]
            for j, handle in enumerate(handles):
                session_rows.append((token_hash(handle), visit_id, f"Practitioner/bench-{j}", os.urandom(40),
                                     "launch openid fhirUser", False))
            out.append((visit_id, handles))
        async with conn.transaction():
            await conn.copy_records_to_table(
                "visits", records=visit_rows,
                columns=["id", "configuration_id", "encounter_key", "encounter_ref", "meeting_provider"])
            await conn.executemany(
                "INSERT INTO provider_sessions (handle_hash, visit_id, fhir_user, access_token, token_expires_at,"
                " scopes, need_patient_banner, expires_at)"
                " VALUES ($1, $2, $3, $4, now() + interval '2 hours', $5, $6, now() + interval '2 hours')",
                session_rows)
            # The handle a page's URL carries (sql/migrations/0006); here the session's own, for the whole run.
            await conn.executemany("INSERT INTO provider_handles (handle_hash, session_hash, expires_at)"
                                   " VALUES ($1, $1, now() + interval '2 hours')", [(r[0],) for r in session_rows])
        return out
    finally:
        await conn.close()


async def write_event(pool: Any, visit_id: uuid.UUID, participant_id: uuid.UUID | None, kind: str,
                      notify: bool = True) -> tuple[int, float]:
    """presence.eventlog.record_event, step for step (append, one statement, then announce through the
    process's coalescing Announcer), with the moment the commit returned (the event became visible) noted."""
    from presence.announcer import Announcer
    from presence.eventlog import append_event

    async with pool.acquire() as conn:
        event_id = await append_event(conn, visit_id, participant_id, kind)
        committed = time.monotonic()
    if notify:
        announcer = _ANNOUNCERS.get(id(pool))
        if announcer is None:
            announcer = _ANNOUNCERS[id(pool)] = Announcer(pool)
        announcer.announce(event_id)
    return event_id, committed


# One announcer per writer pool, as each gateway process has one (presence.announcer.Announcer).
_ANNOUNCERS: dict[int, Any] = {}


async def write_closed_loop(pool: Any, visits: list[uuid.UUID], patients: list[uuid.UUID], writers: int,
                            seconds: float, notify: bool = True) -> int:
    """`writers` tasks each writing events round robin over the visits for `seconds`; returns how many."""
    stop_at = time.monotonic() + seconds
    done = 0

    async def writer(k: int) -> None:
        nonlocal done
        i = k
        while time.monotonic() < stop_at:
            v = i % len(visits)
            await write_event(pool, visits[v], patients[v], "device_test_passed", notify=notify)
            done += 1
            i += writers

    await asyncio.gather(*(writer(k) for k in range(writers)))
    return done


async def write_open_loop(pool: Any, visits: list[uuid.UUID], participants: list[uuid.UUID], rate: float,
                          duration: float, max_in_flight: int = 400) -> tuple[dict[int, tuple[float, float, float]], int]:
    """Paced arrivals at `rate`/s over the visits, round robin. Returns {event id: (scheduled, committed,
    notified)} and how many arrivals were skipped because max_in_flight writes were already waiting."""
    written: dict[int, tuple[float, float, float]] = {}
    in_flight: set[asyncio.Task[None]] = set()
    overruns = 0
    start = time.monotonic() + 0.05
    total = int(rate * duration)

    async def one(i: int, due: float) -> None:
        v = i % len(visits)
        event_id, committed = await write_event(pool, visits[v], participants[v], "device_test_passed")
        written[event_id] = (due, committed, time.monotonic())

    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            overruns += 1
            continue
        task = asyncio.create_task(one(i, due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=30)
    return written, overruns


def latencies(written: dict[int, tuple[float, float, float]], received: dict[int, list[float]],
              subs: int) -> dict[str, Any]:
    """Per event: until the last of its subscribers received it, from its scheduled write, from its commit,
    and from the moment every event with a smaller id had committed (ids are allocated before commit, and
    the bus delivers in id order, so an event may wait for an earlier one's commit: this isolates that)."""
    out: dict[str, Any] = {"from_write": [], "from_commit": [], "from_ready": [], "lost": 0}
    ready = 0.0
    for event_id in sorted(written):
        due, committed, _notified = written[event_id]
        ready = max(ready, committed)
        times = received.get(event_id, [])
        if len(times) < subs:
            out["lost"] += 1
            continue
        last = max(times)
        out["from_write"].append((last - due) * 1000)
        out["from_commit"].append((last - committed) * 1000)
        out["from_ready"].append((last - ready) * 1000)
    return out


def describe(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50):.2f} p99 {percentile(values, 99):.2f} max "
            f"{max(values, default=math.nan):.2f} ms")


def auth_frames(handle: str, subscribe: bool = True) -> list[str]:
    frames = [json.dumps({"type": "auth", "id": 1, "provider": handle, "where": "view"})]
    if subscribe:
        frames.append(json.dumps({"type": "subscribe", "id": 2, "after": None}))
    return frames


# ------------------------------------------------------------------------------------------------
# The client worker and its driver
# ------------------------------------------------------------------------------------------------


class ClientDriver:
    """A client worker process, driven from the benchmark's event loop."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @classmethod
    async def start(cls, name: str, log: Path) -> "ClientDriver":
        sink = log.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "client", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=sink, preexec_fn=_child_setup, limit=256 * 1024 * 1024)
        sink.close()
        return cls(proc, name)

    async def call(self, cmd: str, wait: float = 120.0, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **kw}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), wait)
        if not line:
            raise RuntimeError(f"client {self.name} exited (code {self.proc.returncode})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"client {self.name}: {answer['error']}")
        return answer

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)


_MASK = b"\x00\x00\x00\x00"  # a zero mask: the frame is marked masked (as RFC 6455 asks) at no CPU cost


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _MASK + payload


class WsClient(asyncio.Protocol):
    """One client websocket: upgrade, send the first frames, then read (and maybe record) what comes."""

    __slots__ = ("worker", "index", "request", "first", "expect", "buf", "upgraded", "ready", "ready_fut",
                 "transport", "closed", "close_code", "count", "last_t")

    def __init__(self, worker: "Worker", index: int, request: bytes, first: list[bytes], expect: str,
                 ready_fut: asyncio.Future[None]) -> None:
        self.worker = worker
        self.index = index
        self.request = request
        self.first = first
        self.expect = expect
        self.buf = b""
        self.upgraded = False
        self.ready = False
        self.ready_fut = ready_fut
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_code: int | None = None
        self.count = 0
        self.last_t = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's transports are not asyncio.Transport)
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready_fut.done():
            self.ready_fut.set_exception(ConnectionError(f"closed before ready ({self.close_code})"))
        self.worker.on_closed(self)

    def send_text(self, text: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(_frame(1, text))

    def _set_ready(self) -> None:
        self.ready = True
        if not self.ready_fut.done():
            self.ready_fut.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = buf[:buf.find(b"\r\n")]
            if b" 101 " not in status:
                if not self.ready_fut.done():
                    self.ready_fut.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            buf = buf[end + 4:]
            assert self.transport is not None
            for frame in self.first:
                self.transport.write(_frame(1, frame))
            if self.expect == "upgrade":
                self._set_ready()
        pos, n = 0, len(buf)
        worker = self.worker
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if b1 & 0x80:  # a masked server frame would be a protocol error; skip its key
                head += 4
            if n - pos < head + length:
                break
            payload = buf[pos + head:pos + head + length]
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 1:
                if self.ready:
                    worker.on_text(self, payload)
                else:
                    self._before_ready(payload)
            elif opcode == 9:  # ping
                assert self.transport is not None
                self.transport.write(_frame(10, payload))
            elif opcode == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                assert self.transport is not None
                with contextlib.suppress(Exception):
                    self.transport.write(_frame(8, payload[:2]))
                self.transport.close()
                break
        self.buf = buf[pos:]

    def _before_ready(self, payload: bytes) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        kind = frame.get("type")
        if kind == "error":
            if not self.ready_fut.done():
                self.ready_fut.set_exception(ConnectionError(f"refused: {frame.get('code')}"))
        elif kind == self.expect:
            self._set_ready()


class Worker:
    """The client worker's state: its sockets and what they received."""

    def __init__(self) -> None:
        self.sockets: list[WsClient] = []
        self.groups: dict[str, list[int]] = {}
        self.mode = "count"
        self.count = 0
        self.first_t = 0.0
        self.last_t = 0.0
        self.records: list[tuple[int, int, str, float]] = []
        self.closes: dict[str, int] = {}
        self.sent: list[tuple[int, int, float]] = []
        self.pacers: list[asyncio.Task[None]] = []

    def on_text(self, sock: WsClient, payload: bytes) -> None:
        now = time.monotonic()
        self.count += 1
        sock.count += 1
        if not self.first_t:
            self.first_t = now
        self.last_t = now
        sock.last_t = now
        if self.mode == "record" and payload.startswith(b'{"type":"event"'):
            frame = json.loads(payload)
            self.records.append((sock.index, frame["id"], frame["kind"], now))

    def on_closed(self, sock: WsClient) -> None:
        key = str(sock.close_code)
        self.closes[key] = self.closes.get(key, 0) + 1

    async def open(self, host: str, port: int, path: str, origin: str, sockets: list[dict[str, Any]],
                   expect: str, local_addr: str | None, concurrency: int, rate: float, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        errors: dict[str, int] = {}
        ok = 0
        start = time.monotonic()
        deadline = start + timeout

        async def one(i: int, spec: dict[str, Any]) -> None:
            nonlocal ok
            key = base64.b64encode(os.urandom(16)).decode()
            lines = [f"GET {spec.get('path', path)} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                     "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                     f"Origin: {origin}"]
            if spec.get("cookie"):
                lines.append(f"Cookie: {spec['cookie']}")
            request = ("\r\n".join(lines) + "\r\n\r\n").encode()
            fut: asyncio.Future[None] = loop.create_future()
            index = len(self.sockets)
            proto = WsClient(self, index, request, [f.encode() for f in spec.get("frames", [])], expect, fut)
            try:
                if local_addr:
                    # The source port is chosen at connect() from the whole 4-tuple (IP_BIND_ADDRESS_NO_PORT),
                    # not searched for at bind(), which gets slow with thousands of ports taken.
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    try:
                        sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
                        sock.bind((local_addr, 0))
                        sock.setblocking(False)
                        await loop.sock_connect(sock, (host, port))
                    except BaseException:
                        sock.close()
                        raise
                    await loop.create_connection(lambda: proto, sock=sock)
                else:
                    await loop.create_connection(lambda: proto, host, port)
                self.sockets.append(proto)
                proto.index = len(self.sockets) - 1
                self.groups.setdefault(str(spec.get("group", "")), []).append(proto.index)
                await asyncio.wait_for(fut, max(0.1, deadline - time.monotonic()))
                ok += 1
            except Exception as exc:  # counted and sampled, never fatal: the caller decides
                kind = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[kind] = errors.get(kind, 0) + 1
                if proto.transport is not None:
                    proto.transport.close()

        tasks = []
        for i, spec in enumerate(sockets):
            if time.monotonic() > deadline:
                errors["not started (deadline)"] = len(sockets) - i
                break
            # Paced starts (rate per second) and a bound on handshakes in flight.
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            task = asyncio.create_task(one(i, spec))
            task.add_done_callback(lambda _t: gate.release())
            tasks.append(task)
        if tasks:
            await asyncio.wait(tasks)
        return {"ok": ok, "errors": errors, "seconds": time.monotonic() - start}

    def reset(self, mode: str) -> dict[str, Any]:
        self.mode = mode
        self.count = 0
        self.first_t = self.last_t = 0.0
        self.records = []
        self.sent = []
        for s in self.sockets:
            s.count = 0
        return {"ok": True}

    def stats(self) -> dict[str, Any]:
        open_ = sum(1 for s in self.sockets if not s.closed)
        return {"count": self.count, "first_t": self.first_t, "last_t": self.last_t, "open": open_,
                "closes": self.closes, "per_socket_min": min((s.count for s in self.sockets if not s.closed),
                                                             default=0)}

    async def pace(self, group_frames: dict[str, str], rate_per_group: float, duration: float, start_at: float) -> None:
        """Each group's first socket sends its group's frame at rate_per_group, on a fixed schedule (open loop);
        the scheduled time of each send is recorded, so a late sender does not hide its lateness."""
        groups = [g for g in group_frames if self.groups.get(g)]

        async def sender(k: int, group: str) -> None:
            sock = self.sockets[self.groups[group][0]]
            text = group_frames[group].encode()
            period = 1.0 / rate_per_group
            first = start_at + (k / max(1, len(groups))) * period
            seq = 0
            while True:
                due = first + seq * period
                if due > start_at + duration:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sock.send_text(text.replace(b"__SEQ__", str(seq + 10).encode()))
                self.sent.append((sock.index, seq, due))
                seq += 1

        self.pacers = [asyncio.create_task(sender(k, g)) for k, g in enumerate(groups)]
        await asyncio.gather(*self.pacers)

    async def close_all(self) -> None:
        for s in self.sockets:
            if s.transport is not None and not s.closed:
                s.transport.close()
        await asyncio.sleep(0.1)


async def _client_main() -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=256 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    worker = Worker()
    while True:
        line = await reader.readline()
        if not line:
            return
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        try:
            if cmd == "open":
                answer = await worker.open(**msg)
            elif cmd == "reset":
                answer = worker.reset(msg.get("mode", "count"))
            elif cmd == "stats":
                answer = worker.stats()
            elif cmd == "records":
                answer = {"records": worker.records, "sent": worker.sent}
            elif cmd == "per_socket":
                answer = {"counts": [s.count for s in worker.sockets], "last": [s.last_t for s in worker.sockets]}
            elif cmd == "pace":
                answer = {"ok": True}
                await worker.pace(msg["group_frames"], msg["rate_per_group"], msg["duration"], msg["start_at"])
                answer["sent"] = len(worker.sent)
            elif cmd == "wait_count":
                deadline = time.monotonic() + msg["timeout"]
                while worker.count < msg["count"] and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                answer = worker.stats()
            elif cmd == "close":
                await worker.close_all()
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {cmd}"}
        except Exception as exc:  # reported to the driver, which fails the run with it
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write((json.dumps(answer) + "\n").encode())
        out.flush()
        if cmd == "close":
            return


def client_main() -> None:
    # The client stands in for browsers on other machines: its own cycle collections (a full one walks the
    # growing list of received records) must not show up as delivery latency. Its objects hold no cycles
    # that matter for a run of minutes.
    gc.disable()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_client_main())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main()
    elif len(sys.argv) > 1 and sys.argv[1] == "gateway_std_loop":
        sys.exit(gateway_std_loop_main())
    else:
        print("usage: bench/_common.py client  (a load client driven by the presence benchmarks)", file=sys.stderr)
        sys.exit(2)
