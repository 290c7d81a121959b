"""`visitgate demo`: the gateway, the sandbox EHR and an embedded PostgreSQL, on 127.0.0.1, until Ctrl-C.

The sandbox is served as `localhost` and the gateway as `127.0.0.1`, so the EHR page embeds the gateway
cross-site, as a real EHR does.

The configuration portal signs people in through the sandbox's OpenID provider, which the demo serves over
https on a port of its own (MSAL and the portal take https identity providers only), with a certificate from a
certificate authority the demo makes once (for 30 days) in its data folder; the gateway trusts that authority, a
browser does not (it warns once, unless told to trust it). The demo's organisation is the provider's "Sandbox Health" tenant, its admin user granted.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime as dt
import errno
import ipaddress
import os
import secrets
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import Settings, create_app
from gateway.appkeys import DB, SEALER
from gateway.cli import configure_logging
from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved, list_all
from gateway.security import generate_signing_key_pem
from gateway.web import runner_options

from appointments.schedule import feed_settings, set_feed
from config_portal.demo import DEMO_SLUG, ensure_demo_organisation, ensure_demo_teams

from . import SandboxClient, SandboxSettings, create_sandbox_app
from .config import DEMO_PORTAL_CLIENT_ID, demo_portal_client
from .oidc_directory import GROUP_APPROVERS, TENANT_MAIN, USERS
from .carriers.wiring import with_demo_carrier
from .phone import with_demo_messaging

DEMO_CLIENT_ID = "visitgate-demo"
# `--teams`: the demo organisation's Microsoft 365 tenant and application, at the Graph and Entra double.
DEMO_TEAMS_TENANT = "7d5e3c1a-0b9f-4e2d-8c7b-6a5f4e3d2c1b"
DEMO_TEAMS_CLIENT = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
DEMO_TEAMS_CLINICIANS = (("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", "Dr Ada Demo", "ada@sandbox-health.example"),
                         ("1d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f5a", "Dr Ben Demo", "ben@sandbox-health.example"))
DEMO_ADMIN = next(u for u in USERS if u.username == "admin@sandbox-health.example")
DEMO_READER = next(u for u in USERS if u.username == "reader@sandbox-health.example")


def _demo_secret(path: Path, make: bytes) -> bytes:
    # Demo only: production takes its secrets from the environment and has no defaults.
    if not path.exists():
        path.write_bytes(make)
        path.chmod(0o600)
    return path.read_bytes()


def demo_settings(data_dir: Path, port: int, sandbox_url: str, idp_ca_file: Path | None = None) -> Settings:
    """Gateway settings for the demo, with secrets generated once into the data folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = _demo_secret(data_dir / "demo-secret-key", base64.b64encode(os.urandom(32)))
    pem = _demo_secret(data_dir / "demo-signing-key.pem", generate_signing_key_pem())
    return Settings(public_url=f"http://127.0.0.1:{port}", secret_key=base64.b64decode(secret),
                    signing_key_pem=pem, database_url=os.environ.get("DATABASE_URL") or None,
                    data_dir=data_dir, host="127.0.0.1", port=port, frame_ancestors=(sandbox_url,),
                    idp_ca_file=idp_ca_file)


def demo_teams_settings(settings: Settings, port: int) -> Settings:
    """The demo's settings for `--teams`: Graph and Entra at the double, and a key Graph's notifications are
    encrypted to (generated once into the data folder, as VISITGATE_GRAPH_NOTIFICATION_KEY_FILE would name one),
    so that the Teams visits' presence is live."""
    from .graph_events import private_key_pem

    assert settings.data_dir is not None
    graph = f"https://localhost:{graph_port_of(port)}"
    key = _demo_secret(settings.data_dir / "demo-graph-notification-key.pem", private_key_pem())
    return dataclasses.replace(settings, graph_url=graph, entra_authority_host=graph, graph_notification_key_pem=key)


def make_idp_tls(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """The sign-in service's TLS: a certificate authority (its key never written down) and a `localhost` server
    certificate it signs, valid for 30 days and kept in folder, so that a browser told to trust the authority
    keeps trusting it across restarts; made afresh when missing or within a day of expiring. Answers the
    server's TLS context and the authority's PEM file."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_path, cert_path, key_path = folder / "demo-ca.pem", folder / "idp.pem", folder / "idp-key.pem"
    try:
        kept = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if ca_path.exists() and key_path.exists() and kept.not_valid_after_utc > now + dt.timedelta(days=1):
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert_path, key_path)
            return context, ca_path
    except (OSError, ValueError, ssl.SSLError):
        pass  # made afresh below
    valid = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=30))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Visitgate demo CA (this demo run only)")])
    ca_id = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_id, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_id), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, ca_path


def graph_port_of(port: int) -> int:
    """The port of the demo's https Graph and Entra double (`--teams`), for a gateway on port."""
    return port + 4


def _graph_double(settings: Settings, secret: str) -> web.Application:
    """The Graph and Entra double with the demo organisation's tenant: its application (a secret, the meetings
    and attendance reports' roles, an access policy for everyone) and two clinicians to sign in as."""

    from .appkeys import ENTRA, GRAPH
    from .entra import EntraApp, EntraUser
    from .graph import create_graph_double_app, set_base
    from .graph_events import ARTIFACT_ROLE

    app = create_graph_double_app()
    set_base(app, settings.graph_url)
    tenant = app[ENTRA].tenant(DEMO_TEAMS_TENANT)
    tenant.apps[DEMO_TEAMS_CLIENT] = EntraApp(DEMO_TEAMS_CLIENT, secret=secret,
                                              roles={"OnlineMeetings.ReadWrite.All", ARTIFACT_ROLE},
                                              redirect_uris={f"{settings.public_url}/teams/callback"})
    for oid, name, upn in DEMO_TEAMS_CLINICIANS:
        tenant.users[oid] = EntraUser(oid, name, upn)
    app[GRAPH].grant_policy(DEMO_TEAMS_TENANT, DEMO_TEAMS_CLIENT)
    return app


async def _serve(settings: Settings, sandbox_port: int, sandbox_url: str, idp_tls: ssl.SSLContext,
                 teams: bool = False) -> int:
    # Signals are taken first, and one that comes while the apps start is honoured once they have started:
    # the embedded PostgreSQL starts in a thread that cannot be cancelled, and whole apps stop cleanly
    # where half-started ones might leave that server running. Start-up takes seconds.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # A second signal changes nothing: Ctrl-C under dev.py arrives twice, from the terminal and passed on.
        loop.add_signal_handler(sig, stop.set)
    idp_port = idp_port_of(settings.port)
    idp_url = f"https://localhost:{idp_port}"
    assert settings.data_dir is not None
    # A secret for the portal's registration at the provider, kept so that a restart finds it the same.
    portal_secret = _demo_secret(settings.data_dir / "demo-portal-secret", secrets.token_urlsafe(32).encode()).decode()
    sign_in_url = f"{settings.public_url}/portal/{DEMO_SLUG}/sign-in"
    sandbox_app = create_sandbox_app(SandboxSettings(
        base_url=sandbox_url, app_launch_url=f"{settings.public_url}/launch",
        patient_launch_url=f"{settings.public_url}/launch/patient",
        # The launch's redirect URI, and the portal's for an approver's sign-in to this EHR.
        clients=(SandboxClient(client_id=DEMO_CLIENT_ID,
                               redirect_uris=(settings.redirect_uri, f"{settings.public_url}/portal/ehr-callback"),
                               auth_method="private_key_jwt", jwks_url=settings.jwks_url),),
        oidc_url=idp_url, portal_sign_in_url=f"{sign_in_url}/start", one_click_user=DEMO_ADMIN.username,
        oidc_clients=(demo_portal_client(f"{settings.public_url}/portal/callback", portal_secret,
                                         f"{settings.public_url}/portal/signed-out"),),
        # The EHR's interface engine: SIU messages of /ehr/appointments go to the gateway's MLLP listener.
        siu_target=f"127.0.0.1:{mllp_port_of(settings.port)}"))
    settings = with_demo_messaging(sandbox_app, settings, sandbox_url, smtp_port=smtp_port(settings.port))
    # Texts go through the ACS double (signed requests, phone numbers the portal can buy), and the phone's
    # replies (STOP, START, HELP) come back through its Event Grid webhook.
    settings = with_demo_carrier(sandbox_app, settings, sandbox_url)
    gateway_app = create_app(settings)
    # Open requests get 10 s to finish on the way out (as under `visitgate serve`): dev.py waits 30 s in all.
    # The sandbox EHR logs no requests: aiohttp's access log would put whole request lines, with live launch
    # states and PKCE challenges in their query strings, among the gateway's lines on the demo's console.
    runners = [web.AppRunner(gateway_app, shutdown_timeout=10, **runner_options()),  # type: ignore[arg-type]
               web.AppRunner(sandbox_app, shutdown_timeout=10, access_log=None)]
    teams_secret = _demo_secret(settings.data_dir / "demo-teams-secret",
                                secrets.token_urlsafe(32).encode()).decode() if teams else ""
    if teams:
        runners.append(web.AppRunner(_graph_double(settings, teams_secret), shutdown_timeout=10, access_log=None))
    try:
        try:
            for runner in runners:
                await runner.setup()
            await web.TCPSite(runners[0], "127.0.0.1", settings.port).start()
            await web.TCPSite(runners[1], "127.0.0.1", sandbox_port).start()
            # The same sandbox over https: its OpenID provider, which names this origin in its documents.
            await web.TCPSite(runners[1], "127.0.0.1", idp_port, ssl_context=idp_tls).start()
            if teams:  # the Graph and Entra double, with the same demo certificate (localhost, 127.0.0.1)
                await web.TCPSite(runners[2], "127.0.0.1", graph_port_of(settings.port), ssl_context=idp_tls).start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            print(f"visitgate demo: {exc.strerror}.\nThe demo needs ports {settings.port}, {sandbox_port}, "
                  f"{smtp_port(settings.port)} and {idp_port} on 127.0.0.1 (the gateway, the sandbox EHR, its "
                  f"SMTP server, its sign-in service): is another demo running? Choose others with --port.",
                  file=sys.stderr)
            return 1
        fhir_base = f"{sandbox_url}/fhir"
        async with gateway_app[DB].acquire() as conn:
            if not any(c["fhir_base_url"] == fhir_base for c in await list_all(conn)):
                await add_approved(conn, gateway_app[SEALER], NewConfiguration(
                    fhir_base_url=fhir_base, environment="test", client_id=DEMO_CLIENT_ID,
                    client_auth="private_key_jwt", scopes=DEFAULT_SCOPES, writeback_strategy="fhir-r4-put"),
                    approved_by="visitgate demo")
            demo_config = next(c["id"] for c in await list_all(conn) if c["fhir_base_url"] == fhir_base)
            if await feed_settings(conn, demo_config) is None:
                # Confirmations and reminders from the sandbox's SIU feed (an operator would use
                # `visitgate config feed set`); a busy port only costs the demo its feed, with a warning.
                await set_feed(conn, demo_config, mllp_port=mllp_port_of(settings.port))
            await ensure_demo_organisation(
                conn, gateway_app[SEALER], entra_host=f"{idp_url}/idp", tenant_id=TENANT_MAIN,
                client_id=DEMO_PORTAL_CLIENT_ID, client_secret=portal_secret, configuration_id=demo_config,
                grants=[("admin", "subject", DEMO_ADMIN.oid), ("approver", "group", GROUP_APPROVERS),
                        ("report_reader", "email", DEMO_READER.email)])
            if teams:
                from gateway.graph import SecretCredential, TeamsTenant
                await ensure_demo_teams(conn, gateway_app[SEALER], demo_config, TeamsTenant(
                    DEMO_TEAMS_TENANT, DEMO_TEAMS_CLIENT, SecretCredential(teams_secret)))
        if not stop.is_set():
            print(f"\nVisitgate demo is running.\n"
                  f"  Play the clinician: open {sandbox_url}/ehr and click \"Begin virtual visit\".\n"
                  f"  Play the patient: send the link from the visit, then open it from {sandbox_url}/mailbox\n"
                  f"    or {sandbox_url}/phone, or start from the patient portal at {sandbox_url}/portal\n"
                  f"  Book, move and cancel appointments at {sandbox_url}/ehr/appointments: the EHR sends HL7\n"
                  f"    SIU to the gateway (MLLP, 127.0.0.1:{mllp_port_of(settings.port)}), whose confirmations\n"
                  f"    arrive at the phone and the mailbox.\n"
                  f"  The sandbox EHR's FHIR base URL: {fhir_base}\n"
                  f"  Configuration portal: {sign_in_url}\n"
                  f"    (or \"Sign in to the portal as the demo admin\" on {sandbox_url}/ehr), then click\n"
                  f"    \"Continue as the demo admin\". Its sign-in service, {idp_url}, has a certificate from\n"
                  f"    the demo's own authority ({settings.idp_ca_file}): your browser warns once; accept it.\n"
                  + (f"  Microsoft Teams: visits are Teams meetings at the Graph double {settings.graph_url}; the\n"
                     f"    clinician signs in with Microsoft once (pick a demo clinician) and joins in Teams.\n"
                     if teams else "")
                  + f"  Gateway: {settings.public_url}  (Ctrl-C stops everything)\n", flush=True)
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


def mllp_port_of(port: int) -> int:
    """The port of the gateway's HL7 MLLP listener in the demo, for a gateway on port (port + 4 is the Graph
    double's, with --teams)."""
    return port + 5


def idp_port_of(port: int) -> int:
    """The port of the demo's https sign-in service (the sandbox's OpenID provider), for a gateway on port."""
    return port + 3


def add_command(commands: Any) -> None:
    """Add `visitgate demo` to the command line (registered under the visitgate.commands entry points)."""
    demo = commands.add_parser("demo", help="run the gateway with the sandbox EHR on 127.0.0.1")
    demo.add_argument("--teams", action="store_true",
                      help="run the demo organisation's visits as Microsoft Teams meetings, on the sandbox's Graph "
                           "and Entra double (https, on the port after the sign-in service's)")
    demo.add_argument("--port", type=int, default=8080,
                      help="gateway port; the sandbox EHR takes the next one, its SMTP server the one after, "
                           "its https sign-in service the one after that")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo until SIGINT or SIGTERM; returns 0 once everything it started has stopped."""
    configure_logging(os.environ.get("VISITGATE_LOG_LEVEL", "INFO"))
    port = int(args.port)
    sandbox_port = port + 1
    sandbox_url = f"http://localhost:{sandbox_port}"
    data_dir = Path(os.environ.get("VISITGATE_DATA_DIR", ".visitgate"))
    idp_tls, ca_file = make_idp_tls(data_dir / "demo-tls")
    settings = demo_settings(data_dir, port, sandbox_url, idp_ca_file=ca_file)
    teams = bool(getattr(args, "teams", False))
    if teams:
        settings = demo_teams_settings(settings, port)
    return asyncio.run(_serve(settings, sandbox_port, sandbox_url, idp_tls, teams=teams))
