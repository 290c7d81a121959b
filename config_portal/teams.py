"""The organisation's Microsoft Teams settings (admins): Entra tenant ID, application client ID and credential
(a certificate, preferred, or a secret; never shown again), checked live when saved; and the clinicians' links to
their Microsoft 365 accounts, which admins see and remove. Everything audited.

The live check gets a token afresh with the new credential (so a wrong one cannot hide behind a cached token),
reads its application roles (the meetings role is required; the attendance reports' role only warned about: live
presence works without it, the reconciliation after each call does not), and makes a harmless Graph call (a meeting lookup that finds nothing) for the most
recently linked clinicians, so that an access policy that does not cover them shows here, with the commands that
fix it, rather than at a clinician's launch.
"""
from __future__ import annotations

import base64
import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from gateway import teams
from gateway.appkeys import DB, GRAPH, SEALER, SETTINGS
from gateway.errors import GraphError, GraphPolicyDenied, GraphRefused
from gateway.graph import ARTIFACT_ROLE, MEETINGS_ROLE, GraphClient, SecretCredential, TeamsTenant, is_guid, load_certificate

from . import access
from .access import allowed, no_store
from .store import PortalSession

log = logging.getLogger(__name__)

CHECK_JOIN_URL = "https://teams.microsoft.com/l/meetup-join/visitgate-settings-check"
MAX_PEM = 20_000
MAX_SECRET = 256


def _actor(session: PortalSession) -> str:
    return f"{session.organisation_slug}:{session.subject}"


def _roles_of(access_token: str) -> list[str]:
    """The application roles an app token carries (read, not verified: it came straight from Entra over TLS,
    and Graph itself checks it on every call)."""
    try:
        payload = access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return []
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []


def reports_warning(client_id: str) -> str:
    """What an admin should do when the application cannot read attendance reports."""
    return (f"The application {client_id} has no application permission {ARTIFACT_ROLE}. Teams visits work and "
            f"their presence is live, but after each call Visitgate cannot read the meeting's attendance report "
            f"to fill in what live notifications missed. In Entra ID, under the application's API permissions, add "
            f"Microsoft Graph > Application permissions > {ARTIFACT_ROLE} and grant admin consent (the application "
            f"access policy that covers the clinicians covers their reports too), then save the settings again.")


async def check_tenant(graph: GraphClient, tenant: TeamsTenant, organizers: list[str]) -> list[str]:
    """Check Teams settings live: a fresh token, the meetings role, and a harmless call for each organizer
    given; raises GraphError (GraphPolicyDenied with what the admin must do). Answers warnings that do not stop
    the settings from being saved (the attendance reports' role missing)."""
    token = await graph.token(tenant, fresh=True)
    roles = _roles_of(str(token["access_token"]))
    if MEETINGS_ROLE not in roles:
        raise GraphPolicyDenied(
            "The application lacks a permission.", reason="graph_role_missing",
            admin_message=f"The application {tenant.client_id} has no application permission {MEETINGS_ROLE}. "
                          f"In Entra ID, under the application's API permissions, add Microsoft Graph > Application "
                          f"permissions > {MEETINGS_ROLE} and grant admin consent.")
    where = quote(f"JoinWebUrl eq '{CHECK_JOIN_URL}'", safe="'")
    for oid in organizers:
        await graph.request(tenant, "GET", f"/users/{oid}/onlineMeetings?$filter={where}")
    return [] if ARTIFACT_ROLE in roles else [reports_warning(tenant.client_id)]


async def _page(request: web.Request, session: PortalSession, *, error: str | None = None, status: int = 200,
                values: dict[str, str] | None = None) -> web.StreamResponse:
    async with request.app[DB].acquire() as conn:
        settings = await teams.tenant_settings(conn, session.organisation_id)
        links = await teams.links_of(conn, request.app[SEALER], session.organisation_id)
    shown = values or {"tenant_id": settings.tenant_id if settings else "",
                       "client_id": settings.client_id if settings else "",
                       "credential_kind": settings.credential_kind if settings else "certificate"}
    done = request.query.get("done", "")
    warning = reports_warning(settings.client_id) if settings and done == "saved-no-reports" else None
    context = {"session": session, "here": "teams", "settings": settings, "links": links, "values": shown,
               "error": error, "warning": warning,
               "done": {"saved": "The Teams settings were checked with Microsoft and saved.",
                        "saved-no-reports": "The Teams settings were checked with Microsoft and saved.",
                                        "removed": "The link was removed. That clinician signs in to Microsoft 365 "
                                                   "again at their next Teams visit.",
                                        "gone": "That link had already been removed."}.get(done),
               "redirect_uri": f"{request.app[SETTINGS].public_url}/teams/callback"}
    return no_store(aiohttp_jinja2.render_template("portal_teams.html", request, context, status=status))


@allowed("admin")
async def teams_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/teams: the Teams settings (never the credential) and the clinicians' links."""
    session = await access.portal_session(request, "admin")
    return await _page(request, session)


def _text(form: Any, name: str, limit: int) -> str:
    value = form.get(name)
    return value.strip()[:limit + 1] if isinstance(value, str) else ""


@allowed("admin")
async def teams_save(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/teams: check the settings live with Microsoft, then save them (audited)."""
    session = await access.portal_session(request, "admin")
    form = await request.post()
    values = {"tenant_id": _text(form, "tenant_id", 64).lower(), "client_id": _text(form, "client_id", 64).lower(),
              "credential_kind": _text(form, "credential_kind", 16)}
    if not is_guid(values["tenant_id"]) or not is_guid(values["client_id"]):
        return await _page(request, session, values=values, status=400,
                           error="The tenant ID and the application (client) ID are GUIDs, as Entra ID shows them "
                                 "on the application's overview page.")
    sealer = request.app[SEALER]
    async with request.app[DB].acquire() as conn:
        before = await teams.tenant_settings(conn, session.organisation_id)
        stored = await teams.tenant_of(conn, sealer, session.organisation_id)
        organizers = await teams.linked_oids(conn, session.organisation_id)
    pem, secret = _text(form, "certificate", MAX_PEM), _text(form, "secret", MAX_SECRET)
    try:
        if values["credential_kind"] == "certificate" and pem:
            if len(pem) > MAX_PEM:
                raise ValueError("the PEM is too long")
            credential: Any = load_certificate(pem)
        elif values["credential_kind"] == "secret" and secret:
            if len(secret) > MAX_SECRET:
                raise ValueError("the secret is too long")
            credential = SecretCredential(secret)
        elif stored is not None and values["credential_kind"] == before_kind(before):
            credential = stored.credential  # left empty: keep the credential already stored
        else:
            raise ValueError("give the application's certificate (PEM with its private key) or its client secret")
    except ValueError as exc:
        return await _page(request, session, values=values, status=400, error=f"The credential: {exc}.")
    tenant = TeamsTenant(values["tenant_id"], values["client_id"], credential)
    try:
        warnings = await check_tenant(request.app[GRAPH], tenant, organizers)
    except GraphError as exc:
        log.info("Teams settings of organisation %s failed their check: %s", session.organisation_id, exc.reason)
        message = exc.admin_message or f"{exc.title}: {exc.detail} (reason code {exc.reason})."
        # Refused: what the admin gave (or granted) must change, 422; Microsoft unreachable or failing: its status.
        refused = isinstance(exc, (GraphRefused, GraphPolicyDenied))
        return await _page(request, session, values=values, status=422 if refused else exc.status, error=message)
    async with request.app[DB].acquire() as conn:
        await teams.save_tenant(conn, sealer, session.organisation_id, tenant, _actor(session), before)
    # Saved all the same when the attendance reports' role is missing; the page says what to add.
    done = "saved-no-reports" if warnings else "saved"
    return web.Response(status=303, headers={"Location": f"/portal/{session.organisation_slug}/teams?done={done}"})


def before_kind(before: teams.TenantSettings | None) -> str | None:
    """The credential kind stored before, if any."""
    return before.credential_kind if before else None


@allowed("admin")
async def link_remove(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/teams/links/remove: remove a clinician's link (audited)."""
    session = await access.portal_session(request, "admin")
    raw = (await request.post()).get("link")
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return await _page(request, session, error="Choose a link to remove.", status=400)
    async with request.app[DB].acquire() as conn:
        removed = await teams.remove_link(conn, request.app[SEALER], session.organisation_id, int(raw),
                                          _actor(session))
    return web.Response(status=303, headers={
        "Location": f"/portal/{session.organisation_slug}/teams?done={'removed' if removed else 'gone'}"})


def add_routes(app: web.Application) -> None:
    """Mount the Teams settings pages."""
    app.router.add_get("/portal/{org}/teams", teams_page)
    app.router.add_post("/portal/{org}/teams", teams_save)
    app.router.add_post("/portal/{org}/teams/links/remove", link_remove)
