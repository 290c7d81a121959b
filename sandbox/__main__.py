"""Run the sandbox EHR on its own: `python -m sandbox --port 8081 --app-launch-url URL ...`."""
from __future__ import annotations

import argparse
import json
import sys

from aiohttp import web

from .app import create_sandbox_app
from .config import OidcClient, SandboxClient, SandboxSettings


def parse_args(argv: list[str]) -> tuple[SandboxSettings, str, int]:
    """Settings, host and port from the command line."""
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Run the Visitgate sandbox EHR.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--base-url", required=True, help="public origin, e.g. http://localhost:8081")
    parser.add_argument("--app-launch-url", required=True, help="the gateway's provider launch URL")
    parser.add_argument("--patient-launch-url", help="the gateway's patient launch URL")
    parser.add_argument("--client-json", default="[]", help="JSON list of registered clients")
    parser.add_argument("--oidc-client-json", default="[]",
                        help="JSON list of applications registered with the OpenID provider (/idp)")
    parser.add_argument("--access-token-lifetime", type=int, default=3600)
    parser.add_argument("--test-controls", action="store_true", help="expose /_sandbox/* (tests only)")
    args = parser.parse_args(argv)
    try:
        raw_clients = json.loads(args.client_json)
        if not isinstance(raw_clients, list):
            raise ValueError("--client-json must be a JSON list")
        clients = tuple(SandboxClient.from_json(c) for c in raw_clients)
    except (ValueError, KeyError, TypeError) as exc:
        parser.error(f"--client-json: {exc}")
    try:
        raw_oidc = json.loads(args.oidc_client_json)
        if not isinstance(raw_oidc, list):
            raise ValueError("--oidc-client-json must be a JSON list")
        oidc_clients = tuple(OidcClient.from_json(c) for c in raw_oidc)
    except ValueError as exc:
        parser.error(f"--oidc-client-json: {exc}")
    settings = SandboxSettings(
        base_url=args.base_url.rstrip("/"),
        app_launch_url=args.app_launch_url,
        patient_launch_url=args.patient_launch_url,
        clients=clients,
        oidc_clients=oidc_clients,
        access_token_lifetime=args.access_token_lifetime,
        test_controls=args.test_controls,
    )
    return settings, args.host, args.port


def main(argv: list[str] | None = None) -> None:
    """Serve the sandbox until interrupted."""
    settings, host, port = parse_args(sys.argv[1:] if argv is None else argv)
    web.run_app(create_sandbox_app(settings), host=host, port=port)


if __name__ == "__main__":
    main()
