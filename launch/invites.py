"""Sending the join link from the provider view: to the patient by email or SMS (contact details read live
from FHIR `Patient.telecom`), to a guest (interpreter, family member, ...) at an address the clinician
types, or shown for the clinician to copy.

Addresses and numbers pass through one request: read or received, used to send, masked in the answer,
and forgotten. They are never written to the database or the logs; neither is a link or its token. What is
kept of an invitation is whom it was for (the participant) and the channel, so the provider view can list
the invitations sent, revoke one (its links stop working) or re-send it (a fresh link; the earlier ones stop
working).

The patient's link and message speak the patient's preferred language (`Patient.communication`, read in the
same live read as the contact details): the message is written from the translation catalog in that language,
and the link carries it as `?lang=` so the pages open in it too. The language is patient data like the
address: it lives in the message and the link only.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp_jinja2
import asyncpg
from aiohttp import web

import sql
from gateway import joinlinks, participants
from gateway.appkeys import DB, EHR, NOTIFIER, SEALER, SETTINGS
from gateway.errors import FhirError
from gateway.fhir import FhirClient
from gateway.notify import NotConfigured, NotifyError, to_e164
from gateway.notify.contacts import pick_contact
from gateway.notify.routing import sms_route
from gateway.sent_counts import count_sent
from gateway.web import serves_json

from . import store
from .appkeys import CATALOGS
from .i18n import DEFAULT_LOCALE, N_, format_moment, preferred_language, with_language
from .sessions import provider_session

log = logging.getLogger(__name__)
Q = sql.queries("invites")

CHANNELS = ("email", "sms", "copy")
ROLES = ("patient", "guest")
GUEST_KINDS = ("interpreter", "family", "caregiver", "other")
_EMAIL = re.compile(r"^[^@\s<>,;\"]{1,64}@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
_MAX_FIELD = 320

# The join-link messages, in the catalog with the pages. The SMS is kept short (one segment with a short
# link), and in es, fr, pt and it written with GSM-7 letters only, which a text in UCS-2 would halve.
SMS_TEXT = N_("Your video visit with %(organisation)s is ready: %(link)s")
EMAIL_SUBJECT = N_("Your video visit with %(organisation)s")
EMAIL_DEVICES = N_("Open the link on a phone or computer with a camera and microphone a few minutes before "
                   "the visit.")
EMAIL_UNTIL = N_("The link works until %(time)s.")
EMAIL_IGNORE = N_("If you did not expect this message, you can ignore it.")


@dataclass(frozen=True)
class JoinMessage:
    """A join link's SMS, and its email's subject and body, in one language."""

    sms: str
    subject: str
    body: str


def join_message(request: web.Request, locale: str, link: str, expires_at: dt.datetime) -> JoinMessage:
    """The messages that carry a link, written from the catalog in `locale`, with the link's expiry in the
    organisation's time zone."""
    settings = request.app[SETTINGS]
    translations = request.app[CATALOGS].translations(locale)
    values = {"organisation": settings.organisation_name, "link": link,
              "time": format_moment(expires_at, locale, settings.time_zone)}

    def say(message: str) -> str:
        return str(translations.gettext(message)) % values

    body = f"{say(SMS_TEXT)}\n\n{say(EMAIL_DEVICES)}\n\n{say(EMAIL_UNTIL)} {say(EMAIL_IGNORE)}\n"
    return JoinMessage(sms=say(SMS_TEXT), subject=say(EMAIL_SUBJECT), body=body)


class InviteRefused(Exception):
    """An invite we answer with a clear message rather than an error page (the clinician can fix it)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class InviteForm:
    """What the clinician asked for."""

    channel: str
    role: str
    guest_kind: str | None
    address: str | None


def parse_form(form: Mapping[str, Any], region: str | None = None) -> InviteForm:
    """Check the posted fields; InviteRefused (400) names the first that is wrong."""
    def field(name: str) -> str:
        value = form.get(name)
        if not isinstance(value, str):
            return ""
        if len(value) > _MAX_FIELD:
            raise InviteRefused(400, f"invalid_{name}", f"The {name.replace('_', ' ')} is too long.")
        return value.strip()

    channel, role = field("channel"), field("role") or "patient"
    if channel not in CHANNELS:
        raise InviteRefused(400, "invalid_channel", "Choose how to send the link: email, SMS or copy.")
    if role not in ROLES:
        raise InviteRefused(400, "invalid_role", "The link is for the patient or for a guest.")
    if role == "patient":
        return InviteForm(channel, role, None, None)
    guest_kind = field("guest_kind")
    if guest_kind not in GUEST_KINDS:
        raise InviteRefused(400, "invalid_guest_kind",
                            "Say who the guest is: interpreter, family member, caregiver or other.")
    address = field("address") or None
    if channel == "email" and (address is None or len(address) > 254 or not _EMAIL.match(address)):
        raise InviteRefused(400, "invalid_address", "Enter the guest's email address, like name@example.org.")
    if channel == "sms" and (address is None or to_e164(address, region) is None):
        raise InviteRefused(400, "invalid_address",
                            "Enter the guest's mobile number with its country code, like +1 555 010 0199.")
    return InviteForm(channel, role, guest_kind, address if channel != "copy" else None)


def mask_email(address: str) -> str:
    """p***@example.org: enough for the clinician to recognise it, not enough to read it off the screen."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}" if local else "***"


def mask_phone(number: str) -> str:
    """*** ** 19: the last two digits only."""
    digits = re.sub(r"\D", "", number)
    return f"*** ** {digits[-2:]}" if len(digits) >= 4 else "***"


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _answer(request: web.Request, status: int, payload: dict[str, Any]) -> web.Response:
    """JSON for the page's script; a small page for a browser posting the form itself."""
    if _wants_json(request):
        response = web.json_response(payload, status=status)
    else:
        response = aiohttp_jinja2.render_template("invite_result.html", request, payload, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


async def invite(request: web.Request) -> web.Response:
    """POST /provider/{handle}/invite: make (or reuse) the participant, issue a join link, send or show it."""
    session = await provider_session(request)
    try:
        form = parse_form(await request.post(), request.app[NOTIFIER].region)
        return await _invite(request, session, form)
    except InviteRefused as refused:
        return _answer(request, refused.status, {"ok": False, "reason": refused.reason,
                                                 "message": refused.message})


async def _take_back(request: web.Request, code: str, participant_id: UUID, new_guest: bool) -> None:
    """Take back a link that never reached anyone (the send failed): a guest added for it goes with it."""
    try:
        async with request.app[DB].acquire() as conn, conn.transaction():
            if not (new_guest and await joinlinks.forget_unsent_guest(conn, participant_id)):
                await joinlinks.revoke_link(conn, request.app, code)
    except Exception as exc:  # the answer to the clinician matters more; the link expires on its own anyway
        log.warning("taking back an unsent link for participant %s failed (%s)", participant_id,
                    type(exc).__name__)


@dataclass(frozen=True)
class SentInvitation:
    """An invitation as the provider view lists it: for whom (role, guest kind), by which channel, whether live."""

    participant_id: UUID
    role: str
    guest_kind: str | None
    channel: str
    sent_at: dt.datetime
    live: bool


async def record_invitation(conn: asyncpg.Connection, participant_id: UUID, visit_id: UUID, channel: str) -> None:
    """Remember that a participant's link went out, and by which channel (never to where)."""
    await conn.execute(Q["record_invitation"], participant_id, visit_id, channel)


async def record_sent(conn: asyncpg.Connection, participant_id: UUID, visit_id: UUID, channel: str) -> None:
    """Record a link that went out (a send or a re-send) and, when it went by SMS or email, count the message on
    the visit's usage figures, in one transaction: the list keeps the last channel, the count every send."""
    async with conn.transaction():
        await record_invitation(conn, participant_id, visit_id, channel)
        await count_sent(conn, visit_id, channel)


async def list_invitations(conn: asyncpg.Connection, visit_id: UUID) -> list[SentInvitation]:
    """The visit's invitations, oldest first."""
    return [SentInvitation(r["participant_id"], r["role"], r["guest_kind"], r["channel"], r["sent_at"], r["live"])
            for r in await conn.fetch(Q["list_invitations"], visit_id)]


async def invitation(conn: asyncpg.Connection, participant_id: UUID, visit_id: UUID) -> asyncpg.Record | None:
    """One invitation of the visit (channel, role, guest kind), or None."""
    row: asyncpg.Record | None = await conn.fetchrow(Q["invitation"], participant_id, visit_id)
    return row


def _invitation_json(found: SentInvitation) -> dict[str, Any]:
    return {"participant": str(found.participant_id), "role": found.role, "guest_kind": found.guest_kind,
            "channel": found.channel, "sent_at": found.sent_at.isoformat(), "live": found.live}


@serves_json
async def invitations(request: web.Request) -> web.Response:
    """GET /provider/{handle}/invitations: the invitations sent for this visit (whom and how, never where)."""
    session = await provider_session(request)
    async with request.app[DB].acquire() as conn:
        found = await list_invitations(conn, session.visit_id)
    response = web.json_response({"invitations": [_invitation_json(i) for i in found]})
    response.headers["Cache-Control"] = "no-store"
    return response


async def _invited(request: web.Request, session: store.ProviderSession) -> asyncpg.Record:
    """The invitation the path names, of this clinician's visit; InviteRefused (404) for any other."""
    raw = request.match_info.get("participant", "")
    try:
        participant_id = UUID(raw) if len(raw) <= 36 else None
    except ValueError:
        participant_id = None
    async with request.app[DB].acquire() as conn:
        found = await invitation(conn, participant_id, session.visit_id) if participant_id else None
    if found is None:
        raise InviteRefused(404, "unknown_invitation", "That invitation is not part of this visit.")
    return found


async def revoke(request: web.Request) -> web.Response:
    """POST /provider/{handle}/invite/{participant}/revoke: every link of that invitation stops working."""
    session = await provider_session(request)
    try:
        found = await _invited(request, session)
    except InviteRefused as refused:
        return _answer(request, refused.status, {"ok": False, "reason": refused.reason, "message": refused.message})
    participant_id = found["participant_id"]
    async with request.app[DB].acquire() as conn:
        await joinlinks.revoke_links(conn, participant_id)
    log.info("links revoked for participant %s", participant_id)
    person = "the patient" if found["role"] == "patient" else "the guest"
    return _answer(request, 200, {"ok": True, "participant": str(participant_id),
                                  "message": f"The link sent to {person} no longer works."})


async def resend(request: web.Request) -> web.Response:
    """POST /provider/{handle}/invite/{participant}/resend: a fresh link by the same channel (or the one
    posted); the earlier links stop working. A guest's address was never kept, so it is posted again."""
    session = await provider_session(request)
    try:
        found = await _invited(request, session)
        posted = await request.post()
        channel = posted.get("channel") or found["channel"]
        form = parse_form({"channel": channel, "role": found["role"], "guest_kind": found["guest_kind"] or "",
                           "address": posted.get("address") or ""}, request.app[NOTIFIER].region)
        return await _invite(request, session, form, again=found["participant_id"])
    except InviteRefused as refused:
        return _answer(request, refused.status, {"ok": False, "reason": refused.reason,
                                                 "message": refused.message})


async def _invite(request: web.Request, session: store.ProviderSession, form: InviteForm,
                  again: UUID | None = None) -> web.Response:
    app = request.app
    sealer = app[SEALER]
    fhir = FhirClient(app[EHR], session.fhir_base_url,
                      sealer.unseal(session.access_token, "provider_sessions.access_token"))
    if form.channel == "sms" and app[NOTIFIER].sms is None:
        raise InviteRefused(409, NotConfigured.reason, "SMS is not set up on this gateway. Send the link by "
                                                       "email or copy it.")
    sender = None
    if form.channel == "sms":
        # The organisation's SMS set-up decides whether join links go by text, and from which of its numbers.
        async with app[DB].acquire() as conn:
            route = await sms_route(conn, session.fhir_base_url, "join_link")
        if not route.allowed:
            raise InviteRefused(409, route.reason or "sms_not_enabled", "Your organisation has not turned on join "
                                                                        "links by SMS. Send the link by email or "
                                                                        "copy it.")
        sender = route.sender
    address, language = form.address, None
    if form.role == "patient" and form.channel != "copy":
        patient_id = sealer.unseal(session.patient_ref, "visits.patient_ref") if session.patient_ref else None
        address, language = await _patient_contact(request, fhir, patient_id, form.channel)
    encounter_id = sealer.unseal(session.encounter_ref, "visits.encounter_ref")
    starts_at, ends_at = await joinlinks.visit_window(fhir, encounter_id)
    not_after = ends_at or joinlinks.default_not_after()
    try:
        async with app[DB].acquire() as conn:
            async with conn.transaction():
                if again is not None:
                    # A re-send: the earlier links stop working as the fresh one is made.
                    participant_id = again
                    token = await joinlinks.reissue_link(conn, app, participant_id, session.visit_id, not_after,
                                                         appointment_at=starts_at)
                else:
                    if form.role == "patient":
                        participant_id = await participants.patient_participant(conn, session.visit_id)
                    else:
                        assert form.guest_kind is not None
                        participant_id = await participants.add_guest(conn, session.visit_id, form.guest_kind)
                    token = await joinlinks.issue_link(conn, app, participant_id, session.visit_id, not_after,
                                                       appointment_at=starts_at)
    except ValueError:
        # issue_link refuses a window that has passed: the appointment is over.
        raise InviteRefused(409, "visit_over", "This visit's time has passed; no new link can be sent.") from None
    link = with_language(joinlinks.keys_of(app).link_url(token), language)
    person = "the patient" if form.role == "patient" else "the guest"
    payload: dict[str, Any] = {"ok": True, "channel": form.channel, "role": form.role,
                               "guest_kind": form.guest_kind, "participant": str(participant_id)}
    if form.channel == "copy":
        log.info("join link shown to copy for participant %s", participant_id)
        await _recorded(request, participant_id, session.visit_id, form.channel)
        payload.update(link=link, message=f"Copy this link and give it to {person}.")
        return _answer(request, 200, payload)
    assert address is not None
    message = join_message(request, language or DEFAULT_LOCALE, link, joinlinks.link_expiry(not_after))
    try:
        if form.channel == "email":
            await app[NOTIFIER].send_email(address, message.subject, message.body)
            masked = mask_email(address)
            where = "email on file" if form.role == "patient" else "email"
        else:
            await app[NOTIFIER].send_sms(address, message.sms, sender=sender)
            masked = mask_phone(address)
            where = "mobile number on file" if form.role == "patient" else "mobile number"
    except NotifyError as exc:
        await _take_back(request, token, participant_id, new_guest=form.role == "guest" and again is None)
        log.info("sending %s failed for participant %s: %s", form.channel, participant_id, exc.reason)
        status = {"sms_bad_number": 422, "sms_opted_out": 409}.get(exc.reason, 502)
        after = ("The link was not sent; nothing was kept." if again is None else
                 "The new link was not sent, and the earlier one no longer works: try again, or copy a new link.")
        raise InviteRefused(status, exc.reason, f"{exc.detail} {after}") from None
    except Exception:
        # Whatever else stopped the send (an address the mail library refuses, a bug), the link reached no
        # one: the new guest and its link go too, and the error goes on to the edge.
        await _take_back(request, token, participant_id, new_guest=form.role == "guest" and again is None)
        raise
    log.info("sent %s for participant %s", form.channel, participant_id)
    await _recorded(request, participant_id, session.visit_id, form.channel)
    payload.update(masked=masked, message=f"Sent to {person}'s {where} ({masked}).")
    return _answer(request, 200, payload)


async def _recorded(request: web.Request, participant_id: UUID, visit_id: UUID, channel: str) -> None:
    """Keep the invitation for the provider view's list and count the message (each send and re-send by SMS or
    email) on the visit's usage figures, together; the link is out already, so a failure here is logged."""
    try:
        async with request.app[DB].acquire() as conn:
            await record_sent(conn, participant_id, visit_id, channel)
    except Exception as exc:  # the link went out: the clinician's answer matters more than the list
        log.warning("could not record the invitation of participant %s (%s)", participant_id, type(exc).__name__)


async def _patient_contact(request: web.Request, fhir: FhirClient, patient_id: str | None,
                           channel: str) -> tuple[str, str | None]:
    """The patient's email or SMS number and preferred language (one we have, or None), read live from FHIR
    for this one send."""
    if patient_id is None:
        raise InviteRefused(422, "no_patient", "The EHR did not say who the patient is for this visit, so "
                                               "the link cannot be sent to them. Copy it instead.")
    try:
        patient = await fhir.read("Patient", patient_id)
    except FhirError as exc:
        log.info("invite could not read the patient: %s", exc.reason)
        raise InviteRefused(502, exc.reason, "The EHR did not give us the patient's contact details right "
                                             "now. Try again, or copy the link.") from None
    found = pick_contact(patient.get("telecom"), channel)
    if found is None:
        what = "email address" if channel == "email" else "mobile number"
        raise InviteRefused(422, f"no_{'email' if channel == 'email' else 'phone'}_on_file",
                            f"The patient has no current {what} in the EHR. Add one in the EHR, use "
                            f"another way, or copy the link.")
    return found, preferred_language(patient, request.app[CATALOGS])
