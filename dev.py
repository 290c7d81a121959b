#!/usr/bin/env python3
"""Set up the project's virtual environment, then run the demo or the test suite.

Only the Python standard library is used here, so this works on a fresh machine with Python >= 3.11.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _setup(extras: str) -> None:
    """Create .venv and install the project into it, again only when pyproject.toml changed."""
    if sys.version_info < (3, 11):
        sys.exit("visitgate needs Python 3.11 or newer")
    stamp = VENV / f".installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not (BIN / "python").exists() or not (BIN / "pip").exists():
        if subprocess.run([sys.executable, "-m", "venv", str(VENV)]).returncode != 0:
            shutil.rmtree(VENV, ignore_errors=True)  # half made: the next run starts afresh
            sys.exit("dev.py: could not create .venv; Python's venv module is missing "
                     "(Debian and Ubuntu: apt install python3-venv)")
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    _or_exit("upgrading pip", [*pip, "install", "--upgrade", "pip"])
    target = f".[{extras}]" if extras else "."
    # setuptools tells every editable install, as a warning pip shows even with -q, to beware of folders
    # named like its packages in the working directory: here they are those very packages. A first run
    # should be quiet.
    quiet = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:Editable installation"]))
    _or_exit(f"installing {target}", [*pip, "install", "-e", target], env={**os.environ, "PYTHONWARNINGS": quiet})
    stamp.write_text(digest)


def _or_exit(what: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Run a set-up step; when it fails, stop with one line under pip's own message, not a traceback."""
    if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
        sys.exit(f"dev.py: {what} into .venv failed (see above); the next run tries again")


def _private_network(cmd: list[str]) -> list[str]:
    """Wrap cmd in a private network namespace with only loopback, when the machine allows it.

    WebRTC tests then gather loopback candidates only, and nothing can leave the machine.
    """
    if shutil.which("unshare") and shutil.which("ip") and os.geteuid() == 0:
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            quoted = " ".join(_quote(c) for c in cmd)
            return ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {quoted}"]
    return cmd


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# How long a child may take to stop after SIGINT or SIGTERM before it is killed. The demo needs a few
# seconds (its web servers give open requests up to 10 s, then the embedded PostgreSQL stops).
STOP_WAIT = 30.0


class _Stopping(Exception):
    """A stop signal arrived while this process waited for its child."""


def _run_passing_stops_on(cmd: list[str], passed: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> int:
    """Run cmd in ROOT until it ends; returns its exit status (128 + the number of a signal that ended it).

    SIGINT and SIGTERM sent to this process do not end it: those in `passed` go on to the child, which then
    has STOP_WAIT seconds to stop before it is killed. Before, a SIGTERM ended this process alone and left
    the demo, and the PostgreSQL it started, running; and Ctrl-C made subprocess.call kill the demo
    before it had stopped that PostgreSQL."""
    child: subprocess.Popen[bytes] | None = None
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if child is not None and signum in passed:
            child.send_signal(signum)  # a demo takes a second one calmly (Ctrl-C reaches it from the terminal too)
        if not stopping:
            stopping.append(signum)
            if child is not None:
                raise _Stopping  # out of the unbounded wait below, into the bounded one

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        child = subprocess.Popen(cmd, cwd=ROOT)
        try:
            if stopping:  # it came while the child was being started
                if stopping[0] in passed:
                    child.send_signal(stopping[0])
                raise _Stopping
            code = child.wait()
        except _Stopping:
            try:
                code = child.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                print(f"dev.py: {cmd[0]} did not stop within {STOP_WAIT:.0f} s; killing it", file=sys.stderr)
                child.kill()
                code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def main() -> int:
    """Entry point: `python3 dev.py demo` or `python3 dev.py test [pytest args]`."""
    what = sys.argv[1] if len(sys.argv) > 1 else "demo"
    rest = sys.argv[2:]
    if what in ("-h", "--help", "help"):
        print("python3 dev.py demo [--port 8080]   the gateway and the sandbox EHR on 127.0.0.1 (README: Quick start)\n"
              "      [--teams]                     visits as Teams meetings on the sandbox's Graph double\n"
              "python3 dev.py test [pytest args]   the test suite")
        return 0
    if what == "demo":
        _setup("")
        return _run_passing_stops_on([str(BIN / "visitgate"), "demo", *rest])
    if what == "test":
        _setup("test")
        cmd = [str(BIN / "python"), "-m", "pytest", *rest]
        # Ctrl-C reaches pytest from the terminal; a second one, passed on, would cut its own clean-up short.
        return _run_passing_stops_on(_private_network(cmd), passed=(signal.SIGTERM,))
    sys.exit(f"unknown command {what!r}: use 'demo' or 'test'")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while the virtual environment is set up
        sys.exit(128 + signal.SIGINT)
