"""`visitgate demo` and `visitgate migrate` as an operator runs them: start, answer, stop on Ctrl-C."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
from aiohttp.test_utils import unused_port

VISITGATE = str(Path(sys.executable).with_name("visitgate"))


def _two_free_ports() -> int:
    """A port that is free with the next one free too (the demo serves the EHR on port + 1).

    Checked by binding both: a free port alone was not enough once, its neighbour being some connection's
    own (ephemeral) port at the time."""
    for _ in range(50):
        port = unused_port()
        if port + 1 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two neighbouring free ports on 127.0.0.1")


async def test_demo_serves_the_ehr_and_gateway_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = _two_free_ports()
    data = Path("/tmp") / f"vg-demo-{os.getpid()}-{port}"  # short: PostgreSQL's socket path has a limit
    env = {**os.environ, "VISITGATE_DATA_DIR": str(data), "VISITGATE_LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    proc = await asyncio.create_subprocess_exec(VISITGATE, "demo", "--port", str(port), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        banner = b""
        for _ in range(200):  # bounded: the embedded PostgreSQL starts first
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            banner += line
            if b"Ctrl-C" in line or not line:
                break
        assert b"/ehr" in banner, banner.decode(errors="replace")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"http://127.0.0.1:{port + 1}/ehr") as ehr:
                assert ehr.status == 200 and "Begin virtual visit" in await ehr.text()
            async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                assert ready.status == 200
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        import shutil

        shutil.rmtree(data, ignore_errors=True)
