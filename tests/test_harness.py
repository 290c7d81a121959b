"""The process harness itself: bounded readiness, the log in the failure, SIGTERM then SIGKILL, nothing left over.

The children here are tiny Python programs, so these tests say what the harness does without a gateway.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.harness import ProcessFailed, Processes, free_port

# Serves 200 on every GET, on the port given, until SIGTERM.
SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
# Ignores SIGTERM, as a hung process would.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def test_a_served_process_is_ready_then_stopped_when_the_run_ends(tmp_path: Path) -> None:
    port = free_port()
    with Processes(tmp_path) as procs:
        server = procs.spawn("server", [sys.executable, "-c", SERVER, str(port)],
                             ready_url=f"http://127.0.0.1:{port}/readyz")
        server.wait_ready(timeout=20)
        assert server.running()
    assert not server.running()
    assert "serving" in (tmp_path / "server.log").read_text()


def test_a_process_that_exits_before_it_is_ready_fails_with_its_log(tmp_path: Path) -> None:
    with Processes(tmp_path) as procs:
        child = procs.spawn("broken", [sys.executable, "-c", "print('no database'); raise SystemExit(3)"],
                            ready_url=f"http://127.0.0.1:{free_port()}/readyz")
        with pytest.raises(ProcessFailed) as failed:
            child.wait_ready(timeout=20)
    assert "exited with 3" in str(failed.value) and "broken| no database" in str(failed.value)


def test_a_process_that_never_gets_ready_fails_within_the_bound(tmp_path: Path) -> None:
    with Processes(tmp_path) as procs:
        child = procs.spawn("silent", [sys.executable, "-c", STUBBORN],
                            ready_url=f"http://127.0.0.1:{free_port()}/readyz")
        with pytest.raises(ProcessFailed, match="not ready"):
            child.wait_ready(timeout=0.5)
        child.stop(grace=0.2)
        assert not child.running()  # SIGTERM ignored: SIGKILL after the grace


async def test_leaving_a_run_on_a_failure_stops_every_process_even_one_that_ignores_sigterm(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        async with Processes(tmp_path, stop_grace=0.3) as procs:
            children = [procs.spawn(f"child-{n}", [sys.executable, "-c", STUBBORN]) for n in range(2)]
            raise RuntimeError("the test failed")
    assert not any(child.running() for child in children)
    # The failure comes with the children's logs.
    assert f"logs of the processes in {tmp_path} (the run failed: RuntimeError)" in capsys.readouterr().err
