"""The patient's way in: join links (/join), the patient portal launch's landing, and the lobby (/lobby).

A join link opens a page with one button and uses nothing, so an email scanner that fetches the link cannot
burn it; the button POSTs the token (in the body, never a URL) and gets a `vg_participant` session cookie and
a redirect to the clean /lobby URL. The lobby asks only for a display name, tests the devices, and waits on
the presence websocket for the clinician to admit the patient. Every patient-facing string goes through the
translation catalog (launch/i18n.py).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web

from gateway import joinlinks
from gateway.appkeys import DB, EHR, MEETINGS, SEALER, SETTINGS
from gateway.errors import CrossSiteRequest, JoinLinkInvalid, LaunchRefused, SessionExpired, VisitgateError
from gateway.events import Participant, patient_participant
from gateway.fhir import FhirClient
from gateway.web import from_our_pages

from . import store
from .appkeys import TRANSLATIONS
from .i18n import N_, load_translations
from .smart import TokenGrant

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
PATIENT_SCOPES = "launch openid fhirUser patient/Patient.read patient/Encounter.read patient/Appointment.read"
ROOM_URL = "/room"
PORTAL_MIN_SESSION = dt.timedelta(hours=2)
"""A portal launch is vouched for by the EHR just now: its session lasts at least this long, even when the
appointment's window (plus grace) has passed, because clinics run late."""

LINK_MESSAGES = {
    "link_invalid": (N_("This visit link does not work"),
                     N_("It may have been copied incompletely. Ask your clinic for a new link.")),
    "link_expired": (N_("This visit link has expired"),
                     N_("Ask your clinic for a new link.")),
    "link_revoked": (N_("This visit link has been replaced"),
                     N_("Use the newest link your clinic sent you, or ask your clinic for a new link.")),
    "link_in_use": (N_("This visit link is already in use"),
                    N_("It was opened on another device or in another browser. Continue there, or ask your "
                       "clinic for a new link.")),
}
NO_SESSION = (N_("Your visit session has ended"),
              N_("Open the link your clinic sent you again, or start the visit again from your patient portal."))
CROSS_SITE = (N_("This request was refused"),
              N_("Open the link your clinic sent you again and press the button on that page."))
LAUNCH_FAILED = (N_("Your video visit could not be started"),
                 N_("Go back to your patient portal and start the visit again. If this keeps happening, call "
                    "your clinic."))

# The strings the lobby's JavaScript shows, by key; rendered translated into <script id="i18n">.
JS_STRINGS = {
    "name_required": N_("Please enter your name."),
    "connecting": N_("Connecting to your visit…"),
    "connected": N_("Connected to your visit."),
    "reconnecting": N_("Connection lost. Reconnecting…"),
    "connection_failed": N_("We cannot reach your visit. Check your internet connection, then try again."),
    "session_ended": N_("Your visit session has ended. Open the link your clinic sent you again."),
    "camera_starting": N_("Starting your camera and microphone…"),
    "camera_ok": N_("Your camera and microphone work."),
    "audio_ok": N_("Your microphone works. You will join with audio only."),
    "camera_denied": N_("Your browser is blocking the camera or microphone. Allow them for this site in your "
                        "browser's settings (often the icon next to the address), then press Try again."),
    "camera_missing": N_("We could not find a camera or microphone. Connect one and press Try again, or "
                         "continue with audio only."),
    "camera_busy": N_("Another app is using your camera or microphone. Close it, then press Try again."),
    "camera_failed": N_("Your camera or microphone could not be started. Press Try again, or continue with "
                        "audio only."),
    "no_media": N_("This browser cannot use your camera. Open this page in Safari or Chrome."),
    "mic_hint": N_("Say something: the bar moves when your microphone hears you."),
    "tone_playing": N_("Playing a test sound…"),
    "tone_done": N_("Did you hear the sound? If not, turn up your volume."),
    "link_copied": N_("Link copied. Paste it into Safari or Chrome."),
    "link_copy_failed": N_("Could not copy the link. Press and hold the link below to copy it."),
    "waiting": N_("Your clinician will let you in."),
    "admitted": N_("You are being let in…"),
    "denied": N_("Your clinician could not let you in right now. Please contact your clinic."),
    "removed": N_("Your clinician has moved you back to the waiting room. Please wait to be let in again."),
}


def setup_join(app: web.Application) -> None:
    """Mount the join-link and lobby routes, the catalog and the patient pages' static files."""
    app[joinlinks.JOIN_KEYS] = joinlinks.JoinKeys.from_settings(app[SETTINGS])
    translations = load_translations()
    app[TRANSLATIONS] = translations
    aiohttp_jinja2.get_env(app).install_gettext_translations(  # type: ignore[attr-defined]  # added by ext.i18n
        translations, newstyle=True)
    app.router.add_get("/join", join_page, name="join")
    app.router.add_post("/join", join_exchange)
    app.router.add_get("/lobby", lobby_page, name="lobby")
    app.router.add_post("/lobby/handoff", lobby_handoff, name="lobby_handoff")
    app.router.add_static("/static/launch/", STATIC_DIR, append_version=False)


def _gettext(request: web.Request, message: str) -> str:
    return str(request.app[TRANSLATIONS].gettext(message))


def _localized(request: web.Request, exc: VisitgateError, messages: tuple[str, str]) -> VisitgateError:
    """The same error (status, reason) with a translated title and a detail that says what to do."""
    exc.title = _gettext(request, messages[0])
    exc.detail = _gettext(request, messages[1])
    return exc


@contextlib.contextmanager
def _link_errors(request: web.Request) -> Iterator[None]:
    try:
        yield
    except JoinLinkInvalid as exc:
        raise _localized(request, exc, LINK_MESSAGES.get(exc.reason, LINK_MESSAGES["link_invalid"])) from None


@contextlib.contextmanager
def patient_facing_errors(request: web.Request) -> Iterator[None]:
    """Give errors of a patient's launch a translated page that tells the patient what to do."""
    try:
        yield
    except VisitgateError as exc:
        raise _localized(request, exc, LAUNCH_FAILED) from None


def _patient_page(response: web.Response) -> web.Response:
    # Tokens and session-bearing pages: never cached, never indexed, never sent on as a Referer.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


def _require_same_origin(request: web.Request) -> None:
    """CSRF: a POST must come from one of our pages (gateway.web.from_our_pages)."""
    if not from_our_pages(request):
        raise _localized(request, CrossSiteRequest(), CROSS_SITE)


async def join_page(request: web.Request) -> web.Response:
    """GET /join?t=: check the link without using it, and show one button that POSTs it."""
    token = request.query.get("t", "")
    with _link_errors(request):
        async with request.app[DB].acquire() as conn:
            await joinlinks.verify_link(conn, request.app, token)
    context = {"token": token, "strings": _strings(request)}
    return _patient_page(aiohttp_jinja2.render_template("join.html", request, context))


async def join_exchange(request: web.Request) -> web.Response:
    """POST /join: exchange the link for this browser's session, then go to the clean /lobby URL."""
    _require_same_origin(request)
    form = await request.post()
    token = form.get("t")
    presented = request.cookies.get(joinlinks.PARTICIPANT_COOKIE)
    with _link_errors(request):
        if not isinstance(token, str):
            raise JoinLinkInvalid(reason="link_invalid")
        async with request.app[DB].acquire() as conn:
            session = await joinlinks.exchange_link(conn, request.app, token, presented)
    log.info("join link exchanged for participant %s of visit %s", session.participant_id, session.visit_id)
    return _to_lobby(request, session)


def _to_lobby(request: web.Request, session: joinlinks.ParticipantSession) -> web.Response:
    location = str(request.app.router["lobby"].url_for())
    response = web.Response(status=303, headers={"Location": location})
    joinlinks.set_session_cookie(response, request.app[SETTINGS], session)
    return _patient_page(response)


async def _session(request: web.Request) -> tuple[Participant, dt.datetime]:
    async with request.app[DB].acquire() as conn:
        found = await joinlinks.session_for_handle(conn, request.cookies.get(joinlinks.PARTICIPANT_COOKIE))
    if found is None:
        raise _localized(request, SessionExpired(), NO_SESSION)
    return found


def _strings(request: web.Request) -> dict[str, str]:
    return {key: _gettext(request, message) for key, message in JS_STRINGS.items()}


async def lobby_page(request: web.Request) -> web.Response:
    """GET /lobby: the waiting room (display name, device test, wait), for a browser with a session."""
    await _session(request)
    context = {"strings": _strings(request), "room_url": ROOM_URL}
    return _patient_page(aiohttp_jinja2.render_template("lobby.html", request, context))


async def lobby_handoff(request: web.Request) -> web.Response:
    """POST /lobby/handoff: a fresh join link for this participant, to open the visit in another browser.

    For a lobby opened inside an app's browser that cannot use the camera: the patient copies the link and
    pastes it into Safari or Chrome, where it binds to that browser's session like any new link.
    """
    _require_same_origin(request)
    participant, expires_at = await _session(request)
    async with request.app[DB].acquire() as conn:
        token = await joinlinks.issue_link(conn, request.app, participant.id, participant.visit_id,
                                           expires_at - joinlinks.GRACE)
    log.info("handoff link issued for participant %s", participant.id)
    url = joinlinks.keys_of(request.app).link_url(token)
    return _patient_page(web.json_response({"url": url}))


async def open_patient_visit(request: web.Request, config: store.LaunchConfiguration,
                             grant: TokenGrant) -> web.Response:
    """The patient portal launch's landing: the encounter's visit, its patient, a session, the lobby."""
    app = request.app
    if grant.patient is None:
        raise LaunchRefused("the portal launched without a patient", reason="no_patient")
    if grant.encounter is None:
        raise LaunchRefused("the portal launched without an encounter", reason="no_encounter")
    sealer = app[SEALER]
    now = dt.datetime.now(dt.timezone.utc)
    # Read live with the patient's own token, used for this and then forgotten.
    window_end = await joinlinks.visit_window_end(
        FhirClient(app[EHR], config.fhir_base_url, grant.access_token), grant.encounter)
    expires_at = max(joinlinks.link_expiry(window_end or joinlinks.default_not_after(now), now),
                     now + PORTAL_MIN_SESSION)
    presented = request.cookies.get(joinlinks.PARTICIPANT_COOKIE)
    async with app[DB].acquire() as conn:
        async with conn.transaction():
            visit_id, meeting_id, provider_name, patient_ref = await store.find_or_create_visit(
                conn, configuration_id=config.id,
                encounter_key=sealer.lookup("encounter", f"{config.fhir_base_url}|{grant.encounter}"),
                encounter_ref=sealer.seal(grant.encounter, "visits.encounter_ref"),
                patient_ref=sealer.seal(grant.patient, "visits.patient_ref"),
                meeting_provider=config.meeting_provider)
            if patient_ref is not None and sealer.unseal(patient_ref, "visits.patient_ref") != grant.patient:
                raise LaunchRefused("the encounter belongs to another patient", reason="patient_mismatch")
            participant_id = await patient_participant(conn, visit_id)
            current = await joinlinks.session_for_handle(conn, presented)
            if current is not None and current[0].id == participant_id and presented is not None:
                session = joinlinks.ParticipantSession(handle=presented, participant_id=participant_id,
                                                       visit_id=visit_id, expires_at=current[1])
            else:
                session = await joinlinks.create_session(conn, participant_id, visit_id, expires_at)
        if meeting_id is None:
            meeting = await app[MEETINGS][provider_name].create_meeting(str(visit_id))
            await store.set_meeting(conn, visit_id, meeting.meeting_id)
    log.info("patient launch opened visit %s (configuration %s)", visit_id, config.id)
    return _to_lobby(request, session)
