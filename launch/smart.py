"""The SMART App Launch client: discovery, the authorize redirect, the code exchange, id_token checks."""
from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import jwt

from gateway.errors import AuthServerError, IdTokenInvalid, UpstreamError
from gateway.fhir import valid_id
from gateway.security import SigningKey, jws_header

DISCOVERY_TTL = 3600.0
JWKS_TTL = 3600.0
JWKS_REFETCH_AFTER = 60.0  # an unknown kid refetches the JWKS at most this often
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "ES256", "ES384"]


@dataclass(frozen=True)
class SmartConfiguration:
    """What an EHR's .well-known/smart-configuration told us, vetted."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None
    iss_parameter_supported: bool


@dataclass(frozen=True)
class Client:
    """How we identify ourselves to one EHR (from an approved configuration)."""

    client_id: str
    auth: str
    secret: str | None


@dataclass(frozen=True)
class TokenGrant:
    """The vetted parts of a token response: the access token and the launch context."""

    access_token: str
    expires_in: int
    scopes: frozenset[str]
    id_token: str | None
    patient: str | None
    encounter: str | None
    need_patient_banner: bool
    smart_style_url: str | None


def _url_ok(url: object, allow_http: bool) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return (parts.scheme == "https" or (allow_http and parts.scheme == "http")) and bool(parts.netloc) \
        and not parts.fragment


def _error_code(value: object) -> str:
    return value if isinstance(value, str) and _ERROR_CODE.match(value) else "unknown"


class SmartClient:
    """Caches discovery and JWKS per EHR; talks to EHRs through the gateway's shared ClientSession."""

    def __init__(self, http: aiohttp.ClientSession, signing_key: SigningKey, redirect_uri: str) -> None:
        self._http = http
        self._signing_key = signing_key
        self.redirect_uri = redirect_uri
        self._discovery: dict[str, tuple[float, SmartConfiguration]] = {}
        self._discovery_locks: dict[str, asyncio.Lock] = {}
        self._jwks: dict[str, tuple[float, dict[str, jwt.PyJWK]]] = {}

    async def discover(self, iss: str) -> SmartConfiguration:
        """The EHR's SMART configuration, fetched once an hour at most (concurrent launches share a fetch)."""
        cached = self._discovery.get(iss)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        lock = self._discovery_locks.setdefault(iss, asyncio.Lock())
        async with lock:
            cached = self._discovery.get(iss)
            if cached and cached[0] > time.monotonic():
                return cached[1]
            conf = await self._fetch_discovery(iss)
            self._discovery[iss] = (time.monotonic() + DISCOVERY_TTL, conf)
            return conf

    async def _fetch_discovery(self, iss: str) -> SmartConfiguration:
        doc = await self._get_json(f"{iss}/.well-known/smart-configuration", "discovery")
        allow_http = iss.startswith("http://")  # only a plain-http EHR (the sandbox) may name http endpoints
        if not _url_ok(doc.get("authorization_endpoint"), allow_http) or \
                not _url_ok(doc.get("token_endpoint"), allow_http):
            raise UpstreamError("the EHR's SMART configuration lacks usable endpoints", reason="discovery_invalid")
        methods = doc.get("code_challenge_methods_supported")
        if not isinstance(methods, list) or "S256" not in methods:
            raise UpstreamError("the EHR does not support PKCE with S256, which we require",
                                reason="discovery_no_s256")
        jwks_uri = doc.get("jwks_uri")
        issuer = doc.get("issuer", iss)
        if not isinstance(issuer, str):
            raise UpstreamError("the EHR's SMART configuration names no issuer", reason="discovery_invalid")
        return SmartConfiguration(
            issuer=issuer,
            authorization_endpoint=doc["authorization_endpoint"],
            token_endpoint=doc["token_endpoint"],
            jwks_uri=jwks_uri if _url_ok(jwks_uri, allow_http) else None,
            iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported") is True,
        )

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with self._http.get(url, headers={"Accept": "application/json"}) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"the EHR could not be reached ({what})", reason=f"{what}_unreachable") from exc
        if status != 200:
            raise UpstreamError(f"the EHR answered {status} ({what})", reason=f"{what}_failed")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise UpstreamError(f"the EHR answered something that is not JSON ({what})",
                                reason=f"{what}_invalid") from exc
        if not isinstance(doc, dict):
            raise UpstreamError(f"the EHR answered something unexpected ({what})", reason=f"{what}_invalid")
        return doc

    def authorize_url(self, conf: SmartConfiguration, client: Client, *, iss: str, launch: str, scopes: str,
                      state: str, code_challenge: str, nonce: str) -> str:
        """Where the browser goes to sign in at the EHR (EHR launch with PKCE S256)."""
        params = {
            "response_type": "code", "client_id": client.client_id, "redirect_uri": self.redirect_uri,
            "scope": scopes, "state": state, "aud": iss, "launch": launch,
            "code_challenge": code_challenge, "code_challenge_method": "S256", "nonce": nonce,
        }
        sep = "&" if urlsplit(conf.authorization_endpoint).query else "?"
        return conf.authorization_endpoint + sep + urlencode(params, quote_via=quote)

    async def exchange_code(self, conf: SmartConfiguration, client: Client, code: str,
                            code_verifier: str) -> TokenGrant:
        """Trade the authorization code for tokens, authenticating as the configuration says."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": code_verifier}
        headers = {"Accept": "application/json"}
        if client.auth == "private_key_jwt":
            form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            form["client_assertion"] = self._signing_key.client_assertion(client.client_id, conf.token_endpoint)
        elif client.auth == "client_secret_basic":
            pair = f"{quote(client.client_id, safe='')}:{quote(client.secret or '', safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = client.client_id
        try:
            async with self._http.post(conf.token_endpoint, data=form, headers=headers) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthServerError("the EHR's token endpoint could not be reached",
                                  reason="token_unreachable") from exc
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if status != 200 or not isinstance(doc, dict):
            code_name = _error_code(doc.get("error")) if isinstance(doc, dict) else "unknown"
            raise AuthServerError(f"the EHR refused to complete the sign-in ({status}, {code_name})",
                                  reason="token_error")
        return _grant(doc)

    async def validate_id_token(self, conf: SmartConfiguration, id_token: str, client_id: str,
                                nonce: str) -> dict[str, Any]:
        """Check the id_token's signature, issuer, audience, expiry and nonce; returns its claims."""
        if conf.jwks_uri is None:
            raise IdTokenInvalid("the EHR publishes no keys to check its id_token", reason="id_token_no_jwks")
        try:
            header = jws_header(id_token)
        except ValueError as exc:
            raise IdTokenInvalid("the id_token is malformed", reason="id_token_malformed") from exc
        key = await self._key_for(conf.jwks_uri, header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token, key, algorithms=ID_TOKEN_ALGORITHMS, audience=client_id, issuer=conf.issuer,
                leeway=30, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.InvalidSignatureError as exc:
            raise IdTokenInvalid("the id_token's signature is wrong", reason="id_token_signature") from exc
        except jwt.ExpiredSignatureError as exc:
            raise IdTokenInvalid("the id_token has expired", reason="id_token_expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise IdTokenInvalid("the id_token is meant for another application",
                                 reason="id_token_audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise IdTokenInvalid("the id_token comes from another issuer", reason="id_token_issuer") from exc
        except jwt.PyJWTError as exc:
            raise IdTokenInvalid("the id_token is not valid", reason="id_token_invalid") from exc
        if claims.get("nonce") != nonce:
            raise IdTokenInvalid("the id_token belongs to another sign-in", reason="id_token_nonce")
        return claims

    async def _key_for(self, jwks_uri: str, kid: object) -> jwt.PyJWK:
        cached = self._jwks.get(jwks_uri)
        now = time.monotonic()
        keys = cached[1] if cached else {}
        fresh = cached is not None and cached[0] > now
        if not fresh or (kid not in keys and (cached is None or cached[0] - JWKS_TTL + JWKS_REFETCH_AFTER < now)):
            keys = await self._fetch_jwks(jwks_uri)
            self._jwks[jwks_uri] = (now + JWKS_TTL, keys)
        if isinstance(kid, str) and kid in keys:
            return keys[kid]
        if kid is None and len(keys) == 1:
            return next(iter(keys.values()))
        raise IdTokenInvalid("the id_token is signed with a key the EHR does not publish",
                             reason="id_token_signature")

    async def _fetch_jwks(self, jwks_uri: str) -> dict[str, jwt.PyJWK]:
        doc = await self._get_json(jwks_uri, "jwks")
        keys: dict[str, jwt.PyJWK] = {}
        for index, entry in enumerate(doc.get("keys") or []):
            if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC") or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[str(entry.get("kid", index))] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # one odd key must not hide the good ones
        return keys


def _grant(doc: dict[str, Any]) -> TokenGrant:
    access_token = doc.get("access_token")
    if not isinstance(access_token, str) or not access_token or \
            str(doc.get("token_type", "")).lower() != "bearer":
        raise AuthServerError("the EHR's token response holds no bearer token", reason="token_invalid")
    expires_in = doc.get("expires_in", 3600)
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = 300
    scope = doc.get("scope")
    patient, encounter = doc.get("patient"), doc.get("encounter")
    for name, value in (("patient", patient), ("encounter", encounter)):
        if value is not None and not valid_id(value):
            raise AuthServerError(f"the EHR's launch context has a malformed {name}", reason="context_invalid")
    style = doc.get("smart_style_url")
    id_token = doc.get("id_token")
    return TokenGrant(
        access_token=access_token,
        expires_in=min(expires_in, 24 * 3600),
        scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
        id_token=id_token if isinstance(id_token, str) else None,
        patient=patient,
        encounter=encounter,
        need_patient_banner=doc.get("need_patient_banner") is not False,
        smart_style_url=style if _url_ok(style, True) else None,
    )
