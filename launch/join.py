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
from gateway.appkeys import DB, EHR, SETTINGS
from gateway.errors import JoinLinkInvalid, LaunchRefused, SessionExpired, VisitgateError
from gateway.fhir import FhirClient
from gateway.participants import Participant, patient_participant
from gateway.web import serves_json

from . import store
from .appkeys import CATALOGS
from .i18n import DEFAULT_LOCALE, N_, Catalogs
from .page_strings import for_page
from .smart import TokenGrant
from .visits import open_visit

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
    "visit_ended": (N_("This visit has ended"),
                    N_("The clinician ended the visit, or its time is over. If you still need care, contact your "
                       "clinic.")),
    "link_in_use": (N_("This visit link is already in use"),
                    N_("It was opened on another device or in another browser. Continue there, or ask your "
                       "clinic for a new link.")),
}
NO_SESSION = (N_("Your visit session has ended"),
              N_("Open the link your clinic sent you again, or start the visit again from your patient portal."))
LAUNCH_FAILED = (N_("Your video visit could not be started"),
                 N_("Go back to your patient portal and start the visit again. If this keeps happening, call "
                    "your clinic."))


def setup_join(app: web.Application) -> None:
    """Load the join-link keys and the translation catalog (the routes are in launch.routes.ROUTES)."""
    app[joinlinks.JOIN_KEYS] = joinlinks.JoinKeys.from_settings(app[SETTINGS])
    catalogs = Catalogs.load()
    app[CATALOGS] = catalogs
    # The default language for templates rendered without a page context (i18n.page_context gives theirs).
    aiohttp_jinja2.get_env(app).install_gettext_translations(  # type: ignore[attr-defined]  # added by ext.i18n
        catalogs.translations(DEFAULT_LOCALE), newstyle=True)


def _gettext(request: web.Request, message: str) -> str:
    catalogs = request.app[CATALOGS]
    return str(catalogs.translations(catalogs.locale_for(request)).gettext(message))


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


async def join_page(request: web.Request) -> web.Response:
    """GET /join?t=: check the link without using it, and show one button that POSTs it."""
    token = request.query.get("t", "")
    with _link_errors(request):
        async with request.app[DB].acquire() as conn:
            await joinlinks.verify_link(conn, request.app, token)
    context = {"token": token, **for_page(request, "join")}
    return _patient_page(aiohttp_jinja2.render_template("join.html", request, context))


async def join_exchange(request: web.Request) -> web.Response:
    """POST /join: exchange the link for this browser's session, then go to the clean /lobby URL."""
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


async def lobby_page(request: web.Request) -> web.Response:
    """GET /lobby: the waiting room (display name, device test, wait), for a browser with a session."""
    await _session(request)
    context = {"room_url": ROOM_URL, **for_page(request, "lobby")}
    return _patient_page(aiohttp_jinja2.render_template("lobby.html", request, context))


@serves_json
async def lobby_handoff(request: web.Request) -> web.Response:
    """POST /lobby/handoff: a fresh join link for this participant, to open the visit in another browser.

    For a lobby opened inside an app's browser that cannot use the camera: the patient copies the link and
    pastes it into Safari or Chrome, where it binds to that browser's session like any new link.
    """
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
    now = dt.datetime.now(dt.timezone.utc)
    # Read live with the patient's own token, used for this and then forgotten.
    window_end = await joinlinks.visit_window_end(
        FhirClient(app[EHR], config.fhir_base_url, grant.access_token), grant.encounter)
    expires_at = max(joinlinks.link_expiry(window_end or joinlinks.default_not_after(now), now),
                     now + PORTAL_MIN_SESSION)
    presented = request.cookies.get(joinlinks.PARTICIPANT_COOKIE)
    async with app[DB].acquire() as conn:
        visit = await open_visit(conn, app, config, grant.encounter, grant.patient, same_patient=True)
        if window_end is not None:  # the visit ends after its window (presence.visit_end)
            await joinlinks.note_window_end(conn, visit.id, window_end)
        async with conn.transaction():
            participant_id = await patient_participant(conn, visit.id)
            current = await joinlinks.session_for_handle(conn, presented)
            if current is not None and current[0].id == participant_id and presented is not None:
                session = joinlinks.ParticipantSession(handle=presented, participant_id=participant_id,
                                                       visit_id=visit.id, expires_at=current[1])
            else:
                session = await joinlinks.create_session(conn, participant_id, visit.id, expires_at)
    log.info("patient launch opened visit %s (configuration %s)", visit.id, config.id)
    return _to_lobby(request, session)
