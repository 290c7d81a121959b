"""Who a browser is: provider handles (from the EHR launch) and the browser key they are bound to, resolved for
any part that needs it."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

import asyncpg
from aiohttp import web

import sql

from .security import token_hash

Q = sql.queries("sessions")

BROWSER_COOKIE = "__Host-vg_browser_"
"""The name prefix of the cookies holding the browser keys launches and their provider pages are bound to.

`__Host-`: only this origin can set one (no Domain, Path=/, Secure), so no neighbour can plant one. They are
Partitioned (CHIPS) and SameSite=None, so a cross-site iframe in the EHR keeps them even where third-party
cookies are blocked; they are then the iframe's own, in the EHR site's partition. A browser normally holds
one, which every launch reuses; launches that start at the same moment in a browser that had none yet each
make their own (under its own name, so none replaces another).
"""
MAX_BROWSER_KEYS = 16
"""Browser-key cookies read from one request at most."""
_BROWSER_KEY = re.compile(r"[A-Za-z0-9_-]{22,128}")


class BrowserKey(NamedTuple):
    """One browser-key cookie: its name (BROWSER_COOKIE and a tag) and its value (the key)."""

    name: str
    key: str


class ProviderIdentity(NamedTuple):
    """Whom a live provider handle speaks for, and how long the handle itself still works."""

    visit_id: UUID
    fhir_user: str | None
    handle_expires_in: float


def browser_keys(request: web.BaseRequest) -> tuple[BrowserKey, ...]:
    """The browser keys this request carries (BROWSER_COOKIE cookies that could be ours), by name."""
    found = sorted(BrowserKey(name, value) for name, value in request.cookies.items()
                   if name.startswith(BROWSER_COOKIE) and _BROWSER_KEY.fullmatch(value))
    return tuple(found[:MAX_BROWSER_KEYS])


def browser_hashes(keys: Sequence[BrowserKey]) -> list[bytes]:
    """What the database keeps of browser keys (their sha256), to match against."""
    return [token_hash(k.key) for k in keys]


async def provider_identity(conn: asyncpg.Connection, handle: str, *,
                            browser: Sequence[BrowserKey]) -> ProviderIdentity | None:
    """The visit and EHR user of a live provider handle, when browser (browser_keys of the request) holds the
    key its session is bound to; else None."""
    if not handle or len(handle) > 128 or not browser:
        return None
    row = await conn.fetchrow(Q["provider_identity"], token_hash(handle), browser_hashes(browser))
    return ProviderIdentity(row["visit_id"], row["fhir_user"], row["handle_expires_in"]) if row else None


def renew_after(ttl: float, expires_in: float) -> int:
    """Seconds after which a provider page renews its handle: a third of its life, so a failed try can be retried."""
    return max(1, int(min(ttl, expires_in) / 3))
