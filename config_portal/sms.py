"""The portal's SMS set-up, per organisation (admins only): the two consents, which messages go out, getting a
new number from Azure Communication Services (search, then purchase), linking numbers to the organisation's
FHIR base URLs (one number may serve several), and releasing a number. Every step is audited.

Search, purchase and release are ACS long-running operations that can take minutes. Each one is a row of
`sms_operations`; a background worker (one per gateway process, in a cleanup_ctx) claims due rows with
`FOR UPDATE SKIP LOCKED` and a lease, asks ACS where the operation stands, and moves the row on. The page
polls `sms/operations.json` for the progress, so it survives a reload, and the rows survive a restart: the
next process to run picks up where the last one stopped.

The numbers kept are the organisation's own sender numbers, never a patient's.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
import asyncpg
from aiohttp import web

import sql
from gateway.appkeys import DB, HTTP, NOTIFIER, SETTINGS
from gateway.configurations import append_audit
from gateway.errors import NotFound
from gateway.notify.acs import AcsClient
from gateway.notify.errors import NotifyError
from gateway.notify.optout import OptOutSms
from gateway.notify.sms import AcsSms
from gateway.web import serves_json

from . import access
from .appkeys import SMS_ACS, SMS_WAKE
from .access import allowed, no_store
from .store import PortalSession

log = logging.getLogger(__name__)
Q = sql.queries("sms")
WORKER = "visitgate (SMS set-up)"
"""How the audit log names the worker's own steps (the person who asked is in the details)."""
LEASE_SECONDS = 60.0
COUNTRIES = {"US": "United States", "GB": "United Kingdom"}
NUMBER_TYPES = {"tollFree": "Toll-free", "geographic": "Local (geographic)"}
MESSAGES = {"send_confirmation": "Appointment confirmations (booked, changed, cancelled)",
            "send_reminder": "Appointment reminders",
            "send_join_link": "Join links sent by clinicians"}
STEP_TEXT = {"requested": "Waiting to start",
             "searching": "Searching for an available number",
             "purchasing": "Buying the number",
             "releasing": "Releasing the number",
             "succeeded": "Done",
             "failed": "Failed"}
# Errors worth another try later rather than failing the operation: ACS was away or asked us to slow down.
_TRANSIENT = frozenset({"acs_unreachable", "acs_throttled"})


def actor(session: PortalSession) -> str:
    """How the audit log names a portal user."""
    return f"{session.organisation_slug}:{session.subject}"


# --- storage --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """An organisation's SMS consents and message choices."""

    terms_accepted: bool
    consent_given: bool
    send_confirmation: bool = True
    send_reminder: bool = True
    send_join_link: bool = True

    @property
    def ready(self) -> bool:
        """Both consents given: numbers may be bought and texts sent on the organisation's behalf."""
        return self.terms_accepted and self.consent_given


async def setup_of(conn: asyncpg.Connection, org_id: int) -> Setup:
    """The organisation's SMS set-up (nothing consented when it has none yet)."""
    row = await conn.fetchrow(Q["setup_of"], org_id)
    if row is None:
        return Setup(False, False)
    return Setup(row["terms_accepted_at"] is not None, row["consent_at"] is not None, row["send_confirmation"],
                 row["send_reminder"], row["send_join_link"])


def operation_json(row: asyncpg.Record) -> dict[str, Any]:
    """One operation as the page shows it."""
    return {"id": row["id"], "kind": row["kind"], "step": row["step"], "text": STEP_TEXT[row["step"]],
            "finished": row["step"] in ("succeeded", "failed"), "number": row["number"], "error": row["error"],
            "updated_at": row["updated_at"].isoformat()}


# --- the worker: follows ACS's long-running operations ---------------------------------------------------------


async def advance(pool: asyncpg.Pool, client: AcsClient, poll_interval: float) -> bool:
    """Claim one due operation and take it one step further; False when none was due."""
    async with pool.acquire() as conn:
        op = await conn.fetchrow(Q["claim_operation"], LEASE_SECONDS)
    if op is None:
        return False
    state = {k: op[k] for k in ("step", "operation_url", "search_id", "number", "number_id")}
    error: str | None = None
    delay = poll_interval
    audit: list[tuple[str, dict[str, Any]]] = []
    try:
        await _step(client, op, state, audit)
    except asyncio.CancelledError:
        # This process is stopping mid-step: let the next one take the operation now, not when the lease ends.
        async with pool.acquire() as conn:
            await conn.execute(Q["release_operation"], op["id"])
        raise
    except NotifyError as exc:
        if exc.reason in _TRANSIENT:
            delay = max(poll_interval, 5.0)
        else:
            state["step"], error = "failed", exc.detail[:300]
            audit.append(("sms.operation_failed", {"reason": exc.reason}))
    except Exception:  # a bug or an answer no check foresaw: this operation fails, the worker goes on
        log.exception("SMS set-up operation %s failed unexpectedly", op["id"])
        state["step"], error = "failed", "An unexpected error stopped this operation."
        audit.append(("sms.operation_failed", {"reason": "internal_error"}))
    async with pool.acquire() as conn, conn.transaction():
        if state["step"] == "succeeded" and op["kind"] == "purchase" and state["number_id"] is None:
            state["number_id"] = await conn.fetchval(Q["add_number"], op["organisation_id"], state["number"])
        if state["step"] == "succeeded" and op["kind"] == "release":
            await conn.execute(Q["unlink_number"], op["number_id"])
            await conn.execute(Q["set_number_state"], op["number_id"], "released")
        if state["step"] == "failed" and op["kind"] == "release":
            await conn.execute(Q["set_number_state"], op["number_id"], "active")
        await conn.execute(Q["advance_operation"], op["id"], state["step"], state["operation_url"],
                           state["search_id"], state["number"], state["number_id"], error, delay)
        for action, details in audit:
            await append_audit(conn, WORKER, action, f"sms_operation:{op['id']}",
                               {"requested_by": op["requested_by"], "kind": op["kind"], **details},
                               organisation_id=op["organisation_id"])
    return True


async def _step(client: AcsClient, op: asyncpg.Record, state: dict[str, Any],
                audit: list[tuple[str, dict[str, Any]]]) -> None:
    """One look at ACS for an operation; changes state (and notes what to audit) when it moved on."""
    step = state["step"]
    if step == "requested" and op["kind"] == "release":
        state["operation_url"] = await client.start_release(state["number"])
        state["step"] = "releasing"
        audit.append(("sms.number_release_started", {"number": state["number"]}))
        return
    if step == "requested":
        state["operation_url"] = await client.start_search(op["country"], op["number_type"])
        state["step"] = "searching"
        audit.append(("sms.number_search_started", {"country": op["country"], "number_type": op["number_type"]}))
        return
    where = await client.operation(state["operation_url"])
    if where.status in ("notStarted", "running"):
        return
    if where.status == "failed":
        raise NotifyError(f"ACS says the operation failed ({where.error or 'no reason given'}).",
                          reason="acs_operation_failed")
    if step == "searching":
        if where.resource_location is None:
            raise NotifyError("ACS finished the search without a result.", reason="acs_bad_answer")
        state["search_id"], state["number"] = await client.search_result(where.resource_location)
        audit.append(("sms.number_found", {"number": state["number"]}))
        state["operation_url"] = await client.start_purchase(state["search_id"])
        state["step"] = "purchasing"
    elif step == "purchasing":
        state["step"] = "succeeded"
        audit.append(("sms.number_purchased", {"number": state["number"]}))
    elif step == "releasing":
        state["step"] = "succeeded"
        audit.append(("sms.number_released", {"number": state["number"]}))


async def _worker(app: web.Application) -> None:
    settings = app[SETTINGS]
    client = app[SMS_ACS]
    wake = app[SMS_WAKE]
    while True:
        try:
            while await advance(app[DB], client, settings.sms_operation_poll_interval):
                pass
        except (OSError, asyncpg.PostgresError) as exc:
            # The database went away for a moment: the rows are still there, look again later.
            log.warning("SMS set-up worker: %s", type(exc).__name__)
        except Exception:  # never let one bad row stop every organisation's operations
            log.exception("SMS set-up worker")
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=min(settings.sms_operation_poll_interval, 5.0))


async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """The ACS client of the phone numbers API and the worker that follows its operations (when ACS is set up)."""
    app[SMS_WAKE] = asyncio.Event()
    settings = app[SETTINGS]
    sms = app[NOTIFIER].sms
    carrier = sms.inner if isinstance(sms, OptOutSms) else sms
    if isinstance(carrier, AcsSms):
        app[SMS_ACS] = carrier.client
    elif settings.acs_endpoint and settings.acs_access_key:
        app[SMS_ACS] = AcsClient(app[HTTP], settings.acs_endpoint, settings.acs_access_key,
                                 timeout=settings.http_timeout)
    if SMS_ACS not in app:
        yield
        return
    task = asyncio.create_task(_worker(app), name="sms-set-up-worker")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- pages -----------------------------------------------------------------------------------------------------


async def _page(request: web.Request, session: PortalSession, *, error: str | None = None,
                status: int = 200) -> web.StreamResponse:
    async with request.app[DB].acquire() as conn:
        setup = await setup_of(conn, session.organisation_id)
        numbers = await conn.fetch(Q["numbers_of"], session.organisation_id)
        links = await conn.fetch(Q["links_of"], session.organisation_id)
        operations = [operation_json(r) for r in await conn.fetch(Q["operations_of"], session.organisation_id, 10)]
        configurations = await conn.fetch(Q["live_configurations"], session.organisation_id)
    linked: dict[int, list[int]] = {}
    for link in links:
        linked.setdefault(link["number_id"], []).append(link["configuration_id"])
    context = {"session": session, "here": "sms", "setup": setup, "numbers": numbers, "linked": linked,
               "operations": operations, "configurations": configurations, "messages": MESSAGES,
               "countries": COUNTRIES, "number_types": NUMBER_TYPES, "error": error,
               "acs_ready": SMS_ACS in request.app, "done": request.query.get("done", "")[:40]}
    return no_store(aiohttp_jinja2.render_template("portal_sms.html", request, context, status=status))


def _back(session: PortalSession, done: str) -> web.Response:
    return web.Response(status=303, headers={"Location": f"/portal/{session.organisation_slug}/sms?done={done}"})


def _checked(form: Any, name: str) -> bool:
    return bool(form.get(name) == "on")


@allowed("admin")
async def sms_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/sms: consents, numbers and their FHIR base URLs, messages, operations in progress."""
    session = await access.portal_session(request, "admin")
    return await _page(request, session)


@allowed("admin")
async def set_consents(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/sms/consents: the two consent boxes (audited, with who and when)."""
    session = await access.portal_session(request, "admin")
    form = await request.post()
    terms, consent = _checked(form, "terms"), _checked(form, "consent")
    async with request.app[DB].acquire() as conn, conn.transaction():
        before = await setup_of(conn, session.organisation_id)
        await conn.execute(Q["set_consents"], session.organisation_id, terms, consent, actor(session))
        await append_audit(conn, actor(session), "sms.consents", f"organisation:{session.organisation_id}",
                           {"terms": {"before": before.terms_accepted, "after": terms},
                            "consent": {"before": before.consent_given, "after": consent}},
                           organisation_id=session.organisation_id)
    return _back(session, "consents")


@allowed("admin")
async def set_messages(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/sms/messages: which messages go out by SMS (audited)."""
    session = await access.portal_session(request, "admin")
    form = await request.post()
    chosen = {name: _checked(form, name) for name in MESSAGES}
    async with request.app[DB].acquire() as conn, conn.transaction():
        await conn.execute(Q["set_messages"], session.organisation_id, chosen["send_confirmation"],
                           chosen["send_reminder"], chosen["send_join_link"])
        await append_audit(conn, actor(session), "sms.messages", f"organisation:{session.organisation_id}", chosen,
                           organisation_id=session.organisation_id)
    return _back(session, "messages")


@allowed("admin")
async def new_number(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/sms/numbers: get a new number (search, then purchase), followed in the background."""
    session = await access.portal_session(request, "admin")
    form = await request.post()
    country, number_type = form.get("country"), form.get("number_type")
    if country not in COUNTRIES or number_type not in NUMBER_TYPES:
        return await _page(request, session, error="Choose a country and a kind of number.", status=400)
    if SMS_ACS not in request.app:
        return await _page(request, session, error="Getting a number needs Azure Communication Services set up "
                                                   "on the gateway (VISITGATE_ACS_ENDPOINT and its access key).",
                           status=409)
    async with request.app[DB].acquire() as conn, conn.transaction():
        if not (await setup_of(conn, session.organisation_id)).ready:
            return await _page(request, session, error="Tick both consent boxes and save them first.", status=409)
        op_id = await conn.fetchval(Q["start_operation"], session.organisation_id, "purchase", "requested",
                                    country, number_type, None, None, actor(session), None)
        await append_audit(conn, actor(session), "sms.number_requested", f"sms_operation:{op_id}",
                           {"country": country, "number_type": number_type}, organisation_id=session.organisation_id)
    request.app[SMS_WAKE].set()
    return _back(session, "requested")


async def _owned_number(conn: asyncpg.Connection, session: PortalSession, raw: str) -> asyncpg.Record:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise NotFound("no such number")
    row = await conn.fetchrow(Q["number_of"], int(raw), session.organisation_id)
    if row is None or row["state"] == "released":
        raise NotFound("no such number")
    return row


@allowed("admin")
async def link_number(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/sms/numbers/{number}/links: the FHIR base URLs (configurations) this number serves."""
    session = await access.portal_session(request, "admin")
    form = await request.post()
    wanted = {int(v) for v in form.getall("configuration", []) if isinstance(v, str) and v.isascii()
              and v.isdigit() and len(v) <= 18}
    async with request.app[DB].acquire() as conn, conn.transaction():
        number = await _owned_number(conn, session, request.match_info["number"])
        if number["state"] != "active":
            return await _page(request, session, error="This number is being released.", status=409)
        ours = {r["id"] for r in await conn.fetch(Q["live_configurations"], session.organisation_id)}
        if not wanted <= ours:
            raise NotFound("no such configuration")
        current = {r["configuration_id"] for r in await conn.fetch(Q["links_of"], session.organisation_id)
                   if r["number_id"] == number["id"]}
        for config_id in sorted(wanted - current):
            await conn.execute(Q["link_number"], config_id, number["id"])
        for config_id in sorted(current - wanted):
            await conn.execute(Q["unlink_configuration"], config_id, number["id"])
        await append_audit(conn, actor(session), "sms.number_links", f"sms_number:{number['id']}",
                           {"number": number["number"], "linked": sorted(wanted - current),
                            "unlinked": sorted(current - wanted)}, organisation_id=session.organisation_id)
    return _back(session, "linked")


@allowed("admin")
async def release_number(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/sms/numbers/{number}/release: give the number back to ACS (a long-running operation)."""
    session = await access.portal_session(request, "admin")
    if SMS_ACS not in request.app:
        return await _page(request, session, error="Releasing a number needs Azure Communication Services set "
                                                   "up on the gateway.", status=409)
    async with request.app[DB].acquire() as conn, conn.transaction():
        number = await _owned_number(conn, session, request.match_info["number"])
        if number["state"] != "active":
            return await _page(request, session, error="This number is already being released.", status=409)
        # Texts stop going from it now; the worker asks ACS to release it and follows the operation.
        await conn.execute(Q["set_number_state"], number["id"], "releasing")
        op_id = await conn.fetchval(Q["start_operation"], session.organisation_id, "release", "requested", "US",
                                    "tollFree", number["id"], number["number"], actor(session), None)
        await append_audit(conn, actor(session), "sms.number_release_requested", f"sms_operation:{op_id}",
                           {"number": number["number"]}, organisation_id=session.organisation_id)
    request.app[SMS_WAKE].set()
    return _back(session, "releasing")


@allowed("admin")
@serves_json
async def operations_json(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/sms/operations.json: the latest operations and their progress, for the live page."""
    session = await access.portal_session(request, "admin")
    async with request.app[DB].acquire() as conn:
        rows = await conn.fetch(Q["operations_of"], session.organisation_id, 10)
    return no_store(web.json_response({"operations": [operation_json(r) for r in rows]}))


def add_routes(app: web.Application) -> None:
    """The SMS set-up's routes and its worker."""
    app.cleanup_ctx.append(worker_ctx)
    app.router.add_get("/portal/{org}/sms", sms_page)
    app.router.add_post("/portal/{org}/sms/consents", set_consents)
    app.router.add_post("/portal/{org}/sms/messages", set_messages)
    app.router.add_post("/portal/{org}/sms/numbers", new_number)
    app.router.add_get("/portal/{org}/sms/operations.json", operations_json)
    app.router.add_post("/portal/{org}/sms/numbers/{number}/links", link_number)
    app.router.add_post("/portal/{org}/sms/numbers/{number}/release", release_number)
