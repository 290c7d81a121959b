"""The SMART App Launch client: discovery, the authorize redirect, the code exchange, id_token checks.

Audience-neutral: the EHR launch (launch/) and the approver's standalone launch (config_portal/) both use it,
each with its own redirect URI. Every request goes through the gateway's EhrClient (gateway.ehr), whose
discovery cache backend services share; this module vets what the EHR says."""
from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jwt

from .ehr import EhrClient, fhir_base_url
from .errors import AuthServerError, IdTokenInvalid, UpstreamError
from .fhir import valid_id
from .security import SigningKey, jws_header

JWKS_TTL = 3600.0
JWKS_REFETCH_AFTER = 60.0  # an unknown kid refetches the JWKS at most this often
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "ES256", "ES384"]
MAX_JWKS_KEYS = 20  # a kid-less token is tried against each: bound the work a hostile JWKS can ask for


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
    department: str | None = None
    """The department the EHR named in the launch context, if any (see `department_of`)."""


MAX_DEPARTMENT = 64


def department_of(value: object) -> str | None:
    """A department identifier the EHR sent (launch parameter or token context), or None when absent or unfit.

    It is a label for reports and queues, so anything that is not a short printable string is dropped, not
    refused: a launch never fails over it.
    """
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_DEPARTMENT or not value.isprintable():
        return None
    return value


def _url_ok(url: object, allow_http: bool) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a broken IPv6 literal, a port out of range
        return False
    return (parts.scheme == "https" or (allow_http and parts.scheme == "http")) and bool(parts.hostname) \
        and not parts.fragment and port != 0 and "//" not in parts.path


def _error_code(value: object) -> str:
    return value if isinstance(value, str) and _ERROR_CODE.match(value) else "unknown"


def _vet_discovery(base: str, doc: Mapping[str, Any]) -> SmartConfiguration:
    """What launch needs of a discovery document, or UpstreamError (502) saying what is missing."""
    allow_http = base.startswith("http://")  # only a plain-http EHR (the sandbox) may name http endpoints
    if not _url_ok(doc.get("authorization_endpoint"), allow_http) or \
            not _url_ok(doc.get("token_endpoint"), allow_http):
        raise UpstreamError("the EHR's SMART configuration lacks usable endpoints", reason="discovery_invalid")
    methods = doc.get("code_challenge_methods_supported")
    if not isinstance(methods, list) or "S256" not in methods:
        raise UpstreamError("the EHR does not support PKCE with S256, which we require",
                            reason="discovery_no_s256")
    jwks_uri = doc.get("jwks_uri")
    issuer = doc.get("issuer", base)
    if not isinstance(issuer, str):
        raise UpstreamError("the EHR's SMART configuration names no issuer", reason="discovery_invalid")
    return SmartConfiguration(
        issuer=issuer,
        authorization_endpoint=doc["authorization_endpoint"],
        token_endpoint=doc["token_endpoint"],
        jwks_uri=jwks_uri if _url_ok(jwks_uri, allow_http) else None,
        iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported") is True,
    )


class SmartClient:
    """Vets discovery and keeps JWKS per EHR; talks to EHRs through the gateway's EhrClient."""

    def __init__(self, ehr: EhrClient, signing_key: SigningKey, redirect_uri: str) -> None:
        self._ehr = ehr
        self._signing_key = signing_key
        self.redirect_uri = redirect_uri
        self._jwks: dict[str, tuple[float, list[tuple[str | None, Mapping[str, Any]]]]] = {}

    async def discover(self, iss: str) -> SmartConfiguration:
        """The EHR's SMART configuration, vetted (fetched through the shared discovery cache)."""
        base = fhir_base_url(iss)
        if base is None:
            raise UpstreamError("refused to discover a malformed FHIR base URL", reason="discovery_bad_url")
        return _vet_discovery(base, await self._ehr.smart_configuration(base))

    def authorize_url(self, conf: SmartConfiguration, client: Client, *, iss: str, launch: str | None,
                      scopes: str, state: str, code_challenge: str, nonce: str) -> str:
        """Where the browser goes to sign in at the EHR with PKCE S256: an EHR launch, or a standalone launch
        when launch is None."""
        params = {
            "response_type": "code", "client_id": client.client_id, "redirect_uri": self.redirect_uri,
            "scope": scopes, "state": state, "aud": iss,
            "code_challenge": code_challenge, "code_challenge_method": "S256", "nonce": nonce,
        }
        if launch is not None:
            params["launch"] = launch
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
        response = await self._ehr.request("POST", conf.token_endpoint, what="token", data=form, headers=headers)
        doc = response.json_or_none()
        if response.status != 200 or doc is None:
            code_name = _error_code(doc.get("error")) if doc is not None else "unknown"
            raise AuthServerError(f"the EHR refused to complete the sign-in ({response.status}, {code_name})",
                                  reason="token_error", upstream_status=response.status)
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
        alg = header.get("alg")
        if alg not in ID_TOKEN_ALGORITHMS:
            raise IdTokenInvalid("the id_token is signed with an algorithm we do not accept",
                                 reason="id_token_signature")
        claims: dict[str, Any] | None = None
        # With a kid, the key of that kid; without one (smart-launcher-v2), each key of the JWKS that fits
        # the algorithm, until one verifies the signature.
        for key in await self._keys_for(conf.jwks_uri, header.get("kid"), str(alg)):
            try:
                claims = jwt.decode(
                    id_token, key, algorithms=ID_TOKEN_ALGORITHMS, audience=client_id, issuer=conf.issuer,
                    leeway=30, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
                break
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.InvalidAlgorithmError):
                continue  # not this key
            except jwt.ExpiredSignatureError as exc:
                raise IdTokenInvalid("the id_token has expired", reason="id_token_expired") from exc
            except jwt.InvalidAudienceError as exc:
                raise IdTokenInvalid("the id_token is meant for another application",
                                     reason="id_token_audience") from exc
            except jwt.InvalidIssuerError as exc:
                raise IdTokenInvalid("the id_token comes from another issuer", reason="id_token_issuer") from exc
            except jwt.PyJWTError as exc:
                raise IdTokenInvalid("the id_token is not valid", reason="id_token_invalid") from exc
        if claims is None:
            raise IdTokenInvalid("the id_token's signature is wrong, or made with a key the EHR does not publish",
                                 reason="id_token_signature")
        if claims.get("nonce") != nonce:
            raise IdTokenInvalid("the id_token belongs to another sign-in", reason="id_token_nonce")
        return claims

    async def _keys_for(self, jwks_uri: str, kid: object, alg: str) -> list[jwt.PyJWK]:
        """The EHR's keys that may have signed a token with this kid (None: any) and alg."""
        cached = self._jwks.get(jwks_uri)
        now = time.monotonic()
        entries = cached[1] if cached else []
        fresh = cached is not None and cached[0] > now
        known = kid is None or any(k == kid for k, _ in entries)
        # An unknown kid may be a rotated key: refetch, but not more often than JWKS_REFETCH_AFTER.
        if not fresh or (not known and (cached is None or cached[0] - JWKS_TTL + JWKS_REFETCH_AFTER < now)):
            entries = await self._fetch_jwks(jwks_uri)
            self._jwks[jwks_uri] = (now + JWKS_TTL, entries)
        if kid is not None and not isinstance(kid, str):
            return []
        kty = "EC" if alg.startswith("ES") else "RSA"
        keys: list[jwt.PyJWK] = []
        for entry_kid, entry in entries:
            if (kid is not None and entry_kid != kid) or entry.get("kty") != kty \
                    or entry.get("alg", alg) != alg:
                continue
            try:
                keys.append(jwt.PyJWK(dict(entry), algorithm=alg))
            except jwt.PyJWTError:
                continue  # one odd key must not hide the good ones
        return keys

    async def _fetch_jwks(self, jwks_uri: str) -> list[tuple[str | None, Mapping[str, Any]]]:
        doc = await self._ehr.get_json(jwks_uri, "jwks")
        listed = doc.get("keys")
        entries: list[tuple[str | None, Mapping[str, Any]]] = []
        for entry in listed[:MAX_JWKS_KEYS] if isinstance(listed, list) else []:
            if isinstance(entry, dict) and entry.get("kty") in ("RSA", "EC") and entry.get("use", "sig") == "sig":
                kid = entry.get("kid")
                entries.append((kid if isinstance(kid, str) else None, entry))
        return entries


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
        department=department_of(doc.get("department")),
    )
