"""SMART Backend Services tokens: client_credentials with a private_key_jwt assertion, for the parts that call
the EHR with no clinician present (write-back in presence, the appointment feed and its reminders).

Write-back never uses a clinician's token (it expires, and it is theirs). Each configuration gets its own
system-level token, cached until shortly before it expires; concurrent writers share one fetch. The token
endpoint comes from the gateway's one discovery cache (gateway.ehr.EhrClient, shared with the launch), and
every request goes through that client. When the EHR will not grant what write-back needs, `WritebackDisabled`
says why, the refusal is remembered (so no writer asks again), and the worker turns write-back off for that
configuration.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.ehr import EhrClient
from gateway.errors import UpstreamError
from gateway.security import SigningKey

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# A token is renewed this long before it expires (or at half its life, if that is shorter).
EXPIRY_MARGIN = 60.0
_SCOPE = re.compile(r"^system/(Encounter|\*)\.([a-z]+|\*)$")
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# OAuth errors (RFC 6749 5.2) that no retry can cure, only someone changing the EHR's build or ours:
# write-back goes off with the code as its reason, instead of every visit trying its attempts.
_DISABLING_ERRORS = frozenset({"invalid_request", "invalid_client", "unauthorized_client", "invalid_scope",
                               "unsupported_grant_type"})


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


def allows_reads(*types: str) -> Callable[[frozenset[str]], bool]:
    """A check that granted scopes let a backend read (and search) each of `types` (SMART v1 or v2 scopes)."""
    def check(scopes: frozenset[str]) -> bool:
        readable: set[str] = set()
        for scope in scopes:
            match = re.match(r"^system/([A-Za-z]+|\*)\.([a-z]+|\*)$", scope)
            if match is None:
                continue
            perms = {"*": "cruds", "read": "rs", "write": "cud"}.get(match.group(2), match.group(2))
            if re.fullmatch("c?r?u?d?s?", perms) and "r" in perms:
                readable.add(match.group(1))
        return "*" in readable or all(t in readable for t in types)
    return check


def _error_code(value: object) -> str:
    return value if isinstance(value, str) and _ERROR_CODE.match(value) else "unknown"


class BackendTokens:
    """Per-configuration client_credentials tokens, cached until near expiry."""

    def __init__(self, ehr: EhrClient, signing_key: SigningKey, timeout: float = 10.0,
                 grants_enough: Callable[[frozenset[str]], bool] = allows_encounter_update,
                 needs: str = "system/Encounter read and update") -> None:
        self._ehr = ehr
        # What the caller's work needs of a token (write-back: Encounter read and update), and its words.
        self._grants_enough = grants_enough
        self._needs = needs
        self._signing_key = signing_key
        self._timeout = timeout
        self._tokens: dict[int, BackendToken] = {}
        self._refused: dict[int, WritebackDisabled] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def forget(self, configuration_id: int) -> None:
        """Drop a cached token (the FHIR server said it is no longer good) and any remembered refusal."""
        self._tokens.pop(configuration_id, None)
        self._refused.pop(configuration_id, None)

    async def token(self, client: BackendClient) -> BackendToken:
        """A live token for this configuration, fetched when missing or about to expire.

        A refusal no retry can cure is raised again to every later caller without asking the EHR, until
        `forget` (write-back turned back on).
        """
        cached = self._tokens.get(client.configuration_id)
        if cached and cached.expires_at > time.monotonic():
            return cached
        lock = self._locks.setdefault(client.configuration_id, asyncio.Lock())
        async with lock:
            refused = self._refused.get(client.configuration_id)
            if refused is not None:
                raise WritebackDisabled(refused.reason)
            cached = self._tokens.get(client.configuration_id)
            if cached and cached.expires_at > time.monotonic():
                return cached
            try:
                fresh = await self._fetch(client)
            except WritebackDisabled as exc:
                self._refused[client.configuration_id] = exc
                raise
            self._tokens[client.configuration_id] = fresh
            return fresh

    async def _token_endpoint(self, fhir_base_url: str) -> str:
        try:
            doc = await self._ehr.smart_configuration(fhir_base_url)
        except UpstreamError as exc:
            raise TokenUnavailable(exc.reason) from exc
        endpoint = doc.get("token_endpoint")
        allow_http = fhir_base_url.startswith("http://")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://" if allow_http else "https://")):
            raise TokenUnavailable("discovery_invalid")
        grants = doc.get("grant_types_supported")
        if isinstance(grants, list) and "client_credentials" not in grants:
            raise WritebackDisabled("ehr_no_client_credentials")
        return endpoint

    async def _fetch(self, client: BackendClient) -> BackendToken:
        if client.client_auth != "private_key_jwt":
            raise WritebackDisabled("backend_services_need_private_key_jwt")
        endpoint = await self._token_endpoint(client.fhir_base_url)
        form = {"grant_type": "client_credentials", "scope": client.scopes,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": self._signing_key.client_assertion(client.client_id, endpoint)}
        try:
            response = await self._ehr.request("POST", endpoint, what="token", data=form,
                                               headers={"Accept": "application/json"}, timeout=self._timeout)
        except UpstreamError as exc:
            raise TokenUnavailable(exc.reason) from exc
        doc = response.json_or_none()
        if response.status != 200 or doc is None:
            code = _error_code(doc.get("error")) if doc is not None else "unknown"
            if 400 <= response.status < 500 and code in _DISABLING_ERRORS:
                raise WritebackDisabled(f"token_refused: {code}")
            raise TokenUnavailable(f"token_failed: {response.status} {code}")
        access_token = doc.get("access_token")
        if not isinstance(access_token, str) or not access_token or str(doc.get("token_type", "")).lower() != "bearer":
            raise TokenUnavailable("token_invalid")
        scope = doc.get("scope")
        # RFC 6749 5.1: no scope in the answer means the scope asked for was granted.
        granted = frozenset((scope if isinstance(scope, str) else client.scopes).split())
        if not self._grants_enough(granted):
            raise WritebackDisabled(f"scope_not_granted: {self._needs}")
        expires_in = doc.get("expires_in", 300)
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
            expires_in = 300
        life = min(float(expires_in), 24 * 3600.0)
        return BackendToken(access_token, granted, time.monotonic() + life - min(EXPIRY_MARGIN, life / 2))
