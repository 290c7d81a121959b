"""Served processes for the tests and the benchmarks: one way to start, wait for, log and stop them.

A test or a benchmark that needs a real `visitgate serve` (or the sandbox EHR, or any helper process) opens a
`Processes` for its run and starts what it needs through it:

    with Processes(tmp_path) as procs:                        # or `async with`
        gateway = procs.gateway("a", gateway_env(...))
        gateway.wait_ready()                                  # or `await gateway.wait_ready_async()`
        ...
    # every process started here has been stopped: SIGTERM, then SIGKILL after a bound

Each process writes its stdout and stderr to `<log_dir>/<name>.log` (`tail()` quotes the end of it in a
failure message), runs in its own session (a Ctrl-C at the terminal reaches the runner, which stops the
children in order), and gets SIGTERM from the kernel if the process that started it dies without cleaning
up (PR_SET_PDEATHSIG; Linux). Whatever a run leaves running when the interpreter exits is stopped by an
atexit hook. Waiting for readiness and stopping are bounded in time.

This module lives in `tests/` and not in the product: it is apparatus, never shipped (pyproject.toml packages
only the product's folders). The benchmarks import it as `tests.harness` with the repository root on
sys.path, as pytest does, so both use the same code without a package of its own. It imports only the
standard library (pgserver lazily), so a benchmark needs neither pytest nor the test extra for it.

PR_SET_PDEATHSIG fires when the *thread* that started the child ends: start processes from the thread that
lives as long as the run (the main thread, or the event loop's), never from `asyncio.to_thread`.
"""
from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
READY_TIMEOUT = 30.0  # seconds for a process to answer its readiness URL (imports, pool, migrations)
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
_POLL = 0.1  # seconds between readiness probes and exit checks
# `visitgate serve` exactly, except that uvloop is not installed (the cli's own fallback path): tells a
# loop-specific fault from any other.
_SERVE_ON_ASYNCIO = ("from gateway import cli; cli._install_uvloop = lambda: None; "
                     "raise SystemExit(cli.main(['serve']))")


class ProcessFailed(AssertionError):
    """A served process exited before it was ready, or was not ready in time (says why, with its log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_nofile(n: int) -> int:
    """Raise this process's descriptor limit to at least n (the hard one too, when allowed); returns the soft one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        return want
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_setup(nofile: int | None = None) -> Any:
    """A preexec_fn: SIGTERM when the starter dies, and a descriptor limit of nofile when given."""
    def setup() -> None:
        _die_with_parent()
        if nofile:
            raise_nofile(nofile)
    return setup


def python_path(env: Mapping[str, str] | None = None) -> str:
    """PYTHONPATH with this working tree first, so a child runs these packages whatever is installed."""
    rest = (os.environ if env is None else env).get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (str(ROOT), rest) if p)


def gateway_env(*, public_url: str, secret: bytes, signing_key_pem: bytes, database_url: str, data_dir: Path,
                log_level: str = "INFO", **settings: object) -> dict[str, str]:
    """The environment of one `visitgate serve` listening on public_url's host and port.

    Every other setting is a keyword named as the Settings field (`writeback_lease_seconds=2` becomes
    VISITGATE_WRITEBACK_LEASE_SECONDS=2; booleans true/false, sequences space-separated). VISITGATE_* and
    DATABASE_URL from the caller's own environment are left out, so a developer's shell cannot change a run.
    """
    parts = urlsplit(public_url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"public_url needs a host and a port: {public_url!r}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISITGATE_") and k != "DATABASE_URL"}
    env.update({
        "VISITGATE_PUBLIC_URL": public_url, "VISITGATE_HOST": parts.hostname, "VISITGATE_PORT": str(parts.port),
        "VISITGATE_SECRET_KEY": base64.b64encode(secret).decode(), "VISITGATE_SIGNING_KEY": signing_key_pem.decode(),
        "DATABASE_URL": database_url, "VISITGATE_DATA_DIR": str(data_dir), "VISITGATE_LOG_LEVEL": log_level,
        # The served process's own warnings go to its log as text, not into the runner's warnings-as-errors.
        "PYTHONWARNINGS": "ignore", "PYTHONPATH": python_path(),
    })
    for name, value in settings.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = " ".join(str(v) for v in value)
        else:
            text = str(value)
        env[f"VISITGATE_{name.upper()}"] = text
    return env


def _probe(url: str) -> str | None:
    """None when url answers 200, else what it did instead."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (always http://127.0.0.1)
            return None if response.status == 200 else f"status {response.status}"
    except urllib.error.HTTPError as exc:
        return f"status {exc.code}"
    except OSError as exc:
        return repr(exc)


class ServedProcess:
    """One child process of a run: its log, its readiness, and a bounded stop."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path, ready_url: str | None) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.ready_url = ready_url

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once it has ended, else None."""
        return self.proc.poll()

    def running(self) -> bool:
        """Whether it has not exited yet."""
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait up to timeout seconds for it to end by itself; its exit status, or None if still running."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout)
        return None

    def tail(self, lines: int = 30) -> str:
        """The last lines of its log, each prefixed with its name (for failure messages)."""
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(f"{self.name}| {line}" for line in text[-lines:])

    def _not_ready(self, why: str) -> ProcessFailed:
        return ProcessFailed(f"{self.name} {why}\n{self.tail()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until the readiness URL answers 200; fail with the log if it exits or takes over timeout s."""
        if self.ready_url is None:
            return
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._not_ready(f"exited with {self.proc.returncode} before it was ready")
            problem = _probe(self.ready_url)
            if problem is None:
                return
            last = problem
            time.sleep(_POLL)
        raise self._not_ready(f"not ready at {self.ready_url} after {timeout:.0f}s ({last})")

    async def wait_ready_async(self, timeout: float = READY_TIMEOUT) -> None:
        """As wait_ready, without blocking the event loop (servers in this process keep answering)."""
        if self.ready_url is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer yet"
        while loop.time() < deadline:
            if self.proc.poll() is not None:
                raise self._not_ready(f"exited with {self.proc.returncode} before it was ready")
            problem = await asyncio.to_thread(_probe, self.ready_url)
            if problem is None:
                return
            last = problem
            await asyncio.sleep(_POLL)
        raise self._not_ready(f"not ready at {self.ready_url} after {timeout:.0f}s ({last})")

    def _signal_group(self, sig: int) -> None:
        # The child leads its own session, so its group holds anything it started (only signalled while the
        # leader lives: a finished group's number may belong to someone else's by now).
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM, without waiting."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()

    def kill(self) -> None:
        """SIGKILL (kill -9: no shutdown, no cleanup) and wait for it to be gone."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, up to grace seconds for an orderly exit, then SIGKILL; returns the exit status."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.poll()

    async def stop_async(self, grace: float = STOP_GRACE) -> int | None:
        """As stop, without blocking the event loop (a process stopping may still be talking to this one)."""
        if self.proc.poll() is None:
            self.terminate()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while self.proc.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.kill()
        return self.proc.poll()


_LIVE_RUNS: weakref.WeakSet[Processes] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """The last resort: whatever a run left running when the interpreter exits."""
    for run in list(_LIVE_RUNS):
        with contextlib.suppress(Exception):
            run.close()


class Processes:
    """The child processes of one test or benchmark run; leaving it (or close()) stops them all.

    log_dir holds one log file per process. With log_dir None, a fresh directory under /tmp is made (short:
    PostgreSQL's socket path must stay under ~100 characters) and removed on close unless keep_dir. Each child
    gets stop_grace seconds between SIGTERM and SIGKILL, and a descriptor limit of nofile unless a spawn says.
    """

    def __init__(self, log_dir: Path | None = None, prefix: str = "vg-run-", keep_dir: bool = False,
                 stop_grace: float = STOP_GRACE, nofile: int | None = None) -> None:
        self.stop_grace = stop_grace
        self.nofile = nofile
        if log_dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
            self._remove_dir = not keep_dir
        else:
            self.dir = Path(log_dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            self._remove_dir = False
        self.children: list[ServedProcess] = []
        self.pg: Any = None
        _LIVE_RUNS.add(self)

    # --- starting ----------------------------------------------------------------------------------------

    def _log_path(self, name: str) -> Path:
        path, n = self.dir / f"{name}.log", 1
        while path.exists():  # a restarted process keeps the log of its previous life
            n += 1
            path = self.dir / f"{name}-{n}.log"
        return path

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              ready_url: str | None = None, nofile: int | None = None,
              stdin: int | None = subprocess.DEVNULL) -> ServedProcess:
        """Start argv (from the repository root) with its output in its log; does not wait for readiness."""
        child_env = dict(os.environ if env is None else env)
        child_env["PYTHONPATH"] = python_path(child_env)
        log = self._log_path(name)
        with log.open("wb") as sink:
            proc = subprocess.Popen(list(argv), cwd=ROOT, env=child_env, stdin=stdin, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=child_setup(nofile or self.nofile))
        child = ServedProcess(name, proc, log, ready_url)
        self.children.append(child)
        return child

    def gateway(self, name: str, env: Mapping[str, str], loop: str = "uvloop", argv: Sequence[str] | None = None,
                nofile: int | None = None) -> ServedProcess:
        """`visitgate serve` as deployed (uvloop), or on asyncio's own loop, configured by env (gateway_env).

        argv replaces the command (a profiled serve, say); readiness is still its /readyz."""
        if argv is None:
            if loop == "asyncio":
                argv = [sys.executable, "-c", _SERVE_ON_ASYNCIO]
            elif loop == "uvloop":
                argv = [str(BIN / "visitgate"), "serve"]
            else:
                raise ValueError(f"loop must be uvloop or asyncio, not {loop!r}")
        ready = f"http://{env['VISITGATE_HOST']}:{env['VISITGATE_PORT']}/readyz"
        return self.spawn(name, argv, env=env, ready_url=ready, nofile=nofile)

    def sandbox(self, name: str, *, port: int, base_url: str, app_launch_url: str,
                clients: Sequence[Mapping[str, Any]] = (), test_controls: bool = True,
                extra_args: Sequence[str] = (), argv: Sequence[str] | None = None) -> ServedProcess:
        """The sandbox EHR (`python -m sandbox`) on 127.0.0.1:port; readiness is its CapabilityStatement.

        argv replaces `python -m sandbox` (the same command line follows it), e.g. to run it on uvloop."""
        import json

        args = ["--host", HOST, "--port", str(port), "--base-url", base_url, "--app-launch-url", app_launch_url,
                "--client-json", json.dumps(list(map(dict, clients)))]
        if test_controls:
            args.append("--test-controls")
        command = list(argv) if argv is not None else [sys.executable, "-m", "sandbox"]
        return self.spawn(name, [*command, *args, *extra_args], ready_url=f"http://{HOST}:{port}/fhir/metadata")

    def postgres(self) -> str:
        """An embedded PostgreSQL (pgserver) in this run's directory, removed on close; returns its DSN."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pgserver asks platformdirs for a runtime dir it does not need
            import pgserver

        self.pg = pgserver.get_server(str(self.dir / "pg"), cleanup_mode="delete")  # type: ignore[attr-defined]
        dsn: str = self.pg.get_uri()
        return dsn

    # --- stopping ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every child (last started first), then PostgreSQL, then remove the run's directory if ours."""
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop(self.stop_grace)
        self._finish()

    async def close_async(self) -> None:
        """As close, without blocking the event loop while the children shut down."""
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                await child.stop_async(self.stop_grace)
        self._finish()

    def _finish(self) -> None:
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.cleanup()
            self.pg = None
        if self._remove_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE_RUNS.discard(self)

    def tails(self, lines: int = 30) -> str:
        """The end of every child's log, for a failure message."""
        return "\n".join(child.tail(lines) for child in self.children if child.log.exists())

    def _say_on_failure(self, exc: BaseException | None) -> None:
        # Left because of an exception: the children's last words go to stderr, which pytest shows with the
        # failure (a test's own assertions may not have quoted them).
        if exc is not None and not isinstance(exc, (GeneratorExit, KeyboardInterrupt)) and self.children:
            print(f"--- logs of the processes in {self.dir} (the run failed: {type(exc).__name__}) ---\n"
                  f"{self.tails()}", file=sys.stderr)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._say_on_failure(exc)
        self.close()

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._say_on_failure(exc)
        await self.close_async()
