"""SMART standalone launch: the app opens the EHR's authorize endpoint with no `launch`, so the EHR asks who
is there. Its sign-in page lists the seeded practitioners; a right user name and password issues a code whose
token answer names the practitioner (`fhirUser`) and carries no patient or encounter.

The portal's approver uses this to prove a FHIR base URL is real and that they hold an account there.
The request is checked by /oauth/authorize exactly as for an EHR launch before it gets here; the waiting
sign-in is bound to the browser that opened it (a cookie) and lives 10 minutes.
"""
from __future__ import annotations

import hmac
import logging
import time
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from .appkeys import OAUTH, SETTINGS, STANDALONE, STORE
from .grants import CODE_LIFETIME, AuthorizationCode, new_secret
from .seed import PRACTITIONER_SIGN_IN
from .standalone_state import StandaloneRequest

log = logging.getLogger("sandbox.standalone")

BROWSER_COOKIE = "sbx_ehr_browser"


def practitioner_for(username: str, password: str) -> str | None:
    """The practitioner id whose user name and password these are, or None."""
    wanted = username.strip().lower()
    for practitioner_id, name, secret in PRACTITIONER_SIGN_IN:
        if name == wanted and hmac.compare_digest(password.encode(), secret.encode()):
            return practitioner_id
    return None


def _browser_id(request: web.Request) -> str | None:
    value = request.cookies.get(BROWSER_COOKIE)
    return value if value and len(value) <= 64 else None


def _page(request: web.Request, tx: str, *, username: str = "", error: str | None = None,
          status: int = 200) -> web.Response:
    store = request.app[STORE]
    practitioners = []
    for practitioner_id, name, secret in PRACTITIONER_SIGN_IN:
        resource = store.get("Practitioner", practitioner_id)
        names = (resource or {}).get("name") or [{}]
        practitioners.append({"display": names[0].get("text", practitioner_id), "username": name, "password": secret})
    context = {"tx": tx, "username": username, "error": error, "practitioners": practitioners,
               "action": request.app[SETTINGS].base_url + "/oauth/signin"}
    response = aiohttp_jinja2.render_template("ehr_signin.html", request, context, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def begin(request: web.Request, standalone: StandaloneRequest) -> web.Response:
    """Show the EHR's sign-in page for a checked standalone authorization request."""
    browser = _browser_id(request) or new_secret()
    tx = request.app[STANDALONE].add(standalone, browser)
    response = _page(request, tx)
    response.set_cookie(BROWSER_COOKIE, browser, path="/oauth/", httponly=True, samesite="Lax",
                        secure=request.app[SETTINGS].base_url.startswith("https:"))
    return response


def _refused(request: web.Request, message: str) -> web.Response:
    log.info("standalone sign-in refused: %s", message)
    response = aiohttp_jinja2.render_template(
        "error.html", request, {"title": "Sign-in refused", "message": message}, status=400)
    response.headers["Cache-Control"] = "no-store"
    return response


async def sign_in(request: web.Request) -> web.Response:
    """POST /oauth/signin: a practitioner's user name and password; the right ones finish the authorization."""
    if request.content_type != "application/x-www-form-urlencoded":
        return _refused(request, "The sign-in form must be posted as a form.")
    posted = await request.post()
    registry = request.app[STANDALONE]
    tx = str(posted.get("tx", ""))
    pending = registry.pending.get(tx)
    if pending is None or pending.expires_at <= time.time():
        return _refused(request, "This sign-in is unknown or has expired. Go back to the application and start again.")
    browser = _browser_id(request)
    if browser is None or not hmac.compare_digest(browser, pending.browser):
        return _refused(request,
                        "This sign-in was started in another browser. Go back to the application and start again.")
    username = str(posted.get("username", ""))[:256]
    practitioner_id = practitioner_for(username, str(posted.get("password", ""))[:256])
    if practitioner_id is None:
        log.info("standalone sign-in refused: wrong user name or password")
        return _page(request, tx, username=username, status=401,
                     error="That user name and password do not match. Try again.")
    del registry.pending[tx]
    areq = pending.request
    code = request.app[OAUTH].add_code(
        AuthorizationCode(
            client_id=areq.client_id,
            redirect_uri=areq.redirect_uri,
            scopes=areq.scopes,
            code_challenge=areq.code_challenge,
            nonce=areq.nonce,
            context=None,
            user_ref=f"Practitioner/{practitioner_id}",
            expires_at=time.time() + CODE_LIFETIME,
        )
    )
    sep = "&" if "?" in areq.redirect_uri else "?"
    location = areq.redirect_uri + sep + urlencode({"code": code, "state": areq.state, "iss": areq.iss})
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})
