"""Routes of the launch part: /launch, /launch/patient, /launch/callback, the provider view, and (from
join.py) join links and the lobby."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from gateway import joinlinks
from gateway.appkeys import DB, EHR, MEETINGS, SEALER, SETTINGS, SIGNING_KEY
from gateway.ehr import fhir_base_url
from gateway.errors import (FhirError, LaunchRefused, SessionExpired, StateInvalid, UnknownIssuer,
                            UpstreamError)
from gateway.fhir import FhirClient, parse_reference
from gateway.meetings import Meeting
from gateway.security import new_token, pkce_challenge, token_hash
from gateway.sessions import renew_after
from gateway.web import add_templates, from_our_pages

from . import store
from .appkeys import SMART
from .join import PATIENT_SCOPES, open_patient_visit, patient_facing_errors, setup_join
from .room import ROOM_SIZE, no_store, setup_room
from .smart import Client, SmartClient, TokenGrant

log = logging.getLogger(__name__)

_MAX_PARAM = 2048
PURGE_EVERY = 300.0


def setup(app: web.Application) -> None:
    """Mount the launch routes and their resources on the gateway."""
    add_templates(app, "launch")
    app.cleanup_ctx.append(_smart_client)
    app.cleanup_ctx.append(_purge_expired)
    app.router.add_get("/launch", launch_start, name="launch")
    app.router.add_get("/launch/patient", patient_launch_start, name="patient_launch")
    app.router.add_get("/launch/callback", launch_callback, name="launch_callback")
    app.router.add_get("/provider/{handle}", provider_view, name="provider_view")
    app.router.add_post("/provider/{handle}/renew", renew_handle, name="provider_renew")
    from .invites import setup_invites  # "Send the link" from the provider view
    setup_invites(app)
    setup_join(app)
    setup_room(app)


async def _smart_client(app: web.Application) -> AsyncIterator[None]:
    app[SMART] = SmartClient(app[EHR], app[SIGNING_KEY], app[SETTINGS].redirect_uri)
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
    # Looked up in the one spelling configurations are stored in (`…/fhir/` is `…/fhir`); the EHR's own
    # spelling still goes to its authorize endpoint as `aud`.
    base = fhir_base_url(iss)
    found = None
    if base is not None:
        async with request.app[DB].acquire() as conn:
            found = await store.start_launch(conn, token_hash(state), base, settings.launch_state_ttl, audience)
    if base is None or found is None:
        raise UnknownIssuer("This EHR's FHIR server is not approved for virtual visits here. Ask your "
                            "administrator to register and approve it.")
    client_id, client_auth, scopes = found
    if audience == "patient":
        scopes = PATIENT_SCOPES
    smart = request.app[SMART]
    conf = await smart.discover(base)
    sealer = request.app[SEALER]
    url = smart.authorize_url(
        conf, Client(client_id, client_auth, None), iss=iss, launch=launch, scopes=scopes, state=state,
        code_challenge=pkce_challenge(sealer.launch_secret("pkce", state)),
        nonce=sealer.launch_secret("nonce", state))
    # Returned, not raised: the raised form measured far slower on this hot path.
    return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


async def launch_callback(request: web.Request) -> web.Response:
    """SMART launch, second leg: check state and issuer, exchange the code, open the visit.

    The state says whose launch it was: a clinician's goes on to the provider view, a patient's (from the
    portal) to the lobby.
    """
    state = _param(request, "state")
    if state is None:
        raise StateInvalid("The sign-in answer carries no state. Start the visit again from the EHR.",
                           reason="missing_state")
    app = request.app
    async with app[DB].acquire() as conn:
        taken = await store.take_launch_state(conn, token_hash(state))
    if taken is None:
        raise StateInvalid("This sign-in answer is unknown or was already used. Start the visit again from "
                           "the EHR.")
    fresh, config = taken
    if config.audience == "patient":
        with patient_facing_errors(request):
            grant, _fhir_user = await _complete_sign_in(request, state, fresh, config)
            return await open_patient_visit(request, config, grant)
    grant, fhir_user = await _complete_sign_in(request, state, fresh, config)
    if grant.encounter is None:
        raise LaunchRefused("The EHR launched without an encounter. Start the visit from the appointment.",
                            reason="no_encounter")
    settings = app[SETTINGS]
    sealer = app[SEALER]
    # The session's own key is never shown; the URL carries a short-lived handle the page renews.
    handle = new_token()
    async with app[DB].acquire() as conn:
        visit_id, meeting_id, provider_name = await store.find_or_create_visit_with_session(
            conn, configuration_id=config.id,
            encounter_key=sealer.lookup("encounter", f"{config.fhir_base_url}|{grant.encounter}"),
            encounter_ref=sealer.seal(grant.encounter, "visits.encounter_ref"),
            patient_ref=sealer.seal(grant.patient, "visits.patient_ref") if grant.patient else None,
            meeting_provider=config.meeting_provider, session_hash=token_hash(new_token()), fhir_user=fhir_user,
            access_token=sealer.seal(grant.access_token, "provider_sessions.access_token"),
            token_ttl=grant.expires_in, scopes=" ".join(sorted(grant.scopes)),
            need_patient_banner=grant.need_patient_banner, smart_style_url=grant.smart_style_url,
            session_ttl=settings.provider_session_ttl, handle_hash=token_hash(handle),
            handle_ttl=settings.provider_handle_ttl)
        if meeting_id is None:
            meeting = await app[MEETINGS][provider_name].create_meeting(str(visit_id))
            await store.set_meeting(conn, visit_id, meeting.meeting_id)
    log.info("provider launch opened visit %s (configuration %s)", visit_id, config.id)
    location = str(app.router["provider_view"].url_for(handle=handle))
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


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


def _patient_name(patient: dict[str, Any]) -> str:
    names = patient.get("name")
    if not isinstance(names, list):
        return "(no name on record)"
    official = [n for n in names if isinstance(n, dict) and n.get("use") in (None, "official", "usual")]
    for name in official or [n for n in names if isinstance(n, dict)]:
        if isinstance(name.get("text"), str):
            return str(name["text"])
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        family = name.get("family")
        text = " ".join([*given, family if isinstance(family, str) else ""]).strip()
        if text:
            return text
    return "(no name on record)"


async def _read_or_note(fhir: FhirClient, resource_type: str, logical_id: str | None,
                        problems: list[str]) -> dict[str, Any] | None:
    if logical_id is None:
        return None
    try:
        return await fhir.read(resource_type, logical_id)
    except FhirError as exc:
        log.info("provider view could not read %s: %s", resource_type, exc.reason)
        problems.append(exc.reason)
        return None


async def renew_handle(request: web.Request) -> web.Response:
    """POST /provider/{handle}/renew: a fresh handle for an open provider page (view or room), as JSON.

    A handle works for provider_handle_ttl seconds; the page asks for the next one a third of the way in and
    replaces its URL, so the handles left in the browser's history expire within minutes while the page
    stays usable for the whole session. The old handle keeps working until its own expiry.
    """
    if not from_our_pages(request):
        return no_store(web.json_response({"error": "cross_site"}, status=403))
    handle = request.match_info["handle"]
    ttl = request.app[SETTINGS].provider_handle_ttl
    fresh = new_token()
    expires_in = None
    if len(handle) <= 128:
        async with request.app[DB].acquire() as conn:
            expires_in = await store.renew_provider_handle(conn, token_hash(handle), token_hash(fresh), ttl)
    if expires_in is None:
        return no_store(web.json_response({"error": "session_expired", "message": SessionExpired.title},
                                           status=401))
    return no_store(web.json_response({"handle": fresh, "expires_in": round(expires_in),
                                        "renew_in": renew_after(ttl, expires_in)}))


async def provider_view(request: web.Request) -> web.Response:
    """The clinician's page for a visit: the appointment, the patient banner, who is connected."""
    handle = request.match_info["handle"]
    app = request.app
    if len(handle) > 128:
        raise SessionExpired("This visit link is not valid.")
    async with app[DB].acquire() as conn:
        session = await store.get_provider_session(conn, token_hash(handle))
    if session is None:
        raise SessionExpired("This visit page has expired. Open the visit again from the EHR.")
    sealer = app[SEALER]
    fhir = FhirClient(app[EHR], session.fhir_base_url,
                      sealer.unseal(session.access_token, "provider_sessions.access_token"))
    encounter_id = sealer.unseal(session.encounter_ref, "visits.encounter_ref")
    patient_id = sealer.unseal(session.patient_ref, "visits.patient_ref") if session.patient_ref else None
    problems: list[str] = []
    # Patient details are read live from FHIR for this page only; nothing of them is kept.
    encounter, patient = await asyncio.gather(
        _read_or_note(fhir, "Encounter", encounter_id, problems),
        _read_or_note(fhir, "Patient", patient_id if session.need_patient_banner else None, problems))
    appointment = None
    if encounter is not None:
        listed = encounter.get("appointment")
        refs: list[Any] = listed if isinstance(listed, list) else []
        appointment_id = next((parse_reference(r.get("reference"), "Appointment") for r in refs
                               if isinstance(r, dict)), None)
        appointment = await _read_or_note(fhir, "Appointment", appointment_id, problems)
    meeting = Meeting(session.meeting_provider, session.meeting_id) if session.meeting_id else None
    context = {
        "visit_id": str(session.visit_id),
        "environment": session.environment,
        "banner": session.need_patient_banner,
        "patient": patient and {
            "name": _patient_name(patient),
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
        "room_size": ROOM_SIZE,
        "renew_in": renew_after(app[SETTINGS].provider_handle_ttl, session.handle_expires_in),
    }
    response = aiohttp_jinja2.render_template("provider.html", request, context)
    response.headers["Cache-Control"] = "no-store"
    return response
