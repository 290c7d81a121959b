"""The portal's configuration pages: an organisation's admins list, add, change and retire its EHR
configurations; admins and approvers read each one's revision history.

Saving runs the same check as `visitgate config add` (gateway.config_check) and the same functions
(gateway.configurations), so the command line and the portal are audited alike. A form refused keeps what was
typed (the client secret excepted), names each problem next to its field and in a summary that takes focus.
"""
from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from gateway import configurations as configs
from gateway.appkeys import DB, EHR, SEALER
from gateway.config_check import Problem, live_problems, stored_problems, url_problems
from gateway.ehr import fhir_base_url
from gateway.errors import ConfigError, NotFound

from . import access
from .errors import ConfigurationRefused
from .access import allowed, no_store
from .store import PortalSession

LABELS = {
    "fhir_base_url": "FHIR base URL", "environment": "Environment", "ehr": "EHR", "client_id": "Client ID",
    "client_auth": "Client authentication", "client_secret": "Client secret", "scopes": "Scopes",
    "meeting_provider": "Meeting provider", "writeback_strategy": "Write-back", "approver": "Approver",
}
CHOICES = {
    "environment": [("test", "Test"), ("production", "Production")],
    "ehr": [("epic", "Epic"), ("oracle", "Oracle Health"), ("smart", "Other SMART on FHIR EHR")],
    "client_auth": [("private_key_jwt", "private_key_jwt (asymmetric, recommended)"),
                    ("client_secret_basic", "client_secret_basic (a shared secret)"),
                    ("public", "Public client (no secret)")],
    "meeting_provider": [("builtin", "Built-in video (WebRTC)"),
                         ("teams", "Microsoft Teams (set up the organisation's Teams settings first)")],
    "writeback_strategy": [("none", "Off"), ("fhir-r4-patch", "FHIR R4 PATCH of the Encounter"),
                           ("fhir-r4-put", "FHIR R4 PUT of the Encounter")],
}
_MAX_FIELD = 2048


def actor(session: PortalSession) -> str:
    """How the audit log names a portal user: organisation and subject, as the sign-in's entries do."""
    return f"{session.organisation_slug}:{session.subject}"


def _id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise NotFound("no such configuration")
    return int(value)


async def owned_configuration(conn: Any, session: PortalSession, raw_id: str) -> configs.Configuration:
    """The configuration a URL names, if it belongs to the session's organisation; else a 404 (another
    organisation's configurations do not exist for this person)."""
    found = await configs.get(conn, _id(raw_id))
    if found is None or found.organisation_id != session.organisation_id:
        raise NotFound("no such configuration")
    return found


@allowed("admin", "approver")
async def list_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/configurations: the organisation's configurations and their states."""
    session = await access.portal_session(request, "admin", "approver")
    async with request.app[DB].acquire() as conn:
        rows = await configs.of_organisation(conn, session.organisation_id)
        waive = await configs.waives_oracle_approval(conn, session.organisation_id)
    return no_store(aiohttp_jinja2.render_template("portal_configurations.html", request, {
        "session": session, "rows": rows, "waive": waive, "is_admin": "admin" in session.roles}))


@allowed("admin")
async def set_waiver(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/settings/oracle-approval: whether Oracle Health configurations skip the approver."""
    session = await access.portal_session(request, "admin")
    form = await request.post()
    async with request.app[DB].acquire() as conn:
        await configs.set_waive_oracle_approval(conn, session.organisation_id, form.get("waive") == "on",
                                                actor(session))
    return web.Response(status=303, headers={"Location": f"/portal/{session.organisation_slug}/configurations"})


def _form_values(form: Any) -> dict[str, str]:
    values = {}
    for name in LABELS:
        value = form.get(name, "")
        values[name] = value.strip() if isinstance(value, str) else ""
    return values


def _field_errors(values: dict[str, str], approvers: list[str], *, needs_secret: bool,
                  approver_optional: bool) -> dict[str, str]:
    errors: dict[str, str] = {}
    for name, value in values.items():
        if len(value) > _MAX_FIELD:
            errors[name] = f"{LABELS[name]} is too long."
    if "fhir_base_url" not in errors and fhir_base_url(values["fhir_base_url"]) is None:
        errors["fhir_base_url"] = ("Enter the FHIR base URL as an absolute https address without ? or #, for "
                                   "example https://ehr.example.org/api/FHIR/R4.")
    for name, choices in CHOICES.items():
        if values[name] not in [c for c, _ in choices]:
            errors[name] = f"Choose the {LABELS[name].lower()}."
    if not values["client_id"] or not values["client_id"].isprintable() or len(values["client_id"]) > 255:
        errors["client_id"] = "Enter the client ID the EHR gave this application."
    if values["client_auth"] == "client_secret_basic" and needs_secret and not values["client_secret"]:
        errors["client_secret"] = "Enter the client secret (it is kept sealed and never shown again)."
    if values["client_auth"] != "client_secret_basic" and values["client_secret"]:
        errors["client_secret"] = "A client secret is only used with client_secret_basic; leave it empty."
    if "launch" not in values["scopes"].split() or "openid" not in values["scopes"].split():
        errors["scopes"] = "The scopes must include launch, openid and fhirUser."
    if values["approver"] and values["approver"] not in approvers:
        errors["approver"] = "Choose one of this organisation's approvers."
    elif not values["approver"] and not approver_optional:
        errors["approver"] = "Choose who approves this configuration (an approver of this organisation)."
    return errors


def _render_form(request: web.Request, session: PortalSession, *, values: dict[str, str], errors: dict[str, str],
                 approvers: list[str], config: configs.Configuration | None, status: int = 200,
                 problems: list[Problem] | None = None) -> web.StreamResponse:
    summary = [(field, message) for field, message in errors.items()]
    return no_store(aiohttp_jinja2.render_template("portal_configuration_form.html", request, {
        "session": session, "values": {**values, "client_secret": ""}, "errors": errors, "summary": summary,
        "approvers": approvers, "config": config, "labels": LABELS, "choices": CHOICES,
        "reasons": [p.reason for p in problems or []]}, status=status))


async def _save(request: web.Request, session: PortalSession, config: configs.Configuration | None,
                approvers: list[str]) -> web.StreamResponse:
    form = await request.post()
    values = _form_values(form)
    async with request.app[DB].acquire() as conn:
        waive = await configs.waives_oracle_approval(conn, session.organisation_id)
    had_secret = config is not None and config.client_auth == "client_secret_basic" and \
        config.client_secret is not None
    oracle_waived = values["ehr"] == "oracle" and waive
    errors = _field_errors(values, approvers, needs_secret=not had_secret, approver_optional=oracle_waived)
    problems: list[Problem] = []
    new = None
    base = fhir_base_url(values["fhir_base_url"])
    if errors and base is not None and "environment" not in errors:
        # The rest of the form is wrong too: say what the URL alone says now, not after the next try.
        for found in url_problems(base, values["environment"]):
            errors.setdefault(found.field, found.message)
    if not errors:
        try:
            new = configs.NewConfiguration(
                fhir_base_url=values["fhir_base_url"], environment=values["environment"], ehr=values["ehr"],
                client_id=values["client_id"], client_auth=values["client_auth"], scopes=values["scopes"],
                client_secret=values["client_secret"] or None, meeting_provider=values["meeting_provider"],
                writeback_strategy=values["writeback_strategy"], approver=values["approver"] or None,
                keep_secret=had_secret and not values["client_secret"])
        except ConfigError as exc:
            errors["fhir_base_url"] = str(exc)
    if new is not None:
        async with request.app[DB].acquire() as conn:
            problems = await stored_problems(conn, new, configuration_id=config.id if config else None)
        # The connection goes back to the pool before the EHR is asked (which may take its time limit).
        problems += await live_problems(request.app[EHR], new)
        for found in problems:
            errors.setdefault(found.field, found.message)
    if errors or new is None:
        return _render_form(request, session, values=values, errors=errors, approvers=approvers, config=config,
                            status=422, problems=problems)
    who = actor(session)
    try:
        async with request.app[DB].acquire() as conn, conn.transaction():
            if config is None:
                config_id, revision_id = await configs.propose_new(conn, request.app[SEALER], new, who,
                                                                   organisation_id=session.organisation_id)
            else:
                config_id = config.id
                revision_id = await configs.propose_change(conn, request.app[SEALER], config.id, new, who)
            # The organisation may have waived the approver's EHR sign-in for Oracle Health: the save approves.
            await configs.approve_if_waived(conn, revision_id, who, ehr=new.ehr,
                                            organisation_id=session.organisation_id)
    except ConfigError as exc:
        raise ConfigurationRefused(str(exc)) from exc
    return web.Response(status=303, headers={
        "Location": f"/portal/{session.organisation_slug}/configurations/{config_id}", "Cache-Control": "no-store"})


_DEFAULTS = {"fhir_base_url": "", "environment": "test", "ehr": "epic", "client_id": "",
             "client_auth": "private_key_jwt", "client_secret": "", "scopes": configs.DEFAULT_SCOPES,
             "meeting_provider": "builtin", "writeback_strategy": "none", "approver": ""}


@allowed("admin")
async def new_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/configurations/new: the form to add a configuration."""
    session = await access.portal_session(request, "admin")
    async with request.app[DB].acquire() as conn:
        approvers = await configs.approvers_of(conn, session.organisation_id)
    return _render_form(request, session, values=dict(_DEFAULTS), errors={}, approvers=approvers, config=None)


@allowed("admin")
async def create(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/configurations/new: check and propose a configuration (pending its approver)."""
    session = await access.portal_session(request, "admin")
    async with request.app[DB].acquire() as conn:
        approvers = await configs.approvers_of(conn, session.organisation_id)
    return await _save(request, session, None, approvers)


@allowed("admin")
async def edit_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/configurations/{config}/edit: the form to propose a change."""
    session = await access.portal_session(request, "admin")
    async with request.app[DB].acquire() as conn:
        config = await owned_configuration(conn, session, request.match_info["config"])
        approvers = await configs.approvers_of(conn, session.organisation_id)
        pending = [r for r in await configs.revisions_of(conn, config.id) if r.state == "pending"]
    shown = pending[0] if pending else config  # edit the latest proposal, else the values in force
    values = {name: str(getattr(shown, name) or "") for name in configs.FIELDS}
    values["client_secret"] = ""
    return _render_form(request, session, values=values, errors={}, approvers=approvers, config=config)


@allowed("admin")
async def update(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/configurations/{config}/edit: check and propose a change (a pending revision)."""
    session = await access.portal_session(request, "admin")
    async with request.app[DB].acquire() as conn:
        config = await owned_configuration(conn, session, request.match_info["config"])
        approvers = await configs.approvers_of(conn, session.organisation_id)
    if config.status == "retired":
        raise ConfigurationRefused("A retired configuration cannot be changed.")
    return await _save(request, session, config, approvers)


@allowed("admin")
async def retire(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/configurations/{config}/retire: refuse this configuration's launches from now on."""
    session = await access.portal_session(request, "admin")
    try:
        async with request.app[DB].acquire() as conn:
            config = await owned_configuration(conn, session, request.match_info["config"])
            await configs.retire(conn, config.id, actor(session))
    except ConfigError as exc:
        raise ConfigurationRefused(str(exc)) from exc
    return web.Response(status=303, headers={
        "Location": f"/portal/{session.organisation_slug}/configurations/{config.id}", "Cache-Control": "no-store"})


def history(revisions: list[configs.Revision]) -> list[dict[str, Any]]:
    """Each revision with what it changed compared with the one before it (the first: every value)."""
    rows = []
    previous: dict[str, Any] = {}
    for revision in revisions:
        values = revision.values()
        rows.append({"revision": revision, "changed": configs.changes(previous, values)})
        previous = values
    return list(reversed(rows))


@allowed("admin", "approver")
async def detail_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/configurations/{config}: the values in force, the pending revision, the history."""
    session = await access.portal_session(request, "admin", "approver")
    async with request.app[DB].acquire() as conn:
        config = await owned_configuration(conn, session, request.match_info["config"])
        revisions = await configs.revisions_of(conn, config.id)
    pending = next((r for r in revisions if r.state == "pending"), None)
    return no_store(aiohttp_jinja2.render_template("portal_configuration.html", request, {
        "session": session, "config": config, "pending": pending, "history": history(revisions),
        "labels": LABELS, "fields": configs.FIELDS, "is_admin": "admin" in session.roles,
        "may_decide": pending is not None and "approver" in session.roles and pending.approver == session.subject,
        "pending_changes": configs.changes(config.values(), pending.values()) if pending else {}}))


def add_routes(app: web.Application) -> None:
    """Mount the configuration pages."""
    app.router.add_get("/portal/{org}/configurations", list_page)
    app.router.add_get("/portal/{org}/configurations/new", new_page)
    app.router.add_post("/portal/{org}/configurations/new", create)
    app.router.add_get("/portal/{org}/configurations/{config}", detail_page)
    app.router.add_get("/portal/{org}/configurations/{config}/edit", edit_page)
    app.router.add_post("/portal/{org}/configurations/{config}/edit", update)
    app.router.add_post("/portal/{org}/configurations/{config}/retire", retire)
    app.router.add_post("/portal/{org}/settings/oracle-approval", set_waiver)
