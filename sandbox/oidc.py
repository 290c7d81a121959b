"""A local OpenID provider playing Microsoft Entra ID (v2.0 endpoints) and a generic OpenID provider.

Per tenant, in Entra's shape under `{base}/idp` (standing in for https://login.microsoftonline.com):

    issuer          {base}/idp/{tenant}/v2.0
    discovery       {issuer}/.well-known/openid-configuration
    authorize       {base}/idp/{tenant}/oauth2/v2.0/authorize   (GET; the sign-in form posts to .../login)
    token           {base}/idp/{tenant}/oauth2/v2.0/token
    keys            {base}/idp/{tenant}/discovery/v2.0/keys     (two RS256 keys; one signs, rotation swaps)
    end session     {base}/idp/{tenant}/oauth2/v2.0/logout

It is as strict as the sandbox EHR: registered applications only, exact redirect URIs (a bad one gets a
page, never a redirect), `response_type=code` only, PKCE S256 only (even where the discovery document, like
Entra's, does not list it), state required and echoed, nonce put into the id_token, single-use codes bound to
the client, redirect URI, verifier and tenant, living 60 seconds; client authentication by exactly the method
registered (client_secret_post, client_secret_basic or private_key_jwt); `prompt=login` and `max_age` force
the sign-in page and the id_token says when the user signed in (`auth_time`). Refusals are OAuth errors.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from typing import Any
from urllib.parse import unquote_plus, urlencode

import aiohttp
import aiohttp_jinja2
import jwt
from aiohttp import web

from . import oidc_directory as directory
from .appkeys import HTTP_SESSION, OIDC, SETTINGS
from .config import OidcClient
from .grants import new_secret
from .keys import SigningKey
from .oidc_directory import OidcUser
from .oidc_state import AuthorizationRequest, ClientKeySet, OidcKeys, OidcProvider, Session

log = logging.getLogger("sandbox.oidc")

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ID_TOKEN_LIFETIME = 3600
ACCESS_TOKEN_LIFETIME = 3600
# MSAL makes its client assertions valid for 10 minutes; Entra accepts that, so this provider does too.
ASSERTION_MAX_AHEAD = 600.0
ASSERTION_CLOCK_SLACK = 5.0
ASSERTION_ALGS = ("RS256", "PS256", "ES256", "RS384", "PS384", "ES384")
CLIENT_JWKS_CACHE_SECONDS = 300.0
SCOPES_SUPPORTED = ("openid", "profile", "email", "offline_access")
PROMPTS = ("login", "none", "consent", "select_account")
BROWSER_COOKIE = "sbx_idp_browser"
_CODE_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_CODE_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_MAX_AGE = re.compile(r"^[0-9]{1,9}$")
_ERROR_STATUS = {"invalid_client": 401}
CLAIMS_SUPPORTED = (
    "sub", "iss", "aud", "exp", "iat", "nbf", "auth_time", "nonce", "tid", "oid", "email",
    "preferred_username", "name", "groups", "ver",
)


class OidcError(Exception):
    """An OAuth error answered as JSON by the token endpoint."""

    def __init__(self, error: str, description: str, *, basic_challenge: bool = False):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = _ERROR_STATUS.get(error, 400)
        self.basic_challenge = basic_challenge


def issuer(base: str, tenant_id: str) -> str:
    """The issuer of a tenant, in Entra ID's v2.0 shape."""
    return f"{base}/{tenant_id}/v2.0"


def _tenant_base(request: web.Request, tenant_id: str) -> str:
    return f"{request.app[SETTINGS].oidc_base}/{tenant_id}"


def _token_endpoint(request: web.Request, tenant_id: str) -> str:
    return _tenant_base(request, tenant_id) + "/oauth2/v2.0/token"


def _no_store(response: web.Response) -> web.Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _page(request: web.Request, title: str, message: str, status: int) -> web.Response:
    """A plain page for what cannot be sent back to the application."""
    log.info("identity provider page %d: %s", status, message)
    return _no_store(
        aiohttp_jinja2.render_template("oidc_message.html", request, {"title": title, "message": message},
                                       status=status)
    )


def _tenant_or_none(request: web.Request) -> directory.Tenant | None:
    return directory.tenant(request.match_info["tenant"])


# --- discovery and keys --------------------------------------------------------------------------


async def openid_configuration(request: web.Request) -> web.Response:
    """GET /idp/{tenant}/v2.0/.well-known/openid-configuration: the tenant's discovery document."""
    found = _tenant_or_none(request)
    if found is None:
        return web.json_response({"error": "invalid_tenant", "error_description": "unknown tenant"}, status=400)
    settings = request.app[SETTINGS]
    switches = request.app[OIDC].tenants[found.tenant_id]
    base = _tenant_base(request, found.tenant_id)
    # Entra's multi-tenant endpoint names its issuer as a template; each id_token has its user's tenant.
    named = "{tenantid}" if found.tenant_id == directory.ORGANIZATIONS else found.tenant_id
    doc: dict[str, Any] = {
        "issuer": issuer(settings.oidc_base, named),
        "authorization_endpoint": base + "/oauth2/v2.0/authorize",
        "token_endpoint": base + "/oauth2/v2.0/token",
        "jwks_uri": base + "/discovery/v2.0/keys",
        "end_session_endpoint": base + "/oauth2/v2.0/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "claims_supported": list(CLAIMS_SUPPORTED),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "prompt_values_supported": list(PROMPTS),
        "tenant_region_scope": "NA",
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }
    # Entra's document does not list code_challenge_methods_supported at all, yet takes S256.
    if switches.lists_s256:
        doc["code_challenge_methods_supported"] = ["S256"]
    if switches.iss_parameter:
        doc["authorization_response_iss_parameter_supported"] = True
    return web.json_response(doc)


async def keys(request: web.Request) -> web.Response:
    """GET /idp/{tenant}/discovery/v2.0/keys: both signing keys."""
    if _tenant_or_none(request) is None:
        return web.json_response({"error": "invalid_tenant", "error_description": "unknown tenant"}, status=400)
    return web.json_response(request.app[OIDC].keys.jwks())


# --- authorize -----------------------------------------------------------------------------------


def _respond(request: web.Request, redirect_uri: str, response_mode: str, params: dict[str, str]) -> web.Response:
    """Send an authorization response to the (already verified) redirect URI, by query or by form post."""
    if response_mode == "form_post":
        return _no_store(
            aiohttp_jinja2.render_template(
                "oidc_form_post.html", request, {"action": redirect_uri, "fields": sorted(params.items())}
            )
        )
    sep = "&" if "?" in redirect_uri else "?"
    return _no_store(web.Response(status=302, headers={"Location": redirect_uri + sep + urlencode(params)}))


def _success(request: web.Request, areq: AuthorizationRequest, user: OidcUser, auth_time: float) -> web.Response:
    provider = request.app[OIDC]
    code = provider.add_code(areq, user, auth_time)
    params = {"code": code, "state": areq.state}
    if provider.tenants[areq.tenant_id].iss_parameter:
        # The user's tenant: the same as the request's, except at `organizations`.
        params["iss"] = issuer(request.app[SETTINGS].oidc_base, user.tenant_id)
    if provider.faults.callback_iss is not None:
        params["iss"] = provider.faults.callback_iss
    return _respond(request, areq.redirect_uri, areq.response_mode, params)


def _browser_id(request: web.Request) -> str | None:
    value = request.cookies.get(BROWSER_COOKIE)
    return value if value and len(value) <= 64 else None


def _set_browser_cookie(request: web.Request, response: web.Response, browser: str) -> None:
    # Lax: a top-level navigation from the application carries it (single sign-on), a cross-site POST does not.
    response.set_cookie(BROWSER_COOKIE, browser, path="/idp/", httponly=True, samesite="Lax",
                        secure=request.app[SETTINGS].oidc_base.startswith("https:"))


def _sign_in_page(request: web.Request, tenant: directory.Tenant, tx: str, *, username: str = "",
                  error: str | None = None, status: int = 200) -> web.Response:
    context = {
        "tenant": tenant,
        "users": directory.users_of(tenant.tenant_id),
        "action": f"{request.app[SETTINGS].oidc_base}/{tenant.tenant_id}/login",
        "tx": tx,
        "username": username,
        "error": error,
        # Demo only: one click signs in as this test user (whose password the page shows anyway).
        "one_click": directory.user(tenant.tenant_id, request.app[SETTINGS].one_click_user or ""),
    }
    return _no_store(aiohttp_jinja2.render_template("oidc_signin.html", request, context, status=status))


async def authorize(request: web.Request) -> web.Response:
    """GET /idp/{tenant}/oauth2/v2.0/authorize: check the request, then sign in (or reuse the session)."""
    tenant = _tenant_or_none(request)
    if tenant is None:
        return _page(request, "Unknown tenant", "There is no such tenant at this identity provider.", 400)
    provider = request.app[OIDC]
    settings = request.app[SETTINGS]
    query = request.query

    # Nothing may be redirected before the application and its exact redirect URI are known.
    if len(query.getall("client_id", [])) > 1 or len(query.getall("redirect_uri", [])) > 1:
        return _page(request, "Sign-in request refused", "client_id and redirect_uri must each be given once.", 400)
    client = provider.clients.get(query.get("client_id", ""))
    if client is None:
        return _page(request, "Sign-in request refused",
                     "This application is not registered with the identity provider.", 400)
    if client.tenants and tenant.tenant_id not in client.tenants:
        return _page(request, "Sign-in request refused", f"This application is not registered in {tenant.name}.", 400)
    redirect_uri = query.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        return _page(request, "Sign-in request refused",
                     "The redirect URI is not registered for this application.", 400)

    response_mode = query.get("response_mode", "query")
    state = query.get("state")
    announce_iss = provider.tenants[tenant.tenant_id].iss_parameter

    def error(code: str, description: str) -> web.Response:
        log.info("identity provider authorize refused: %s (%s)", code, description)
        params = {"error": code, "error_description": description}
        if state is not None:
            params["state"] = state
        if announce_iss:
            params["iss"] = issuer(settings.oidc_base, tenant.tenant_id)
        return _respond(request, redirect_uri, response_mode if response_mode == "form_post" else "query", params)

    repeated = sorted(k for k in set(query.keys()) if len(query.getall(k)) > 1)
    if repeated:
        return error("invalid_request", f"parameters must not be repeated: {', '.join(repeated)}")
    if response_mode not in ("query", "form_post"):
        return error("invalid_request", "response_mode must be query or form_post")
    if "request" in query:
        return error("request_not_supported", "request objects are not supported")
    if "request_uri" in query:
        return error("request_uri_not_supported", "request_uri is not supported")
    if query.get("response_type") != "code":
        return error("unsupported_response_type", "response_type must be 'code'")
    if query.get("code_challenge_method") != "S256":
        return error("invalid_request", "PKCE is required and code_challenge_method must be S256")
    code_challenge = query.get("code_challenge", "")
    if not _CODE_CHALLENGE.match(code_challenge):
        return error("invalid_request", "code_challenge is missing or is not a base64url SHA-256 digest")
    if not state:
        return error("invalid_request", "state is required")
    scopes = query.get("scope", "").split()
    if "openid" not in scopes:
        return error("invalid_scope", "scope must include openid")
    unknown = sorted(set(scopes) - set(SCOPES_SUPPORTED))
    if unknown:
        return error("invalid_scope", f"unknown scopes: {', '.join(unknown)}")
    prompts = query.get("prompt", "").split()
    if any(p not in PROMPTS for p in prompts):
        return error("invalid_request", f"prompt must be among {', '.join(PROMPTS)}")
    if "none" in prompts and len(prompts) > 1:
        return error("invalid_request", "prompt=none cannot be combined with other values")
    max_age: int | None = None
    if "max_age" in query:
        if not _MAX_AGE.match(query["max_age"]):
            return error("invalid_request", "max_age must be a non-negative number of seconds")
        max_age = int(query["max_age"])
    nonce = query.get("nonce")
    if nonce is not None and not 0 < len(nonce) <= 512:
        return error("invalid_request", "nonce must be 1 to 512 characters")

    areq = AuthorizationRequest(
        tenant_id=tenant.tenant_id, client_id=client.client_id, redirect_uri=redirect_uri,
        response_mode=response_mode, scopes=tuple(dict.fromkeys(scopes)), state=state, nonce=nonce,
        code_challenge=code_challenge, max_age=max_age, force_login="login" in prompts,
    )
    browser = _browser_id(request)
    session = provider.session(browser, tenant.tenant_id)
    fresh_enough = session is not None and (max_age is None or time.time() - session.auth_time <= max_age)
    if session is not None and fresh_enough and not areq.force_login and "select_account" not in prompts:
        return _success(request, areq, session.user, session.auth_time)
    if "none" in prompts:
        return error("login_required", "the user must sign in")
    browser = browser or new_secret()
    tx = provider.add_pending(areq, browser)
    hint = query.get("login_hint", "")
    response = _sign_in_page(request, tenant, tx, username=hint if directory.user(tenant.tenant_id, hint) else "")
    _set_browser_cookie(request, response, browser)
    return response


async def sign_in(request: web.Request) -> web.Response:
    """POST /idp/{tenant}/login: the sign-in form; a right password finishes the authorization request."""
    tenant = _tenant_or_none(request)
    if tenant is None:
        return _page(request, "Unknown tenant", "There is no such tenant at this identity provider.", 400)
    if request.content_type != "application/x-www-form-urlencoded":
        return _page(request, "Sign-in refused", "The sign-in form must be posted as a form.", 400)
    provider = request.app[OIDC]
    posted = await request.post()
    tx = str(posted.get("tx", ""))
    pending = provider.pending.get(tx)
    if pending is None or pending.expires_at <= time.time() or pending.request.tenant_id != tenant.tenant_id:
        return _page(request, "Sign-in expired",
                     "This sign-in is unknown or has expired. Go back to the application and start again.", 400)
    browser = _browser_id(request)
    if browser is None or not hmac.compare_digest(browser, pending.browser):
        return _page(request, "Sign-in refused",
                     "This sign-in was started in another browser. Go back to the application and start again.", 400)
    username = str(posted.get("username", ""))[:256]
    password = str(posted.get("password", ""))[:256]
    user = directory.user(tenant.tenant_id, username)
    if user is None or not hmac.compare_digest(password.encode(), user.password.encode()):
        log.info("identity provider sign-in refused for tenant %s: wrong user name or password", tenant.tenant_id)
        return _sign_in_page(request, tenant, tx, username=username,
                             error="That user name and password do not match. Try again.", status=401)
    del provider.pending[tx]
    now = time.time()
    provider.sessions[(browser, tenant.tenant_id)] = Session(user, now)
    return _success(request, pending.request, user, now)


# --- end session ---------------------------------------------------------------------------------


def _hinted_client(request: web.Request, tenant_id: str, hint: str) -> str | None:
    """The audience of an id_token this provider issued for this tenant (expired ones count), or None."""
    provider = request.app[OIDC]
    try:
        kid = jwt.get_unverified_header(hint).get("kid")
        key = next((k for k in provider.keys.keys if k.kid == kid), None)
        if key is None:
            return None
        claims = jwt.decode(hint, key.private_key.public_key(), algorithms=["RS256"],
                            options={"verify_exp": False, "verify_aud": False})
    except jwt.PyJWTError:
        return None
    tid = claims.get("tid")
    own_issuer = issuer(request.app[SETTINGS].oidc_base, str(tid))
    if tenant_id not in (tid, directory.ORGANIZATIONS) or claims.get("iss") != own_issuer:
        return None
    aud = claims.get("aud")
    return aud if isinstance(aud, str) else None


async def end_session(request: web.Request) -> web.Response:
    """GET /idp/{tenant}/oauth2/v2.0/logout: end this browser's session; go back only to a registered URI."""
    tenant = _tenant_or_none(request)
    if tenant is None:
        return _page(request, "Unknown tenant", "There is no such tenant at this identity provider.", 400)
    provider = request.app[OIDC]
    query = request.query
    repeated = sorted(k for k in set(query.keys()) if len(query.getall(k)) > 1)
    if repeated:
        return _page(request, "Sign-out refused", f"Parameters must not be repeated: {', '.join(repeated)}.", 400)
    browser = _browser_id(request)
    if browser is not None:
        provider.sessions.pop((browser, tenant.tenant_id), None)
    target = query.get("post_logout_redirect_uri")
    if target is None:
        return _page(request, "Signed out", f"You are signed out of {tenant.name}.", 200)
    client_id = query.get("client_id")
    hinted = _hinted_client(request, tenant.tenant_id, query["id_token_hint"]) if "id_token_hint" in query else None
    if "id_token_hint" in query and hinted is None:
        return _page(request, "Signed out", "You are signed out, but the id_token_hint was not issued here.", 400)
    if client_id is not None and hinted is not None and client_id != hinted:
        return _page(request, "Signed out", "You are signed out, but client_id and id_token_hint disagree.", 400)
    client = provider.clients.get(client_id or hinted or "")
    if client is None or target not in client.post_logout_redirect_uris:
        return _page(request, "Signed out",
                     "You are signed out. The address to return to is not registered, so you stay here.", 400)
    params = {"state": query["state"]} if "state" in query else {}
    sep = "&" if "?" in target else "?"
    location = target + (sep + urlencode(params) if params else "")
    return _no_store(web.Response(status=302, headers={"Location": location}))


# --- client authentication -----------------------------------------------------------------------


def _parse_basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise OidcError("invalid_client", "unsupported Authorization scheme")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise OidcError("invalid_client", "malformed Basic credentials", basic_challenge=True) from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise OidcError("invalid_client", "malformed Basic credentials", basic_challenge=True)
    return unquote_plus(user), unquote_plus(password)


def _thumbprint(der_b64: str) -> str | None:
    try:
        der = base64.b64decode(der_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _matching_key(keyset: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any] | None:
    """The client key an assertion names: by `kid`, or by certificate thumbprint (`x5t#S256`) as MSAL sends."""
    kid = header.get("kid")
    thumb = header.get("x5t#S256")
    if isinstance(thumb, str):
        # MSAL pads the base64url thumbprint with "="; RFC 7515 does not. Entra takes both.
        thumb = thumb.rstrip("=")
    for jwk in keyset:
        if isinstance(kid, str) and kid and jwk.get("kid") == kid:
            return jwk
        if isinstance(thumb, str) and thumb:
            x5c = jwk.get("x5c")
            published = jwk.get("x5t#S256") or (
                _thumbprint(x5c[0]) if isinstance(x5c, list) and x5c and isinstance(x5c[0], str) else None)
            if isinstance(published, str) and published.rstrip("=") == thumb:
                return jwk
    return None


async def _client_keyset(request: web.Request, client: OidcClient, *, refetch: bool) -> list[dict[str, Any]]:
    """The client's registered public keys, inline or fetched from its JWKS URL (cached 5 minutes)."""
    if client.jwks is not None:
        return [k for k in client.jwks.get("keys", []) if isinstance(k, dict)]
    assert client.jwks_url is not None
    provider = request.app[OIDC]
    cached = provider.client_key_sets.get(client.jwks_url)
    if cached is not None and not refetch and cached.fetched_at + CLIENT_JWKS_CACHE_SECONDS > time.time():
        return cached.keys
    try:
        async with request.app[HTTP_SESSION].get(client.jwks_url, headers={"Accept": "application/json"},
                                                  allow_redirects=False) as resp:
            if resp.status != 200:
                raise OidcError("invalid_client", f"the client's JWKS answered {resp.status}")
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise OidcError("invalid_client", "the client's JWKS could not be fetched") from exc
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise OidcError("invalid_client", "the client's JWKS has no 'keys' array")
    found = [k for k in body["keys"] if isinstance(k, dict)]
    provider.client_key_sets[client.jwks_url] = ClientKeySet(found, time.time())
    return found


async def _verify_assertion(request: web.Request, tenant_id: str, form: dict[str, str]) -> OidcClient:
    """Authenticate a private_key_jwt client by its signed assertion."""
    provider = request.app[OIDC]
    if form.get("client_assertion_type") != JWT_BEARER:
        raise OidcError("invalid_client", "client_assertion_type must be jwt-bearer")
    assertion = form.get("client_assertion", "")
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise OidcError("invalid_client", "client_assertion is not a JWT") from exc
    client_id = form.get("client_id") or unverified.get("iss")
    client = provider.clients.get(client_id) if isinstance(client_id, str) else None
    if client is None or client.auth_method != "private_key_jwt":
        raise OidcError("invalid_client", "unknown client or client not registered for private_key_jwt")
    alg = header.get("alg")
    if alg not in ASSERTION_ALGS:
        raise OidcError("invalid_client", f"assertion alg must be one of {', '.join(ASSERTION_ALGS)}")
    jwk = _matching_key(await _client_keyset(request, client, refetch=False), header)
    if jwk is None and client.jwks_url is not None:
        # The client may have rotated its keys since the set was cached.
        jwk = _matching_key(await _client_keyset(request, client, refetch=True), header)
    if jwk is None:
        raise OidcError("invalid_client", "the assertion names no key (kid or x5t#S256) registered for this client")
    if "alg" in jwk and jwk["alg"] != alg:
        raise OidcError("invalid_client", "the key is registered for another algorithm")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        # A registered or fetched key that does not parse is the client's fault, never a 500.
        raise OidcError("invalid_client", "the client's key cannot be used for this algorithm") from exc
    try:
        claims = jwt.decode(assertion, key.key, algorithms=[alg], audience=_token_endpoint(request, tenant_id),
                            options={"require": ["iss", "sub", "aud", "exp", "jti"]})
    except jwt.PyJWTError as exc:
        raise OidcError("invalid_client", f"client_assertion rejected: {exc}") from exc
    if claims["iss"] != client.client_id or claims["sub"] != client.client_id:
        raise OidcError("invalid_client", "iss and sub must both be the client_id")
    latest = time.time() + ASSERTION_MAX_AHEAD + ASSERTION_CLOCK_SLACK
    if not isinstance(claims["exp"], (int, float)) or claims["exp"] > latest:
        raise OidcError("invalid_client", "assertion exp is more than 10 minutes ahead")
    jti = claims["jti"]
    if not isinstance(jti, str) or not provider.remember_jti(client.client_id, jti, float(claims["exp"])):
        raise OidcError("invalid_client", "assertion jti was already used")
    return client


async def _authenticate_client(request: web.Request, tenant_id: str, form: dict[str, str]) -> OidcClient:
    """The calling application, authenticated by exactly the method it registered."""
    provider = request.app[OIDC]
    authorization = request.headers.get("Authorization")
    uses_assertion = "client_assertion" in form or "client_assertion_type" in form
    uses_post = "client_secret" in form
    if sum((bool(authorization), uses_assertion, uses_post)) > 1:
        raise OidcError("invalid_client", "use exactly one client authentication method")
    if authorization:
        client_id, secret = _parse_basic(authorization)
        client = provider.clients.get(client_id)
        if client is None or client.auth_method != "client_secret_basic" or client.client_secret is None:
            raise OidcError("invalid_client", "client authentication failed", basic_challenge=True)
        if "client_id" in form and form["client_id"] != client_id:
            raise OidcError("invalid_client", "client_id does not match", basic_challenge=True)
        if not hmac.compare_digest(secret.encode(), client.client_secret.encode()):
            raise OidcError("invalid_client", "client authentication failed", basic_challenge=True)
        return client
    if uses_assertion:
        return await _verify_assertion(request, tenant_id, form)
    client = provider.clients.get(form.get("client_id", ""))
    if client is None:
        raise OidcError("invalid_client", "unknown client")
    if not uses_post:
        raise OidcError("invalid_client", f"this client must authenticate with {client.auth_method}")
    if client.auth_method != "client_secret_post" or client.client_secret is None:
        raise OidcError("invalid_client", f"this client must authenticate with {client.auth_method}")
    if not hmac.compare_digest(form["client_secret"].encode(), client.client_secret.encode()):
        raise OidcError("invalid_client", "client authentication failed")
    return client


# --- token ---------------------------------------------------------------------------------------


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


def id_token_claims(base: str, areq: AuthorizationRequest, user: OidcUser, auth_time: float) -> dict[str, Any]:
    """The claims of an id_token for a user signed in through an authorization request."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer(base, user.tenant_id),
        "sub": user.sub,
        "aud": areq.client_id,
        "iat": now,
        "nbf": now,
        "exp": now + ID_TOKEN_LIFETIME,
        "auth_time": int(auth_time),
        "tid": user.tenant_id,
        "oid": user.oid,
        "preferred_username": user.username,
        "name": user.name,
        "email": user.email,
        "groups": list(user.groups),
        "ver": "2.0",
    }
    if areq.nonce is not None:
        claims["nonce"] = areq.nonce
    return claims


def _another_tenant(tenant_id: str) -> str:
    return next(t.tenant_id for t in directory.TENANTS if t.tenant_id not in (tenant_id, directory.ORGANIZATIONS))


def _signed_id_token(provider: OidcProvider, claims: dict[str, Any], base: str) -> str:
    """Sign the claims with the active key, or spoil them as the id_token fault asks."""
    fault = provider.faults.id_token
    signing = provider.keys.signing
    if fault == "wrong_aud":
        claims["aud"] = claims["aud"] + "-someone-else"
    elif fault == "wrong_nonce":
        claims["nonce"] = "not-the-nonce-that-was-sent"
    elif fault == "missing_nonce":
        claims.pop("nonce", None)
    elif fault == "expired":
        claims["iat"] = claims["nbf"] = claims["iat"] - 2 * ID_TOKEN_LIFETIME
        claims["exp"] = claims["iat"] + ID_TOKEN_LIFETIME
    elif fault == "wrong_iss":
        # Another tenant's issuer on this tenant's user: a portal must compare iss with the organisation's.
        claims["iss"] = issuer(base, _another_tenant(claims["tid"]))
    elif fault == "wrong_tid":
        claims["tid"] = _another_tenant(claims["tid"])
    if fault == "alg_none":
        return jwt.encode(claims, "", algorithm="none", headers={"kid": signing.kid})
    if fault == "bad_signature":
        # A key nobody published, under the real kid: only the signature is wrong.
        return SigningKey(SigningKey.generate().private_key, signing.kid).sign(claims)
    if fault == "unknown_kid":
        return SigningKey.generate().sign(claims)
    token = signing.sign(claims)
    if fault == "malformed":
        token = "W10." + token.split(".", 1)[1]
    return token


def _redeem(request: web.Request, tenant_id: str, client: OidcClient, form: dict[str, str]) -> dict[str, Any]:
    provider = request.app[OIDC]
    code = provider.codes.get(form.get("code", ""))
    if code is None:
        raise OidcError("invalid_grant", "unknown authorization code")
    if code.used:
        raise OidcError("invalid_grant", "authorization code was already used")
    if code.expires_at <= time.time():
        raise OidcError("invalid_grant", "authorization code expired")
    areq = code.request
    if areq.tenant_id != tenant_id:
        raise OidcError("invalid_grant", "authorization code was issued by another tenant")
    if areq.client_id != client.client_id:
        raise OidcError("invalid_grant", "authorization code was issued to another client")
    if form.get("redirect_uri") != areq.redirect_uri:
        raise OidcError("invalid_grant", "redirect_uri does not match the authorization request")
    verifier = form.get("code_verifier", "")
    if not _CODE_VERIFIER.match(verifier):
        raise OidcError("invalid_grant", "code_verifier must be 43-128 unreserved characters")
    if not hmac.compare_digest(_s256(verifier), areq.code_challenge):
        raise OidcError("invalid_grant", "code_verifier does not match code_challenge")
    code.used = True
    claims = id_token_claims(request.app[SETTINGS].oidc_base, areq, code.user, code.auth_time)
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "access_token": new_secret(),
        "expires_in": ACCESS_TOKEN_LIFETIME,
        "scope": " ".join(areq.scopes),
        "id_token": _signed_id_token(provider, claims, request.app[SETTINGS].oidc_base),
    }
    if form.get("client_info") == "1":
        # Entra answers MSAL's client_info=1 with the user's object id and tenant, base64url JSON.
        info = json.dumps({"uid": code.user.oid, "utid": code.user.tenant_id}).encode()
        body["client_info"] = base64.urlsafe_b64encode(info).rstrip(b"=").decode()
    return body


async def token(request: web.Request) -> web.Response:
    """POST /idp/{tenant}/oauth2/v2.0/token: redeem an authorization code for an id_token."""
    try:
        tenant = _tenant_or_none(request)
        if tenant is None:
            raise OidcError("invalid_request", "unknown tenant")
        if request.content_type != "application/x-www-form-urlencoded":
            raise OidcError("invalid_request", "the body must be application/x-www-form-urlencoded")
        posted = await request.post()
        repeated = sorted(k for k in set(posted.keys()) if len(posted.getall(k)) > 1)
        if repeated:
            raise OidcError("invalid_request", f"parameters must not be repeated: {', '.join(repeated)}")
        form = {k: str(v) for k, v in posted.items()}
        client = await _authenticate_client(request, tenant.tenant_id, form)
        if client.tenants and tenant.tenant_id not in client.tenants:
            raise OidcError("unauthorized_client", f"this application is not registered in {tenant.name}")
        grant_type = form.get("grant_type")
        if grant_type != "authorization_code":
            raise OidcError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        body = _redeem(request, tenant.tenant_id, client, form)
    except OidcError as exc:
        log.info("identity provider token request refused: %s (%s)", exc.error, exc.description)
        response = web.json_response({"error": exc.error, "error_description": exc.description}, status=exc.status)
        if exc.basic_challenge:
            response.headers["WWW-Authenticate"] = 'Basic realm="sandbox-idp"'
        return _no_store(response)
    return _no_store(web.json_response(body))


def setup(app: web.Application) -> None:
    """Mount the OpenID provider on the sandbox app: its state, its routes and the applications registered at start."""
    provider = OidcProvider(OidcKeys())
    for client in app[SETTINGS].oidc_clients:
        provider.register(client)
    app[OIDC] = provider
    app.router.add_get("/idp/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration)
    app.router.add_get("/idp/{tenant}/discovery/v2.0/keys", keys)
    app.router.add_get("/idp/{tenant}/oauth2/v2.0/authorize", authorize)
    app.router.add_post("/idp/{tenant}/login", sign_in)
    app.router.add_post("/idp/{tenant}/oauth2/v2.0/token", token)
    app.router.add_get("/idp/{tenant}/oauth2/v2.0/logout", end_session)
