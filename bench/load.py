"""Load clients of the benchmarks, each in its own process so that its CPU is counted apart from the server's.

`python -m bench.load ws` is the websocket client the presence benchmarks drive: it holds thousands of
websockets with a small asyncio Protocol rather than aiohttp's client, so that the client spends as little of
the 2 cores as it can and the server under test gets the rest. It speaks just enough RFC 6455 for this: an
upgrade request, masked text frames out, unfragmented frames in, pong for ping, and close. It is driven by
JSON lines on stdin and answers with one JSON line on stdout per command (ClientDriver is its other end).

`python -m bench.load http SPEC OUT` runs one phase of HTTP launches (or of the bare 302) for bench/launch.py,
as SPEC (a JSON file) says, and writes what it saw to OUT.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.harness import ROOT, child_setup, python_path, raise_nofile

NOFILE = 65536  # as bench.procs: a client holds up to 20,000 sockets


def auth_frames(handle: str, subscribe: bool = True) -> list[str]:
    """The frames a provider view sends first: auth with the handle, then (by default) subscribe."""
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
        """Start a client worker (`python -m bench.load ws`), its stderr in log; it dies with this process."""
        env = dict(os.environ, PYTHONPATH=python_path())
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.load", "ws", cwd=ROOT, env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=sink, preexec_fn=child_setup(NOFILE), limit=256 * 1024 * 1024)
        return cls(proc, name)

    async def call(self, cmd: str, wait: float = 120.0, **kw: Any) -> dict[str, Any]:
        """Send one command and return its answer (an error answer raises RuntimeError)."""
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
        """Kill the worker and wait for it (bounded)."""
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
    raise_nofile(NOFILE)
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



# ------------------------------------------------------------------------------------------------
# The HTTP load generator of bench/launch.py
# ------------------------------------------------------------------------------------------------

OK_LAUNCH = 302
OK_AUTHORIZE = 302
OK_CALLBACK = 303
OK_VIEW = 200
REQUEST_TIMEOUT = 10.0  # seconds, per request in the load generator
MAX_IN_FLIGHT = 2000  # open loop: arrivals beyond this many outstanding ones are counted as errors


def http_main(spec_path: str, out_path: str) -> None:
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
    # A full launch also opens the provider view (its FHIR reads) and keeps cookies as a browser does, one
    # browser per worker (closed loop only): what a clinician waits for, from click to page.
    full: bool = bool(spec.get("full")) and mode == "launch"
    if full and kind != "closed":
        raise ValueError("full launches run in a closed loop")
    errors = _Errors()
    total_ms: list[float] = []  # per op: whole op (launch: all three legs), from start or scheduled arrival
    gateway_ms: list[float] = []  # launch only: the two gateway legs summed
    legs_ms: list[list[float]] = []  # full launches: each request's time (launch, authorize, callback, view)
    done_at: list[float] = []  # completion times (monotonic) of successful ops, for the rate

    limit = spec["concurrency"] if kind == "closed" else MAX_IN_FLIGHT
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=3600)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                    cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
    perf = time.perf_counter

    async def get(url: Any, browser: Any = None) -> tuple[int, str | None]:
        return (await leg(url, browser))[:2]

    async def leg(url: Any, browser: Any = None, cookie: str | None = None) -> tuple[int, str | None, str]:
        """One request: status, Location, and the name=value of the cookie it set ("" if none)."""
        async with (browser or session).get(url, allow_redirects=False,
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
        status, location, _ = await leg(URL(location, encoded=True), None, browser_key)
        t3 = perf()
        if status != OK_CALLBACK or not location or not location.startswith("/provider/"):
            errors.add("callback_status", f"{status} {(location or '')[:80]}")
            return None
        return ((t1 - t0) + (t3 - t2)) * 1000.0

    async def full_launch_op(browser: Any) -> float | None:
        """A launch as a browser makes it, through the provider view; each leg's time kept in legs_ms."""
        browser.cookie_jar.clear()  # a new clinician's browser for each launch
        index = seq[0]
        seq[0] += 1
        url: Any = launch_urls[index % len(launch_urls)]
        legs: list[float] = []
        checks = ((OK_LAUNCH, sandbox_origin + "/oauth/authorize?", "launch_status"),
                  (OK_AUTHORIZE, gateway_origin + "/launch/callback?", "authorize_status"),
                  (OK_CALLBACK, "/provider/", "callback_status"))
        for want, where, kind in checks:
            t0 = perf()
            status, location = await get(url, browser)
            legs.append((perf() - t0) * 1000.0)
            if status != want or not location or not location.startswith(where):
                errors.add(kind, f"{status} {(location or '')[:100]}")
                return None
            url = URL(location if location.startswith("http") else gateway_origin + location, encoded=True)
        t0 = perf()
        async with browser.get(url, allow_redirects=False) as response:
            page = await response.text()
        legs.append((perf() - t0) * 1000.0)
        if response.status != OK_VIEW:
            errors.add("view_status", f"{response.status} {page[:100]}")
            return None
        # Every read made and answered: the patient's banner is there and no reason code says a read failed
        # (a view that skipped the Appointment read would make the launch look faster than it is).
        if 'id="patient-name"' not in page or "Reason code" in page:
            errors.add("view_incomplete", "the provider view lacks the patient or names a failed FHIR read")
            return None
        legs_ms.append(legs)
        return legs[0] + legs[2] + legs[3]

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

    async def run_op(scheduled: float, one: Any = op) -> None:
        try:
            gw = await one()
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
        if full:
            # One browser per worker: its own cookies (the launch may bind itself to them) and connections.
            browser = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4, ttl_dns_cache=3600),
                                            timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.CookieJar(
                                                # As a browser treats http://127.0.0.1: Secure (__Host-) cookies kept.
                                                unsafe=True, treat_as_secure_origin=[gateway_origin]))
        try:
            while started[0] < max_ops:
                now = perf()
                if now >= end:
                    return
                started[0] += 1
                await run_op(now, (lambda: full_launch_op(browser)) if full else op)
        finally:
            if full:
                await browser.close()

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
        "legs_ms": [[round(x, 3) for x in legs] for legs in legs_ms],
        "late_max_ms": round(late_max * 1000.0, 2), "cpu_s": cpu_s,
    }




if __name__ == "__main__":
    if sys.argv[1:2] == ["ws"]:
        client_main()
    elif sys.argv[1:2] == ["http"] and len(sys.argv) == 4:
        http_main(sys.argv[2], sys.argv[3])
    else:
        print("usage: python -m bench.load ws | python -m bench.load http SPEC OUT", file=sys.stderr)
        sys.exit(2)
