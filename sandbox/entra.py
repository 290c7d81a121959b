"""A double of Microsoft Entra ID's v2.0 endpoints for the Graph double: app tokens and a clinician's sign-in.

Under the double's https origin (standing in for https://login.microsoftonline.com), per tenant:

    discovery   /{tenant}/v2.0/.well-known/openid-configuration   (what MSAL reads for a custom authority)
    authorize   /{tenant}/oauth2/v2.0/authorize                    (GET: the sign-in page; POST .../login)
    token       /{tenant}/oauth2/v2.0/token
    keys        /{tenant}/discovery/v2.0/keys

It refuses what Entra refuses: unknown tenants and applications; `client_credentials` only for the scope
`https://graph.microsoft.com/.default`, and the token carries exactly the application roles an admin consented
to (`roles`); client authentication by the registered secret or by a client assertion (RS256 or PS256) signed
with the key of a registered certificate named by its thumbprint (`x5t` SHA-1 or `x5t#S256`), whose audience is
the token endpoint, issuer and subject the client, living at most 10 minutes (reusable within it, as
MSAL reuses it); authorization codes only with
PKCE S256, for a registered redirect URI, single use, bound to client, redirect URI and verifier, living 60 s.
The sign-in page refuses to be framed (X-Frame-Options DENY and CSP frame-ancestors 'none'), as Entra's does.
The id_token carries `oid`, `tid`, `nonce`, `aud` = the client and is signed by the key at `keys`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from .appkeys import ENTRA

GRAPH_AUDIENCE = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME = 3600
CODE_LIFETIME = 60.0
ASSERTION_MAX_LIFETIME = 600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class EntraUser:
    """A person in a tenant: their object id is what Graph's /users/{id} takes."""

    oid: str
    name: str
    upn: str


@dataclass
class EntraApp:
    """An application registration: its credentials, consented roles and redirect URIs."""

    client_id: str
    secret: str | None = None
    certificates: list[x509.Certificate] = field(default_factory=list)
    roles: set[str] = field(default_factory=set)
    redirect_uris: set[str] = field(default_factory=set)


@dataclass
class EntraTenant:
    """A tenant: its applications and users."""

    tenant_id: str
    apps: dict[str, EntraApp] = field(default_factory=dict)
    users: dict[str, EntraUser] = field(default_factory=dict)


@dataclass
class _Code:
    tenant_id: str
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: EntraUser
    expires: float


class EntraDouble:
    """The tenants, the signing key and the codes in flight; `base` is the double's origin."""

    def __init__(self) -> None:
        self.base = ""
        self.tenants: dict[str, EntraTenant] = {}
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        self.codes: dict[str, _Code] = {}
        self.tokens_issued = 0  # client-credential tokens, for tests that count Entra round trips
        self.keys_served = 0  # reads of the signing keys, for tests of the gateway's key cache

    def tenant(self, tenant_id: str) -> EntraTenant:
        """The tenant, made on first mention."""
        return self.tenants.setdefault(tenant_id, EntraTenant(tenant_id))

    def token_endpoint(self, tenant_id: str) -> str:
        """Where MSAL posts for tokens (and the audience of client assertions)."""
        return f"{self.base}/{tenant_id}/oauth2/v2.0/token"

    def issuer(self, tenant_id: str) -> str:
        """The v2.0 issuer of a tenant's id_tokens."""
        return f"{self.base}/{tenant_id}/v2.0"

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT signed by the double's key."""
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def verify_access_token(self, token: str) -> dict[str, Any] | None:
        """The claims of an app token this double issued for Graph, or None (bad signature, expired, not Graph's)."""
        try:
            claims: dict[str, Any] = jwt.decode(token, self.key.public_key(), algorithms=["RS256"],
                                                audience=GRAPH_AUDIENCE, options={"require": ["exp", "tid"]})
        except jwt.PyJWTError:
            return None
        return claims if claims.get("tid") in self.tenants else None


class EntraError(Exception):
    """An OAuth error (JSON) from the token endpoint."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


def _json_error(exc: EntraError) -> web.Response:
    return web.json_response({"error": exc.error, "error_description": exc.description}, status=exc.status)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"></head><body><main><h1>{html.escape(title)}</h1>"
            f"{body}</main></body></html>")
    return web.Response(text=text, content_type="text/html", status=status,
                        headers={"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"})


def _double(request: web.Request) -> EntraDouble:
    return request.app[ENTRA]


async def discovery(request: web.Request) -> web.Response:
    """The tenant's OpenID configuration (v2.0)."""
    entra = _double(request)
    tenant_id = request.match_info["tenant"]
    if tenant_id not in entra.tenants:
        return web.json_response({"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant not found."},
                                 status=400)
    prefix = f"{entra.base}/{tenant_id}"
    return web.json_response({
        "issuer": entra.issuer(tenant_id),
        "authorization_endpoint": f"{prefix}/oauth2/v2.0/authorize",
        "token_endpoint": entra.token_endpoint(tenant_id),
        "jwks_uri": f"{prefix}/discovery/v2.0/keys",
        "end_session_endpoint": f"{prefix}/oauth2/v2.0/logout",
        "response_types_supported": ["code"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "private_key_jwt"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "oid", "tid", "name",
                             "preferred_username"],
        "tenant_region_scope": "EU",
    })


async def keys(request: web.Request) -> web.Response:
    """The signing keys (one)."""
    entra = _double(request)
    entra.keys_served += 1
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(entra.key.public_key(), as_dict=True)
    jwk.update({"kid": entra.kid, "use": "sig", "alg": "RS256"})
    return web.json_response({"keys": [jwk]})


def _app_of(entra: EntraDouble, tenant_id: str, client_id: str) -> EntraApp:
    tenant = entra.tenants.get(tenant_id)
    app = tenant.apps.get(client_id) if tenant else None
    if app is None:
        raise EntraError("unauthorized_client", f"AADSTS700016: Application {client_id[:64]!r} was not found "
                                                f"in the directory.", 400)
    return app


def _authenticate(entra: EntraDouble, tenant_id: str, form: dict[str, str]) -> EntraApp:
    """The application a token request authenticates as: by its secret or a certificate assertion."""
    assertion = form.get("client_assertion")
    if assertion is not None:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise EntraError("invalid_request", "client_assertion_type must be jwt-bearer")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise EntraError("invalid_client", "AADSTS50027: the client assertion is not a JWT", 401) from exc
        client_id = form.get("client_id") or str(unverified.get("iss", ""))
        app = _app_of(entra, tenant_id, client_id)
        alg = header.get("alg")
        if alg not in ("RS256", "PS256"):
            raise EntraError("invalid_client", "AADSTS5002738: the assertion's algorithm is not supported", 401)
        found = None
        for certificate in app.certificates:
            sha1 = _b64url(certificate.fingerprint(hashes.SHA1()))  # noqa: S303 (Entra's x5t is SHA-1)
            sha256 = _b64url(certificate.fingerprint(hashes.SHA256()))
            # Compared without base64 padding: MSAL pads its thumbprints, RFC 7515 does not.
            if str(header.get("x5t", "")).rstrip("=") == sha1 or str(header.get("x5t#S256", "")).rstrip("=") == sha256:
                found = certificate
        if found is None:
            raise EntraError("invalid_client", "AADSTS700027: the certificate named by the assertion is not "
                                               "registered for the application", 401)
        try:
            claims = jwt.decode(assertion, found.public_key(), algorithms=[alg],  # type: ignore[arg-type]
                                audience=entra.token_endpoint(tenant_id),
                                options={"require": ["exp", "iat", "iss", "sub", "aud", "jti"]})
        except jwt.PyJWTError as exc:
            raise EntraError("invalid_client", f"AADSTS700027: the client assertion failed its checks "
                                               f"({type(exc).__name__})", 401) from exc
        if claims["iss"] != app.client_id or claims["sub"] != app.client_id:
            raise EntraError("invalid_client", "AADSTS700023: the assertion's issuer and subject must be the "
                                               "client", 401)
        if claims["exp"] - claims.get("nbf", claims["iat"]) > ASSERTION_MAX_LIFETIME + 5:
            raise EntraError("invalid_client", "AADSTS700024: the assertion lives too long", 401)
        # No replay check on jti: MSAL reuses one assertion for up to nine minutes, and Entra accepts that.
        return app
    client_id = form.get("client_id", "")
    secret = form.get("client_secret")
    app = _app_of(entra, tenant_id, client_id)
    if secret is None:
        raise EntraError("invalid_client", "AADSTS7000218: the request must contain client_assertion or "
                                           "client_secret", 401)
    if app.secret is None or not hmac.compare_digest(secret or "", app.secret):
        raise EntraError("invalid_client", "AADSTS7000215: invalid client secret provided", 401)
    return app


async def token(request: web.Request) -> web.Response:
    """The token endpoint: client credentials (for Graph) and authorization codes (a clinician's sign-in)."""
    entra = _double(request)
    tenant_id = request.match_info["tenant"]
    try:
        if tenant_id not in entra.tenants:
            raise EntraError("invalid_tenant", "AADSTS90002: Tenant not found.")
        if request.content_type != "application/x-www-form-urlencoded":
            raise EntraError("invalid_request", "AADSTS900144: the body must be a form")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        grant = form.get("grant_type")
        if grant == "client_credentials":
            return _client_credentials(entra, tenant_id, form)
        if grant == "authorization_code":
            return _authorization_code(entra, tenant_id, form)
        raise EntraError("unsupported_grant_type", "AADSTS70003: the grant type is not supported")
    except EntraError as exc:
        return _json_error(exc)


def _client_credentials(entra: EntraDouble, tenant_id: str, form: dict[str, str]) -> web.Response:
    app = _authenticate(entra, tenant_id, form)
    scopes = form.get("scope", "").split()
    if scopes != [GRAPH_SCOPE]:
        raise EntraError("invalid_scope", "AADSTS1002012: client credentials take one scope, "
                                          "<resource>/.default")
    now = int(time.time())
    entra.tokens_issued += 1
    access = entra.sign({"aud": GRAPH_AUDIENCE, "iss": f"https://sts.windows.net/{tenant_id}/", "iat": now,
                         "nbf": now, "exp": now + TOKEN_LIFETIME, "tid": tenant_id, "appid": app.client_id,
                         "oid": app.client_id, "idtyp": "app", "roles": sorted(app.roles),
                         "jti": secrets.token_hex(8)})
    return web.json_response({"token_type": "Bearer", "expires_in": TOKEN_LIFETIME, "ext_expires_in": TOKEN_LIFETIME,
                              "access_token": access})


def _authorization_code(entra: EntraDouble, tenant_id: str, form: dict[str, str]) -> web.Response:
    app = _authenticate(entra, tenant_id, form)
    code = entra.codes.pop(form.get("code", ""), None)
    if code is None or code.expires < time.time() or code.tenant_id != tenant_id or code.client_id != app.client_id:
        raise EntraError("invalid_grant", "AADSTS70008: the authorization code is unknown, used or expired")
    if form.get("redirect_uri") != code.redirect_uri:
        raise EntraError("invalid_grant", "AADSTS50148: the redirect URI differs from the authorization request's")
    verifier = form.get("code_verifier", "")
    if _b64url(hashlib.sha256(verifier.encode()).digest()) != code.challenge:
        raise EntraError("invalid_grant", "AADSTS501481: the code verifier does not match the code challenge")
    now = int(time.time())
    claims: dict[str, Any] = {"aud": app.client_id, "iss": entra.issuer(tenant_id), "iat": now, "nbf": now,
                              "exp": now + TOKEN_LIFETIME, "sub": _b64url(hashlib.sha256(
                                  f"{code.user.oid}:{app.client_id}".encode()).digest()),
                              "oid": code.user.oid, "tid": tenant_id, "name": code.user.name,
                              "preferred_username": code.user.upn, "ver": "2.0"}
    if code.nonce:
        claims["nonce"] = code.nonce
    return web.json_response({"token_type": "Bearer", "expires_in": TOKEN_LIFETIME, "scope": "openid profile",
                              "id_token": entra.sign(claims),
                              "access_token": entra.sign({**claims, "aud": "00000003-0000-0000-c000-000000000000",
                                                          "scp": "openid profile"}),
                              "client_info": _b64url(f'{{"uid":"{code.user.oid}","utid":"{tenant_id}"}}'.encode())})


def _authorize_params(entra: EntraDouble, tenant_id: str, query: Any) -> tuple[EntraApp, dict[str, str]]:
    params = {k: v for k, v in query.items() if isinstance(v, str)}
    tenant = entra.tenants.get(tenant_id)
    app = tenant.apps.get(params.get("client_id", "")) if tenant else None
    if app is None:
        raise EntraError("unauthorized_client", "AADSTS700016: the application was not found in the directory")
    if params.get("redirect_uri") not in app.redirect_uris:
        raise EntraError("invalid_request", "AADSTS50011: the redirect URI does not match one registered")
    if params.get("response_type") != "code":
        raise EntraError("unsupported_response_type", "AADSTS700054: response_type must be code")
    if params.get("code_challenge_method") != "S256" or len(params.get("code_challenge", "")) != 43:
        raise EntraError("invalid_request", "AADSTS9002325: PKCE S256 is required for this application")
    if not params.get("state"):
        raise EntraError("invalid_request", "state is required by this double")
    return app, params


async def authorize(request: web.Request) -> web.Response:
    """The sign-in page: pick a user of the tenant (no passwords in a double)."""
    entra = _double(request)
    tenant_id = request.match_info["tenant"]
    try:
        _, params = _authorize_params(entra, tenant_id, request.query)
    except EntraError as exc:  # a bad request gets a page, never a redirect to an unverified address
        return _page("Sign-in refused", f"<p id=\"error\">{html.escape(exc.error)}: {html.escape(exc.description)}</p>",
                     status=400)
    users = entra.tenants[tenant_id].users.values()
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in params.items())
    buttons = "".join(
        f'<button type="submit" name="oid" value="{html.escape(u.oid)}">Sign in as {html.escape(u.name)} '
        f'({html.escape(u.upn)})</button>' for u in users)
    return _page("Sign in to your account (Entra double)",
                 f'<form method="post" action="/{html.escape(tenant_id)}/oauth2/v2.0/authorize/login">'
                 f'{hidden}{buttons}</form>')


async def login(request: web.Request) -> web.Response:
    """The chosen user signs in: back to the application with a code."""
    entra = _double(request)
    tenant_id = request.match_info["tenant"]
    form = await request.post()
    try:
        _, params = _authorize_params(entra, tenant_id, form)
    except EntraError as exc:
        return _page("Sign-in refused", f"<p id=\"error\">{html.escape(exc.error)}</p>", status=400)
    user = entra.tenants[tenant_id].users.get(str(form.get("oid", "")))
    if user is None:
        return _page("Sign-in refused", "<p id=\"error\">unknown user</p>", status=400)
    code = secrets.token_urlsafe(24)
    entra.codes[code] = _Code(tenant_id, params["client_id"], params["redirect_uri"], params["code_challenge"],
                              params.get("nonce"), user, time.time() + CODE_LIFETIME)
    return web.Response(status=302, headers={
        "Location": f"{params['redirect_uri']}?{urlencode({'code': code, 'state': params['state']})}"})


def setup(app: web.Application) -> None:
    """Add Entra's routes."""
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", discovery)
    app.router.add_get("/{tenant}/discovery/v2.0/keys", keys)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    app.router.add_get("/{tenant}/oauth2/v2.0/authorize", authorize)
    app.router.add_post("/{tenant}/oauth2/v2.0/authorize/login", login)
