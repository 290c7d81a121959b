"""The portal's URL map. Each handler calls `portal_session` with the roles it needs (or is one of the few
public pages of the sign-in itself); ACCESS says which, so the route and role test covers every route."""
from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp_jinja2
from aiohttp import web

from gateway.appkeys import HTTP, SEALER, SETTINGS
from gateway.web import add_templates

from . import access
from .appkeys import IDPS
from .errors import NotSignedIn
from .idp import IdentityProviders
from .store import ROLES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC: tuple[str, ...] = ()
# Per handler: the roles that may use it (PUBLIC: anyone, for the sign-in's own pages).
ACCESS: dict[Handler, tuple[str, ...]] = {}


def allowed(*roles: str) -> Callable[[Handler], Handler]:
    """Declare who may use a handler (the handler itself still checks, through portal_session).

    A page of an organisation asked for without a live session answers 401 with a link to sign in again (after
    the idle timeout that is what the person needs next); anything else refused goes to the error pages.
    """
    def mark(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except NotSignedIn as exc:
                slug = request.match_info.get("org")
                if request.method != "GET" or slug is None:
                    raise
                return _no_store(aiohttp_jinja2.render_template(
                    "portal_sign_in_again.html", request, {"slug": slug, "detail": exc.detail, "reason": exc.reason},
                    status=exc.status))
        ACCESS[guarded] = roles
        return guarded
    return mark


def no_store(response: web.StreamResponse) -> web.StreamResponse:
    """The response, marked never to be kept by a cache (every portal page is someone's)."""
    response.headers["Cache-Control"] = "no-store"
    return response


_no_store = no_store


@allowed(*PUBLIC)
async def sign_in_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/sign-in: the organisation's sign-in landing."""
    org = await access.organisation(request, request.match_info["org"])
    return _no_store(aiohttp_jinja2.render_template("portal_sign_in.html", request, {"org": org}))


@allowed(*PUBLIC)
async def start_sign_in(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/sign-in/start: off to the organisation's identity provider.

    A link, not a form: browsers apply CSP form-action ('self') to a form's redirects too, which would stop
    the redirect to the provider. Starting a sign-in changes nothing another site could use: the binding
    cookie is kept if the browser has one, and the sign-in opens a session only for whoever signs in.
    """
    org = await access.organisation(request, request.match_info["org"])
    return await access.begin_sign_in(request, org, return_to=f"/portal/{org.slug}")


@allowed(*PUBLIC)
async def callback(request: web.Request) -> web.StreamResponse:
    """GET /portal/callback: the identity provider's answer."""
    return await access.finish_sign_in(request)


@allowed(*ROLES)
async def home(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}: what the signed-in person may do here, by role."""
    session = await access.portal_session(request, *ROLES)
    context = {"session": session, "roles": [access.ROLE_NAMES[r] for r in session.roles],
               "idle_minutes": request.app[SETTINGS].portal_idle_timeout // 60}
    return _no_store(aiohttp_jinja2.render_template("portal_home.html", request, context))


@allowed(*PUBLIC)
async def sign_out(request: web.Request) -> web.StreamResponse:
    """POST /portal/sign-out: end this browser's session (whoever holds one may end it)."""
    return await access.sign_out(request)


@allowed(*PUBLIC)
async def signed_out(request: web.Request) -> web.StreamResponse:
    """GET /portal/signed-out: the page after signing out."""
    return _no_store(aiohttp_jinja2.render_template("portal_signed_out.html", request, {}))


async def _identity_providers(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    idps = IdentityProviders(app[HTTP], app[SEALER], ca_file=settings.idp_ca_file, timeout=settings.http_timeout)
    app[IDPS] = idps
    try:
        yield
    finally:
        idps.close()


def setup(app: web.Application) -> None:
    """Add the portal's routes, templates and its identity providers' clients."""
    add_templates(app, "config_portal")
    app.cleanup_ctx.append(_identity_providers)  # after the gateway's HTTP session, which it uses
    app.router.add_get("/portal/callback", callback)
    app.router.add_get("/portal/signed-out", signed_out)
    app.router.add_post("/portal/sign-out", sign_out)
    app.router.add_get("/portal/{org}/sign-in", sign_in_page)
    app.router.add_get("/portal/{org}/sign-in/start", start_sign_in)
    app.router.add_get("/portal/{org}", home)
    # Imported here: their handlers use this module's `allowed`.
    from . import approval, configurations
    configurations.add_routes(app)
    approval.add_routes(app)
