"""SMART Backend Services tokens for write-back: client_credentials with a private_key_jwt assertion.

Write-back never uses a clinician's token (it expires, and it is theirs). Each configuration gets its own
system-level token, cached until shortly before it expires; concurrent writers share one fetch. The token
endpoint is discovered from `{fhir_base}/.well-known/smart-configuration` with the gateway's shared
ClientSession. When the EHR will not grant what write-back needs, `WritebackDisabled` says why, and the
worker turns write-back off for that configuration.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass

import aiohttp

from gateway.security import SigningKey

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DISCOVERY_TTL = 3600.0
# A token is renewed this long before it expires (or at half its life, if that is shorter).
EXPIRY_MARGIN = 60.0
_SCOPE = re.compile(r"^system/(Encounter|\*)\.([a-z]+|\*)$")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# OAuth errors that mean "not without someone changing the EHR's build": write-back goes off.
_DISABLING_ERRORS = frozenset({"invalid_scope", "unauthorized_client", "invalid_client", "unsupported_grant_type"})


class WritebackDisabled(Exception):
    """Write-back cannot run for this configuration until someone changes it; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenUnavailable(Exception):
    """The token endpoint failed for now (network, 5xx, nonsense); worth retrying later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BackendClient:
    """What a configuration says about how we authenticate to its EHR."""

    configuration_id: int
    fhir_base_url: str
    client_id: str
    client_auth: str
    scopes: str


@dataclass(frozen=True)
class BackendToken:
    """A system-level access token and what it was granted."""

    access_token: str
    scopes: frozenset[str]
    expires_at: float  # time.monotonic()


def allows_encounter_update(scopes: frozenset[str]) -> bool:
    """Whether granted scopes let a backend read and update Encounters (SMART v1 or v2 scopes)."""
    can_read = can_update = False
    for scope in scopes:
        match = _SCOPE.match(scope)
        if match is None:
            continue
        perms = {"*": "cruds", "read": "rs", "write": "cud"}.get(match.group(2), match.group(2))
        if re.fullmatch("c?r?u?d?s?", perms):
            can_read = can_read or "r" in perms
            can_update = can_update or "u" in perms
    return can_read and can_update


def _error_code(value: object) -> str:
    return value if isinstance(value, str) and _ERROR_CODE.match(value) else "unknown"


class BackendTokens:
    """Per-configuration client_credentials tokens, cached until near expiry."""

    def __init__(self, http: aiohttp.ClientSession, signing_key: SigningKey, timeout: float = 10.0) -> None:
        self._http = http
        self._signing_key = signing_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tokens: dict[int, BackendToken] = {}
        self._endpoints: dict[str, tuple[float, str]] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def forget(self, configuration_id: int) -> None:
        """Drop a cached token (the FHIR server said it is no longer good)."""
        self._tokens.pop(configuration_id, None)

    async def token(self, client: BackendClient) -> BackendToken:
        """A live token for this configuration, fetched when missing or about to expire."""
        cached = self._tokens.get(client.configuration_id)
        if cached and cached.expires_at > time.monotonic():
            return cached
        lock = self._locks.setdefault(client.configuration_id, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(client.configuration_id)
            if cached and cached.expires_at > time.monotonic():
                return cached
            fresh = await self._fetch(client)
            self._tokens[client.configuration_id] = fresh
            return fresh

    async def _token_endpoint(self, fhir_base_url: str) -> str:
        cached = self._endpoints.get(fhir_base_url)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        doc = await self._post_or_get("GET", f"{fhir_base_url}/.well-known/smart-configuration", None, "discovery")
        endpoint = doc.get("token_endpoint")
        allow_http = fhir_base_url.startswith("http://")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://" if allow_http else "https://")):
            raise TokenUnavailable("discovery_invalid")
        grants = doc.get("grant_types_supported")
        if isinstance(grants, list) and "client_credentials" not in grants:
            raise WritebackDisabled("ehr_no_client_credentials")
        self._endpoints[fhir_base_url] = (time.monotonic() + DISCOVERY_TTL, endpoint)
        return endpoint

    async def _fetch(self, client: BackendClient) -> BackendToken:
        if client.client_auth != "private_key_jwt":
            raise WritebackDisabled("backend_services_need_private_key_jwt")
        endpoint = await self._token_endpoint(client.fhir_base_url)
        form = {"grant_type": "client_credentials", "scope": client.scopes,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": self._signing_key.client_assertion(client.client_id, endpoint)}
        doc = await self._post_or_get("POST", endpoint, form, "token")
        access_token = doc.get("access_token")
        if not isinstance(access_token, str) or not access_token or str(doc.get("token_type", "")).lower() != "bearer":
            raise TokenUnavailable("token_invalid")
        scope = doc.get("scope")
        # RFC 6749 5.1: no scope in the answer means the scope asked for was granted.
        granted = frozenset((scope if isinstance(scope, str) else client.scopes).split())
        if not allows_encounter_update(granted):
            raise WritebackDisabled("scope_not_granted: system/Encounter read and update")
        expires_in = doc.get("expires_in", 300)
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
            expires_in = 300
        life = min(float(expires_in), 24 * 3600.0)
        return BackendToken(access_token, granted, time.monotonic() + life - min(EXPIRY_MARGIN, life / 2))

    async def _post_or_get(self, method: str, url: str, form: dict[str, str] | None, what: str) -> dict[str, object]:
        try:
            async with self._http.request(method, url, data=form, headers={"Accept": "application/json"},
                                          timeout=self._timeout) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenUnavailable(f"{what}_unreachable") from exc
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if status != 200 or not isinstance(doc, dict):
            code = _error_code(doc.get("error")) if isinstance(doc, dict) else "unknown"
            if what == "token" and 400 <= status < 500 and code in _DISABLING_ERRORS:
                raise WritebackDisabled(f"token_refused: {code}")
            raise TokenUnavailable(f"{what}_failed: {status} {code}")
        return doc
