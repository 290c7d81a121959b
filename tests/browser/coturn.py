"""A real TURN server for browser tests: Debian's coturn, started on 127.0.0.1 inside the tests' private network
namespace with the shared-secret scheme the gateway issues credentials for (use-auth-secret), stopped after."""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

TURNSERVER = "turnserver"
START_TIMEOUT = 10.0
REALM = "visitgate.test"


@dataclass(frozen=True)
class Coturn:
    """A running coturn: where it listens and its log."""

    port: int
    log: Path

    @property
    def url(self) -> str:
        """The TURN URL the gateway hands to browsers."""
        return f"turn:127.0.0.1:{self.port}?transport=udp"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.asynccontextmanager
async def running_coturn(secret: bytes, workdir: Path) -> AsyncIterator[Coturn]:
    """Start coturn with this static-auth-secret; fails (never skips) when coturn is not installed."""
    binary = shutil.which(TURNSERVER)
    if binary is None:
        raise AssertionError("the real-TURN browser tests need Debian's coturn (apt-get install coturn); "
                             ".ci/run installs it when missing")
    port = _free_port()
    relay_low = 40000 + port % 20000
    log = workdir / "turnserver.log"
    args = [binary, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}", "--relay-ip=127.0.0.1",
            f"--min-port={relay_low}", f"--max-port={relay_low + 200}", "--use-auth-secret",
            f"--static-auth-secret={secret.decode()}", f"--realm={REALM}", "--no-tls", "--no-dtls",
            "--allow-loopback-peers", "--no-cli", "--fingerprint", "--verbose", f"--log-file={log}", "--simple-log",
            "--no-stdout-log", f"--pidfile={workdir / 'turnserver.pid'}", f"--userdb={workdir / 'turndb'}"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(int(START_TIMEOUT / 0.1)):  # bounded: up within START_TIMEOUT or the test fails
            if process.poll() is not None:
                raise AssertionError(f"coturn exited with {process.returncode}; see {log}")
            if _listening(port):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"coturn did not listen on 127.0.0.1:{port} within {START_TIMEOUT} s; see {log}")
        yield Coturn(port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
