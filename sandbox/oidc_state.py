"""What the sandbox's OpenID provider remembers: registered applications, per-tenant switches, sign-ins waiting
for a password, browser sessions, codes, seen client assertions and its two signing keys.

All in memory. A waiting sign-in lives 10 minutes, a code 60 seconds and is redeemed once, a session 8 hours
(tests age it through a control instead of waiting).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .config import OidcClient
from .grants import new_secret
from .keys import SigningKey
from .oidc_directory import TENANTS, OidcUser

PENDING_LIFETIME = 600.0
OIDC_CODE_LIFETIME = 60.0
OIDC_CODE_MEMORY = 3600.0
SESSION_LIFETIME = 8 * 3600.0


@dataclass
class TenantSwitches:
    """How one tenant's discovery document and authorization responses look (changeable by a control)."""

    lists_s256: bool
    iss_parameter: bool


@dataclass
class AuthorizationRequest:
    """A checked authorization request: everything the code it leads to will be bound to."""

    tenant_id: str
    client_id: str
    redirect_uri: str
    response_mode: str  # "query" or "form_post"
    scopes: tuple[str, ...]
    state: str
    nonce: str | None
    code_challenge: str
    max_age: int | None
    force_login: bool


@dataclass
class PendingSignIn:
    """An authorization request shown as a sign-in page, waiting for a user and password from that browser."""

    request: AuthorizationRequest
    browser: str
    expires_at: float


@dataclass
class Session:
    """A browser's sign-in at one tenant, used to skip the page until max_age or prompt=login says otherwise."""

    user: OidcUser
    auth_time: float


@dataclass
class OidcCode:
    """An authorization code and what it is bound to."""

    request: AuthorizationRequest
    user: OidcUser
    auth_time: float
    expires_at: float
    issued_at: float = field(default_factory=time.time)
    used: bool = False


class OidcKeys:
    """Two published signing keys; id_tokens are signed with the active one, and rotating swaps them.

    The keys are made on first use: most sandboxes (every gateway test's) never sign anyone in here, and two
    RSA keys cost about 0.15 s to make."""

    def __init__(self) -> None:
        self._keys: list[SigningKey] | None = None
        self.active = 0

    @property
    def keys(self) -> list[SigningKey]:
        """Both keys, the published order."""
        if self._keys is None:
            self._keys = [SigningKey.generate(), SigningKey.generate()]
        return self._keys

    @property
    def signing(self) -> SigningKey:
        """The key id_tokens are signed with now."""
        return self.keys[self.active]

    def rotate(self, *, replace_retired: bool = False) -> None:
        """Sign with the other key from now on; optionally replace the one retired by a new key (the JWKS changes)."""
        retired = self.active
        self.active = 1 - self.active
        if replace_retired:
            self.keys[retired] = SigningKey.generate()

    def jwks(self) -> dict[str, Any]:
        """Both public keys as a JWK set."""
        return {"keys": [k.public_jwk() for k in self.keys]}


ID_TOKEN_FAULTS = (
    "bad_signature", "unknown_kid", "alg_none", "wrong_aud", "wrong_nonce", "missing_nonce", "expired",
    "wrong_iss", "wrong_tid", "malformed",
)


@dataclass
class OidcFaults:
    """Ways to make the provider answer what a portal must refuse; all off by default."""

    id_token: str | None = None  # one of ID_TOKEN_FAULTS
    callback_iss: str | None = None  # put into (or replaces) the RFC 9207 `iss` of authorization responses

    def update(self, changes: dict[str, Any]) -> None:
        """Set switches, refusing unknown names and values before changing anything."""
        for name, value in changes.items():
            if name not in ("id_token", "callback_iss"):
                raise ValueError(f"unknown fault {name!r}")
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or null")
            if name == "id_token" and value is not None and value not in ID_TOKEN_FAULTS:
                raise ValueError(f"id_token must be one of {ID_TOKEN_FAULTS}")
        for name, value in changes.items():
            setattr(self, name, value)


@dataclass
class ClientKeySet:
    """A client's public keys fetched from its JWKS URL."""

    keys: list[dict[str, Any]]
    fetched_at: float


@dataclass
class OidcProvider:
    """All mutable state of the OpenID provider, kept under one application key."""

    keys: OidcKeys
    faults: OidcFaults = field(default_factory=OidcFaults)
    clients: dict[str, OidcClient] = field(default_factory=dict)
    tenants: dict[str, TenantSwitches] = field(
        default_factory=lambda: {t.tenant_id: TenantSwitches(t.lists_s256, t.iss_parameter) for t in TENANTS}
    )
    pending: dict[str, PendingSignIn] = field(default_factory=dict)
    # (session id, tenant id) -> Session
    sessions: dict[tuple[str, str], Session] = field(default_factory=dict)
    codes: dict[str, OidcCode] = field(default_factory=dict)
    seen_jtis: dict[tuple[str, str], float] = field(default_factory=dict)
    client_key_sets: dict[str, ClientKeySet] = field(default_factory=dict)

    def register(self, client: OidcClient) -> None:
        """Register (or replace) an application."""
        self.clients[client.client_id] = client

    def add_pending(self, request: AuthorizationRequest, browser: str) -> str:
        """Keep an authorization request until the user signs in; answers its id for the form."""
        now = time.time()
        for key in [k for k, v in self.pending.items() if v.expires_at <= now]:
            del self.pending[key]
        tx = new_secret()
        self.pending[tx] = PendingSignIn(request, browser, now + PENDING_LIFETIME)
        return tx

    def add_code(self, request: AuthorizationRequest, user: OidcUser, auth_time: float) -> str:
        """Issue a code for a signed-in user."""
        now = time.time()
        for key in [k for k, v in self.codes.items() if v.issued_at + OIDC_CODE_MEMORY <= now]:
            del self.codes[key]
        value = new_secret()
        self.codes[value] = OidcCode(request, user, auth_time, now + OIDC_CODE_LIFETIME)
        return value

    def session(self, session_id: str | None, tenant_id: str) -> Session | None:
        """A live session of this browser at this tenant, or None."""
        if not session_id:
            return None
        found = self.sessions.get((session_id, tenant_id))
        if found is None or found.auth_time + SESSION_LIFETIME <= time.time():
            return None
        return found

    def age_sessions(self, seconds: float) -> None:
        """Move every session's sign-in time back (tests use this instead of waiting for max_age)."""
        for s in self.sessions.values():
            s.auth_time -= seconds

    def remember_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Record a client assertion's id; False when it was already used."""
        now = time.time()
        for key in [k for k, v in self.seen_jtis.items() if v <= now]:
            del self.seen_jtis[key]
        if (client_id, jti) in self.seen_jtis:
            return False
        self.seen_jtis[(client_id, jti)] = expires_at
        return True
