"""A double of Microsoft Graph's online meetings (with Entra ID beside it) and of Teams' browser join and lobby.

`create_graph_double_app()` builds one aiohttp application, served over https by the tests and the demo
(MSAL accepts https authorities only): Entra's endpoints (sandbox/entra.py) at `/{tenant}/...`, Graph at
`/v1.0/...` and `/beta/...`, and the Teams join pages at `/teams/...`. Point the gateway's
VISITGATE_GRAPH_URL and VISITGATE_ENTRA_AUTHORITY_HOST at its origin.

Graph, as documented, and refusing what Graph refuses:

- every call needs a bearer token this double's Entra issued for Graph (401 `InvalidAuthenticationToken`);
  online meetings need the application role `OnlineMeetings.ReadWrite.All` (403 otherwise);
- `POST /v1.0/users/{organizer}/onlineMeetings/createOrGet`: `externalId` required (400 otherwise, and on a
  body that is not a JSON object, an unknown property, bad `lobbyBypassSettings` or dates); the organizer must
  be a user of the token's tenant (404); an application access policy must cover the organizer for the
  calling application (403 "No application access policy found for this app."); 201 with a new meeting the
  first time per (tenant, organizer, externalId), 200 with the same meeting afterwards;
- `GET /v1.0/users/{organizer}/onlineMeetings?$filter=JoinWebUrl eq '...'` and `.../onlineMeetings/{id}`.

Faults the tests set on `GraphDouble`: `latency` (seconds before every answer), `throttle_rate` (that share of
Graph calls, spread evenly, answer 429 with `Retry-After: retry_after`), `throttle_next` (the next n calls
answer 429), `fail_next` / `fail_rate` (5xx storms, status `fail_status`). `requests` records every request
(Authorization header and client credentials removed) so tests can prove nothing about a patient was sent.

Teams' own join and lobby (the meeting's `joinWebUrl`, `/teams/l/meetup-join/{meeting}/0`): a guest gives a
name and waits in the lobby (the meetings are made with lobby bypass for the organizer only); the organizer
joins straight in and admits; anyone leaves. Tests drive it through the pages or directly through
`GraphDouble.join`, `.admit` and `.leave`.

Roster hook (for the live-presence side, sandbox's notification module): every roster change awaits each
callback in the list at `app[ROSTER_LISTENERS]` (the same list as `GraphDouble.roster_listeners`) as
`await on_roster(meeting, roster)`, where `meeting` is the `OnlineMeeting` (id, tenant_id, organizer_oid,
join_web_url, external_id) and `roster` a list of `Participant` (id, display_name, role "organizer" |
"attendee" | "guest", state "lobby" | "inMeeting" | "left", oid for signed-in users). A failing callback is
logged and does not stop the others.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from .appkeys import ENTRA, GRAPH, ROSTER_LISTENERS
from . import entra as entra_routes
from . import graph_events
from .entra import EntraDouble

log = logging.getLogger("sandbox.graph")

MEETINGS_ROLES = ("OnlineMeetings.ReadWrite.All", "OnlineMeetings.Read.All")
LOBBY_SCOPES = ("organization", "everyone", "invited", "organizer", "organizationAndFederated",
                "organizationExcludingGuests", "unknownFutureValue")
CREATE_PROPERTIES = frozenset({"externalId", "startDateTime", "endDateTime", "subject", "participants",
                               "chatInfo", "lobbyBypassSettings", "allowedPresenters", "isEntryExitAnnounced",
                               "allowMeetingChat", "recordAutomatically", "joinMeetingIdSettings"})


@dataclass
class Participant:
    """Someone at a meeting, in Teams' lobby or in the meeting itself."""

    id: str
    display_name: str
    role: str
    state: str
    oid: str | None = None


@dataclass
class OnlineMeeting:
    """A Teams meeting made by createOrGet."""

    id: str
    tenant_id: str
    organizer_oid: str
    external_id: str
    subject: str
    join_web_url: str
    lobby_bypass: dict[str, Any]
    start: str
    end: str
    created: str
    participants: dict[str, Participant] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        """The onlineMeeting as Graph answers it."""
        return {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#onlineMeeting/$entity",
                "id": self.id, "externalId": self.external_id, "creationDateTime": self.created,
                "startDateTime": self.start, "endDateTime": self.end, "joinWebUrl": self.join_web_url,
                "subject": self.subject, "lobbyBypassSettings": self.lobby_bypass,
                "isEntryExitAnnounced": True, "allowedPresenters": "everyone",
                "chatInfo": {"threadId": f"19:meeting_{self.id}@thread.v2", "messageId": "0"},
                "participants": {"organizer": {"role": "presenter", "identity": {"user": {
                    "id": self.organizer_oid, "tenantId": self.tenant_id}}}, "attendees": []}}


@dataclass
class RecordedRequest:
    """One request as the double saw it (credentials removed)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: str


RosterListener = Callable[[OnlineMeeting, list[Participant]], Awaitable[None]]


class GraphDouble:
    """The double's state: meetings, access policies, faults, the request log and the roster listeners."""

    def __init__(self, entra: EntraDouble) -> None:
        self.entra = entra
        self.base = ""
        self.meetings: dict[str, OnlineMeeting] = {}
        self.by_external_id: dict[tuple[str, str, str], str] = {}
        # Per tenant, per application: the users an application access policy covers (None: the whole tenant).
        self.access_policies: dict[tuple[str, str], set[str] | None] = {}
        self.requests: list[RecordedRequest] = []
        self.latency = 0.0
        self.throttle_rate = 0.0
        self.throttle_next = 0
        self.retry_after = 1
        self.fail_next = 0
        self.fail_rate = 0.0
        self.fail_status = 503
        self.graph_calls = 0
        self.create_calls = 0
        self._throttle_acc = 0.0
        self._fail_acc = 0.0
        self.roster_listeners: list[RosterListener] = []

    # --- set-up, for tests and the demo ---------------------------------------------------------------

    def grant_policy(self, tenant_id: str, client_id: str, user_oid: str | None = None) -> None:
        """Grant-CsApplicationAccessPolicy: the application may act for this user (None: for everyone)."""
        key = (tenant_id, client_id)
        if user_oid is None:
            self.access_policies[key] = None
            return
        covered = self.access_policies.setdefault(key, set())
        if covered is not None:
            covered.add(user_oid)

    def covers(self, tenant_id: str, client_id: str, user_oid: str) -> bool:
        """Whether an application access policy lets the application act for the user."""
        key = (tenant_id, client_id)
        if key not in self.access_policies:
            return False
        covered = self.access_policies[key]
        return covered is None or user_oid in covered

    def graph_bodies(self) -> str:
        """Everything sent to Graph (paths, queries and bodies), for canary checks."""
        return "\n".join(f"{r.method} {r.path}?{r.query}\n{json.dumps(r.headers)}\n{r.body}" for r in self.requests)

    # --- Teams' lobby -----------------------------------------------------------------------------------

    async def join(self, meeting_id: str, name: str, *, organizer: bool = False) -> Participant:
        """Someone opens the join link: the organizer goes in, anyone else waits in the lobby."""
        meeting = self.meetings[meeting_id]
        bypass = meeting.lobby_bypass.get("scope") == "everyone"
        person = Participant(id=secrets.token_hex(8), display_name=name[:100],
                             role="organizer" if organizer else "guest",
                             state="inMeeting" if organizer or bypass else "lobby",
                             oid=meeting.organizer_oid if organizer else None)
        meeting.participants[person.id] = person
        await self._roster_changed(meeting)
        return person

    async def admit(self, meeting_id: str, participant_id: str) -> None:
        """The organizer admits someone from the lobby."""
        meeting = self.meetings[meeting_id]
        person = meeting.participants[participant_id]
        if person.state == "lobby":
            person.state = "inMeeting"
            await self._roster_changed(meeting)

    async def leave(self, meeting_id: str, participant_id: str) -> None:
        """Someone leaves the lobby or the meeting."""
        meeting = self.meetings[meeting_id]
        person = meeting.participants[participant_id]
        if person.state != "left":
            person.state = "left"
            await self._roster_changed(meeting)

    async def _roster_changed(self, meeting: OnlineMeeting) -> None:
        roster = [Participant(**vars(p)) for p in meeting.participants.values()]
        for listener in list(self.roster_listeners):
            try:
                await listener(meeting, roster)
            except Exception:  # a listener's bug must not break the lobby
                log.exception("a roster listener failed")

    # --- faults -----------------------------------------------------------------------------------------

    def _fault(self) -> web.Response | None:
        self.graph_calls += 1
        self._throttle_acc += self.throttle_rate
        throttled = self.throttle_next > 0 or self._throttle_acc >= 1.0
        if throttled:
            if self.throttle_next > 0:
                self.throttle_next -= 1
            else:
                self._throttle_acc -= 1.0
            return _graph_error(429, "TooManyRequests", "Too many requests. Please retry after the indicated time.",
                                headers={"Retry-After": str(self.retry_after)})
        self._fail_acc += self.fail_rate
        if self.fail_next > 0 or self._fail_acc >= 1.0:
            if self.fail_next > 0:
                self.fail_next -= 1
            else:
                self._fail_acc -= 1.0
            return _graph_error(self.fail_status, "ServiceNotAvailable" if self.fail_status == 503
                                else "InternalServerError", "The service is temporarily unavailable.")
        return None


def _graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return web.json_response({"error": {"code": code, "message": message, "innerError": {
        "date": now, "request-id": secrets.token_hex(16), "client-request-id": secrets.token_hex(16)}}},
        status=status, headers=headers)


def _state(request: web.Request) -> GraphDouble:
    return request.app[GRAPH]


@web.middleware
async def _record_and_delay(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    graph = _state(request)
    if graph.latency:
        await asyncio.sleep(graph.latency)
    if request.path.startswith(("/v1.0/", "/beta/")) or request.path.endswith("/oauth2/v2.0/token"):
        body = await request.text() if request.can_read_body else ""
        if request.path.endswith("/token"):
            body = "&".join(part for part in body.split("&")
                            if not part.startswith(("client_secret=", "client_assertion=", "code=",
                                                    "code_verifier=")))
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        graph.requests.append(RecordedRequest(request.method, request.path, request.query_string, headers, body))
    return await handler(request)


def _caller(request: web.Request) -> dict[str, Any] | web.Response:
    """The app token's claims, or Graph's refusal."""
    graph = _state(request)
    auth = request.headers.get("Authorization", "")
    claims = graph.entra.verify_access_token(auth[7:]) if auth.startswith("Bearer ") else None
    if claims is None:
        return _graph_error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
    if not set(claims.get("roles", [])) & set(MEETINGS_ROLES):
        return _graph_error(403, "Forbidden", "Missing role permissions on the request. API requires one of "
                                              "'OnlineMeetings.Read.All, OnlineMeetings.ReadWrite.All'.")
    return claims


def _organizer(request: web.Request, claims: dict[str, Any]) -> str | web.Response:
    graph = _state(request)
    user = request.match_info["user"]
    tenant = graph.entra.tenants[claims["tid"]]
    if user not in tenant.users:
        return _graph_error(404, "NotFound", "The user was not found in the tenant.")
    if not graph.covers(claims["tid"], claims["appid"], user):
        return _graph_error(403, "Forbidden", "No application access policy found for this app.")
    return user


def _datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


async def create_or_get(request: web.Request) -> web.Response:
    """POST /users/{user}/onlineMeetings/createOrGet: 201 the first time per externalId and organizer, then 200."""
    graph = _state(request)
    caller = _caller(request)
    if isinstance(caller, web.Response):
        return caller
    if caller.get("roles") and "OnlineMeetings.ReadWrite.All" not in caller["roles"]:
        return _graph_error(403, "Forbidden", "Missing role permissions on the request.")
    fault = graph._fault()
    if fault is not None:
        return fault
    organizer = _organizer(request, caller)
    if isinstance(organizer, web.Response):
        return organizer
    graph.create_calls += 1
    try:
        body = json.loads(await request.text())
    except ValueError:
        return _graph_error(400, "BadRequest", "Unable to read JSON request payload.")
    if not isinstance(body, dict):
        return _graph_error(400, "BadRequest", "The request payload must be an onlineMeeting object.")
    unknown = set(body) - CREATE_PROPERTIES
    if unknown:
        return _graph_error(400, "BadRequest", f"Invalid property '{sorted(unknown)[0][:64]}'.")
    external_id = body.get("externalId")
    if not isinstance(external_id, str) or not external_id.strip():
        return _graph_error(400, "BadRequest", "ExternalId is required for createOrGet.")
    for name in ("startDateTime", "endDateTime"):
        if name in body and not _datetime(body[name]):
            return _graph_error(400, "BadRequest", f"Invalid {name}.")
    lobby = body.get("lobbyBypassSettings", {"scope": "organization", "isDialInBypassEnabled": False})
    if not isinstance(lobby, dict) or lobby.get("scope", "organization") not in LOBBY_SCOPES \
            or not isinstance(lobby.get("isDialInBypassEnabled", False), bool) \
            or set(lobby) - {"scope", "isDialInBypassEnabled", "@odata.type"}:
        return _graph_error(400, "BadRequest", "Invalid lobbyBypassSettings.")
    subject = body.get("subject", "")
    if not isinstance(subject, str):
        return _graph_error(400, "BadRequest", "Invalid subject.")
    key = (caller["tid"], organizer, external_id)
    existing = graph.by_external_id.get(key)
    if existing is not None:
        return web.json_response(graph.meetings[existing].resource(), status=200)
    now = dt.datetime.now(dt.timezone.utc)
    meeting_id = "MSp" + secrets.token_urlsafe(24)
    thread = quote(f"19:meeting_{meeting_id}@thread.v2", safe="")
    meeting = OnlineMeeting(
        id=meeting_id, tenant_id=caller["tid"], organizer_oid=organizer, external_id=external_id, subject=subject,
        join_web_url=f"{graph.base}/teams/l/meetup-join/{thread}/0",
        lobby_bypass={"scope": lobby.get("scope", "organization"),
                      "isDialInBypassEnabled": lobby.get("isDialInBypassEnabled", False)},
        start=body.get("startDateTime") or now.isoformat(),
        end=body.get("endDateTime") or (now + dt.timedelta(hours=1)).isoformat(), created=now.isoformat())
    graph.meetings[meeting_id] = meeting
    graph.by_external_id[key] = meeting_id
    return web.json_response(meeting.resource(), status=201)


async def list_meetings(request: web.Request) -> web.Response:
    """GET /users/{user}/onlineMeetings?$filter=JoinWebUrl eq '...' (the only filter Graph takes here)."""
    graph = _state(request)
    caller = _caller(request)
    if isinstance(caller, web.Response):
        return caller
    fault = graph._fault()
    if fault is not None:
        return fault
    organizer = _organizer(request, caller)
    if isinstance(organizer, web.Response):
        return organizer
    wanted = request.query.get("$filter", "")
    prefix = "JoinWebUrl eq '"
    if not wanted.lower().startswith(prefix.lower()) or not wanted.endswith("'"):
        return _graph_error(400, "BadRequest", "Filter on JoinWebUrl is required.")
    url = wanted[len(prefix):-1]
    found = [m.resource() for m in graph.meetings.values()
             if m.organizer_oid == organizer and m.tenant_id == caller["tid"] and m.join_web_url == url]
    return web.json_response({"value": found})


async def get_meeting(request: web.Request) -> web.Response:
    """GET /users/{user}/onlineMeetings/{id}."""
    graph = _state(request)
    caller = _caller(request)
    if isinstance(caller, web.Response):
        return caller
    organizer = _organizer(request, caller)
    if isinstance(organizer, web.Response):
        return organizer
    meeting = graph.meetings.get(request.match_info["meeting"])
    if meeting is None or meeting.organizer_oid != organizer or meeting.tenant_id != caller["tid"]:
        return _graph_error(404, "NotFound", "The meeting was not found.")
    return web.json_response(meeting.resource())


# --- Teams' browser join ---------------------------------------------------------------------------------

def _teams_page(title: str, body: str, status: int = 200) -> web.Response:
    text = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"></head><body><main><h1 id=\"title\">"
            f"{html.escape(title)}</h1>{body}</main></body></html>")
    return web.Response(text=text, content_type="text/html", status=status)


def _meeting_of(request: web.Request) -> OnlineMeeting | None:
    graph = _state(request)
    thread = request.match_info["thread"]
    for meeting in graph.meetings.values():
        if f"19:meeting_{meeting.id}@thread.v2" == thread:
            return meeting
    return None


async def join_page(request: web.Request) -> web.Response:
    """The meeting's joinWebUrl: join as a guest (by name) or as the signed-in organizer."""
    meeting = _meeting_of(request)
    if meeting is None:
        return _teams_page("This meeting does not exist", "", status=404)
    action = html.escape(request.path)
    return _teams_page("Join the Teams meeting (Teams double)", (
        f'<form method="post" action="{action}/join"><label for="name">Type your name</label> '
        f'<input id="name" name="name" required maxlength="100"> <button type="submit" id="join">Join now</button>'
        f'</form><form method="post" action="{action}/join"><input type="hidden" name="organizer" value="1">'
        f'<button type="submit" id="join-organizer">Join as the organizer (signed in)</button></form>'))


async def join_post(request: web.Request) -> web.Response:
    """Someone joins: to the lobby, or in (the organizer)."""
    meeting = _meeting_of(request)
    if meeting is None:
        return _teams_page("This meeting does not exist", "", status=404)
    form = await request.post()
    organizer = form.get("organizer") == "1"
    name = str(form.get("name", "")).strip()
    if not organizer and not name:
        return _teams_page("Type your name to join", "", status=400)
    person = await _state(request).join(meeting.id, name or "Organizer", organizer=organizer)
    return web.Response(status=303, headers={"Location": f"/teams/meeting/{meeting.id}/p/{person.id}"})


async def participant_page(request: web.Request) -> web.Response:
    """Where a participant stands: the lobby, the meeting (the organizer sees the lobby to admit), or gone."""
    graph = _state(request)
    meeting = graph.meetings.get(request.match_info["meeting"])
    person = meeting.participants.get(request.match_info["participant"]) if meeting else None
    if meeting is None or person is None:
        return _teams_page("Not found", "", status=404)
    here = f"/teams/meeting/{meeting.id}/p/{person.id}"
    leave = f'<form method="post" action="{here}/leave"><button type="submit" id="leave">Leave</button></form>'
    if person.state == "lobby":
        return _teams_page("Someone in the meeting should let you in soon", f'<p id="state">lobby</p>{leave}')
    if person.state == "left":
        return _teams_page("You left the meeting", '<p id="state">left</p>')
    waiting = "".join(
        f'<li>{html.escape(p.display_name)} <form method="post" action="{here}/admit">'
        f'<input type="hidden" name="who" value="{p.id}"><button type="submit">Admit</button></form></li>'
        for p in meeting.participants.values() if p.state == "lobby") if person.role == "organizer" else ""
    return _teams_page("You are in the meeting", f'<p id="state">inMeeting</p><ul id="lobby">{waiting}</ul>{leave}')


async def participant_post(request: web.Request) -> web.Response:
    """Leave, or (the organizer) admit someone from the lobby."""
    graph = _state(request)
    meeting = graph.meetings.get(request.match_info["meeting"])
    person = meeting.participants.get(request.match_info["participant"]) if meeting else None
    if meeting is None or person is None:
        return _teams_page("Not found", "", status=404)
    if request.match_info["action"] == "leave":
        await graph.leave(meeting.id, person.id)
    else:
        who = str((await request.post()).get("who", ""))
        if person.role != "organizer" or who not in meeting.participants:
            return _teams_page("Only the organizer admits people", "", status=403)
        await graph.admit(meeting.id, who)
    return web.Response(status=303, headers={"Location": f"/teams/meeting/{meeting.id}/p/{person.id}"})


def create_graph_double_app(*, entra: EntraDouble | None = None) -> web.Application:
    """The Graph and Entra double as one application; set `base` (its https origin) once it listens, through
    `set_base(app, origin)`."""
    app = web.Application(middlewares=[_record_and_delay])
    app[ENTRA] = entra or EntraDouble()
    app[GRAPH] = GraphDouble(app[ENTRA])
    app[ROSTER_LISTENERS] = app[GRAPH].roster_listeners
    entra_routes.setup(app)
    for version in ("v1.0", "beta"):
        app.router.add_post(f"/{version}/users/{{user}}/onlineMeetings/createOrGet", create_or_get)
        app.router.add_get(f"/{version}/users/{{user}}/onlineMeetings", list_meetings)
        app.router.add_get(f"/{version}/users/{{user}}/onlineMeetings/{{meeting}}", get_meeting)
    app.router.add_get("/teams/l/meetup-join/{thread}/0", join_page)
    app.router.add_post("/teams/l/meetup-join/{thread}/0/join", join_post)
    app.router.add_get("/teams/meeting/{meeting}/p/{participant}", participant_page)
    app.router.add_post("/teams/meeting/{meeting}/p/{participant}/{action:leave|admit}", participant_post)
    graph_events.install(app)  # subscriptions, notifications of the roster, attendance reports
    return app


def set_base(app: web.Application, origin: str) -> None:
    """Tell the double its own https origin (issuers, token endpoints and joinWebUrls are built from it)."""
    app[ENTRA].base = origin.rstrip("/")
    app[GRAPH].base = origin.rstrip("/")


@asynccontextmanager
async def serve(app: web.Application, ssl_context: Any, host: str = "127.0.0.1",
                port: int = 0) -> AsyncIterator[str]:
    """Serve the double over https; yields its origin, stops on the way out (for `async with`-style use)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    origin = f"https://{host}:{bound}"
    set_base(app, origin)
    try:
        yield origin
    finally:
        await runner.cleanup()
