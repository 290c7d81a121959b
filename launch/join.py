"""The patient's way in: join links (/j/{code}, and /join?t= for signed links sent before short codes), the
patient portal launch's landing, and the lobby (/lobby).

A join link opens a page with one button and uses nothing, so an email scanner that fetches the link cannot
burn it; the button POSTs the code (in the body) and gets a `vg_participant` session cookie and a redirect to
the clean /lobby URL. Opened on another device, the link moves the session there (gateway.joinlinks); the old
browser's pages then say so. The lobby asks for a display name (not of a patient from the portal: the EHR's
name, read live at the launch, is used), tests the devices, and waits on the presence websocket for the
clinician to admit the patient; reloaded, it resumes its wait (GET /lobby/state). Patient pages show the
organisation and the appointment's time, never the clinician. Every patient-facing string goes through the
translation catalog (launch/i18n.py).
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import logging
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp_jinja2
from aiohttp import web
from cryptography.exceptions import InvalidTag

from gateway import joinlinks
from gateway.appkeys import DB, EHR, SEALER, SETTINGS
from gateway.errors import (ConfigError, JoinLinkInvalid, LaunchRefused, SessionExpired, UpstreamError,
                            VisitgateError)
from gateway.fhir import FhirClient
from gateway.participants import Participant, patient_participant
from gateway.web import serves_json

from . import store
from .appkeys import CATALOGS
from .i18n import DEFAULT_LOCALE, N_, Catalogs, language_cookie_hook, with_language
from .page_strings import for_page, in_the_request_language
from .smart import TokenGrant
from .visits import open_visit

log = logging.getLogger(__name__)

LOGO_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
MAX_LOGO_BYTES = 512 * 1024
LOGO_URL = "/organisation/logo"
ORGANISATION_LOGO = web.AppKey("organisation_logo", tuple)
"""The organisation's logo as (bytes, content type), read once at start-up; absent without the setting."""
EHR_NAME_COOKIE = "vg_ehr_name"
"""After a portal launch: the patient's name as the EHR has it, sealed with the gateway's key and bound to the
participant, so the lobby need not ask. Read live at the launch; kept only in this browser, never stored."""
_EHR_NAME_CONTEXT = "lobby.ehr_name"
MAX_NAME = 60

STATIC_DIR = Path(__file__).parent / "static"
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
    # Only when the link's session moved between devices several times within a minute (joinlinks.MAX_MOVES).
    "link_in_use": (N_("This visit link was just opened on another device"),
                    N_("Continue on that device, or wait a minute and open the link here again.")),
}
SESSION_MOVED = (N_("You opened this visit on another device"),
                 N_("Continue on that device. To come back to this one, open the link your clinic sent you "
                    "again here."))
NO_SESSION = (N_("Your visit session has ended"),
              N_("Open the link your clinic sent you again, or start the visit again from your patient portal."))
LAUNCH_FAILED = (N_("Your video visit could not be started"),
                 N_("Go back to your patient portal and start the visit again. If this keeps happening, call "
                    "your clinic."))


def setup_join(app: web.Application) -> None:
    """Load the join-link keys and the translation catalog (the routes are in launch.routes.ROUTES)."""
    app[joinlinks.JOIN_KEYS] = joinlinks.JoinKeys.from_settings(app[SETTINGS])
    logo = app[SETTINGS].organisation_logo
    if logo is not None:
        app[ORGANISATION_LOGO] = _read_logo(logo)
    catalogs = Catalogs.load()
    app[CATALOGS] = catalogs
    secure = app[SETTINGS].public_url.startswith("https://")
    app.on_response_prepare.append(language_cookie_hook(catalogs, secure))
    # The default language for templates rendered without a page context (i18n.page_context gives theirs).
    aiohttp_jinja2.get_env(app).install_gettext_translations(  # type: ignore[attr-defined]  # added by ext.i18n
        catalogs.translations(DEFAULT_LOCALE), newstyle=True)


def _read_logo(path: Path) -> tuple[bytes, str]:
    """The logo file's bytes and type; a missing, oversized or other kind of file stops start-up by name."""
    kind = LOGO_TYPES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError("VISITGATE_ORGANISATION_LOGO must be a .png or .svg file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"VISITGATE_ORGANISATION_LOGO cannot be read ({type(exc).__name__})") from exc
    if not data or len(data) > MAX_LOGO_BYTES:
        raise ConfigError(f"VISITGATE_ORGANISATION_LOGO must be a file of 1 byte to {MAX_LOGO_BYTES} bytes")
    if kind == "image/png" and not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ConfigError("VISITGATE_ORGANISATION_LOGO is not a PNG file")
    return data, kind


async def organisation_logo(request: web.Request) -> web.Response:
    """GET /organisation/logo: the organisation's logo, from our own origin."""
    found = request.app.get(ORGANISATION_LOGO)
    if found is None:
        raise web.HTTPNotFound()
    data, kind = found
    response = web.Response(body=data, content_type=kind)
    response.headers["Cache-Control"] = "public, max-age=3600"
    # An SVG opened on its own is a document: it may draw, never run script or load anything.
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _organisation(request: web.Request, appointment_at: dt.datetime | None) -> dict[str, Any]:
    """What every patient page shows of who the visit is with: the organisation and the appointment's time,
    never the clinician."""
    settings = request.app[SETTINGS]
    at = appointment_at.astimezone(dt.timezone.utc) if appointment_at else None
    return {"organisation_name": settings.organisation_name,
            "organisation_logo": LOGO_URL if ORGANISATION_LOGO in request.app else None,
            "appointment_at": at.isoformat() if at else None,
            "appointment_text": at.strftime("%Y-%m-%d %H:%M UTC") if at else None}


def display_name_of(patient: dict[str, Any]) -> str | None:
    """How to greet the patient, from Patient.name: the usual name, else the official one, else the first."""
    found = patient.get("name")
    names = [n for n in found if isinstance(n, dict)] if isinstance(found, list) else []
    if not names:
        return None

    def rank(name: dict[str, Any]) -> int:
        use = name.get("use")
        return {"usual": 0, "official": 1}.get(use, 2) if isinstance(use, str) else 2

    chosen = min(names, key=rank)
    given = chosen.get("given")
    parts = [g for g in given if isinstance(g, str)][:1] if isinstance(given, list) else []
    family = chosen.get("family")
    if isinstance(family, str):
        parts.append(family)
    text = " ".join(parts) if parts else chosen.get("text")
    if not isinstance(text, str):
        return None
    # As the presence socket takes typed names: no control or format characters, at most MAX_NAME long.
    clean = " ".join("".join(ch for ch in text if unicodedata.category(ch)[0] != "C").split())
    return clean[:MAX_NAME] or None


def _ehr_name_context(participant_id: UUID) -> str:
    return f"{_EHR_NAME_CONTEXT}:{participant_id}"


def _ehr_name(request: web.Request, participant_id: UUID) -> str | None:
    """The portal-launched patient's name from its sealed cookie, when it is this participant's."""
    raw = request.cookies.get(EHR_NAME_COOKIE)
    if not raw or len(raw) > 1024:
        return None
    try:
        blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        return request.app[SEALER].unseal(blob, _ehr_name_context(participant_id))[:MAX_NAME] or None
    except (ValueError, binascii.Error, InvalidTag):
        return None


def _gettext(request: web.Request, message: str) -> str:
    catalogs = request.app[CATALOGS]
    return str(catalogs.translations(catalogs.locale_for(request)).gettext(message))


def _localized(request: web.Request, exc: VisitgateError, messages: tuple[str, str],
               switcher: bool = True) -> VisitgateError:
    """The same error (status, reason) with a translated title and a detail that says what to do; the error
    page the edge renders for it speaks the same language (`lang`, its reason line, and the switcher unless
    told otherwise)."""
    exc.title = _gettext(request, messages[0])
    exc.detail = _gettext(request, messages[1])
    # aiohttp_jinja2 adds this request's context to whatever template is rendered for it (gateway/web.py's
    # error page here), as its context processors would. Its key is a plain string, which aiohttp warns about
    # (there is no RequestKey for it); the warning is silenced for this one assignment only.
    context = in_the_request_language(request)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        request[aiohttp_jinja2.REQUEST_CONTEXT_KEY] = context if switcher else {**context, "languages": None}
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
        # No switcher: its links would repeat this URL, whose launch or authorization code is spent.
        raise _localized(request, exc, LAUNCH_FAILED, switcher=False) from None


def _patient_page(response: web.Response) -> web.Response:
    # Tokens and session-bearing pages: never cached, never indexed, never sent on as a Referer.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


async def join_page(request: web.Request) -> web.Response:
    """GET /join?t= (a signed link from before short codes): as short_join_page."""
    return await _join_page(request, request.query.get("t", ""))


async def short_join_page(request: web.Request) -> web.Response:
    """GET /j/{code}: check the link without using it, and show one button that POSTs it."""
    return await _join_page(request, request.match_info["code"])


async def _join_page(request: web.Request, token: str) -> web.Response:
    with _link_errors(request):
        async with request.app[DB].acquire() as conn:
            link = await joinlinks.verify_link(conn, request.app, token)
    context = {"token": token, **_organisation(request, link.appointment_at), **for_page(request, "join")}
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
    log.info("join link %s for participant %s of visit %s",
             "moved the session from another browser" if session.moved else "exchanged",
             session.participant_id, session.visit_id)
    return _to_lobby(request, session)


def _to_lobby(request: web.Request, session: joinlinks.ParticipantSession) -> web.Response:
    location = str(request.app.router["lobby"].url_for())
    response = web.Response(status=303, headers={"Location": location})
    joinlinks.set_session_cookie(response, request.app[SETTINGS], session)
    return _patient_page(response)


async def _session(request: web.Request) -> tuple[Participant, dt.datetime]:
    handle = request.cookies.get(joinlinks.PARTICIPANT_COOKIE)
    async with request.app[DB].acquire() as conn:
        found = await joinlinks.session_for_handle(conn, handle)
        moved = found is None and await joinlinks.session_moved(conn, handle)
    if moved:
        raise _localized(request, SessionExpired(reason="session_moved"), SESSION_MOVED)
    if found is None:
        raise _localized(request, SessionExpired(), NO_SESSION)
    return found


async def lobby_page(request: web.Request) -> web.Response:
    """GET /lobby: the waiting room (display name, device test, wait), for a browser with a session."""
    participant, _expires = await _session(request)
    async with request.app[DB].acquire() as conn:
        appointment_at = await joinlinks.session_appointment(conn, request.cookies.get(joinlinks.PARTICIPANT_COOKIE))
    context = {"room_url": ROOM_URL, "ehr_name": _ehr_name(request, participant.id),
               **_organisation(request, appointment_at), **for_page(request, "lobby")}
    return _patient_page(aiohttp_jinja2.render_template("lobby.html", request, context))


@serves_json
async def lobby_state(request: web.Request) -> web.Response:
    """GET /lobby/state: where this participant's wait stands, so a reloaded lobby resumes its place.

    Read from the participant's own events (when its current wait began, whether its last device test
    passed); a session that moved to another device is refused with reason session_moved.
    """
    participant, _expires = await _session(request)
    async with request.app[DB].acquire() as conn:
        resume = await joinlinks.lobby_resume(conn, participant.id)
    since = resume.waiting_since
    return _patient_page(web.json_response({
        "waiting_since": since.astimezone(dt.timezone.utc).isoformat() if since else None,
        "device_test_passed": resume.device_test_passed}))


@serves_json
async def lobby_handoff(request: web.Request) -> web.Response:
    """POST /lobby/handoff: a fresh join link for this participant, to open the visit in another browser.

    For a lobby opened inside an app's browser that cannot use the camera: the patient copies the link and
    pastes it into Safari or Chrome, where it binds to that browser's session like any new link.
    """
    participant, expires_at = await _session(request)
    async with request.app[DB].acquire() as conn:
        appointment_at = await joinlinks.session_appointment(conn, request.cookies.get(joinlinks.PARTICIPANT_COOKIE))
        code = await joinlinks.issue_link(conn, request.app, participant.id, participant.visit_id,
                                          expires_at - joinlinks.GRACE, appointment_at)
    log.info("handoff link issued for participant %s", participant.id)
    # The other browser opens in the language the patient chose here, if they did.
    url = with_language(joinlinks.keys_of(request.app).link_url(code), request.app[CATALOGS].chosen(request))
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
    fhir = FhirClient(app[EHR], config.fhir_base_url, grant.access_token)
    starts_at, window_end = await joinlinks.visit_window(fhir, grant.encounter)
    name = await _patient_name(fhir, grant.patient)
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
                session = await joinlinks.create_session(conn, participant_id, visit.id, expires_at, starts_at)
    log.info("patient launch opened visit %s (configuration %s)", visit.id, config.id)
    response = _to_lobby(request, session)
    if name is not None:
        sealed = app[SEALER].seal(name, _ehr_name_context(participant_id))
        max_age = max(0, int((session.expires_at - now).total_seconds()))
        response.set_cookie(EHR_NAME_COOKIE, base64.urlsafe_b64encode(sealed).rstrip(b"=").decode(),
                            max_age=max_age, path="/lobby", httponly=True, samesite="Lax",
                            secure=app[SETTINGS].public_url.startswith("https://"))
    return response


async def _patient_name(fhir: FhirClient, patient_id: str) -> str | None:
    """The patient's name, read live with the patient's own token; None when the EHR does not give it."""
    try:
        return display_name_of(await fhir.read("Patient", patient_id))
    except UpstreamError as exc:
        log.info("patient launch could not read the patient's name (%s); the lobby asks for it", exc.reason)
        return None
