"""`visitgate demo` and `python3 dev.py demo` as a newcomer runs them: start, answer, and stop everything
(the embedded PostgreSQL included) on Ctrl-C or SIGTERM, with no traceback."""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import pytest
from aiohttp.test_utils import unused_port

VISITGATE = str(Path(sys.executable).with_name("visitgate"))
REPO = Path(__file__).resolve().parents[1]
STOP_BOUND = 40  # seconds: dev.py gives the demo 30 to stop before it kills it


def _free_ports() -> int:
    """A port that is free with the next five free too (the demo serves the EHR on port + 1, SMTP on port + 2,
    its https sign-in service on port + 3, with --teams the Graph double on port + 4, and the gateway's MLLP
    listener for the sandbox's SIU feed is on port + 5).

    Checked by binding them: a free port alone was not enough once, its neighbour being some connection's
    own (ephemeral) port at the time."""
    for _ in range(50):
        port = unused_port()
        if port + 5 > 65535:
            continue
        try:
            for neighbour in (port + 1, port + 2, port + 3, port + 4, port + 5):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", neighbour))
        except OSError:
            continue
        return port
    raise AssertionError("no five neighbouring free ports on 127.0.0.1")


@pytest.fixture
def data_dir() -> AsyncIterator[Path]:
    """The demo's data folder, short (PostgreSQL's socket path has a limit); its server is gone afterwards."""
    data = Path("/tmp") / f"vg-demo-{os.getpid()}-{unused_port()}"
    yield data
    for process in _postgres_serving(data):  # only after a failure: don't leave it to the next test
        process.kill()
    shutil.rmtree(data, ignore_errors=True)


def _postgres_serving(data: Path) -> list[psutil.Process]:
    """The PostgreSQL processes whose data folder is data/pg, found by their command line."""
    pgdata = str((data / "pg").resolve())
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        if (process.info["name"] == "postgres" and pgdata in (process.info["cmdline"] or [])
                and process.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(process)
    return found


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group pgid."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


async def _start(cmd: list[str], data: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Start cmd in a process group of its own (as a terminal would) and wait for the demo's banner."""
    env = {**os.environ, "VISITGATE_DATA_DIR": str(data), "VISITGATE_LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, start_new_session=True,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    banner = b""
    for _ in range(200):  # bounded: the embedded PostgreSQL starts first
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        banner += line
        if b"Ctrl-C" in line or not line:
            break
    assert b"/ehr" in banner, banner.decode(errors="replace")
    return proc, banner.decode(errors="replace")


async def _stopped(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """Its exit status and everything else it printed, once it has ended (within STOP_BOUND)."""
    assert proc.stdout is not None
    rest = await asyncio.wait_for(proc.stdout.read(), STOP_BOUND)
    return await asyncio.wait_for(proc.wait(), STOP_BOUND), rest.decode(errors="replace")


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def _sign_in_to_the_portal_as_the_demo_admin(port: int, banner: str, data: Path) -> None:
    """What the banner and the EHR page promise: the portal's address, and one click at the sign-in service
    (whose certificate comes from the demo's own authority) opening the portal as its admin."""
    gateway = f"http://127.0.0.1:{port}"
    assert f"{gateway}/portal/sandbox-health/sign-in" in banner, banner
    trust = ssl.create_default_context(cafile=str(data / "demo-tls" / "demo-ca.pem"))
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[gateway])
    async with aiohttp.ClientSession(cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=trust),
                                     timeout=aiohttp.ClientTimeout(total=10)) as browser:
        async with browser.get(f"http://localhost:{port + 1}/ehr") as ehr:
            link = re.search(r'href="([^"]+)">Sign in to the portal as the demo admin', await ehr.text())
        assert link and link.group(1) == f"{gateway}/portal/sandbox-health/sign-in/start"
        async with browser.get(link.group(1), allow_redirects=False) as started:
            authorize = started.headers["Location"]
        assert authorize.startswith(f"https://localhost:{port + 3}/idp/"), authorize
        async with browser.get(authorize) as page:
            form = re.search(r'<form method="post" action="([^"]+)" id="one-click">(.*?)</form>',
                             await page.text(), re.S)
        assert form, "the sign-in page offers one click as the demo admin"
        fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form.group(2)))
        async with browser.post(form.group(1), data=fields, allow_redirects=False) as signed_in:
            callback = signed_in.headers["Location"]
        async with browser.get(callback) as portal:  # the callback, then the portal's home
            text = await portal.text()
            assert portal.status == 200 and str(portal.url) == f"{gateway}/portal/sandbox-health", text
            assert "Admin" in text


def _dev_py_tree(tmp_path: Path) -> Path:
    """A copy of dev.py whose virtual environment is already set up: its stamp matches pyproject.toml, so
    dev.py goes straight to running .venv/bin/visitgate (here the one running these tests)."""
    shutil.copy(REPO / "dev.py", tmp_path / "dev.py")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "visitgate").symlink_to(VISITGATE)
    digest = hashlib.sha256((tmp_path / "pyproject.toml").read_bytes()).hexdigest()
    (tmp_path / ".venv" / ".installed-base").write_text(digest)
    return tmp_path / "dev.py"


async def test_demo_serves_the_ehr_and_gateway_and_stops_everything_on_ctrl_c(data_dir: Path) -> None:
    port = _free_ports()
    proc, banner = await _start([VISITGATE, "demo", "--port", str(port)], data_dir)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"http://127.0.0.1:{port + 1}/ehr") as ehr:
                assert ehr.status == 200 and "Begin virtual visit" in await ehr.text()
            async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                assert ready.status == 200
        await _sign_in_to_the_portal_as_the_demo_admin(port, banner, data_dir)
        assert _postgres_serving(data_dir), "the demo runs its own PostgreSQL in its data folder"
        proc.send_signal(signal.SIGINT)
        code, output = await _stopped(proc)
        assert code == 0, output
        assert "Traceback" not in output, output
        assert not _postgres_serving(data_dir), output
    finally:
        await _kill(proc)


async def test_demo_with_teams_runs_the_organisation_on_the_graph_double(data_dir: Path) -> None:
    port = _free_ports()
    proc, banner = await _start([VISITGATE, "demo", "--teams", "--port", str(port)], data_dir)
    try:
        assert f"https://localhost:{port + 4}" in banner, banner
        jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[f"http://127.0.0.1:{port}"])
        async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=15)) as http:
            async with http.get(f"http://localhost:{port + 1}/ehr") as ehr:
                visit = re.search(r'href="(/ehr/visit/[^"]+)"', await ehr.text())
            assert visit, "the EHR's schedule links a visit"
            async with http.get(f"http://localhost:{port + 1}{visit.group(1)}") as page:
                src = re.search(r'<iframe id="app" title="Video visit" src="([^"]+)"', await page.text())
            assert src
            async with http.get(src.group(1).replace("&amp;", "&")) as view:
                text = await view.text()
                assert view.status == 200, text
        # The clinician's first Teams visit: the one-time Microsoft sign-in at the double.
        assert 'id="teams-sign-in"' in text and f"https://localhost:{port + 4}/" in text, text
        # The key Graph's notifications are encrypted to, made once in the data folder: presence is live.
        assert (data_dir / "demo-graph-notification-key.pem").stat().st_mode & 0o077 == 0
        proc.send_signal(signal.SIGINT)
        code, output = await _stopped(proc)
        assert code == 0 and "Traceback" not in output, output
    finally:
        await _kill(proc)


@pytest.mark.parametrize("stop", ["SIGTERM to dev.py", "Ctrl-C in its terminal"])
async def test_dev_py_demo_stops_everything_it_started(stop: str, data_dir: Path, tmp_path: Path) -> None:
    dev_py = _dev_py_tree(tmp_path)
    proc, _ = await _start([sys.executable, str(dev_py), "demo", "--port", str(_free_ports())], data_dir)
    try:
        assert _postgres_serving(data_dir)
        if stop == "SIGTERM to dev.py":
            proc.send_signal(signal.SIGTERM)  # dev.py alone, as `kill <pid>` or a service manager does
        else:
            os.killpg(proc.pid, signal.SIGINT)  # the whole foreground group, as the terminal does
        code, output = await _stopped(proc)
        assert code == 0, output
        assert "Traceback" not in output, output
        assert _group_members(proc.pid) == [], output
        assert not _postgres_serving(data_dir), output
    finally:
        await _kill(proc)


async def test_demo_after_a_killed_one_stops_the_postgresql_that_one_left(data_dir: Path) -> None:
    first, _ = await _start([VISITGATE, "demo", "--port", str(_free_ports())], data_dir)
    await _kill(first)  # kill -9: no chance to stop its PostgreSQL
    left = _postgres_serving(data_dir)
    assert left, "a killed demo leaves its PostgreSQL running"
    again, _ = await _start([VISITGATE, "demo", "--port", str(_free_ports())], data_dir)
    try:
        again.send_signal(signal.SIGTERM)
        code, output = await _stopped(again)
        assert code == 0, output
        assert "Traceback" not in output, output
        assert not _postgres_serving(data_dir), output
    finally:
        await _kill(again)


async def test_embedded_postgresql_starts_when_its_postmaster_pid_names_another_process(data_dir: Path) -> None:
    from gateway import db

    server, _ = await asyncio.to_thread(db.start_embedded, data_dir)  # a first run, stopped as it should be
    await asyncio.to_thread(server.cleanup)
    # After a reboot or a container restart the old server's pid can belong to any process.
    other = await asyncio.create_subprocess_exec("sleep", "60")
    pid_file = data_dir / "pg" / "postmaster.pid"
    pid_file.write_text(f"{other.pid}\n{(data_dir / 'pg').resolve()}\n1764690000\n5432\n{(data_dir / 'pg').resolve()}\n"
                        f"\n  5432001 0\nready\n")
    try:
        server, dsn = await asyncio.to_thread(db.start_embedded, data_dir)
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            assert await conn.fetchval("SELECT 1") == 1
            await conn.close()
        finally:
            await asyncio.to_thread(server.cleanup)
        assert _alive(other.pid), "the process that has the old server's pid is left alone"
        assert not _postgres_serving(data_dir)
    finally:
        if other.returncode is None:
            other.kill()
        await other.wait()


def test_demo_teams_settings_have_a_notification_key_kept_in_the_data_folder(tmp_path: Path) -> None:
    from presence.graph_crypto import NotificationKey
    from sandbox.demo import demo_settings, demo_teams_settings

    settings = demo_teams_settings(demo_settings(tmp_path, 8080, "http://localhost:8081"), 8080)
    assert settings.graph_url == settings.entra_authority_host == "https://localhost:8084"
    assert settings.graph_notification_key_pem is not None
    NotificationKey.from_pem(settings.graph_notification_key_pem)  # one the Teams events part takes
    kept = tmp_path / "demo-graph-notification-key.pem"
    assert kept.read_bytes() == settings.graph_notification_key_pem and kept.stat().st_mode & 0o077 == 0
    # A restart finds the same key (Graph's live subscriptions were made with its certificate).
    again = demo_teams_settings(demo_settings(tmp_path, 8080, "http://localhost:8081"), 8080)
    assert again.graph_notification_key_pem == settings.graph_notification_key_pem
