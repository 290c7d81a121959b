"""The portal's URL map. Each handler calls `portal_session` with the roles it needs (or is one of the few
public pages of the sign-in itself); access.ACCESS says which, so the route and role test covers every route."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from gateway.appkeys import DB, HTTP, SEALER, SETTINGS
from gateway.web import add_templates

from . import access, audit, members, records
from .access import PUBLIC, allowed, no_store
from .appkeys import IDPS
from .idp import IdentityProviders
from .store import ROLES, PortalSession

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


# --- portal-admin: integration records, audit log, members (issue 13 lines 3, 9, 10) -------------------------


async def _records(request: web.Request) -> tuple[PortalSession, list[records.ConfigurationRecords]]:
    session = await access.portal_session(request, "admin", "approver")
    public_url = request.app[SETTINGS].public_url
    async with request.app[DB].acquire() as conn:
        found = await records.approved_configurations(conn, session.organisation_id)
    return session, [records.records_of(public_url, c) for c in found]


@allowed("admin", "approver")
async def records_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/records: the records to build in the EHR, with copy buttons."""
    session, found = await _records(request)
    return _no_store(aiohttp_jinja2.render_template(
        "portal_records.html", request, {"session": session, "found": found, "printable": False, "here": "records"}))


@allowed("admin", "approver")
async def records_print(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/records/print: the same records as a page to print (no navigation, no buttons)."""
    session, found = await _records(request)
    return _no_store(aiohttp_jinja2.render_template(
        "portal_records.html", request, {"session": session, "found": found, "printable": True, "here": "records"}))


@allowed("admin", "approver")
async def records_json(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/records.json: the records as a JSON download."""
    session, found = await _records(request)
    body = json.dumps(records.as_json(request.app[SETTINGS].public_url, session.organisation_slug, found),
                      sort_keys=True, indent=2)
    return _no_store(web.Response(text=body, content_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="visitgate-records-{session.organisation_slug}.json"'}))


@allowed("admin")
async def audit_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/audit: the organisation's audit trail, filtered, newest first, a page at a time."""
    session = await access.portal_session(request, "admin")
    filters = audit.parse_filters(request.query)
    async with request.app[DB].acquire() as conn:
        entries = await audit.page(conn, session.organisation_id, filters, limit=filters.page_size + 1)
        actions = await audit.actions_of(conn, session.organisation_id)
    more = len(entries) > filters.page_size
    entries = entries[:filters.page_size]
    context = {"session": session, "here": "audit", "filters": filters, "entries": entries, "actions": actions,
               "csv_query": urlencode(filters.query()),
               "first_query": urlencode(filters.query()),
               "next_query": urlencode(filters.query(before_id=entries[-1].id)) if more else None}
    return _no_store(aiohttp_jinja2.render_template("portal_audit.html", request, context))


@allowed("admin")
async def audit_csv(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/audit.csv: the filtered trail as CSV, streamed, cells safe to open in a spreadsheet."""
    session = await access.portal_session(request, "admin")
    filters = audit.parse_filters(request.query)
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="visitgate-audit-{session.organisation_slug}.csv"'})
    await response.prepare(request)
    async for line in audit.csv_lines(request.app[DB], session.organisation_id, filters):
        await response.write(line)
    await response.write_eof()
    return response


_MEMBER_NOTES = {"granted": "The role was granted. It takes effect at that person's next sign-in.",
                 "exists": "That grant existed already.",
                 "revoked": "The role was revoked. It takes effect at that person's next sign-in.",
                 "gone": "That grant had already been revoked."}


async def _members_page(request: web.Request, session: PortalSession, *, error: str | None = None,
                        status: int = 200) -> web.StreamResponse:
    async with request.app[DB].acquire() as conn:
        found = await members.members_of(conn, session.organisation_id)
    context = {"session": session, "here": "members", "members": found, "role_names": access.ROLE_NAMES,
               "done": _MEMBER_NOTES.get(request.query.get("done", "")), "error": error}
    return _no_store(aiohttp_jinja2.render_template("portal_members.html", request, context, status=status))


def _actor(session: PortalSession) -> str:
    return f"{session.organisation_slug}:{session.subject}"


@allowed("admin")
async def members_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/members: every grant of a role, and the forms to grant and revoke."""
    session = await access.portal_session(request, "admin")
    return await _members_page(request, session)


@allowed("admin")
async def members_grant(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/members/grant: grant a role by subject, email or group (audited)."""
    session = await access.portal_session(request, "admin")
    form = await request.post()
    fields = {k: form.get(k) for k in ("role", "matched_by", "value")}
    if not all(isinstance(v, str) for v in fields.values()):
        return await _members_page(request, session, error="Fill in the role, how the person is recognised and "
                                                            "the value.", status=400)
    try:
        async with request.app[DB].acquire() as conn:
            added = await members.grant(conn, session.organisation_id, str(fields["role"]),
                                        str(fields["matched_by"]), str(fields["value"]), _actor(session))
    except members.MembershipRefused as exc:
        return await _members_page(request, session, error=exc.detail, status=exc.status)
    return web.Response(status=303, headers={
        "Location": f"/portal/{session.organisation_slug}/members?done={'granted' if added else 'exists'}"})


@allowed("admin")
async def members_revoke(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/members/revoke: revoke one grant (audited); never the organisation's last admin."""
    session = await access.portal_session(request, "admin")
    form = await request.post()
    raw = form.get("membership")
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return await _members_page(request, session, error="Choose a grant to revoke.", status=400)
    try:
        async with request.app[DB].acquire() as conn:
            revoked = await members.revoke(conn, session.organisation_id, int(raw), _actor(session))
    except members.MembershipRefused as exc:
        return await _members_page(request, session, error=exc.detail, status=exc.status)
    return web.Response(status=303, headers={
        "Location": f"/portal/{session.organisation_slug}/members?done={'revoked' if revoked else 'gone'}"})


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
    app.router.add_static("/static/portal/", Path(__file__).parent / "static", append_version=False)
    app.router.add_get("/portal/{org}/records", records_page)
    app.router.add_get("/portal/{org}/records/print", records_print)
    app.router.add_get("/portal/{org}/records.json", records_json)
    app.router.add_get("/portal/{org}/audit", audit_page)
    app.router.add_get("/portal/{org}/audit.csv", audit_csv)
    app.router.add_get("/portal/{org}/members", members_page)
    app.router.add_post("/portal/{org}/members/grant", members_grant)
    app.router.add_post("/portal/{org}/members/revoke", members_revoke)
    # Imported here: their handlers use this module's `allowed`.
    from . import approval, configurations, error_report, reports, sms, teams
    configurations.add_routes(app)
    approval.add_routes(app)
    error_report.add_routes(app)
    reports.add_routes(app)
    sms.add_routes(app)
    teams.add_routes(app)
