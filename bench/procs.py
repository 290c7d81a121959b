"""The benchmarks' use of the process harness (tests/harness.py), and what they read off served processes.

A run is a `tests.harness.Processes` whose children may hold 20,000 sockets (a high descriptor limit); the
gateway is `visitgate serve` configured through the environment, with the metrics endpoint open to this run.
"""
from __future__ import annotations

import asyncio
import os
import urllib.request
import uuid
from pathlib import Path

from tests.harness import HOST, Processes, ServedProcess, free_port, raise_nofile
from tests.harness import gateway_env as harness_gateway_env

__all__ = ["HOST", "NOFILE", "METRICS_TOKEN", "Processes", "ServedProcess", "free_port", "raise_more_files",
           "new_run", "gateway_env", "start_gateway", "scrape", "cpu_seconds", "rss_bytes", "choose_loop"]

NOFILE = 65536  # descriptors for every process of ours: 20,000 sockets and then some
METRICS_TOKEN = "bench-metrics-token"


def raise_more_files() -> int:
    """This process's descriptor limit raised to NOFILE (or as near as allowed); returns the soft limit."""
    return raise_nofile(NOFILE)


def new_run(prefix: str) -> Processes:
    """The processes of one benchmark run, in a fresh /tmp directory removed at the end."""
    return Processes(prefix=prefix, nofile=NOFILE)


def gateway_env(dsn: str, port: int, secret: bytes, signing_pem: bytes, data_dir: Path,
                log_level: str = "WARNING", app_name: str | None = None) -> dict[str, str]:
    """The environment of one `visitgate serve` on 127.0.0.1:port, its /metrics readable with METRICS_TOKEN."""
    if app_name:
        dsn += ("&" if "?" in dsn else "?") + f"application_name={app_name}"
    return harness_gateway_env(public_url=f"http://{HOST}:{port}", secret=secret, signing_key_pem=signing_pem,
                               database_url=dsn, data_dir=data_dir, log_level=log_level, metrics_token=METRICS_TOKEN)


def start_gateway(run: Processes, name: str, env: dict[str, str], std_loop: bool = False) -> ServedProcess:
    """`visitgate serve` (uvloop, as shipped), or the same on asyncio's own loop when std_loop; ready."""
    gateway = run.gateway(name, env, loop="asyncio" if std_loop else "uvloop")
    gateway.wait_ready()
    return gateway


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


