"""What the EHR remembers of standalone launches waiting for a practitioner to sign in (10 minutes each)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .grants import new_secret

PENDING_LIFETIME = 600.0


@dataclass(frozen=True)
class StandaloneRequest:
    """A checked standalone authorization request, waiting for a practitioner to sign in."""

    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    code_challenge: str
    state: str
    nonce: str | None
    iss: str  # what the authorization response names as issuer (RFC 9207)


@dataclass
class _Pending:
    request: StandaloneRequest
    browser: str
    expires_at: float


@dataclass
class StandaloneSignIns:
    """Standalone sign-ins shown as a page and not finished yet, by transaction id."""

    pending: dict[str, _Pending] = field(default_factory=dict)

    def add(self, request: StandaloneRequest, browser: str) -> str:
        """Keep a request until its practitioner signs in; answers the transaction id for the form."""
        now = time.time()
        for key in [k for k, v in self.pending.items() if v.expires_at <= now]:
            del self.pending[key]
        tx = new_secret()
        self.pending[tx] = _Pending(request, browser, now + PENDING_LIFETIME)
        return tx
