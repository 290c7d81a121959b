"""`visitgate demo`: the gateway, the sandbox EHR and an embedded PostgreSQL, on 127.0.0.1, until Ctrl-C.

The sandbox is served as `localhost` and the gateway as `127.0.0.1`, so the EHR page embeds the gateway
cross-site, as a real EHR does.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import Settings, create_app
from gateway.appkeys import DB, SEALER
from gateway.cli import configure_logging
from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved, list_all
from gateway.security import generate_signing_key_pem
from gateway.web import runner_options

from . import SandboxClient, SandboxSettings, create_sandbox_app
from .phone import with_demo_messaging

DEMO_CLIENT_ID = "visitgate-demo"


def _demo_secret(path: Path, make: bytes) -> bytes:
    # Demo only: production takes its secrets from the environment and has no defaults.
    if not path.exists():
        path.write_bytes(make)
        path.chmod(0o600)
    return path.read_bytes()


def demo_settings(data_dir: Path, port: int, sandbox_url: str) -> Settings:
    """Gateway settings for the demo, with secrets generated once into the data folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = _demo_secret(data_dir / "demo-secret-key", base64.b64encode(os.urandom(32)))
    pem = _demo_secret(data_dir / "demo-signing-key.pem", generate_signing_key_pem())
    return Settings(public_url=f"http://127.0.0.1:{port}", secret_key=base64.b64decode(secret),
                    signing_key_pem=pem, database_url=os.environ.get("DATABASE_URL") or None,
                    data_dir=data_dir, host="127.0.0.1", port=port, frame_ancestors=(sandbox_url,))


async def _serve(settings: Settings, sandbox_port: int, sandbox_url: str) -> int:
    # Signals are taken first, and one that comes while the apps start is honoured once they have started:
    # the embedded PostgreSQL starts in a thread that cannot be cancelled, and whole apps stop cleanly
    # where half-started ones might leave that server running. Start-up takes seconds.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # A second signal changes nothing: Ctrl-C under dev.py arrives twice, from the terminal and passed on.
        loop.add_signal_handler(sig, stop.set)
    sandbox_app = create_sandbox_app(SandboxSettings(
        base_url=sandbox_url, app_launch_url=f"{settings.public_url}/launch",
        patient_launch_url=f"{settings.public_url}/launch/patient",
        # The launch's redirect URI, and the portal's for an approver's sign-in to this EHR.
        clients=(SandboxClient(client_id=DEMO_CLIENT_ID,
                               redirect_uris=(settings.redirect_uri, f"{settings.public_url}/portal/ehr-callback"),
                               auth_method="private_key_jwt", jwks_url=settings.jwks_url),)))
    settings = with_demo_messaging(sandbox_app, settings, sandbox_url, smtp_port=smtp_port(settings.port))
    gateway_app = create_app(settings)
    # Open requests get 10 s to finish on the way out (as under `visitgate serve`): dev.py waits 30 s in all.
    # The sandbox EHR logs no requests: aiohttp's access log would put whole request lines, with live launch
    # states and PKCE challenges in their query strings, among the gateway's lines on the demo's console.
    runners = [web.AppRunner(gateway_app, shutdown_timeout=10, **runner_options()),  # type: ignore[arg-type]
               web.AppRunner(sandbox_app, shutdown_timeout=10, access_log=None)]
    try:
        try:
            for runner in runners:
                await runner.setup()
            await web.TCPSite(runners[0], "127.0.0.1", settings.port).start()
            await web.TCPSite(runners[1], "127.0.0.1", sandbox_port).start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            print(f"visitgate demo: {exc.strerror}.\nThe demo needs ports {settings.port}, {sandbox_port} and "
                  f"{smtp_port(settings.port)} on 127.0.0.1 (the gateway, the sandbox EHR, its SMTP server): "
                  f"is another demo running? Choose others with --port.", file=sys.stderr)
            return 1
        fhir_base = f"{sandbox_url}/fhir"
        async with gateway_app[DB].acquire() as conn:
            if not any(c["fhir_base_url"] == fhir_base for c in await list_all(conn)):
                await add_approved(conn, gateway_app[SEALER], NewConfiguration(
                    fhir_base_url=fhir_base, environment="test", client_id=DEMO_CLIENT_ID,
                    client_auth="private_key_jwt", scopes=DEFAULT_SCOPES, writeback_strategy="fhir-r4-put"),
                    approved_by="visitgate demo")
        if not stop.is_set():
            print(f"\nVisitgate demo is running.\n"
                  f"  Play the clinician: open {sandbox_url}/ehr and click \"Begin virtual visit\".\n"
                  f"  Play the patient: send the link from the visit, then open it from {sandbox_url}/mailbox\n"
                  f"    or {sandbox_url}/phone, or start from the patient portal at {sandbox_url}/portal\n"
                  f"  The sandbox EHR's FHIR base URL: {fhir_base}\n"
                  f"  Gateway: {settings.public_url}  (Ctrl-C stops everything)\n", flush=True)
            await stop.wait()
        print("stopping...", flush=True)
    finally:
        # The gateway's cleanup stops the embedded PostgreSQL, unless another process still holds it.
        for runner in reversed(runners):
            await runner.cleanup()
    return 0


def smtp_port(port: int) -> int:
    """The demo's SMTP server port, for a gateway on port (the sandbox EHR has the one between)."""
    return port + 2


def add_command(commands: Any) -> None:
    """Add `visitgate demo` to the command line (registered under the visitgate.commands entry points)."""
    demo = commands.add_parser("demo", help="run the gateway with the sandbox EHR on 127.0.0.1")
    demo.add_argument("--port", type=int, default=8080,
                      help="gateway port; the sandbox EHR takes the next one and its SMTP server the one after")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo until SIGINT or SIGTERM; returns 0 once everything it started has stopped."""
    configure_logging(os.environ.get("VISITGATE_LOG_LEVEL", "INFO"))
    port = int(args.port)
    sandbox_port = port + 1
    sandbox_url = f"http://localhost:{sandbox_port}"
    settings = demo_settings(Path(os.environ.get("VISITGATE_DATA_DIR", ".visitgate")), port, sandbox_url)
    return asyncio.run(_serve(settings, sandbox_port, sandbox_url))
