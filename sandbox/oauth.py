"""The SMART App Launch 2.2 authorization server of the sandbox EHR.

Discovery, /oauth/authorize (EHR launch: the EHR user is already signed in, so there is no consent
screen; standalone launch: no `launch`, so the EHR's sign-in page asks who is there, see standalone.py),
/oauth/token (authorization_code with PKCE S256, refresh_token with rotation, and client_credentials for
SMART Backend Services) and the JWKS that verifies the id_tokens.

The rules follow what production EHRs enforce: exact redirect URIs, never a redirect to an unverified
URI, PKCE S256 only, single-use codes whose replay revokes what they issued, asymmetric client
assertions with replay protection, and `Cache-Control: no-store` on every token answer.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus, urlencode

import aiohttp_jinja2
import jwt
from aiohttp import web

from . import standalone
from .appkeys import CLIENT_KEYS, FAULTS, KEYS, LAUNCHES, OAUTH, SETTINGS, STANDALONE, STORE
from .config import SandboxClient, SandboxSettings
from .grants import CODE_LIFETIME, AuthorizationCode, Grant, LaunchContext
from .keys import CLIENT_ASSERTION_ALGS, KeyFetchError
from .scopes import known_scopes, parse_resource_scope
from .standalone_state import StandaloneRequest, StandaloneSignIns

# Refusals are logged with their reason, so a failing gateway test shows why the EHR said no.
log = logging.getLogger("sandbox.oauth")

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ID_TOKEN_LIFETIME = 300
ASSERTION_MAX_AHEAD = 300.0
# Room for rounding of `exp` and small clock differences between client and sandbox.
ASSERTION_CLOCK_SLACK = 5.0
_CODE_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_CODE_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
# OAuth errors that are the server's fault get 5xx; the rest are the client's.
_ERROR_STATUS = {"invalid_client": 401, "server_error": 500, "temporarily_unavailable": 503}

SCOPES_SUPPORTED = (
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
    "offline_access", "online_access",
    "patient/*.read", "patient/*.rs", "user/*.read", "user/*.rs", "user/*.cruds", "system/*.read", "system/*.rs",
    "patient/Patient.rs", "patient/Encounter.rs", "patient/Encounter.cu", "patient/Appointment.rs",
    "user/Patient.rs", "user/Practitioner.rs", "user/PractitionerRole.rs", "user/Encounter.rs",
    "user/Encounter.cu", "user/Appointment.rs", "system/Encounter.rs", "system/Encounter.cu",
    "system/Appointment.rs", "system/Patient.rs",
)
CAPABILITIES = (
    "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient", "context-ehr-encounter", "context-banner", "context-style",
    "sso-openid-connect", "permission-offline", "permission-online", "permission-patient", "permission-user",
    "permission-v1", "permission-v2",
)


class OAuthError(Exception):
    """An OAuth error answered as JSON by the token endpoint."""

    def __init__(self, error: str, description: str, *, status: int | None = None, basic_challenge: bool = False):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status or _ERROR_STATUS.get(error, 400)
        self.basic_challenge = basic_challenge


def _no_store(response: web.Response) -> web.Response:
    """Token answers must never be cached (RFC 6749 5.1)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _oauth_error_response(exc: OAuthError) -> web.Response:
    response = web.json_response({"error": exc.error, "error_description": exc.description}, status=exc.status)
    if exc.basic_challenge:
        response.headers["WWW-Authenticate"] = 'Basic realm="sandbox"'
    return _no_store(response)


# --- discovery ---------------------------------------------------------------------------------


async def smart_configuration(request: web.Request) -> web.Response:
    """GET /fhir/.well-known/smart-configuration: the SMART discovery document."""
    settings = request.app[SETTINGS]
    faults = request.app[FAULTS]
    base = settings.base_url
    return web.json_response(
        {
            "issuer": settings.fhir_base,
            "jwks_uri": f"{base}/oauth/jwks",
            "authorization_endpoint": f"{base}/oauth/authorize",
            "token_endpoint": settings.token_endpoint,
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
            "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
            "scopes_supported": list(SCOPES_SUPPORTED),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["plain"] if faults.discovery_without_s256 else ["S256"],
            "capabilities": list(CAPABILITIES),
            "authorization_response_iss_parameter_supported": True,
        }
    )


async def jwks(request: web.Request) -> web.Response:
    """GET /oauth/jwks: the public key that verifies the sandbox's id_tokens."""
    return web.json_response({"keys": [request.app[KEYS].signing.public_jwk()]})


# --- authorize ---------------------------------------------------------------------------------


def _redirect(redirect_uri: str, params: dict[str, str]) -> web.Response:
    """A 302 to the client's registered redirect URI with params appended to its query."""
    sep = "&" if "?" in redirect_uri else "?"
    return web.Response(status=302, headers={"Location": redirect_uri + sep + urlencode(params)})


def _refuse_page(request: web.Request, message: str) -> web.Response:
    """The page shown when the sandbox cannot safely redirect back to the client."""
    log.info("authorize refused without redirect: %s", message)
    return aiohttp_jinja2.render_template(
        "error.html", request, {"title": "Sign-in request refused", "message": message}, status=400
    )


def _default_practitioner(request: web.Request) -> str:
    """Who is signed in to the EHR when no launch says so: the first practitioner."""
    practitioners = request.app[STORE].all("Practitioner")
    return practitioners[0]["id"] if practitioners else "prac-1"


async def authorize(request: web.Request) -> web.Response:
    """GET /oauth/authorize: issue a code for the launch's signed-in user, or redirect an error."""
    settings = request.app[SETTINGS]
    faults = request.app[FAULTS]
    query = request.query

    # Nothing may be redirected before the client and its exact redirect URI are known.
    if len(query.getall("client_id", [])) > 1 or len(query.getall("redirect_uri", [])) > 1:
        return _refuse_page(request, "client_id and redirect_uri must each be given once.")
    client = settings.client(query.get("client_id"))
    if client is None:
        return _refuse_page(request, "This application is not registered with the EHR.")
    redirect_uri = query.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        return _refuse_page(request, "The redirect URI is not registered for this application.")

    state = query.get("state")
    iss = faults.callback_iss if faults.callback_iss is not None else settings.fhir_base

    def error(code: str, description: str) -> web.Response:
        log.info("authorize refused: %s (%s)", code, description)
        params = {"error": code, "error_description": description}
        if state is not None:
            params["state"] = state
        params["iss"] = iss
        return _redirect(redirect_uri, params)

    repeated = [k for k in set(query.keys()) if len(query.getall(k)) > 1]
    if repeated:
        return error("invalid_request", f"parameters must not be repeated: {', '.join(sorted(repeated))}")
    if query.get("response_type") != "code":
        return error("unsupported_response_type", "response_type must be 'code'")
    if query.get("code_challenge_method") != "S256":
        return error("invalid_request", "code_challenge_method must be S256")
    code_challenge = query.get("code_challenge", "")
    if not _CODE_CHALLENGE.match(code_challenge):
        return error("invalid_request", "code_challenge is missing or is not a base64url SHA-256 digest")
    if query.get("aud", "").rstrip("/") != settings.fhir_base:
        return error("invalid_request", "aud must be this EHR's FHIR base URL")
    if not state:
        return error("invalid_request", "state is required")
    requested = query.get("scope", "").split()
    if not requested:
        return error("invalid_scope", "scope is required")

    if "launch" not in requested and "launch" not in query:
        # SMART standalone launch: no EHR context, so the EHR asks who is there.
        return _standalone(request, client, redirect_uri, requested, code_challenge, state, iss, error)

    context: LaunchContext | None = None
    if "launch" in requested:
        context = request.app[LAUNCHES].get(query.get("launch"))
        if context is None:
            return error("invalid_request", "launch is missing, unknown or expired")

    if context is not None and context.practitioner_id:
        user_ref = f"Practitioner/{context.practitioner_id}"
    elif context is not None and context.patient_id:
        user_ref = f"Patient/{context.patient_id}"
    else:
        user_ref = f"Practitioner/{_default_practitioner(request)}"

    code = request.app[OAUTH].add_code(
        AuthorizationCode(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            scopes=known_scopes(requested),
            code_challenge=code_challenge,
            nonce=query.get("nonce"),
            context=context,
            user_ref=user_ref,
            expires_at=time.time() + CODE_LIFETIME,
        )
    )
    return _redirect(redirect_uri, {"code": code, "state": state, "iss": iss})


def _standalone(request: web.Request, client: SandboxClient, redirect_uri: str, requested: list[str],
                code_challenge: str, state: str, iss: str, error: Callable[[str, str], web.Response]) -> web.Response:
    """Check what only a standalone launch must satisfy, then show the EHR's sign-in page."""
    # A standalone launch here has no patient picker: nothing may ask for a patient or encounter context.
    contextual = [s for s in requested if s in ("launch/patient", "launch/encounter") or s.startswith("patient/")]
    if contextual:
        return error("invalid_scope", f"a standalone launch has no patient context: {', '.join(contextual)}")
    return standalone.begin(request, StandaloneRequest(
        client_id=client.client_id, redirect_uri=redirect_uri, scopes=known_scopes(requested),
        code_challenge=code_challenge, state=state, nonce=request.query.get("nonce"), iss=iss))


# --- client authentication -----------------------------------------------------------------------


def _parse_basic(header: str) -> tuple[str, str]:
    """client_id and secret from an HTTP Basic header, form-decoded as RFC 6749 2.3.1 requires."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", "unsupported Authorization scheme")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise OAuthError("invalid_client", "malformed Basic credentials", basic_challenge=True) from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "malformed Basic credentials", basic_challenge=True)
    return unquote_plus(user), unquote_plus(password)


async def _verify_assertion(request: web.Request, form: dict[str, str]) -> SandboxClient:
    """Authenticate a private_key_jwt client by its signed assertion."""
    settings = request.app[SETTINGS]
    if form.get("client_assertion_type") != JWT_BEARER:
        raise OAuthError("invalid_client", "client_assertion_type must be jwt-bearer")
    assertion = form.get("client_assertion", "")
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise OAuthError("invalid_client", "client_assertion is not a JWT") from exc
    client = settings.client(unverified.get("iss"))
    if client is None or client.auth_method != "private_key_jwt" or client.jwks_url is None:
        raise OAuthError("invalid_client", "unknown client or client not registered for private_key_jwt")
    if "client_id" in form and form["client_id"] != client.client_id:
        raise OAuthError("invalid_client", "client_id does not match the assertion")
    alg = header.get("alg")
    kid = header.get("kid")
    if alg not in CLIENT_ASSERTION_ALGS:
        raise OAuthError("invalid_client", f"assertion alg must be one of {', '.join(CLIENT_ASSERTION_ALGS)}")
    if not isinstance(kid, str) or not kid:
        raise OAuthError("invalid_client", "assertion header must name a kid")
    try:
        jwk = await request.app[CLIENT_KEYS].key(client.jwks_url, kid)
    except KeyFetchError as exc:
        raise OAuthError("invalid_client", str(exc)) from exc
    if jwk is None:
        raise OAuthError("invalid_client", f"no key {kid!r} in the client's JWKS")
    if "alg" in jwk and jwk["alg"] != alg:
        raise OAuthError("invalid_client", "the key is registered for another algorithm")
    try:
        key = request.app[CLIENT_KEYS].parsed(client.jwks_url, kid, alg)
        claims = jwt.decode(
            assertion,
            key.key,
            algorithms=[alg],
            audience=settings.token_endpoint,
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
        )
    except jwt.PyJWTError as exc:
        raise OAuthError("invalid_client", f"client_assertion rejected: {exc}") from exc
    if claims["iss"] != client.client_id or claims["sub"] != client.client_id:
        raise OAuthError("invalid_client", "iss and sub must both be the client_id")
    if claims["exp"] > time.time() + ASSERTION_MAX_AHEAD + ASSERTION_CLOCK_SLACK:
        raise OAuthError("invalid_client", "assertion exp is more than 5 minutes ahead")
    if not isinstance(claims["jti"], str) or not request.app[OAUTH].remember_jti(
        client.client_id, claims["jti"], float(claims["exp"])
    ):
        raise OAuthError("invalid_client", "assertion jti was already used")
    return client


async def _authenticate_client(request: web.Request, form: dict[str, str]) -> SandboxClient:
    """The calling client, authenticated by the method it registered; anything else is invalid_client."""
    settings = request.app[SETTINGS]
    authorization = request.headers.get("Authorization")
    uses_assertion = "client_assertion" in form or "client_assertion_type" in form
    if authorization and uses_assertion:
        raise OAuthError("invalid_client", "use exactly one client authentication method")
    if authorization:
        client_id, secret = _parse_basic(authorization)
        client = settings.client(client_id)
        if client is None or client.auth_method != "client_secret_basic" or client.client_secret is None:
            raise OAuthError("invalid_client", "client authentication failed", basic_challenge=True)
        if "client_secret" in form:
            raise OAuthError("invalid_client", "the secret must not also be in the body", basic_challenge=True)
        if "client_id" in form and form["client_id"] != client_id:
            raise OAuthError("invalid_client", "client_id does not match", basic_challenge=True)
        if not hmac.compare_digest(secret.encode(), client.client_secret.encode()):
            raise OAuthError("invalid_client", "client authentication failed", basic_challenge=True)
        return client
    if uses_assertion:
        return await _verify_assertion(request, form)
    client = settings.client(form.get("client_id"))
    if client is None:
        raise OAuthError("invalid_client", "unknown client")
    if client.auth_method != "none":
        # A confidential client that does not authenticate, or sends its secret in the body, is refused.
        raise OAuthError("invalid_client", f"this client must authenticate with {client.auth_method}")
    if "client_secret" in form:
        raise OAuthError("invalid_client", "public clients have no secret")
    return client


# --- token ---------------------------------------------------------------------------------------


def _id_token(request: web.Request, client: SandboxClient, grant: Grant, scopes: tuple[str, ...], nonce: str | None) -> str:
    """An OpenID Connect id_token for the grant's user, altered by Faults.id_token when set."""
    settings = request.app[SETTINGS]
    fault = request.app[FAULTS].id_token
    keys = request.app[KEYS]
    assert grant.user_ref is not None
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.fhir_base,
        "sub": grant.user_ref.split("/", 1)[1],
        "aud": client.client_id,
        "iat": now,
        "exp": now + ID_TOKEN_LIFETIME,
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if "fhirUser" in scopes:
        claims["fhirUser"] = f"{settings.fhir_base}/{grant.user_ref}"
    if fault == "wrong_aud":
        claims["aud"] = client.client_id + "-someone-else"
    elif fault == "wrong_nonce":
        claims["nonce"] = "not-the-nonce-that-was-sent"
    elif fault == "expired":
        claims["iat"] = now - 2 * ID_TOKEN_LIFETIME
        claims["exp"] = now - ID_TOKEN_LIFETIME
    elif fault == "wrong_iss":
        claims["iss"] = settings.base_url + "/another-fhir"
    signer = keys.rogue() if fault == "bad_signature" else keys.signing
    token = signer.sign(claims)
    if fault == "malformed":
        # A header that is base64url but not a JSON object, the rest intact: only the header is wrong.
        token = "W10." + token.split(".", 1)[1]
    return token


def _token_body(
    request: web.Request,
    client: SandboxClient,
    grant: Grant,
    scopes: tuple[str, ...],
    *,
    nonce: str | None = None,
    with_id_token: bool = True,
) -> dict[str, Any]:
    """The token response for a user grant: token, scope, launch context and optional refresh/id tokens."""
    settings: SandboxSettings = request.app[SETTINGS]
    oauth = request.app[OAUTH]
    body: dict[str, Any] = {
        "access_token": oauth.issue_access_token(grant, scopes, settings.access_token_lifetime),
        "token_type": "Bearer",
        "expires_in": settings.access_token_lifetime,
        "scope": " ".join(scopes),
    }
    ctx = grant.context
    if ctx is not None:
        if ctx.patient_id:
            body["patient"] = ctx.patient_id
        if ctx.encounter_id:
            body["encounter"] = ctx.encounter_id
        body["need_patient_banner"] = ctx.need_patient_banner
    body["smart_style_url"] = f"{settings.base_url}/ehr/smart-style.json"
    if "offline_access" in scopes or "online_access" in scopes:
        body["refresh_token"] = oauth.issue_refresh_token(grant, scopes)
    if with_id_token and "openid" in scopes and grant.user_ref is not None:
        body["id_token"] = _id_token(request, client, grant, scopes, nonce)
    return body


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


def _redeem_code(request: web.Request, client: SandboxClient, form: dict[str, str]) -> dict[str, Any]:
    oauth = request.app[OAUTH]
    code = oauth.codes.get(form.get("code", ""))
    if code is None:
        raise OAuthError("invalid_grant", "unknown authorization code")
    if code.grant is not None:
        # A replayed code means it leaked: everything issued from it stops working (RFC 6749 4.1.2).
        code.grant.revoked = True
        raise OAuthError("invalid_grant", "authorization code was already used")
    if code.expires_at <= time.time():
        raise OAuthError("invalid_grant", "authorization code expired")
    if code.client_id != client.client_id:
        raise OAuthError("invalid_grant", "authorization code was issued to another client")
    if form.get("redirect_uri") != code.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    verifier = form.get("code_verifier", "")
    if not _CODE_VERIFIER.match(verifier):
        raise OAuthError("invalid_grant", "code_verifier must be 43-128 unreserved characters")
    if not hmac.compare_digest(_s256(verifier), code.code_challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match code_challenge")
    grant = Grant(client.client_id, code.context, code.user_ref)
    code.grant = grant
    return _token_body(request, client, grant, code.scopes, nonce=code.nonce)


def _refresh(request: web.Request, client: SandboxClient, form: dict[str, str]) -> dict[str, Any]:
    oauth = request.app[OAUTH]
    value = form.get("refresh_token", "")
    spent = oauth.spent_refresh_tokens.get(value)
    if spent is not None and spent.client_id == client.client_id:
        # A rotated refresh token came back: someone holds a copy, so end the whole grant.
        spent.revoked = True
        raise OAuthError("invalid_grant", "refresh token was already used")
    current = oauth.refresh_tokens.get(value)
    if current is None or current.grant.client_id != client.client_id or current.grant.revoked:
        raise OAuthError("invalid_grant", "unknown or revoked refresh token")
    scopes = current.scopes
    if "scope" in form:
        asked = tuple(form["scope"].split())
        if not set(asked) <= set(scopes):
            raise OAuthError("invalid_scope", "a refresh may only narrow the granted scopes")
        scopes = tuple(s for s in scopes if s in asked)
    oauth.spend_refresh_token(value)
    return _token_body(request, client, current.grant, scopes, with_id_token=False)


def _client_credentials(request: web.Request, client: SandboxClient, form: dict[str, str]) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    if client.auth_method != "private_key_jwt":
        raise OAuthError("unauthorized_client", "client_credentials needs an asymmetric (private_key_jwt) client")
    requested = form.get("scope", "").split()
    if not requested:
        raise OAuthError("invalid_scope", "scope is required")
    for scope in requested:
        parsed = parse_resource_scope(scope)
        if parsed is None or parsed.level != "system":
            raise OAuthError("invalid_scope", f"backend services may only ask for system/ scopes, not {scope!r}")
    scopes = known_scopes(requested)
    grant = Grant(client.client_id, None, None)
    return {
        "access_token": request.app[OAUTH].issue_access_token(grant, scopes, settings.access_token_lifetime),
        "token_type": "Bearer",
        "expires_in": settings.access_token_lifetime,
        "scope": " ".join(scopes),
    }


async def token(request: web.Request) -> web.Response:
    """POST /oauth/token: exchange a code, a refresh token or client credentials for tokens."""
    faults = request.app[FAULTS]
    try:
        if faults.token_error:
            raise OAuthError(faults.token_error, "failure injected by the sandbox")
        if request.content_type != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
        posted = await request.post()
        repeated = [k for k in set(posted.keys()) if len(posted.getall(k)) > 1]
        if repeated:
            raise OAuthError("invalid_request", f"parameters must not be repeated: {', '.join(sorted(repeated))}")
        form = {k: str(v) for k, v in posted.items()}
        client = await _authenticate_client(request, form)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            body = _redeem_code(request, client, form)
        elif grant_type == "refresh_token":
            body = _refresh(request, client, form)
        elif grant_type == "client_credentials":
            body = _client_credentials(request, client, form)
        else:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    except OAuthError as exc:
        log.info("token request refused: %s (%s)", exc.error, exc.description)
        return _oauth_error_response(exc)
    return _no_store(web.json_response(body))


def setup_routes(app: web.Application) -> None:
    """Add the authorization server's routes (discovery is under /fhir, next to the FHIR routes)."""
    app.router.add_get("/fhir/.well-known/smart-configuration", smart_configuration)
    app.router.add_get("/oauth/authorize", authorize)
    app[STANDALONE] = StandaloneSignIns()
    app.router.add_post("/oauth/signin", standalone.sign_in)  # the standalone launch's sign-in form
    app.router.add_post("/oauth/token", token)
    app.router.add_get("/oauth/jwks", jwks)
