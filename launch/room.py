"""The built-in video room: the page where a visit's participants see and hear each other.

Browsers connect peer to peer (WebRTC, a mesh of at most four) and signal over the presence websocket
(docs/presence-protocol.md). This module only decides who may open the room and hands the page what it needs:
who the browser is, how to authenticate its socket, and the ICE servers (STUN, and TURN with a credential that
expires). A patient or guest comes from the lobby with a `vg_participant` session and must have been admitted;
the clinician comes from the provider view with the handle in the path (and the browser's key in its cookie).
"""
from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import aiohttp_jinja2
from aiohttp import web

from gateway import joinlinks, participants
from gateway.appkeys import DB, SETTINGS
from gateway.meetings.builtin import ice_servers, turn_lifetime
from gateway.sessions import renew_after

from .page_strings import for_page
from .sessions import provider_session
from .teams import patient_join_url

log = logging.getLogger(__name__)

LOBBY_URL = "/lobby"
ROOM_SIZE = 4
"""Participants in one room at most: each browser sends its video to every other one (a mesh)."""


def no_store(response: web.Response) -> web.Response:
    """Mark a response that carries a credential (a TURN credential, a provider handle): never cached or indexed."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


def _to_lobby() -> web.Response:
    return web.Response(status=303, headers={"Location": LOBBY_URL, "Cache-Control": "no-store"})


async def participant_room(request: web.Request) -> web.Response:
    """GET /room: the room for an admitted patient or guest; anyone else goes (back) to the lobby."""
    handle = request.cookies.get(joinlinks.PARTICIPANT_COOKIE)
    if not handle:
        return _to_lobby()  # the lobby says, translated, that the session has ended and what to do
    async with request.app[DB].acquire() as conn:
        participant = await joinlinks.participant_for_session(conn, handle)
        if participant is None:
            return _to_lobby()
        state = await participants.admission_state(conn, participant.id)
    if state != "admitted":
        # Not admitted yet, or denied or removed since: the lobby is where one waits.
        return _to_lobby()
    join_url = await patient_join_url(request.app, participant.visit_id)
    if join_url is not None:
        # A Teams visit: on to the meeting's browser join, where Teams' own lobby holds them until let in.
        return web.Response(status=303, headers={"Location": join_url, "Cache-Control": "no-store"})
    return _render(request, participant.id, participant.role, {"where": "room"}, leave_url=None)


async def provider_room(request: web.Request) -> web.Response:
    """GET /provider/{handle}/room: the room for the clinician of the visit the handle names."""
    handle = request.match_info["handle"]
    found = await provider_session(request)
    async with request.app[DB].acquire() as conn:
        participant_id = await participants.provider_participant(conn, found.visit_id, found.fhir_user)
    view_url = str(request.app.router["provider_view"].url_for(handle=handle))
    renew_in = renew_after(request.app[SETTINGS].provider_handle_ttl, found.handle_expires_in)
    return _render(request, participant_id, "provider", {"provider": handle, "where": "room"}, leave_url=view_url,
                   renew_in=renew_in)


def _render(request: web.Request, participant_id: UUID, role: str, auth: dict[str, Any],
            leave_url: str | None, renew_in: int | None = None) -> web.Response:
    settings = request.app[SETTINGS]
    config = {
        "participant": str(participant_id),
        "role": role,
        "auth": auth,
        "ws": "/ws",
        "ice_servers": ice_servers(settings, str(participant_id)),
        # Seconds the TURN credentials last (None without TURN): the page asks the socket for fresh ones.
        "ice_ttl": turn_lifetime(settings),
        "ice_transport_policy": settings.ice_transport_policy,  # "relay": every call through TURN
        "room_size": ROOM_SIZE,
        "lobby_url": LOBBY_URL if role != "provider" else None,
        "back_url": leave_url,
    }
    response = aiohttp_jinja2.render_template("room.html", request, {"config": config, "role": role,
                                                                     "back_url": leave_url, "renew_in": renew_in,
                                                                     **for_page(request, "room")})
    return no_store(response)
