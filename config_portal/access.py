"""Who is signed in to the portal: sign-in through the organisation's identity provider, server-side sessions
behind a `__Host-` cookie, and the role check every portal route makes.

A sign-in keeps our own state (256 bits) hashed in the database, bound to the browser that started it by a
second `__Host-` cookie; the callback takes the state once and compares the binding before anything else.
"""
from __future__ import annotations

import functools
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from cryptography.exceptions import InvalidTag

from gateway.appkeys import DB, SEALER, SETTINGS
from gateway.configurations import append_audit
from gateway.security import token_hash

from . import store
from .appkeys import IDPS
from .errors import NotSignedIn, RoleRequired, SignInRefused, UnknownOrganisation
from .store import Membership, Organisation, PortalSession

log = logging.getLogger(__name__)

SESSION_COOKIE = "__Host-vg_portal"
BINDING_COOKIE = "__Host-vg_portal_sign_in"
FLOW_CONTEXT = "portal_login_states.flow"
CALLBACK_PATH = "/portal/callback"
_TOKEN_LENGTHS = range(40, 129)  # token_urlsafe(32) is 43 characters; anything far off is not ours
ROLE_NAMES = {"admin": "Admin", "approver": "Approver", "report_reader": "Report reader"}


def _cookie(response: web.StreamResponse, name: str, value: str, max_age: int | None = None) -> None:
    # __Host-: Secure, Path=/ and no Domain, so no other host or path can set or shadow it. Lax: the
    # identity provider's redirect back (a top-level GET) carries it, a cross-site POST does not.
    response.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="Lax", max_age=max_age)


def _forget_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/", secure=True, httponly=True, samesite="Lax")


def _cookie_value(request: web.Request, name: str) -> str | None:
    value = request.cookies.get(name)
    return value if value and len(value) in _TOKEN_LENGTHS else None


async def organisation(request: web.Request, slug: str) -> Organisation:
    """The organisation a portal URL names, or a 404 page."""
    if len(slug) > 63:
        raise UnknownOrganisation()
    async with request.app[DB].acquire() as conn:
        found = await store.organisation_by_slug(conn, slug)
    if found is None:
        raise UnknownOrganisation()
    return found


async def begin_sign_in(request: web.Request, org: Organisation, *, return_to: str,
                        max_age: int | None = None) -> web.Response:
    """Send the browser to the organisation's identity provider; max_age asks for a fresh sign-in."""
    if not return_to.startswith("/portal/") or "//" in return_to:
        raise ValueError("a sign-in returns to a portal path")  # our own code chose it: a bug, not input
    settings = request.app[SETTINGS]
    state = secrets.token_urlsafe(32)
    binding = _cookie_value(request, BINDING_COOKIE) or secrets.token_urlsafe(32)
    flow = await request.app[IDPS].start(org, settings.public_url + CALLBACK_PATH, state, max_age=max_age)
    sealed = request.app[SEALER].seal(json.dumps(flow), FLOW_CONTEXT)
    async with request.app[DB].acquire() as conn:
        await store.purge_login_states(conn)
        await store.insert_login_state(conn, token_hash(state), org.id, token_hash(binding), sealed, max_age,
                                       return_to, settings.portal_sign_in_ttl)
    response = web.Response(status=302, headers={"Location": str(flow["auth_uri"]), "Cache-Control": "no-store"})
    _cookie(response, BINDING_COOKIE, binding, max_age=settings.portal_sign_in_ttl)
    return response


def resolve_roles(org: Organisation, memberships: list[Membership], claims: dict[str, Any]) -> tuple[str, ...]:
    """The roles an id_token's person holds in the organisation, by subject, email or group claim."""
    subject = subject_of(org, claims)
    email = claims.get("email")
    # A provider that says the address is unverified gets no role by it (Entra says nothing; its tenant's
    # admins own the addresses, and the tenant was checked).
    email = email.strip().lower() if isinstance(email, str) and claims.get("email_verified") is not False else None
    raw_groups = claims.get(org.group_claim)
    groups = {g for g in raw_groups if isinstance(g, str)} if isinstance(raw_groups, list) else set()
    held = {m.role for m in memberships
            if (m.matched_by == "subject" and m.value == subject)
            or (m.matched_by == "email" and email is not None and m.value == email)
            or (m.matched_by == "group" and m.value in groups)}
    return tuple(r for r in store.ROLES if r in held)


def auth_time_of(claims: dict[str, Any]) -> float | None:
    """When the person last typed their credentials, if the id_token says (a whole number of seconds)."""
    value = claims.get("auth_time")
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else None


def fresh_enough(auth_time: float | None, max_age: int, now: float) -> bool:
    """Whether a sign-in at auth_time answers a request for one within max_age seconds (a minute's clock slack)."""
    return auth_time is not None and now - auth_time <= max_age + 60


def groups_left_out(org: Organisation, claims: dict[str, Any]) -> bool:
    """Whether the id_token names a source for the group claim instead of the groups (Entra's "overage": a
    person in more than 200 groups), so that group memberships cannot be read from it."""
    names = claims.get("_claim_names")
    return isinstance(names, dict) and org.group_claim in names and org.group_claim not in claims


def subject_of(org: Organisation, claims: dict[str, Any]) -> str:
    """Who signed in: Entra's object id (the same in every application of the tenant), else `sub`."""
    value = claims.get("oid") if org.idp_kind == "entra" else claims.get("sub")
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise SignInRefused("The id_token does not say who signed in.", reason="id_token_subject")
    return value


async def finish_sign_in(request: web.Request) -> web.Response:
    """The identity provider's redirect back: check state and browser, redeem, verify, resolve roles, open a session."""
    query = request.query
    if any(len(query.getall(k)) > 1 for k in query.keys()):
        raise SignInRefused("The sign-in answer repeats a parameter.", reason="invalid_state")
    state = query.get("state", "")
    if len(state) not in _TOKEN_LENGTHS:
        raise SignInRefused("This sign-in is unknown. Start again from the sign-in page.", reason="invalid_state")
    async with request.app[DB].acquire() as conn:
        taken = await store.take_login_state(conn, token_hash(state))
    if taken is None:
        raise SignInRefused("This sign-in is unknown or was already used. Start again from the sign-in page.",
                            reason="invalid_state")
    try:
        return await _finish_taken(request, taken)
    except SignInRefused as exc:
        # Every refusal once the organisation is known is in its audit trail, by reason; the refusals of a
        # person who signed in but holds no role are written below, with who it was.
        if exc.reason not in ("no_role", "groups_overage"):
            async with request.app[DB].acquire() as conn:
                await append_audit(conn, "(not signed in)", "portal.sign_in_refused",
                                   f"organisation:{taken.organisation_id}", {"reason": exc.reason},
                                   organisation_id=taken.organisation_id)
        raise


async def _finish_taken(request: web.Request, taken: store.LoginState) -> web.Response:
    binding = _cookie_value(request, BINDING_COOKIE)
    if binding is None or not hmac.compare_digest(token_hash(binding), taken.browser_hash):
        raise SignInRefused("This sign-in was started in another browser. Start again from the sign-in page.",
                            reason="other_browser")
    if not taken.live:
        raise SignInRefused("This sign-in took too long. Start again from the sign-in page.",
                            reason="state_expired")
    async with request.app[DB].acquire() as conn:
        org = await store.organisation_by_id(conn, taken.organisation_id)
    if org is None:
        raise SignInRefused("This sign-in is unknown.", reason="invalid_state")
    try:
        flow = json.loads(request.app[SEALER].unseal(taken.flow, FLOW_CONTEXT))
    except (InvalidTag, ValueError) as exc:  # sealed under a key the gateway no longer has
        raise SignInRefused("This sign-in is unknown. Start again from the sign-in page.",
                            reason="invalid_state") from exc
    query = request.query
    answer = {k: v for k, v in query.items() if k in ("code", "state", "iss", "error", "client_info",
                                                        "session_state")}
    claims = await request.app[IDPS].finish(org, flow, answer)
    subject = subject_of(org, claims)
    auth_time = auth_time_of(claims)
    if taken.max_age is not None and not fresh_enough(auth_time, taken.max_age, time.time()):
        raise SignInRefused("A fresh sign-in was needed, and the identity provider did not ask for one.",
                            reason="sign_in_not_fresh")
    settings = request.app[SETTINGS]
    async with request.app[DB].acquire() as conn:
        roles = resolve_roles(org, await store.memberships_of(conn, org.id), claims)
        actor = f"{org.slug}:{subject}"
        if not roles:
            overage = groups_left_out(org, claims)
            reason = "groups_overage" if overage else "no_role"
            await append_audit(conn, actor, "portal.sign_in_refused", f"organisation:{org.id}", {"reason": reason},
                               organisation_id=org.id)
            log.info("portal sign-in to %s refused: %s", org.slug, reason)
            if overage:
                raise SignInRefused("You belong to too many groups for the identity provider to list them, so no "
                                    "role could be found by group. Ask an admin to grant your role by subject or "
                                    "email, or to send only the application's groups.", reason=reason)
            raise SignInRefused("You signed in, but you hold no role in this organisation's portal. Ask one of "
                                "its admins to grant you one.", reason=reason)
        token = secrets.token_urlsafe(32)
        async with conn.transaction():
            old = _cookie_value(request, SESSION_COOKIE)
            if old is not None:
                await store.delete_session(conn, token_hash(old))
            await store.purge_sessions(conn, settings.portal_idle_timeout, settings.portal_session_lifetime)
            await store.insert_session(conn, token_hash(token), org.id, subject, roles, auth_time)
            await append_audit(conn, actor, "portal.sign_in", f"organisation:{org.id}",
                               {"roles": list(roles), "fresh": taken.max_age is not None}, organisation_id=org.id)
    response = web.Response(status=303, headers={"Location": taken.return_to, "Cache-Control": "no-store"})
    _cookie(response, SESSION_COOKIE, token)
    _forget_cookie(response, BINDING_COOKIE)
    return response


async def portal_session(request: web.Request, *roles: str) -> PortalSession:
    """The live session of this browser holding one of roles (in the URL's organisation, if it names one);
    refuses with 401 when there is none and 403 when it holds none of them. Every portal route calls it."""
    if not roles or any(r not in store.ROLES for r in roles):
        raise ValueError("name the roles the route needs")  # a route without roles would be open to anyone
    token = _cookie_value(request, SESSION_COOKIE)
    if token is None:
        raise NotSignedIn("Sign in to use the portal.")
    settings = request.app[SETTINGS]
    async with request.app[DB].acquire() as conn:
        session = await store.touch_session(conn, token_hash(token), settings.portal_idle_timeout,
                                            settings.portal_session_lifetime)
    if session is None:
        raise NotSignedIn("Your portal session has ended. Sign in again.")
    slug = request.match_info.get("org")
    if slug is not None and slug != session.organisation_slug:
        raise RoleRequired("You are signed in to another organisation's portal.", reason="other_organisation")
    if not set(roles) & set(session.roles):
        raise RoleRequired("Your role in this organisation does not include this page.")
    return session


async def require_fresh_sign_in(request: web.Request, max_age: int) -> web.Response | None:
    """None when the signed-in person typed their credentials within max_age seconds; otherwise the redirect
    to sign in again (`prompt=login`, `max_age`), coming back to this page. Call it from a page's GET."""
    session = await portal_session(request, *store.ROLES)
    if session.auth_age is not None and session.auth_age <= max_age:
        return None
    org = await organisation(request, session.organisation_slug)
    return await begin_sign_in(request, org, return_to=request.path, max_age=max_age)


async def sign_out(request: web.Request) -> web.Response:
    """End this browser's session, if any, and forget its cookie."""
    token = _cookie_value(request, SESSION_COOKIE)
    if token is not None:
        async with request.app[DB].acquire() as conn, conn.transaction():
            ended = await store.delete_session(conn, token_hash(token))
            if ended is not None:
                org_id, slug, subject = ended
                await append_audit(conn, f"{slug}:{subject}", "portal.sign_out", f"organisation:{org_id}", {},
                                   organisation_id=org_id)
    response = web.Response(status=303, headers={"Location": "/portal/signed-out", "Cache-Control": "no-store"})
    _forget_cookie(response, SESSION_COOKIE)
    return response


# --- who may use each portal route (every page module declares its handlers' roles here) -----------------

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
                return no_store(aiohttp_jinja2.render_template(
                    "portal_sign_in_again.html", request, {"slug": slug, "detail": exc.detail, "reason": exc.reason},
                    status=exc.status))
        ACCESS[guarded] = roles
        return guarded
    return mark


def no_store(response: web.StreamResponse) -> web.StreamResponse:
    """The response, marked never to be kept by a cache (every portal page is someone's)."""
    response.headers["Cache-Control"] = "no-store"
    return response
