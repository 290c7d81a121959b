"""What the sandbox's authorization server remembers: launch contexts, codes, grants and tokens.

All of it lives in memory and expires: a launch after 10 minutes (reusable until then, as an EHR
reopens an activity), a code after 2 minutes and only once, an access token after the configured
lifetime. Tokens belong to a `Grant`; revoking the grant (when a code is replayed) kills every access
and refresh token that came from it, including rotated ones.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LAUNCH_LIFETIME = 600.0
CODE_LIFETIME = 120.0
# Used codes are remembered longer than they are valid, so a late replay still revokes the grant.
CODE_MEMORY = 3600.0
ASSERTION_MAX_LIFETIME = 300.0


def _purge_front(entries: dict[Any, Any], expired: Callable[[Any], bool]) -> None:
    """Drop expired entries from the oldest end: entries are added in time order, so the scan stops at
    the first live one instead of walking the whole dict on every call (which grew a benchmark's cost)."""
    while entries:
        key = next(iter(entries))
        if not expired(entries[key]):
            return
        del entries[key]


def new_secret() -> str:
    """An opaque, unguessable value (192 bits) for launch ids, codes and tokens."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class LaunchContext:
    """Who is signed in to the EHR and what they had open when the app was launched."""

    practitioner_id: str | None
    patient_id: str | None
    encounter_id: str | None
    appointment_id: str | None = None
    need_patient_banner: bool = True


@dataclass
class _Launch:
    context: LaunchContext
    expires_at: float


class LaunchRegistry:
    """Launch ids handed to the app in `launch=`, each mapping to its context."""

    def __init__(self) -> None:
        self._launches: dict[str, _Launch] = {}

    def add(self, context: LaunchContext, lifetime: float = LAUNCH_LIFETIME) -> str:
        """Register a context and return its new launch id."""
        self._purge()
        launch_id = new_secret()
        self._launches[launch_id] = _Launch(context, time.time() + lifetime)
        return launch_id

    def get(self, launch_id: str | None) -> LaunchContext | None:
        """The context of a live launch id, or None when unknown or expired."""
        if not launch_id:
            return None
        launch = self._launches.get(launch_id)
        if launch is None or launch.expires_at <= time.time():
            return None
        return launch.context

    def expire(self, launch_id: str) -> None:
        """End a launch now (tests use this to simulate the 10 minutes passing)."""
        if launch_id in self._launches:
            self._launches[launch_id].expires_at = 0.0

    def _purge(self) -> None:
        now = time.time()
        _purge_front(self._launches, lambda v: v.expires_at <= now)


@dataclass
class Grant:
    """One authorization: a client and the context its tokens apply to; revoking it ends all its tokens."""

    client_id: str
    context: LaunchContext | None
    user_ref: str | None  # "Practitioner/prac-1" or "Patient/pat-1"; None for backend services
    revoked: bool = False


@dataclass
class AuthorizationCode:
    """A code issued by /oauth/authorize and what it binds."""

    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    code_challenge: str
    nonce: str | None
    context: LaunchContext | None
    user_ref: str
    expires_at: float
    issued_at: float = field(default_factory=time.time)
    grant: Grant | None = None  # set when the code is redeemed


@dataclass
class AccessToken:
    """An issued bearer token."""

    grant: Grant
    scopes: tuple[str, ...]
    expires_at: float

    @property
    def live(self) -> bool:
        """True while the token may be used."""
        return not self.grant.revoked and self.expires_at > time.time()


@dataclass
class RefreshToken:
    """An issued refresh token; used once, then replaced by a new one."""

    grant: Grant
    scopes: tuple[str, ...]


class OAuthState:
    """Codes, tokens and seen client-assertion ids of the authorization server."""

    def __init__(self) -> None:
        self.codes: dict[str, AuthorizationCode] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        # Rotated-away refresh tokens, kept so that presenting one again can revoke its grant.
        self.spent_refresh_tokens: dict[str, Grant] = {}
        # (client_id, jti) -> when the assertion expires; needed only until then to refuse replays.
        self.seen_jtis: dict[tuple[str, str], float] = {}

    def add_code(self, code: AuthorizationCode) -> str:
        """Store a new code and return it."""
        now = time.time()
        _purge_front(self.codes, lambda v: v.issued_at + CODE_MEMORY <= now)
        value = new_secret()
        self.codes[value] = code
        return value

    def issue_access_token(self, grant: Grant, scopes: tuple[str, ...], lifetime: int) -> str:
        """Create an access token for a grant."""
        now = time.time()
        _purge_front(self.access_tokens, lambda v: v.expires_at <= now)
        value = new_secret()
        self.access_tokens[value] = AccessToken(grant, scopes, now + lifetime)
        return value

    def issue_refresh_token(self, grant: Grant, scopes: tuple[str, ...]) -> str:
        """Create a refresh token for a grant."""
        value = new_secret()
        self.refresh_tokens[value] = RefreshToken(grant, scopes)
        return value

    def spend_refresh_token(self, value: str) -> None:
        """Retire a refresh token that has just been exchanged."""
        token = self.refresh_tokens.pop(value, None)
        if token is not None:
            self.spent_refresh_tokens[value] = token.grant

    def access_token(self, value: str) -> AccessToken | None:
        """A live access token, or None."""
        token = self.access_tokens.get(value)
        return token if token is not None and token.live else None

    def remember_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Record an assertion id; False when it was already used (a replay)."""
        now = time.time()
        _purge_front(self.seen_jtis, lambda v: v <= now)
        if (client_id, jti) in self.seen_jtis:
            return False
        self.seen_jtis[(client_id, jti)] = expires_at
        return True
