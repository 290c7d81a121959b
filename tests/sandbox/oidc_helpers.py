"""Helpers for the tests of the sandbox's OpenID provider (a plain module, imported by name)."""
from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sandbox_helpers import BASE_URL, pkce_pair, query_of

from sandbox.oidc_directory import TENANT_MAIN

IDP = BASE_URL + "/idp"
PORTAL_REDIRECT = "http://127.0.0.1:8080/portal/signin/callback"
PORTAL_SIGNED_OUT = "http://127.0.0.1:8080/portal/signed-out"
POST_ID = "portal-post"
POST_SECRET = "portal-post-secret"
BASIC_ID = "portal-basic"
BASIC_SECRET = "portal-basic-secret"
JWT_ID = "portal-jwt"
SINGLE_ID = "portal-single-tenant"
ADMIN = ("admin@sandbox-health.example", "admin-sandbox-pw")
_TX = re.compile(r'name="tx" value="([^"]+)"')


def issuer_of(tenant: str) -> str:
    """The issuer the provider announces for a tenant (settings' base URL, not the test server's)."""
    return f"{IDP}/{tenant}/v2.0"


def path(tenant: str, endpoint: str) -> str:
    """The path of one of a tenant's endpoints."""
    return {
        "discovery": f"/idp/{tenant}/v2.0/.well-known/openid-configuration",
        "authorize": f"/idp/{tenant}/oauth2/v2.0/authorize",
        "login": f"/idp/{tenant}/login",
        "token": f"/idp/{tenant}/oauth2/v2.0/token",
        "keys": f"/idp/{tenant}/discovery/v2.0/keys",
        "logout": f"/idp/{tenant}/oauth2/v2.0/logout",
    }[endpoint]


def auth_params(challenge: str, **overrides: Any) -> dict[str, str]:
    """A correct authorization request for the client_secret_post portal; None removes a parameter."""
    params = {
        "client_id": POST_ID, "response_type": "code", "redirect_uri": PORTAL_REDIRECT,
        "scope": "openid profile email", "state": "portal-state-0123456789abcdef", "nonce": "portal-nonce-42",
        "code_challenge": challenge, "code_challenge_method": "S256",
    }
    for key, value in overrides.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return params


def tx_of(html: str) -> str:
    """The sign-in transaction id in a sign-in page."""
    found = _TX.search(html)
    assert found, html
    return found.group(1)


async def sign_in_page(idp: TestClient[Any, Any], tenant: str, params: dict[str, str]) -> str:
    """Open the authorize endpoint and expect the sign-in page; answers its transaction id."""
    r = await idp.get(path(tenant, "authorize"), params=params, allow_redirects=False)
    text = await r.text()
    assert r.status == 200, text
    return tx_of(text)


async def submit(idp: TestClient[Any, Any], tenant: str, tx: str, user: tuple[str, str]) -> Any:
    """Post the sign-in form."""
    return await idp.post(path(tenant, "login"), data={"tx": tx, "username": user[0], "password": user[1]},
                          allow_redirects=False)


async def authorize_code(idp: TestClient[Any, Any], *, tenant: str = TENANT_MAIN, user: tuple[str, str] = ADMIN,
                         **overrides: Any) -> tuple[str, str, dict[str, str]]:
    """Sign a user in through the page, from a new browser; answers (code, verifier, the redirect's query)."""
    idp.session.cookie_jar.clear()
    verifier, challenge = pkce_pair()
    tx = await sign_in_page(idp, tenant, auth_params(challenge, **overrides))
    r = await submit(idp, tenant, tx, user)
    assert r.status == 302, await r.text()
    q = query_of(r.headers["Location"])
    assert "code" in q, q
    return q["code"], verifier, q


def redirect_target(location: str) -> str:
    """The redirect's address without its query."""
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def redeem(idp: TestClient[Any, Any], code: str, verifier: str, *, tenant: str = TENANT_MAIN,
                 **overrides: Any) -> Any:
    """Post the token request for the client_secret_post portal; None removes a field."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": PORTAL_REDIRECT,
            "code_verifier": verifier, "client_id": POST_ID, "client_secret": POST_SECRET}
    headers = overrides.pop("headers", None)
    for key, value in overrides.items():
        if value is None:
            form.pop(key, None)
        else:
            form[key] = value
    return await idp.post(path(tenant, "token"), data=form, headers=headers)


async def verified_claims(idp: TestClient[Any, Any], id_token: str, *, tenant: str = TENANT_MAIN,
                          audience: str = POST_ID) -> dict[str, Any]:
    """The id_token's claims, checked against the tenant's published keys by kid, issuer and audience."""
    kid = jwt.get_unverified_header(id_token)["kid"]
    published = (await (await idp.get(path(tenant, "keys"))).json())["keys"]
    jwk = next((k for k in published if k["kid"] == kid), None)
    if jwk is None:
        raise jwt.InvalidKeyError(f"no published key has kid {kid!r}")
    claims: dict[str, Any] = jwt.decode(id_token, jwt.PyJWK(jwk).key, algorithms=["RS256"], audience=audience,
                                        issuer=issuer_of(tenant))
    return claims


@dataclass
class SandboxTls:
    """A throw-away certificate authority and a server certificate for 127.0.0.1 signed by it."""

    server_context: ssl.SSLContext  # for the sandbox's listening socket
    client_context: ssl.SSLContext  # trusts only the test authority
    ca_path: Path  # the authority's certificate as PEM, for clients that take a file (requests, MSAL)


def make_sandbox_tls(folder: Path) -> SandboxTls:
    """Make a certificate authority and a 127.0.0.1 server certificate, valid for a day, in folder."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Visitgate sandbox test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path = folder / "test-ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain_path = folder / "server.pem"
    chain_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path = folder / "server-key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(chain_path, key_path)
    client = ssl.create_default_context(cafile=str(ca_path))
    return SandboxTls(server, client, ca_path)
