#!/usr/bin/env python3
"""Set up the project's virtual environment, then run the demo or the test suite.

Only the Python standard library is used here, so this works on a fresh machine with Python >= 3.11.
"""
from __future__ import annotations

import hashlib
import os
import shutil
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
    if not (BIN / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    target = f".[{extras}]" if extras else "."
    subprocess.run([*pip, "install", "-e", target], check=True, cwd=ROOT)
    stamp.write_text(digest)


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


def main() -> int:
    """Entry point: `python3 dev.py demo` or `python3 dev.py test [pytest args]`."""
    what = sys.argv[1] if len(sys.argv) > 1 else "demo"
    rest = sys.argv[2:]
    if what == "demo":
        _setup("")
        return subprocess.call([str(BIN / "visitgate"), "demo", *rest], cwd=ROOT)
    if what == "test":
        _setup("test")
        cmd = [str(BIN / "python"), "-m", "pytest", *rest]
        return subprocess.call(_private_network(cmd), cwd=ROOT)
    sys.exit(f"unknown command {what!r}: use 'demo' or 'test'")


if __name__ == "__main__":
    sys.exit(main())
