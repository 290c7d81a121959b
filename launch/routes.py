"""Routes of the launch part: /launch, /launch/patient, /launch/callback and the provider view, and the one
route table (ROUTES) of every launch URL, join links, the lobby, the room and invites included."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import aiohttp_jinja2
import asyncpg
from aiohttp import web
from cryptography.exceptions import InvalidTag

from gateway import joinlinks, near_miss, webhook_events
from gateway.appkeys import DB, EHR, SEALER, SETTINGS, SIGNING_KEY
from gateway.configurations import PATIENT_SCOPES
from gateway.ehr import fhir_base_url
from gateway.errors import (DatabaseUnavailable, LaunchRefused, SessionExpired, StateInvalid, UnknownIssuer,
                            UpstreamError, VisitgateError)
from gateway.fhir import FhirClient
from gateway.meetings import Meeting
from gateway.teams import PROVIDER as TEAMS
from gateway.security import new_token, pkce_challenge, token_hash
from gateway.smart import department_of
from gateway.sessions import browser_hashes, browser_keys, renew_after
from gateway.web import add_templates, serves_json

from . import store
from .appkeys import APPROVED_BASES, SMART
from .device_test import device_test_page
from .invites import invitations, invite, resend, revoke
from .join import (LOGO_URL, STATIC_DIR, join_exchange, join_page, lobby_handoff, lobby_page, lobby_state,
                   open_patient_visit, organisation_logo, patient_facing_errors, setup_join, short_join_page)
from .page_strings import for_page
from .queue import queue_page, queue_patients
from .room import ROOM_SIZE, no_store, participant_room, provider_room
from .sessions import browser_key_for_launch, keep_browser_key, provider_session, warn_if_cookies_cannot_stick
from .smart import Client, SmartClient, TokenGrant
from .teams import ROUTES as TEAMS_ROUTES
from .teams import provider_context as teams_context
from .teams import started_meetings_ctx
from .view_reads import STARTED_READS, patient_name, reads_for, started_reads_ctx
from .visits import open_visit

log = logging.getLogger(__name__)

_MAX_PARAM = 2048
PURGE_EVERY = 300.0
_LAUNCH_REF = "launch_states.launch_ref"


def setup(app: web.Application) -> None:
    """Mount the launch routes (ROUTES, at the end of this module) and their resources on the gateway."""
    add_templates(app, "launch")
    warn_if_cookies_cannot_stick(app[SETTINGS].public_url)
    setup_join(app)
    app.cleanup_ctx.append(_smart_client)
    app.cleanup_ctx.append(started_reads_ctx)
    app.cleanup_ctx.append(started_meetings_ctx)
    app.cleanup_ctx.append(_purge_expired)
    app.router.add_routes(ROUTES)
    app.router.add_routes(TEAMS_ROUTES)  # the Microsoft 365 sign-in's callback (launch/teams.py)


async def _smart_client(app: web.Application) -> AsyncIterator[None]:
    app[SMART] = SmartClient(app[EHR], app[SIGNING_KEY], app[SETTINGS].redirect_uri)
    app[APPROVED_BASES] = store.ApprovedBases()
    yield


async def _purge_expired(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY)
            try:
                async with app[DB].acquire() as conn:
                    await store.purge_expired(conn)
                    await joinlinks.purge_expired(conn)
            except Exception:  # a failed purge is retried next round; it must not end the loop
                log.exception("purging expired launch state failed")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if len(value) > _MAX_PARAM:
        raise LaunchRefused(f"the `{name}` parameter is too long", reason=f"invalid_{name}")
    return value


async def launch_start(request: web.Request) -> web.Response:
    """EHR launch, first leg: vet `iss`, keep a single-use state, send the browser to the EHR's authorize."""
    return await _start(request, "provider")


async def patient_launch_start(request: web.Request) -> web.Response:
    """Patient portal launch, first leg: as the EHR launch, with patient scopes."""
    with patient_facing_errors(request):
        return await _start(request, "patient")


async def _start(request: web.Request, audience: str) -> web.Response:
    iss = _param(request, "iss")
    launch = _param(request, "launch")
    if iss is None:
        raise LaunchRefused("The EHR did not say which FHIR server it is (no `iss`).", reason="missing_iss")
    if launch is None:
        raise LaunchRefused("The EHR did not send a launch context (no `launch`). Start the visit from the "
                            "appointment in the EHR.", reason="missing_launch")
    settings = request.app[SETTINGS]
    state = new_token()
    browser = browser_key_for_launch(request)
    # Looked up in the one spelling configurations are stored in (`…/fhir/` is `…/fhir`); the EHR's own
    # spelling still goes to its authorize endpoint as `aud`.
    base = fhir_base_url(iss)
    found = None
    if base is not None:
        async with request.app[DB].acquire() as conn:
            found = await store.start_launch(conn, token_hash(state), base, settings.launch_state_ttl, audience,
                                             token_hash(browser.key), request.app[SEALER].seal(launch, _LAUNCH_REF),
                                             department_of(request.query.get("department")))
    if base is None or found is None or found.status != "approved":
        await _refuse_launch(request, found)
    client_id, client_auth, scopes = found.client_id, found.client_auth, found.scopes
    if audience == "patient":
        scopes = PATIENT_SCOPES
    smart = request.app[SMART]
    try:
        conf = await smart.discover(base)
    except VisitgateError as exc:
        # The EHR of an approved configuration fails before the sign-in: its admins see it in the error report.
        await count_launch_failure(request.app, found.configuration_id, exc.reason)
        raise
    sealer = request.app[SEALER]
    url = smart.authorize_url(
        conf, Client(client_id, client_auth, None), iss=iss, launch=launch, scopes=scopes, state=state,
        code_challenge=pkce_challenge(sealer.launch_secret("pkce", state)),
        nonce=sealer.launch_secret("nonce", state))
    # Returned, not raised: the raised form measured far slower on this hot path.
    response = web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
    # The launch is bound to this browser: the callback must bring the same key back.
    keep_browser_key(response, browser, settings.provider_session_ttl)
    return response


async def launch_callback(request: web.Request) -> web.Response:
    """SMART launch, second leg: check state, browser and issuer, exchange the code, open the visit.

    The state says whose launch it was: a clinician's goes on to the provider view, a patient's (from the
    portal) to the lobby.
    """
    state = _param(request, "state")
    if state is None:
        raise StateInvalid("The sign-in answer carries no state. Start the visit again from the EHR.",
                           reason="missing_state")
    app = request.app
    held = browser_hashes(browser_keys(request))
    pending = None
    async with app[DB].acquire() as conn:
        taken = await store.take_launch_state(conn, token_hash(state), held)
        if taken is None:
            pending = await store.pending_launch(conn, token_hash(state))
    if taken is None:
        if pending is None:
            raise StateInvalid("This sign-in answer is unknown or was already used. Start the visit again from "
                               "the EHR.")
        if not held:
            # Nothing tells this browser from any other that got hold of the URL: not an answer to finish
            # here. In a window of its own the browser keeps the cookie, and the launch can start again.
            return _continue_in_new_window(request, pending)
        raise StateInvalid("This sign-in was started in another browser or window. Start the visit again "
                           "from the EHR.", reason="other_browser")
    try:
        return await _finish_launch(request, state, taken)
    except VisitgateError as exc:
        # The configuration is known from here on: its organisation's admins (the error report) and its
        # systems (webhooks) may want to hear of the failure.
        await count_launch_failure(app, taken.config.id, exc.reason)
        await webhook_events.launch_failed(app[DB], taken.config.id, exc.reason)
        raise


async def count_launch_failure(app: web.Application, configuration_id: int, reason: str) -> None:
    """Count a configuration's failed launch for the error report (never raises: the person's error page
    matters more than the count)."""
    try:
        async with app[DB].acquire() as conn:
            await store.count_launch_refusal(conn, configuration_id, reason, app[SETTINGS].time_zone)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, DatabaseUnavailable) as exc:
        log.warning("launch failure not counted (%s)", type(exc).__name__)


async def _finish_launch(request: web.Request, state: str, taken: store.TakenLaunch) -> web.Response:
    app = request.app
    fresh, config = taken.fresh, taken.config
    if config.audience == "patient":
        with patient_facing_errors(request):
            grant, _fhir_user = await _complete_sign_in(request, state, fresh, config)
            return await open_patient_visit(request, config, grant)
    grant, fhir_user = await _complete_sign_in(request, state, fresh, config)
    if grant.encounter is None:
        raise LaunchRefused("The EHR launched without an encounter. Start the visit from the appointment.",
                            reason="no_encounter")
    # The session's own key is never shown; the URL carries a short-lived handle the page renews.
    handle = new_token()
    handle_hash = token_hash(handle)
    # The view's FHIR reads start now, so the work below and the redirect happen while the EHR answers.
    started = app[STARTED_READS]
    started.start(handle_hash, FhirClient(app[EHR], config.fhir_base_url, grant.access_token), grant.encounter,
                  grant.patient if grant.need_patient_banner else None)
    try:
        visit = await _open_provider_visit(app, config, grant, fhir_user, taken.browser_hash, handle_hash,
                                           grant.department or taken.department)
    except BaseException:
        started.drop(handle_hash)
        raise
    log.info("provider launch opened visit %s (configuration %s)", visit.id, config.id)
    location = str(app.router["provider_view"].url_for(handle=handle))
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def _open_provider_visit(app: web.Application, config: store.LaunchConfiguration, grant: TokenGrant,
                               fhir_user: str | None, browser_hash: bytes, handle_hash: bytes,
                               department: str | None) -> store.Visit:
    """The encounter's visit and meeting, and the clinician's session in it with its first handle."""
    settings = app[SETTINGS]
    sealer = app[SEALER]
    assert grant.encounter is not None
    async with app[DB].acquire() as conn:
        visit = await open_visit(conn, app, config, grant.encounter, grant.patient, department=department,
                                 fhir_user=fhir_user)
        await store.create_provider_session(
            conn, visit_id=visit.id, session_hash=token_hash(new_token()), fhir_user=fhir_user,
            access_token=sealer.seal(grant.access_token, "provider_sessions.access_token"),
            token_ttl=grant.expires_in, scopes=" ".join(sorted(grant.scopes)),
            need_patient_banner=grant.need_patient_banner, smart_style_url=grant.smart_style_url,
            session_ttl=settings.provider_session_ttl, browser_hash=browser_hash,
            handle_hash=handle_hash, handle_ttl=settings.provider_handle_ttl)
    return visit


# Per status of a configuration that is not in force: what the person at the EHR is told.
_NOT_IN_FORCE = {
    "pending": "This EHR's FHIR server is registered for virtual visits but not approved yet. The approver named "
               "in the configuration portal must sign in to the EHR and approve it first.",
    "rejected": "This EHR's FHIR server was registered for virtual visits, but its approver rejected it. Ask your "
                "administrator to correct the configuration in the portal.",
    "retired": "Virtual visits from this EHR's FHIR server have been switched off here (its configuration was "
               "retired). Ask your administrator if this is unexpected.",
}


async def _refuse_launch(request: web.Request, found: store.LaunchStart | None) -> NoReturn:
    """Refuse a launch whose `iss` is unknown or not in force, counted for the error report; no request goes
    out to the EHR."""
    status = found.status if found is not None else None
    reason = f"configuration_{status}" if status in _NOT_IN_FORCE else "unknown_iss"
    # An unknown `iss` close to an approved URL is counted against that configuration, for its admins only;
    # the person at the EHR gets the same answer as for any unknown `iss`.
    miss = None
    if found is None:
        iss = request.query.get("iss", "")
        miss = near_miss.nearest(iss, await request.app[APPROVED_BASES].current(request.app[DB]))
    zone = request.app[SETTINGS].time_zone
    async with request.app[DB].acquire() as conn:
        if miss is not None:
            await store.count_launch_refusal(conn, miss.configuration_id, "iss_near_miss", zone)
            await store.note_near_miss(conn, miss, zone)
        else:
            await store.count_launch_refusal(conn, found.configuration_id if found else None, reason, zone)
    if status in _NOT_IN_FORCE:
        raise UnknownIssuer(_NOT_IN_FORCE[status], reason=reason)
    raise UnknownIssuer("This EHR's FHIR server is not approved for virtual visits here. Ask your "
                        "administrator to register and approve it.")


def _continue_in_new_window(request: web.Request, pending: store.PendingLaunch) -> web.Response:
    """The page for a callback that brought no browser key: the launch again, in a window of its own.

    The state stays for the browser that has the key, if this one was not it.
    """
    launch = None
    if pending.launch_ref is not None:
        with contextlib.suppress(ValueError, InvalidTag):
            launch = request.app[SEALER].unseal(pending.launch_ref, _LAUNCH_REF)
    if launch is None:  # a state from before launches were bound: nothing to start again with
        raise StateInvalid("This sign-in answer cannot be used here. Start the visit again from the EHR.")
    start = "patient_launch" if pending.audience == "patient" else "launch"
    restart = request.app.router[start].url_for().with_query(iss=pending.fhir_base_url, launch=launch)
    log.info("launch callback without the browser's cookie: offering a new window")
    response = aiohttp_jinja2.render_template("launch_new_window.html", request, {
        "restart_url": str(restart), "reason": "no_browser_cookie"}, status=400)
    return no_store(response)


async def _complete_sign_in(request: web.Request, state: str, fresh: bool,
                            config: store.LaunchConfiguration) -> tuple[TokenGrant, str | None]:
    """Both audiences' second leg up to the grant: freshness, issuer, code exchange, id_token."""
    app = request.app
    if not fresh:
        raise StateInvalid("This sign-in took too long. Start the visit again from the EHR.",
                           reason="expired_state")
    if not config.approved:
        raise UnknownIssuer("This EHR's FHIR server is no longer approved for virtual visits here.")
    error = _param(request, "error")
    if error == "access_denied":
        # The user's own choice at the EHR (or the EHR's policy for them), not a fault of anyone's.
        raise LaunchRefused("The sign-in was declined at the EHR, so the visit was not opened. To open it, "
                            "start the visit again from the EHR and allow access.", reason="access_denied")
    if error is not None:
        said = error if error.isidentifier() else "unknown"
        raise UpstreamError(f"The EHR refused the sign-in ({said}).", reason="authorize_refused")
    smart: SmartClient = app[SMART]
    conf = await smart.discover(config.fhir_base_url)
    returned_iss = _param(request, "iss")
    if (returned_iss is not None or conf.iss_parameter_supported) and returned_iss != conf.issuer:
        raise LaunchRefused("The sign-in answer names another issuer than the EHR that started it.",
                            reason="iss_mismatch")
    code = _param(request, "code")
    if code is None:
        raise LaunchRefused("The sign-in answer carries no authorization code.", reason="missing_code")
    sealer = app[SEALER]
    secret = sealer.unseal(config.client_secret, "configurations.client_secret") if config.client_secret else None
    client = Client(config.client_id, config.client_auth, secret)
    grant = await smart.exchange_code(conf, client, code, sealer.launch_secret("pkce", state))
    fhir_user: str | None = None
    scopes = PATIENT_SCOPES if config.audience == "patient" else config.scopes
    if "openid" in scopes.split():
        if grant.id_token is None:
            raise UpstreamError("The EHR did not say who signed in (no id_token).", reason="id_token_missing")
        claims = await smart.validate_id_token(conf, grant.id_token, config.client_id,
                                               sealer.launch_secret("nonce", state))
        fhir_user = claims.get("fhirUser") if isinstance(claims.get("fhirUser"), str) else claims["sub"]
    return grant, fhir_user


def _when(start: object, end: object) -> str | None:
    """"09:00–09:20" in the appointment's own time zone (the EHR's), or None when start is unreadable."""
    def parse(value: object) -> dt.datetime | None:
        try:
            return dt.datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None

    first, last = parse(start), parse(end)
    if first is None:
        return None
    text = f"{first:%Y-%m-%d %H:%M}"
    return f"{text}–{last:%H:%M}" if last is not None and last.date() == first.date() else text


@serves_json
async def renew_handle(request: web.Request) -> web.Response:
    """POST /provider/{handle}/renew: a fresh handle for an open provider page (view or room), as JSON.

    A handle works for provider_handle_ttl seconds; the page asks for the next one a third of the way in and
    replaces its URL, so the handles left in the browser's history expire within minutes while the page
    stays usable for the whole session. The old handle keeps working until its own expiry.
    """
    ttl = request.app[SETTINGS].provider_handle_ttl
    fresh = new_token()
    try:
        await provider_session(request)
        async with request.app[DB].acquire() as conn:
            expires_in = await store.renew_provider_handle(conn, token_hash(request.match_info["handle"]),
                                                           token_hash(fresh), ttl,
                                                           browser_hashes(browser_keys(request)))
    except SessionExpired:
        expires_in = None
    if expires_in is None:
        return no_store(web.json_response({"error": "session_expired", "message": SessionExpired.title},
                                           status=401))
    return no_store(web.json_response({"handle": fresh, "expires_in": round(expires_in),
                                        "renew_in": renew_after(ttl, expires_in)}))


async def provider_view(request: web.Request) -> web.Response:
    """The clinician's page for a visit: the appointment, the patient banner, who is connected."""
    session = await provider_session(request)
    handle = request.match_info["handle"]
    app = request.app
    sealer = app[SEALER]
    fhir = FhirClient(app[EHR], session.fhir_base_url,
                      sealer.unseal(session.access_token, "provider_sessions.access_token"))
    encounter_id = sealer.unseal(session.encounter_ref, "visits.encounter_ref")
    patient_id = sealer.unseal(session.patient_ref, "visits.patient_ref") if session.patient_ref else None
    wanted_patient = patient_id if session.need_patient_banner else None
    # Patient details are read live from FHIR for this page only (started by the launch's callback when it
    # was this process's); nothing of them is kept.
    reads = await reads_for(app, token_hash(handle), fhir, encounter_id, wanted_patient)
    encounter, patient, appointment, problems = reads.encounter, reads.patient, reads.appointment, reads.problems
    # Without the Encounter (or the Patient the banner needs) nothing on this page vouches for who the
    # patient is: the clinician must hear so before admitting anyone.
    unverified = encounter is None or (wanted_patient is not None and patient is None)
    window_end = joinlinks.appointment_end(appointment)
    if window_end is not None:  # a time, not patient data: the visit ends after it (presence.visit_end)
        async with app[DB].acquire() as conn:
            await joinlinks.note_window_end(conn, session.visit_id, window_end)
    meeting = Meeting(session.meeting_provider, session.meeting_id) if session.meeting_id else None
    teams_view = await teams_context(app, session) if session.meeting_provider == TEAMS else None
    context = {
        "teams": teams_view,
        "visit_id": str(session.visit_id),
        "environment": session.environment,
        "banner": session.need_patient_banner,
        "unverified": unverified,
        "patient": patient and {
            "name": patient_name(patient),
            "birth_date": patient.get("birthDate") if isinstance(patient.get("birthDate"), str) else None,
            "gender": patient.get("gender") if isinstance(patient.get("gender"), str) else None,
        },
        "appointment": appointment and {
            "start": appointment.get("start"), "end": appointment.get("end"),
            "when": _when(appointment.get("start"), appointment.get("end")),
            "description": appointment.get("description"),
            "status": appointment.get("status"),
        },
        "encounter_status": encounter.get("status") if encounter else None,
        "problems": sorted(set(problems)),
        "meeting": meeting,
        "room_url": str(app.router["provider_room"].url_for(handle=handle)),
        "queue_url": str(app.router["provider_queue"].url_for(handle=handle)),
        "room_size": ROOM_SIZE,
        "renew_in": renew_after(app[SETTINGS].provider_handle_ttl, session.handle_expires_in),
        **for_page(request, "provider"),
    }
    response = aiohttp_jinja2.render_template("provider.html", request, context)
    response.headers["Cache-Control"] = "no-store"
    return response


ROUTES: list[web.AbstractRouteDef] = [
    # The SMART launches: the clinician's from the EHR, the patient's from the portal, and their callback.
    web.get("/launch", launch_start, name="launch"),
    web.get("/launch/patient", patient_launch_start, name="patient_launch"),
    web.get("/launch/callback", launch_callback, name="launch_callback"),
    # The clinician's pages: the handle in the path, and the browser's key in its cookie (launch.sessions).
    web.get("/provider/{handle}", provider_view, name="provider_view"),
    web.post("/provider/{handle}/renew", renew_handle, name="provider_renew"),
    web.post("/provider/{handle}/invite", invite, name="provider_invite"),
    web.get("/provider/{handle}/invitations", invitations, name="provider_invitations"),
    web.post("/provider/{handle}/invite/{participant}/revoke", revoke, name="provider_invite_revoke"),
    web.post("/provider/{handle}/invite/{participant}/resend", resend, name="provider_invite_resend"),
    web.get("/provider/{handle}/room", provider_room, name="provider_room"),
    web.get("/provider/{handle}/queue", queue_page, name="provider_queue"),
    web.get("/provider/{handle}/queue/patients", queue_patients, name="provider_queue_patients"),
    # The patient's and guests' way in: join links, the lobby, the room.
    web.get("/j/{code}", short_join_page, name="short_join"),
    web.get("/join", join_page, name="join"),
    web.post("/join", join_exchange),
    web.get("/lobby", lobby_page, name="lobby"),
    web.get("/lobby/state", lobby_state, name="lobby_state"),
    web.post("/lobby/handoff", lobby_handoff, name="lobby_handoff"),
    web.get("/room", participant_room, name="room"),
    web.get(LOGO_URL, organisation_logo, name="organisation_logo"),
    # The device test a patient opens before any visit (Epic's device-test record), with no link or account.
    web.get("/device-test", device_test_page, name="device_test"),
    web.static("/static/launch/", STATIC_DIR, append_version=False),
]
"""Every URL of the launch part, in one place."""
