"""The one client for Microsoft Graph and Entra ID: app-only tokens with MSAL, requests with one rule book.

Every call to Graph (Teams meetings, the live-presence subscriptions, attendance reports) goes through
`GraphClient.request`, so the rules live in one place:

- a token for the tenant's application (client credentials, certificate preferred or a secret) from MSAL's
  `ConfidentialClientApplication`, one per tenant and credential, all sharing ONE token cache; MSAL blocks, so
  every call into it runs in a thread (`asyncio.to_thread`), never on the event loop;
- the request goes out on the gateway's shared aiohttp session, with a time limit per attempt, an answer read
  up to a size cap, no redirect followed at all (Graph never redirects an API call to another origin) and no
  path that is not under the configured Graph origin;
- 429 is retried after its `Retry-After`, 5xx and unreachable after a short backoff, for as long as the
  caller's deadline allows (the launch gives its own budget); what stays wrong is one of gateway.errors'
  GraphError family: GraphPolicyDenied (403, with an actionable message for the admin), GraphThrottled,
  GraphUnavailable, GraphRefused.

The Graph origin and the Entra authority host come from Settings (VISITGATE_GRAPH_URL,
VISITGATE_ENTRA_AUTHORITY_HOST) so that tests and the demo point them at sandbox/graph.py. MSAL takes a custom
authority over https only and, for a host that is not Microsoft's, with instance discovery off: the tenant's
authority is known, so there is nothing to discover. The CA bundle of Settings.idp_ca_file, when set, is what
both MSAL and aiohttp trust for these hosts.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json as jsonlib
import logging
import random
import re
import ssl
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .ehr import is_json
from .errors import (GraphError, GraphPolicyDenied, GraphRefused, GraphThrottled, GraphUnavailable)

log = logging.getLogger(__name__)

# MSAL warns on every flow whose response_mode is not form_post; the clinician's pop-up asks for query on purpose
# (as the portal does, config_portal/idp.py): a cross-site form POST would not carry SameSite=Lax cookies.
warnings.filterwarnings("ignore", message=re.escape("response_mode='form_post' is recommended"), category=UserWarning)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
"""The app-only scope: whatever application roles an admin consented to (the token's audience is Graph,
whichever cloud or double answers it)."""
MEETINGS_ROLE = "OnlineMeetings.ReadWrite.All"
ARTIFACT_ROLE = "OnlineMeetingArtifact.Read.All"
"""The application role that reads a meeting's attendance reports (presence reconciliation after the call)."""
CHANGE_TRACKING_APP = "0bf30f3b-4a52-48df-9a82-234910c4a086"
"""Graph's change-tracking application: the authorized party (azp, or appid in v1 tokens) of the
validationTokens that come with rich change notifications."""
KEYS_TTL = 6 * 3600.0  # how long Entra's signing keys are kept (Microsoft rolls them with weeks of overlap)
KEYS_REFETCH_AFTER = 60.0  # an unknown kid refetches the keys at most this often (forged tokens cannot make us
# fetch per notification)
TOKEN_LEEWAY = 60  # seconds of clock skew allowed on a token's times
MAX_BODY = 1024 * 1024
ATTEMPT_TIMEOUT = 10.0  # one attempt's limit, inside the caller's deadline
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
RETRY_AFTER_MAX = 30.0  # Graph's own hints are seconds; a longer one means "not within this call"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$")
_SERVER_ERRORS = frozenset({500, 502, 503, 504})
_STS_ISSUER = re.compile(r"^https://sts\.windows\.net/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                         r"[0-9a-fA-F]{12})/$")


def is_guid(value: str) -> bool:
    """Whether value is a GUID (Entra tenant, application and object IDs are)."""
    return bool(_GUID.match(value))


@dataclass(frozen=True)
class CertificateCredential:
    """An application's certificate credential: its RSA private key (PEM) and the SHA-1 thumbprint (hex) of
    the certificate registered in Entra, which the client assertion names (x5t)."""

    private_key_pem: str = field(repr=False)
    thumbprint: str


@dataclass(frozen=True)
class SecretCredential:
    """An application's client secret."""

    secret: str = field(repr=False)


Credential = CertificateCredential | SecretCredential


@dataclass(frozen=True)
class TeamsTenant:
    """An organisation's Microsoft 365 tenant and the application it registered for Visitgate."""

    tenant_id: str
    client_id: str
    credential: Credential

    def _key(self) -> tuple[str, str, str]:
        # What an MSAL application is built from; the credential only as a digest, never kept in the clear.
        if isinstance(self.credential, CertificateCredential):
            secret = self.credential.private_key_pem + self.credential.thumbprint
        else:
            secret = self.credential.secret
        return self.tenant_id.lower(), self.client_id.lower(), hashlib.sha256(secret.encode()).hexdigest()


def load_certificate(pem: str) -> CertificateCredential:
    """A certificate credential from a PEM bundle holding the application's RSA private key (unencrypted) and
    its certificate; ValueError (saying what is wrong, never the key) when it does not hold both, or they do not
    belong together."""
    data = pem.encode()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("the PEM holds no unencrypted private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the private key must be RSA (Entra signs client assertions with RS256 or PS256)")
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ValueError("the PEM holds no certificate") from exc
    if certificate.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise ValueError("the certificate does not belong to the private key")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return CertificateCredential(private_key_pem=key_pem,
                                 thumbprint=certificate.fingerprint(hashes.SHA1()).hex().upper())  # noqa: S303


@dataclass(frozen=True)
class GraphAnswer:
    """Graph's answer to a request that succeeded (2xx), its body parsed (None when empty or not JSON)."""

    status: int
    headers: Mapping[str, str]
    json: Any


def policy_message(tenant: TeamsTenant, organizer: str | None, graph_message: str) -> str:
    """What an admin must do after Graph's 403 for an application acting for a user."""
    if organizer and "policy" in graph_message.lower():
        return (f"Microsoft Teams refused to create meetings for the user {organizer}: no application access "
                f"policy allows the application {tenant.client_id} to act for them. In Teams PowerShell, run "
                f"`New-CsApplicationAccessPolicy -Identity Visitgate-Meetings -AppIds \"{tenant.client_id}\"` "
                f"(once), then `Grant-CsApplicationAccessPolicy -PolicyName Visitgate-Meetings "
                f"-Identity \"{organizer}\"` for that user (or `-Global` for everyone); it takes up to 30 minutes "
                f"to apply.")
    return (f"Microsoft Graph refused the application {tenant.client_id} (403). In Entra ID, give it the "
            f"application permission {MEETINGS_ROLE} with admin consent"
            + (f", and grant it an application access policy covering the user {organizer} "
               f"(`Grant-CsApplicationAccessPolicy`)." if organizer else "."))


def _organizer_of(path: str) -> str | None:
    parts = path.split("?")[0].split("/")
    if len(parts) > 2 and parts[1] == "users":
        return parts[2]
    return None


def _graph_error(body: Any) -> tuple[str, str]:
    """Graph's error code and message from its error body, cut short and reduced to printable text."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", ""
    code, message = error.get("code"), error.get("message")
    return _printable(code), _printable(message)


def _printable(value: Any) -> str:
    return "".join(c for c in value[:300] if c.isprintable()) if isinstance(value, str) else ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After", "").strip()
    if not raw:
        return None
    if raw.isdigit():
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


class GraphClient:
    """Graph and Entra for the whole gateway: one MSAL application per tenant and credential, one token cache,
    one aiohttp session (the gateway's), one rule book for retries and errors."""

    def __init__(self, http: aiohttp.ClientSession, *, graph_url: str, authority_host: str,
                 ca_file: Path | None = None, timeout: float = ATTEMPT_TIMEOUT, budget: float = 8.0) -> None:
        if not graph_url.startswith("https://") or not authority_host.startswith("https://"):
            raise ValueError("Graph and Entra are reached over https only")
        self._http = http
        self.graph_url = graph_url.rstrip("/")
        self.authority_host = authority_host.rstrip("/")
        self._ca_file = ca_file
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self.timeout = timeout
        self.budget = budget
        self.token_cache = msal.TokenCache()  # the ONE cache: MSAL keys it by client, tenant and scope
        self._apps: dict[tuple[str, str, str], tuple[msal.ConfidentialClientApplication, requests.Session]] = {}
        self._building: dict[tuple[str, str, str], asyncio.Lock] = {}
        # Entra's signing keys per tenant: (kid -> key, kept until (loop time), read at (loop time)).
        self._keys: dict[str, tuple[dict[str, jwt.PyJWK], float, float]] = {}
        self._keys_locks: dict[str, asyncio.Lock] = {}
        self.keys_refetch_after = KEYS_REFETCH_AFTER

    def close(self) -> None:
        """Close MSAL's HTTP sessions (at shutdown)."""
        for _, session in self._apps.values():
            session.close()
        self._apps.clear()

    # --- tokens ----------------------------------------------------------------------------------------

    def _build(self, tenant: TeamsTenant, cache: msal.TokenCache) -> tuple[msal.ConfidentialClientApplication,
                                                                           requests.Session]:
        # MSAL gets a requests session of its own that ignores the environment (REQUESTS_CA_BUNDLE, proxies)
        # and trusts exactly what the operator said.
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self._ca_file) if self._ca_file else True
        credential: str | dict[str, str]
        if isinstance(tenant.credential, CertificateCredential):
            credential = {"private_key": tenant.credential.private_key_pem,
                          "thumbprint": tenant.credential.thumbprint}
        else:
            credential = tenant.credential.secret
        try:
            # The tenant's own authority (never /common), without instance discovery: it is known, and a
            # double's host is not one Microsoft would vouch for.
            app = msal.ConfidentialClientApplication(
                tenant.client_id, client_credential=credential, http_client=session, timeout=self.timeout,
                authority=f"{self.authority_host}/{tenant.tenant_id}", instance_discovery=False,
                token_cache=cache, exclude_scopes=["offline_access"])
        except BaseException:
            session.close()
            raise
        return app, session

    async def _app(self, tenant: TeamsTenant) -> msal.ConfidentialClientApplication:
        key = tenant._key()
        built = self._apps.get(key)
        if built is not None:
            return built[0]
        async with self._building.setdefault(key, asyncio.Lock()):
            built = self._apps.get(key)
            if built is None:
                try:
                    # MSAL reads the authority's discovery document as it is built.
                    built = await asyncio.to_thread(self._build, tenant, self.token_cache)
                except ValueError as exc:  # MSAL's word for a bad credential or authority
                    raise GraphRefused("the application's credential could not be used",
                                       reason="graph_credential_refused",
                                       admin_message=f"The credential of application {tenant.client_id} could not "
                                                     f"be used: {type(exc).__name__}.") from exc
                except Exception as exc:  # requests' connection errors, MSAL's discovery failures
                    log.warning("Entra authority for a tenant unreachable: %s", type(exc).__name__)
                    raise GraphUnavailable("Entra ID could not be reached", reason="entra_unavailable") from exc
                # A changed credential replaces the application built from the old one.
                for stale in [k for k in self._apps if k[:2] == key[:2]]:
                    self._apps.pop(stale)[1].close()
                self._apps[key] = built
            return built[0]

    async def token(self, tenant: TeamsTenant, *, fresh: bool = False) -> dict[str, Any]:
        """MSAL's app-only token result for the tenant (cached by MSAL until near expiry); `fresh` asks Entra
        anew through an application with a cache of its own, so a changed credential is really tried."""
        if fresh:
            app, session = await asyncio.to_thread(self._build, tenant, msal.TokenCache())
            try:
                result: dict[str, Any] = await asyncio.to_thread(app.acquire_token_for_client, [GRAPH_SCOPE])
            finally:
                session.close()
        else:
            app = await self._app(tenant)
            result = await asyncio.to_thread(app.acquire_token_for_client, [GRAPH_SCOPE])
        if "access_token" not in result:
            error = "".join(c for c in str(result.get("error", ""))[:64] if c.isalnum() or c == "_")
            log.info("Entra refused an app token: %s", error or "no token")
            if error in ("invalid_client", "unauthorized_client", "invalid_request", "invalid_scope"):
                raise GraphRefused(f"Entra ID refused the application's credential ({error})",
                                   reason="graph_credential_refused",
                                   admin_message=f"Entra ID refused application {tenant.client_id} in tenant "
                                                 f"{tenant.tenant_id} ({error}): check the client ID, that the "
                                                 f"certificate or secret is registered and unexpired.")
            raise GraphUnavailable(f"Entra ID gave no token ({error or 'no answer'})", reason="entra_unavailable")
        return result

    # --- a clinician's one-time sign-in (authorization code flow with PKCE) -----------------------------

    async def begin_sign_in(self, tenant: TeamsTenant, redirect_uri: str, state: str) -> dict[str, Any]:
        """Start a clinician's sign-in to the tenant: MSAL's flow (auth_uri, PKCE verifier, nonce) with our
        state; no refresh token is asked for (offline_access excluded), as none is kept."""
        app = await self._app(tenant)
        try:
            flow: dict[str, Any] = await asyncio.to_thread(
                app.initiate_auth_code_flow, [], redirect_uri=redirect_uri, state=state, response_mode="query",
                prompt="select_account")
        except Exception as exc:  # MSAL's ValueErrors and requests' errors alike
            raise GraphUnavailable("the Microsoft sign-in could not be started", reason="entra_unavailable") from exc
        if flow.get("state") != state or not str(flow.get("auth_uri", "")).startswith(self.authority_host + "/"):
            raise GraphError("the Microsoft sign-in gave an unusable address", reason="entra_invalid")
        return flow

    async def finish_sign_in(self, tenant: TeamsTenant, flow: dict[str, Any],
                             response: Mapping[str, str]) -> tuple[str, str]:
        """Redeem the sign-in's code (PKCE checked by Entra, state and nonce by MSAL), verify the id_token's
        signature, issuer, audience and tenant here, forget every token, and answer (object ID, tenant ID)."""
        if "error" in response:
            code = "".join(c for c in response["error"][:64] if c.isalnum() or c == "_")
            raise GraphRefused(f"the Microsoft sign-in was refused ({code})", reason="entra_sign_in_refused")
        app = await self._app(tenant)
        try:
            result = await asyncio.to_thread(self._redeem, app, flow, dict(response))
        except Exception as exc:  # MSAL raises on a state or nonce mismatch, or an undecodable id_token
            raise GraphRefused("the Microsoft sign-in's answer did not check out",
                               reason="entra_sign_in_refused") from exc
        id_token = result.get("id_token")
        if not isinstance(id_token, str):
            raise GraphRefused("the Microsoft sign-in gave no id_token", reason="entra_sign_in_refused")
        claims = await self._verify_id_token(tenant, id_token, str(flow.get("nonce", "")))
        return str(claims["oid"]), str(claims["tid"])

    @staticmethod
    def _redeem(app: msal.ConfidentialClientApplication, flow: dict[str, Any],
                response: dict[str, str]) -> dict[str, Any]:
        """In a thread: MSAL redeems the code, then its cache forgets the clinician (no token is kept)."""
        result: dict[str, Any] = app.acquire_token_by_auth_code_flow(flow, response)
        claims = result.get("id_token_claims") or {}
        for account in app.get_accounts():
            if account.get("local_account_id") in (claims.get("oid"), claims.get("sub")):
                app.remove_account(account)
        return result

    async def signing_keys(self, tenant_id: str, *, kid: str | None = None) -> dict[str, jwt.PyJWK]:
        """Entra's token-signing keys for the tenant (kid -> key), from its discovery keys over the same https
        and CA as every Entra call; kept KEYS_TTL, and read again (at most once a KEYS_REFETCH_AFTER) when `kid`
        is not among them, as after a key rollover. GraphUnavailable when they cannot be read."""
        loop = asyncio.get_running_loop()
        cached = self._keys.get(tenant_id)
        if cached is not None and cached[1] > loop.time() \
                and (kid is None or kid in cached[0] or loop.time() - cached[2] < self.keys_refetch_after):
            return cached[0]
        async with self._keys_locks.setdefault(tenant_id, asyncio.Lock()):
            cached = self._keys.get(tenant_id)  # another caller may have read them meanwhile
            if cached is not None and cached[1] > loop.time() \
                    and (kid is None or kid in cached[0] or loop.time() - cached[2] < self.keys_refetch_after):
                return cached[0]
            try:
                keys = await self._read_keys(tenant_id)
            except GraphUnavailable:
                if cached is not None and cached[1] > loop.time():
                    return cached[0]  # a refetch for an unknown kid failed: the keys we have still stand
                raise
            if len(self._keys) > 1000:  # one entry per organisation's tenant; bounded all the same
                self._keys.clear()
            self._keys[tenant_id] = (keys, loop.time() + KEYS_TTL, loop.time())
            return keys

    async def _read_keys(self, tenant_id: str) -> dict[str, jwt.PyJWK]:
        keys_url = f"{self.authority_host}/{quote(tenant_id, safe='')}/discovery/v2.0/keys"
        try:
            async with asyncio.timeout(self.timeout):
                async with self._http.get(keys_url, ssl=self._ssl, allow_redirects=False) as response:
                    if response.status != 200:
                        raise GraphUnavailable("Entra ID's keys could not be read", reason="entra_unavailable")
                    document = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise GraphUnavailable("Entra ID's keys could not be read", reason="entra_unavailable") from exc
        found: dict[str, jwt.PyJWK] = {}
        listed = document.get("keys") if isinstance(document, dict) else None
        for jwk in listed if isinstance(listed, list) else []:
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) and jwk.get("kty") == "RSA":
                try:
                    found[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="RS256")
                except jwt.PyJWTError:
                    continue  # a key we cannot use is one no token of ours is signed with
        return found

    async def _verify_id_token(self, tenant: TeamsTenant, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
        except jwt.PyJWTError as exc:
            raise GraphRefused("the Microsoft sign-in's id_token did not check out",
                               reason="entra_sign_in_refused") from exc
        kid = kid if isinstance(kid, str) else ""
        keys = await self.signing_keys(tenant.tenant_id, kid=kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token, keys[kid].key, algorithms=["RS256"], audience=tenant.client_id,
                issuer=f"{self.authority_host}/{tenant.tenant_id}/v2.0", leeway=TOKEN_LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "oid", "tid"]})
        except (KeyError, TypeError, jwt.PyJWTError) as exc:
            raise GraphRefused("the Microsoft sign-in's id_token did not check out",
                               reason="entra_sign_in_refused") from exc
        # MSAL sends the nonce hashed and compares it itself; checked again here against what it sent.
        if claims.get("nonce") != hashlib.sha256(nonce.encode()).hexdigest() or claims["tid"] != tenant.tenant_id \
                or not is_guid(str(claims["oid"])):
            raise GraphRefused("the Microsoft sign-in's id_token is not for this tenant or sign-in",
                               reason="entra_sign_in_refused")
        return claims

    async def validation_token(self, tenant: TeamsTenant, token: str, *, at: float) -> tuple[float, bool]:
        """Check a validationToken of Graph's rich notifications: a JWT signed with Entra's keys (RS256), issued
        by `https://sts.windows.net/{tid}/` for Graph's change-tracking application (azp, or appid in v1 tokens),
        and not expired at `at` (epoch seconds: when the notification arrived). Answers (its expiry, whether it
        is for this tenant's application: aud and tid); GraphRefused when it is not authentic,
        GraphUnavailable when Entra's keys cannot be read.

        A token for another application is authentic but not ours: Graph sends one token per application and
        tenant in a collection, and several organisations' subscriptions share our notification URL."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise GraphRefused("a validation token is not a JWT", reason="graph_token_malformed") from exc
        if not isinstance(kid, str):
            raise GraphRefused("a validation token names no key", reason="graph_token_malformed")
        key = (await self.signing_keys(tenant.tenant_id, kid=kid)).get(kid)
        if key is None:
            raise GraphRefused("a validation token is signed with a key Entra does not list",
                               reason="graph_token_unknown_key")
        try:
            # Expiry is checked against the arrival below, not now: the worker may take a while after Graph.
            claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=["RS256"],
                                                options={"require": ["exp", "iss", "aud"], "verify_exp": False,
                                                         "verify_aud": False, "verify_iat": False,
                                                         "verify_nbf": False})
        except jwt.PyJWTError as exc:
            raise GraphRefused("a validation token's signature did not check out",
                               reason="graph_token_signature") from exc
        issuer = _STS_ISSUER.match(str(claims["iss"]))
        tid = claims.get("tid")
        if issuer is None or (tid is not None and str(tid).lower() != issuer.group(1).lower()):
            raise GraphRefused("a validation token is not from Entra's token service", reason="graph_token_issuer")
        party = claims["azp"] if "azp" in claims else claims.get("appid")
        if party != CHANGE_TRACKING_APP:
            raise GraphRefused("a validation token is not from Graph's change tracking", reason="graph_token_party")
        exp, nbf = claims["exp"], claims.get("nbf")
        if not isinstance(exp, (int, float)) or exp + TOKEN_LEEWAY < at \
                or (isinstance(nbf, (int, float)) and nbf - TOKEN_LEEWAY > at):
            raise GraphRefused("a validation token has expired", reason="graph_token_expired")
        ours = claims["aud"] == tenant.client_id and issuer.group(1).lower() == tenant.tenant_id.lower()
        return float(exp), ours

    # --- requests --------------------------------------------------------------------------------------

    async def request(self, tenant: TeamsTenant, method: str, path: str, *, json: Any = None, beta: bool = False,
                      headers: Mapping[str, str] | None = None, deadline: float | None = None,
                      retry_server_errors: bool = True) -> GraphAnswer:
        """Call Graph for the tenant's application; a 2xx answer comes back, anything else raises GraphError.

        `path` is under the API version (`/users/{id}/onlineMeetings/createOrGet`); `beta` picks /beta over
        /v1.0. `deadline` (loop time) bounds the whole call, retries included (default: now + budget). 429 is
        retried after Retry-After, and 5xx or an unreachable Graph after a backoff, while the deadline allows;
        `retry_server_errors=False` for a POST that is not idempotent (a 5xx may have done the work).
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + self.budget if deadline is None else deadline
        if not _PATH.match(path) or "//" in path or "/../" in path or path.endswith("/.."):
            raise GraphRefused("refused to call a malformed Graph path", reason="graph_bad_path")
        url = f"{self.graph_url}/{'beta' if beta else 'v1.0'}{path}"
        body = None if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        delay = BACKOFF_FIRST
        attempt = 0
        failure: GraphError
        while True:
            attempt += 1
            remaining = end - loop.time()
            if remaining <= 0:
                raise GraphUnavailable("Microsoft Graph did not answer in time", reason="graph_timeout")
            try:
                async with asyncio.timeout(min(remaining, self.timeout)):
                    token = await self.token(tenant)
                    status, answer_headers, doc = await self._send(method, url, token["access_token"], body,
                                                                   headers)
            except GraphUnavailable as exc:  # Entra unreachable or failing: as retryable as Graph itself
                wait, failure = delay, exc
            except GraphError:
                raise
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                wait = delay
                failure = GraphUnavailable(
                    f"Microsoft Graph could not be reached ({type(exc).__name__})", reason="graph_unavailable")
            except aiohttp.ClientError as exc:
                raise GraphError(f"Microsoft Graph answered something unreadable ({type(exc).__name__})",
                                 reason="graph_invalid") from exc
            else:
                if 200 <= status < 300:
                    return GraphAnswer(status, answer_headers, doc)
                code, message = _graph_error(doc)
                if status == 429:
                    hint = _retry_after(answer_headers)
                    wait = delay if hint is None else hint
                    failure = GraphThrottled(f"Microsoft Graph throttled the call ({code or 429})",
                                             upstream_status=429)
                elif status in _SERVER_ERRORS and retry_server_errors:
                    wait = delay
                    failure = GraphUnavailable(f"Microsoft Graph answered {status}", upstream_status=status)
                elif status == 403:
                    organizer = _organizer_of(path)
                    log.info("Graph answered 403 (%s)", code or "no code")
                    raise GraphPolicyDenied(
                        "Ask your Microsoft 365 administrator to allow Visitgate to create Teams meetings for you.",
                        upstream_status=403, admin_message=policy_message(tenant, organizer, message))
                elif status in _SERVER_ERRORS:
                    raise GraphUnavailable(f"Microsoft Graph answered {status}", upstream_status=status)
                else:
                    raise GraphRefused(f"Microsoft Graph refused the call ({status} {code})".strip(),
                                       upstream_status=status)
            if wait > RETRY_AFTER_MAX or loop.time() + wait >= end:
                raise failure
            log.info("Graph call attempt %d failed (%s); retrying in %.2fs", attempt, failure.reason, wait)
            # Jitter spreads the retries of concurrent launches that were throttled together.
            await asyncio.sleep(wait * (1 + random.random() * 0.1))  # noqa: S311 (timing, not secrecy)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _send(self, method: str, url: str, token: str, body: bytes | None,
                    extra: Mapping[str, str] | None) -> tuple[int, Mapping[str, str], Any]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", **(extra or {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        async with self._http.request(method, url, data=body, headers=headers, allow_redirects=False,
                                      ssl=self._ssl, timeout=aiohttp.ClientTimeout(total=None)) as response:
            if 300 <= response.status < 400:
                raise GraphError("Microsoft Graph redirected the call; not followed", reason="graph_redirect",
                                 upstream_status=response.status)
            declared = response.content_length
            if declared is not None and declared > MAX_BODY:
                raise GraphError("Microsoft Graph's answer is too large", reason="graph_too_large")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_BODY:
                    raise GraphError("Microsoft Graph's answer is too large", reason="graph_too_large")
                chunks.append(chunk)
            raw = b"".join(chunks)
            doc: Any = None
            if raw and is_json(response.content_type):
                try:
                    doc = jsonlib.loads(raw)
                except (ValueError, RecursionError):
                    doc = None
            return response.status, response.headers, doc
