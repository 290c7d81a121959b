"""The organisations' identity providers: one MSAL application (and token cache) per organisation for the
authorization code flow, and everything MSAL leaves undone checked here.

MSAL for Python sends PKCE S256 and a hashed nonce, but checks neither the id_token's signature, issuer,
audience nor expiry, nor RFC 9207's `iss`; so the discovery document and the signing keys are fetched with the
gateway's own HTTP session and the id_token is verified with PyJWT by `kid`. MSAL blocks: every call into it
runs in a thread.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import ssl
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import msal
import requests

from gateway.security import Sealer, jws_header

from .errors import IdentityProviderError, SignInRefused
from .store import Organisation

log = logging.getLogger(__name__)

# MSAL warns on every flow whose response_mode is not form_post. The portal asks for query on purpose: its
# browser-binding cookie is SameSite=Lax, which the provider's cross-site form POST would not carry, and the code
# in the address is useless without our PKCE verifier and client secret. (pyproject's test filters say the same.)
QUERY_MODE_WARNING = "response_mode='form_post' is recommended"
warnings.filterwarnings("ignore", message=re.escape(QUERY_MODE_WARNING), category=UserWarning)

# Asymmetric algorithms only: `none` and the HMAC family (keyed with something public) are never accepted.
ID_TOKEN_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
CLOCK_LEEWAY = 60  # seconds of clock difference tolerated on exp, iat and auth_time
DOCUMENT_MAX_BYTES = 512 * 1024
DISCOVERY_TTL = 3600.0
KEYS_TTL = 3600.0
KEYS_REFETCH_AFTER = 60.0  # an unknown kid refetches the keys (a rotation), at most this often
SECRET_CONTEXT = "organisations.client_secret"


def nonce_hash(nonce: str) -> str:
    """What MSAL puts in the authorization request, and so what the id_token's nonce must be."""
    return hashlib.sha256(nonce.encode()).hexdigest()


class IdentityProviders:
    """MSAL applications, discovery documents and signing keys of every organisation, fetched on first use."""

    def __init__(self, http: aiohttp.ClientSession, sealer: Sealer, *, ca_file: Path | None,
                 timeout: float) -> None:
        self._http = http
        self._sealer = sealer
        self._ca_file = ca_file
        self._timeout = timeout
        # Only where an operator named a CA file (tests, the demo); otherwise the system's trust store.
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        # Per organisation (and what it was built from): its MSAL application and that application's session.
        self._apps: dict[tuple[int, str, str, bytes], tuple[msal.ConfidentialClientApplication, requests.Session]] = {}
        self._discovery: dict[str, tuple[float, dict[str, Any]]] = {}
        self._keys: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._locks: dict[int, asyncio.Lock] = {}  # per organisation: one slow provider holds up only its own

    def close(self) -> None:
        """Close MSAL's HTTP sessions (at shutdown)."""
        for _, session in self._apps.values():
            session.close()
        self._apps.clear()

    # --- MSAL ------------------------------------------------------------------------------------------

    def _build_app(self, org: Organisation) -> tuple[msal.ConfidentialClientApplication, requests.Session]:
        # The environment's REQUESTS_CA_BUNDLE would override MSAL's verify=, so MSAL gets a session of its own
        # that ignores the environment and trusts exactly what the operator said.
        http = requests.Session()
        http.trust_env = False
        http.verify = str(self._ca_file) if self._ca_file else True
        secret = self._sealer.unseal(org.client_secret, SECRET_CONTEXT)
        # The tenant's own authority for Entra (never /common or /organizations), without instance discovery:
        # the authority is known, and the portal checks issuer and tenant itself. No offline_access: the
        # portal signs people in and never calls an API for them, so it asks for no refresh token.
        where = ({"authority": org.issuer.removesuffix("/v2.0"), "instance_discovery": False}
                 if org.idp_kind == "entra" else {"oidc_authority": org.issuer})
        try:
            app = msal.ConfidentialClientApplication(
                org.client_id, client_credential=secret, http_client=http, timeout=self._timeout,
                exclude_scopes=["offline_access"], **where)
        except BaseException:
            http.close()
            raise
        return app, http

    async def _app(self, org: Organisation) -> msal.ConfidentialClientApplication:
        key = (org.id, org.issuer, org.client_id, org.client_secret)
        async with self._locks.setdefault(org.id, asyncio.Lock()):
            built = self._apps.get(key)
            if built is None:
                try:
                    # MSAL reads the provider's discovery document as it is built.
                    built = await asyncio.to_thread(self._build_app, org)
                except Exception as exc:  # MSAL raises plain ValueErrors and requests' errors alike
                    log.warning("identity provider of organisation %s unusable: %s", org.slug, type(exc).__name__)
                    raise IdentityProviderError("The organisation's sign-in service could not be reached.") from exc
                for stale in [k for k in self._apps if k[0] == org.id]:  # the organisation changed since
                    self._apps.pop(stale)[1].close()
                self._apps[key] = built
            return built[0]

    async def start(self, org: Organisation, redirect_uri: str, state: str, *, max_age: int | None) -> dict[str, Any]:
        """Begin an authorization code flow with our own state; answers MSAL's flow (auth_uri, nonce, verifier)."""
        app = await self._app(org)
        try:
            flow: dict[str, Any] = await asyncio.to_thread(
                app.initiate_auth_code_flow, [], redirect_uri=redirect_uri, state=state,
                prompt="login" if max_age is not None else None, max_age=max_age,
                # query, not form_post: the browser-binding cookie is SameSite=Lax, which a cross-site POST
                # would not carry.
                response_mode="query")
        except Exception as exc:
            log.warning("sign-in to %s could not start: %s", org.slug, type(exc).__name__)
            raise IdentityProviderError("The organisation's sign-in service could not be used.") from exc
        if flow.get("state") != state or not str(flow.get("auth_uri", "")).startswith("https://"):
            raise IdentityProviderError("The organisation's sign-in service gave an unusable sign-in address.")
        return flow

    async def finish(self, org: Organisation, flow: dict[str, Any], response: dict[str, str]) -> dict[str, Any]:
        """Check the authorization response, let MSAL redeem the code, and answer the verified id_token's claims."""
        discovery = await self.discovery(org)
        announced = discovery.get("authorization_response_iss_parameter_supported") is True
        iss = response.get("iss")
        # RFC 9207: a present `iss` must name our provider; one that announces it must send it.
        if iss is not None and iss != org.issuer:
            raise SignInRefused("The answer came from another identity provider.", reason="wrong_iss_parameter")
        if announced and iss is None:
            raise SignInRefused("The identity provider's answer did not say who sent it.",
                                reason="missing_iss_parameter")
        if "error" in response:
            code = "".join(c for c in response["error"][:64] if c.isalnum() or c == "_")
            raise SignInRefused(f"The identity provider refused the sign-in ({code}).", reason="idp_error")
        app = await self._app(org)
        try:
            result = await asyncio.to_thread(self._redeem, app, flow, response)
        except Exception as exc:
            # MSAL raises on a nonce that is not the hash it sent, on a state mismatch, on an id_token it cannot
            # even decode: nothing of it is trusted, whatever the reason.
            log.info("sign-in to %s refused by MSAL: %s", org.slug, type(exc).__name__)
            raise SignInRefused("The identity provider's answer did not check out.",
                                reason="id_token_invalid") from exc
        if "error" in result:
            code = "".join(c for c in str(result["error"])[:64] if c.isalnum() or c == "_")
            log.info("sign-in to %s: token endpoint answered %s", org.slug, code)
            raise SignInRefused(f"The identity provider did not redeem the sign-in ({code}).", reason="code_refused")
        id_token = result.get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused("The identity provider sent no id_token.", reason="id_token_invalid")
        return await self.verify_id_token(org, id_token, nonce_hash(str(flow.get("nonce", ""))))

    @staticmethod
    def _redeem(app: msal.ConfidentialClientApplication, flow: dict[str, Any],
                response: dict[str, str]) -> dict[str, Any]:
        """In a thread: MSAL redeems the code; then its cache forgets the person (the portal never uses the
        tokens again, and the cache should not grow with every sign-in)."""
        result: dict[str, Any] = app.acquire_token_by_auth_code_flow(flow, response)
        claims = result.get("id_token_claims") or {}
        for account in app.get_accounts():
            if account.get("local_account_id") in (claims.get("oid"), claims.get("sub")):
                app.remove_account(account)
        return result

    # --- discovery, keys and the id_token ----------------------------------------------------------------

    async def _get_json(self, url: str) -> Any:
        if urlsplit(url).scheme != "https":
            raise IdentityProviderError("The identity provider named a non-https address.")
        try:
            async with self._http.get(url, ssl=self._ssl, allow_redirects=False) as r:
                if r.status != 200:
                    raise IdentityProviderError(f"The identity provider answered {r.status}.")
                body = await r.content.read(DOCUMENT_MAX_BYTES + 1)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise IdentityProviderError("The identity provider could not be reached.") from exc
        if len(body) > DOCUMENT_MAX_BYTES:
            raise IdentityProviderError("The identity provider's document is too large.")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise IdentityProviderError("The identity provider's document is not JSON.") from exc

    async def discovery(self, org: Organisation) -> dict[str, Any]:
        """The provider's discovery document, whose issuer must be exactly the organisation's."""
        cached = self._discovery.get(org.issuer)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        doc = await self._get_json(org.issuer + "/.well-known/openid-configuration")
        if not isinstance(doc, dict) or doc.get("issuer") != org.issuer or not isinstance(doc.get("jwks_uri"), str):
            raise IdentityProviderError("The identity provider's discovery document does not name its issuer.")
        self._discovery[org.issuer] = (time.monotonic() + DISCOVERY_TTL, doc)
        return doc

    async def _signing_keys(self, org: Organisation, *, refetch: bool) -> list[dict[str, Any]]:
        url = str((await self.discovery(org))["jwks_uri"])
        cached = self._keys.get(url)
        now = time.monotonic()
        if cached is not None and (cached[0] > now if not refetch else cached[0] - KEYS_TTL + KEYS_REFETCH_AFTER > now):
            return cached[1]
        doc = await self._get_json(url)
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, list):
            raise IdentityProviderError("The identity provider's key set is not a key set.")
        found = [k for k in keys if isinstance(k, dict)]
        self._keys[url] = (now + KEYS_TTL, found)
        return found

    async def verify_id_token(self, org: Organisation, id_token: str, expected_nonce: str) -> dict[str, Any]:
        """The id_token's claims once its signature (by kid), issuer, tenant, audience, expiry and nonce check out."""
        try:
            header = jws_header(id_token)
        except ValueError as exc:
            raise SignInRefused("The id_token is malformed.", reason="id_token_malformed") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ID_TOKEN_ALGS or not isinstance(kid, str):
            raise SignInRefused("The id_token is not signed as it must be.", reason="id_token_algorithm")
        jwk = _by_kid(await self._signing_keys(org, refetch=False), kid)
        if jwk is None:  # perhaps a rotation since the keys were fetched
            jwk = _by_kid(await self._signing_keys(org, refetch=True), kid)
        if jwk is None:
            raise SignInRefused("The id_token is signed with a key the provider does not publish.",
                                reason="id_token_unknown_key")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            claims: dict[str, Any] = jwt.decode(
                id_token, key, algorithms=[alg], audience=org.client_id, issuer=org.issuer, leeway=CLOCK_LEEWAY,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "nonce"]})
        except jwt.InvalidSignatureError as exc:
            raise SignInRefused("The id_token's signature is wrong.", reason="id_token_signature") from exc
        except jwt.ExpiredSignatureError as exc:
            raise SignInRefused("The id_token has expired.", reason="id_token_expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise SignInRefused("The id_token was issued to another application.",
                                reason="id_token_audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise SignInRefused("The id_token was issued by another identity provider or tenant.",
                                reason="id_token_issuer") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise SignInRefused("The id_token is not valid.", reason="id_token_invalid") from exc
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(claims["nonce"], expected_nonce):
            raise SignInRefused("The id_token answers another sign-in.", reason="id_token_nonce")
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != org.client_id:
            raise SignInRefused("The id_token was issued to another application.", reason="id_token_audience")
        if org.idp_kind == "entra" and claims.get("tid") != org.tenant_id:
            raise SignInRefused("You signed in with an account of another organisation.", reason="wrong_tenant")
        return claims


def _by_kid(keys: list[dict[str, Any]], kid: str) -> dict[str, Any] | None:
    return next((k for k in keys if k.get("kid") == kid and k.get("use", "sig") == "sig"), None)
