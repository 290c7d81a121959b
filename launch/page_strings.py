"""The words the pages' scripts show, by page and key, marked for the catalog with `N_`.

A page's template renders them, translated for the request (launch/i18n.py `page_context`), into
`<script type="application/json" id="i18n">`; launch/static/i18n.js reads them with `t(key, params)`.
Placeholders are named, `{time}`, and filled in by the script. After adding or changing one here, run
`python -m launch.catalog`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.appkeys import SETTINGS

from .appkeys import CATALOGS
from .i18n import DEFAULT_LOCALE, N_, language_choices, page_context

# What a presence request's error frame, or a request that got no answer, means to the person who made it
# (presence/ws.py's codes; connection_lost, timeout and not_connected come from the client itself).
PRESENCE_ERRORS: Mapping[str, str] = {
    "error.database_unavailable": N_("Not done: the gateway cannot reach its database. Try again in a moment."),
    "error.rate_limited": N_("Not done: too many actions in a short time. Wait a moment, then try again."),
    "error.unknown_participant": N_("Not done: that person is no longer part of this visit."),
    "error.not_allowed": N_("Not done: this page may not do that."),
    "error.visit_ended": N_("Not done: this visit has ended."),
    "error.connection_lost": N_("The connection dropped before the gateway answered. Check the list, then try "
                                "again if needed."),
    "error.timeout": N_("The gateway did not answer in time. Check the list, then try again if needed."),
    "error.not_connected": N_("Not done: this page is not connected to the gateway. Wait until the list is live, "
                              "then try again."),
    "error.other": N_("Not done (reason code: {code})."),
}

_COPY_LINK: Mapping[str, str] = {
    "link_copied": N_("Link copied. Paste it into Safari or Chrome."),
    "link_copy_failed": N_("Could not copy the link. Press and hold the link below to copy it."),
}

# Waiting-room chat (chat.js), on the lobby, the provider view and the room.
CHAT: Mapping[str, str] = {
    "chat.you": N_("You"),
    "chat.clinician": N_("Clinician"),
    "chat.someone": N_("Someone"),
    "chat.you_to": N_("You to {who}"),
    "chat.clinician_to": N_("Clinician to {who}"),
    "chat.error.rate_limited": N_("Not sent: too many messages in a short time. Wait a minute, then try again."),
    "chat.error.chat_off": N_("Not sent: messages are turned off for this clinic."),
    "chat.error.bad_chat_text": N_("Not sent: a message holds 1 to 500 characters."),
    "chat.error.unknown_participant": N_("Not sent: that person is no longer part of this visit."),
    "chat.error.not_allowed": N_("Not sent: messages go only between the clinician and one person waiting."),
    "chat.error.not_connected": N_("Not sent: this page is not connected right now. Try again in a moment."),
    "chat.error.connection_lost": N_("The connection dropped while sending. The message may not have arrived."),
    "chat.error.timeout": N_("No answer in time. The message may not have arrived."),
    "chat.error.other": N_("Not sent (reason code: {code})."),
}

# The knock: who is waiting, shown in the room as in the provider view (waiting.js).
WAITING: Mapping[str, str] = {
    "role.patient": N_("Patient"),
    "role.guest": N_("Guest"),
    "role.provider": N_("Clinician"),
    "role.other": N_("Participant"),
    "guest.interpreter": N_("interpreter"),
    "guest.family": N_("family member"),
    "guest.caregiver": N_("caregiver"),
    "guest.other": N_("guest"),
    "who.guest_kind": N_("{role} ({kind})"),
    "who.named": N_("{who}: {name}"),
    "state.waiting": N_("waiting since {time}"),
    "state.devices_ok": N_("waiting since {time} · devices OK"),
    "state.device_problem": N_("waiting since {time} · device problem"),
    "state.admitted": N_("admitted at {time}, joining…"),
    "state.in_visit": N_("in the visit since {time}"),
    "state.online": N_("online since {time}"),
    "state.disconnected": N_("disconnected at {time}"),
    "state.left": N_("left the lobby at {time}"),
    "state.denied": N_("not admitted ({time})"),
    "state.removed": N_("removed at {time}"),
    "action.admit": N_("Admit"),
    "action.deny": N_("Deny"),
    "action.remove": N_("Remove"),
    "waiting.title": N_("({count}) waiting — {title}"),
    "waiting.notify_title": N_("Someone is waiting"),
    "waiting.notify_body": N_("{who} is waiting to be let in."),
    "waiting.notify_on": N_("Notifications are on."),
    "waiting.notify_blocked": N_("Notifications are blocked in this browser's settings."),
}

JOIN: Mapping[str, str] = {**_COPY_LINK}

LOBBY: Mapping[str, str] = {
    **_COPY_LINK,
    **CHAT,
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
    "waiting": N_("Your clinician will let you in."),
    "admitted": N_("You are being let in…"),
    "denied": N_("Your clinician could not let you in right now. Please contact your clinic."),
    "removed": N_("Your clinician has moved you back to the waiting room. Please wait to be let in again."),
    "waiting_keep_open": N_("Please keep this page open."),
    "not_saved": N_("That did not reach your clinic. Please wait a moment; we try again."),
    # The connection check and the sound question (connection-check.js).
    "network_checking": N_("Checking your connection for video…"),
    "network_ok": N_("Your connection is ready for video."),
    "network_ok_rtt": N_("Your connection is ready for video ({rtt} ms)."),
    "network_no_relay": N_("Your network may block the video call. If you can, try another network (for "
                           "example mobile data instead of Wi-Fi)."),
    "speaker_ok": N_("Good: your speaker works."),
    "speaker_not_heard": N_("Turn up your volume or connect headphones, then play the sound again."),
}

# The standalone device test (device-test.js, GET /device-test): the lobby's camera, microphone and sound words,
# and what a connection check without the relay can say.
DEVICE_TEST: Mapping[str, str] = {
    **{key: LOBBY[key] for key in ("camera_starting", "camera_ok", "camera_denied", "camera_missing", "camera_busy",
                                   "camera_failed", "no_media", "mic_hint", "tone_playing", "tone_done",
                                   "network_checking", "speaker_ok", "speaker_not_heard")},
    "network_stun_ok": N_("Your network lets video calls out. The video relay is checked again when you join your "
                          "visit."),
    "network_stun_failed": N_("We could not reach the network check server: your network may block video calls. "
                              "It is checked again when you join your visit."),
    "network_at_join": N_("Your device is online. The full network check runs when you join your visit."),
    "network_none": N_("This browser cannot make video calls. Open this page in Safari or Chrome."),
}

ROOM: Mapping[str, str] = {
    **PRESENCE_ERRORS,
    **WAITING,
    **CHAT,
    "connecting": N_("Connecting to your visit…"),
    "waiting_for_others": N_("You are in the room. Waiting for the others to join…"),
    "in_call": N_("You are in the visit."),
    "provider_joined": N_("Your clinician has joined the visit."),
    "reconnecting": N_("Connection lost. Reconnecting…"),
    "connection_failed": N_("We cannot reach your visit. Check your internet connection; we keep trying."),
    "session_ended": N_("Your visit session has ended. Open the link your clinic sent you again."),
    "provider_session_ended": N_("This visit page has expired. Open the visit again from the EHR."),
    "visit_ended": N_("The visit has ended. You can close this page."),
    "removed": N_("Your clinician has moved you back to the waiting room."),
    "left": N_("You left the visit. Press Rejoin to go back in."),
    "room_full": N_("This visit already has the most people it can hold ({size})."),
    "no_media": N_("This browser cannot use your camera. Open this page in Safari or Chrome."),
    "audio_only": N_("Your camera could not be started: you are in the visit with audio only."),
    "no_devices": N_("Your camera and microphone could not be started: the others cannot see or hear you."),
    "mute": N_("Mute"),
    "unmute": N_("Unmute"),
    "camera_off": N_("Camera off"),
    "camera_on": N_("Camera on"),
    "patient": N_("Patient"),
    "provider": N_("Clinician"),
    "guest": N_("Guest"),
    "interpreter": N_("Interpreter"),
    "family": N_("Family member"),
    "caregiver": N_("Caregiver"),
    "other": N_("Guest"),
    "peer_connecting": N_("Connecting…"),
    "peer_trouble": N_("Connection trouble…"),
    # Each participant's connection in the clinician's room (call-quality.js).
    "quality.good": N_("Good connection"),
    "quality.fair": N_("Fair connection"),
    "quality.poor": N_("Poor connection"),
    "quality.unknown": N_("Connection not measured yet"),
    "quality.numbers": N_("round trip {rtt} ms, packet loss {loss} %, {kbps} kbit/s"),
}

PROVIDER: Mapping[str, str] = {
    **PRESENCE_ERRORS,
    **WAITING,
    **CHAT,
    "status.connecting": N_("connecting…"),
    "status.live": N_("live"),
    "status.reconnecting": N_("reconnecting…"),
    "status.failed": N_("offline: reload the page"),
    "status.ended": N_("this page has expired: open the visit again from the EHR"),
    "device.connection_ok": N_("Connection: relay OK"),
    "device.connection_ok_rtt": N_("Connection: relay OK, {rtt}"),
    "device.no_relay": N_("No relay: the call may not connect from this network"),
    "device.speaker_not_heard": N_("did not hear the test sound"),
    "device.no_camera": N_("no camera"),
    "device.rtt.under_50ms": N_("under 50 ms"),
    "device.rtt.50_100ms": N_("50–100 ms"),
    "device.rtt.100_200ms": N_("100–200 ms"),
    "device.rtt.200_400ms": N_("200–400 ms"),
    "device.rtt.over_400ms": N_("over 400 ms"),
    "alert.waiting": N_("{who} waiting since {time}"),
    "room_full": N_("The video room is full ({taken} of {size}): remove someone before admitting another "
                    "person, or they will be turned away."),
    # The "Send the link" panel (invite.js).
    "invite.sending": N_("Sending…"),
    "invite.done": N_("Done."),
    "invite.failed": N_("The link could not be sent."),
    "invite.failed_status": N_("The link could not be sent ({status})."),
    "invite.expired": N_("This visit page has expired. Open the visit again from the EHR."),
    "invite.unreachable": N_("The gateway could not be reached. Check the connection and try again."),
    "invite.copy": N_("Copy"),
    "invite.copied": N_("Copied"),
    # The invitations sent (invitations.js): whom and how, never where.
    "invitations.item": N_("{who} · {channel} · sent at {time}"),
    "invitations.live": N_("the link works"),
    "invitations.revoked": N_("the link no longer works"),
    "invitations.channel.email": N_("email"),
    "invitations.channel.sms": N_("SMS"),
    "invitations.channel.copy": N_("link to copy"),
    "invitations.revoke": N_("Revoke"),
    "invitations.resend": N_("Re-send"),
    "invitations.address": N_("The guest's email or mobile number (it was not kept)"),
    "invitations.send": N_("Send"),
    "invitations.copy_instead": N_("Copy a new link instead"),
    "invitations.unavailable": N_("The list of links sent could not be loaded."),
}

# The clinician's clinic queue (queue.js): today's visits, who waits and for how long, who is in a visit.
QUEUE: Mapping[str, str] = {
    **PRESENCE_ERRORS,
    **WAITING,
    "status.connecting": N_("connecting…"),
    "status.live": N_("live"),
    "status.reconnecting": N_("reconnecting…"),
    "status.failed": N_("offline: reload the page"),
    "status.ended": N_("this page has expired: open the visit again from the EHR"),
    "queue.minutes": N_("{minutes} min"),
    "queue.under_a_minute": N_("<1 min"),
    "queue.no_name": N_("Patient (name not available)"),
    "queue.visit_of": N_("{who} · visit of {patient}"),
    "queue.waiting": N_("waiting"),
    "queue.device_problem": N_("device problem"),
    "queue.joining": N_("admitted, joining"),
    "queue.in_visit_for": N_("in the visit for {minutes}"),
    "queue.ended": N_("visit ended"),
    "queue.left": N_("left"),
    "queue.not_admitted": N_("not admitted"),
    "queue.not_arrived": N_("not arrived"),
    "queue.admit_who": N_("Admit {who}"),
    "queue.now_waiting": N_("{who} is waiting."),
    "queue.now_in_visit": N_("{who} is in the visit."),
    "queue.admitted": N_("Admitted."),
    "error.names_unavailable": N_("Patient names could not be read from the EHR just now."),
    "error.department_queue_off": N_("Your organisation does not share department queues."),
    "error.no_department": N_("Your launch from the EHR named no department."),
    "error.bad_scope": N_("Not done: there is no such queue."),
}

PAGES: Mapping[str, Mapping[str, str]] = {"join": JOIN, "lobby": LOBBY, "room": ROOM, "provider": PROVIDER,
                                          "device_test": DEVICE_TEST, "queue": QUEUE}


# Pages that follow the request's language (and show the language switcher). The provider view's template
# and scripts are in the catalog, translated in all six languages, but what the server says on it (the send-link
# panel's answers in launch/invites.py, the appointment's time, the Encounter's status) is still English only,
# so the view stays English whatever the browser asks for, rather than mix languages.
IN_THE_REQUEST_LANGUAGE = frozenset({"join", "lobby", "room", "device_test"})


def for_page(request: web.Request, page: str) -> dict[str, Any]:
    """The template context that makes one of PAGES speak the request's language (i18n.page_context), with
    the language switcher's links (`languages`, rendered by base.html) on the pages that follow it, and the
    features the organisation turned on (waiting-room chat)."""
    chat = {"waiting_chat": request.app[SETTINGS].waiting_chat}
    if page not in IN_THE_REQUEST_LANGUAGE:
        return {**page_context(request.app[CATALOGS], DEFAULT_LOCALE, PAGES[page]), **chat}
    return {**in_the_request_language(request, PAGES[page]), **chat}


def in_the_request_language(request: web.Request, strings: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A patient page's template context in the request's language, switcher included (for_page, and the
    error pages a patient sees)."""
    catalogs = request.app[CATALOGS]
    locale = catalogs.locale_for(request)
    return {**page_context(catalogs, locale, strings or {}),
            "languages": language_choices(request, locale, catalogs.locales)}
