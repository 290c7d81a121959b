"""The browser a launch belongs to, and the clinician's session behind a provider page.

A launch is bound to the browser that started it: /launch gives the browser a random key in a `__Host-`,
Partitioned cookie (named gateway.sessions.BROWSER_COOKIE and a tag) and keeps only its hash with the state;
the callback must bring the same key, and the provider session it opens keeps the hash too. A provider page's
URL handle then works only together with that cookie, so neither a callback URL nor a provider page URL
copied into another browser (or read from a history or a log) opens the visit there.

The cookie is Secure, as `__Host-` requires: browsers keep it over https, and over plain http only on
127.0.0.1 and localhost (which they count as trustworthy), as in the demo and the tests.
"""
from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from gateway.appkeys import DB
from gateway.errors import SessionExpired
from gateway.security import new_token, token_hash
from gateway.sessions import BROWSER_COOKIE, BrowserKey, browser_hashes, browser_keys

from . import store

log = logging.getLogger(__name__)

_MAX_HANDLE = 128
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def warn_if_cookies_cannot_stick(public_url: str) -> None:
    """Say at start-up when browsers will refuse the browser key: plain http on a host other than loopback."""
    parts = urlsplit(public_url)
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        log.warning("VISITGATE_PUBLIC_URL is plain http on %s: browsers refuse the Secure cookie every launch "
                    "is bound to, so no launch can finish. Serve the gateway over https.", parts.hostname)


def browser_key_for_launch(request: web.Request) -> BrowserKey:
    """The key to bind a new launch to: one this browser already holds, else a new one under a name of its own.

    Reusing it lets two tabs of one browser launch at once without one's cookie replacing the other's; two
    that start together before the browser had any get a cookie each. Only this origin can have set a
    `__Host-` cookie, so a key the browser brings was ours to begin with.
    """
    held = browser_keys(request)
    return held[0] if held else BrowserKey(BROWSER_COOKIE + secrets.token_hex(4), new_token())


def keep_browser_key(response: web.StreamResponse, key: BrowserKey, max_age: int) -> None:
    """Give the browser its key: `__Host-` (Secure, Path=/, no Domain), HttpOnly, SameSite=None, Partitioned."""
    # Written by hand: Python before 3.14 cannot put the Partitioned attribute in a Morsel (aiohttp's
    # set_cookie(partitioned=True) raises). Without it a cross-site iframe with third-party cookies blocked
    # would drop the cookie; SameSite=None is needed for the iframe to send it at all.
    response.headers.add("Set-Cookie", f"{key.name}={key.key}; Path=/; Max-Age={max(0, max_age)}; Secure; "
                                       "HttpOnly; SameSite=None; Partitioned")


async def provider_session(request: web.Request) -> store.ProviderSession:
    """The live provider session of the `{handle}` in the path, in the browser it is bound to; else SessionExpired.

    Every provider page and action (view, renew, room, invite) starts here.
    """
    handle = request.match_info["handle"]
    browser = browser_keys(request)
    session = None
    if len(handle) <= _MAX_HANDLE and browser:
        async with request.app[DB].acquire() as conn:
            session = await store.get_provider_session(conn, token_hash(handle), browser_hashes(browser))
    if session is None:
        # The same answer for an expired handle and for another browser's: neither says which it was.
        raise SessionExpired("This visit page has expired or was opened in another browser. Open the visit "
                             "again from the EHR.")
    return session

