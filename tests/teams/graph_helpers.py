"""Helpers for the Teams tests: an application certificate, and the Graph and Entra double over TLS."""
from __future__ import annotations

import datetime as dt
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from oidc_helpers import make_sandbox_tls  # noqa: E402

from gateway.graph import SecretCredential, TeamsTenant, load_certificate  # noqa: E402
from sandbox.entra import EntraApp, EntraDouble, EntraUser  # noqa: E402
from sandbox.graph import GraphDouble, create_graph_double_app, serve  # noqa: E402

TENANT_ID = "3f1c5a52-8d3e-4a8e-9b6c-2d8f0e6a1b11"
CLIENT_ID = "a6e1f0c2-11b4-4c5e-8a2d-7f3b9c0d4e22"
SECRET = "graph-app-secret-" + "s" * 20
CLINICIAN_OID = "0b2d9e4f-5a6c-4d7e-8f90-a1b2c3d4e533"
OTHER_OID = "1c3e0f5a-6b7d-4e8f-9a01-b2c3d4e5f644"
_CERT_CACHE: list[str] = []


def app_certificate_pem() -> str:
    """A PEM bundle (RSA key and self-signed certificate) for the application; made once per run (RSA is slow)."""
    if not _CERT_CACHE:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "visitgate-graph-test")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
        _CERT_CACHE.append(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode()
                           + cert.public_bytes(serialization.Encoding.PEM).decode())
    return _CERT_CACHE[0]


@dataclass
class GraphStack:
    """The running double, how to trust it, and the tenant as the gateway knows it."""

    origin: str
    ca_path: Path
    app: web.Application
    entra: EntraDouble
    graph: GraphDouble

    def tenant(self, *, secret: bool = False) -> TeamsTenant:
        """The registered application, with its certificate (or secret)."""
        credential = SecretCredential(SECRET) if secret else load_certificate(app_certificate_pem())
        return TeamsTenant(tenant_id=TENANT_ID, client_id=CLIENT_ID, credential=credential)


@asynccontextmanager
async def graph_double(folder: Path, *, redirect_uris: tuple[str, ...] = (),
                       policy_for: tuple[str, ...] | None = (CLINICIAN_OID,), port: int = 0,
                       server_context: ssl.SSLContext | None = None) -> AsyncIterator[GraphStack]:
    """The double on https://127.0.0.1 with one tenant, one application (certificate and secret, the meetings
    role, access policy for `policy_for`; None: the whole tenant) and two users. With server_context, it serves
    with that (a CA another fixture made in folder) instead of making its own."""
    from sandbox.appkeys import ENTRA, GRAPH
    if server_context is None:
        tls = make_sandbox_tls(folder)
        server_context, ca_path = tls.server_context, tls.ca_path
    else:
        ca_path = folder / "test-ca.pem"
    app = create_graph_double_app()
    entra, graph = app[ENTRA], app[GRAPH]
    tenant = entra.tenant(TENANT_ID)
    entra_app = tenant.apps.setdefault(CLIENT_ID, EntraApp(CLIENT_ID))
    entra_app.secret = SECRET
    entra_app.certificates.append(x509.load_pem_x509_certificate(app_certificate_pem().encode()))
    entra_app.roles.add("OnlineMeetings.ReadWrite.All")
    entra_app.redirect_uris.update(redirect_uris)
    tenant.users[CLINICIAN_OID] = EntraUser(CLINICIAN_OID, "Dr Alex Example", "alex@clinic.example")
    tenant.users[OTHER_OID] = EntraUser(OTHER_OID, "Dr Sam Other", "sam@clinic.example")
    if policy_for is None:
        graph.grant_policy(TENANT_ID, CLIENT_ID)
    for oid in policy_for or ():
        graph.grant_policy(TENANT_ID, CLIENT_ID, oid)
    async with serve(app, server_context, port=port) as origin:
        yield GraphStack(origin, ca_path, app, entra, graph)
