"""The webhook Graph calls with a Teams meeting's change and lifecycle notifications, and its worker's lifetime.

Server to server: outside the EHR's frame, no cookies and no CSRF check (the clientState of each notification
proves it, see presence.teams_events). The handler answers Graph's validation handshake, checks what is cheap,
queues durably and answers 202; the worker does the rest.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID

from aiohttp import web

from gateway import teams
from gateway.appkeys import DB, GRAPH, MEETINGS, SEALER, SETTINGS
from gateway.errors import BadRequest, GraphRefused, GraphUnavailable, WebhookRefused
from gateway.graph import TeamsTenant
from gateway.meetings import Meeting
from gateway.web import MISSING, csrf_exempt, json_body, serves_json

from .appkeys import ANNOUNCER, TEAMS
from .teams_events import LIFECYCLE_PATH, NOTIFICATION_PATH, TeamsEvents

_MAX_TOKEN = 2048  # a validationToken longer than this is not Graph's


def _validation(request: web.Request) -> web.Response | None:
    token = request.query.get("validationToken")
    if token is None:
        return None
    if not token or len(token) > _MAX_TOKEN:
        raise BadRequest("The validation token is not one Graph sends.", reason="malformed_notification")
    # Graph wants the token back as it sent it (decoded), as plain text, within ten seconds.
    return web.Response(text=token, content_type="text/plain")


async def _receive(request: web.Request, *, lifecycle: bool) -> web.Response:
    answer = _validation(request)
    if answer is not None:
        return answer
    teams = request.app[TEAMS]
    document = json_body(request)  # parsed and checked once, by the input check
    if document is MISSING:
        raise BadRequest("Graph's notifications are JSON (application/json).", reason="malformed_json")
    rows = await teams.screen(document, lifecycle=lifecycle, text=(await request.read()).decode())
    if not rows:
        raise WebhookRefused("No notification in this call is for a subscription of ours.")
    await teams.intake.put(rows)
    return web.Response(status=202)


@csrf_exempt
@serves_json
async def graph_notifications(request: web.Request) -> web.Response:
    """POST /graph/notifications: Graph's change notifications (and its validation handshake)."""
    return await _receive(request, lifecycle=False)


@csrf_exempt
@serves_json
async def graph_lifecycle(request: web.Request) -> web.Response:
    """POST /graph/lifecycle: Graph's lifecycle notifications (and its validation handshake)."""
    return await _receive(request, lifecycle=True)


class ClientPort:
    """presence.teams_events' way to Graph: the gateway's one Graph client (gateway.graph), as an organisation's
    Teams application. A subscription names its organisation (its tenant_key); that organisation's Teams settings
    are read from the database (gateway.teams) the first time this process needs them, then kept in memory.
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.tenants: dict[str, TeamsTenant] = {}

    async def _tenant(self, tenant_key: str) -> TeamsTenant | None:
        tenant = self.tenants.get(tenant_key)
        if tenant is None and tenant_key.isdigit():
            async with self._app[DB].acquire() as conn:
                tenant = await teams.tenant_of(conn, self._app[SEALER], int(tenant_key))
            if tenant is not None:
                self.tenants[tenant_key] = tenant
        return tenant

    async def __call__(self, tenant_key: str, method: str, path: str, *, json: object = None,
                       beta: bool = False) -> tuple[int, object]:
        """Call Graph; Graph's 4xx refusals come back as their status (the caller decides), faults raise."""
        tenant = await self._tenant(tenant_key)
        if tenant is None:
            raise GraphUnavailable("No Teams settings are known for this organisation.",
                                   reason="graph_tenant_unknown")
        try:
            # A POST that failed with a 5xx may have created the subscription: not retried blindly.
            answer = await self._app[GRAPH].request(tenant, method, path, json=json, beta=beta,
                                                    retry_server_errors=method != "POST")
        except GraphRefused as exc:
            return exc.upstream_status or 400, None
        return answer.status, answer.json

    async def validation_token(self, tenant_key: str, token: str, *, at: float) -> tuple[float, bool]:
        """Check a notification's validationToken against Entra's keys for the organisation's application (the
        worker's TokenCheck); raises as gateway.graph.GraphClient.validation_token does."""
        tenant = await self._tenant(tenant_key)
        if tenant is None:
            raise GraphUnavailable("No Teams settings are known for this organisation.",
                                   reason="graph_tenant_unknown")
        return await self._app[GRAPH].validation_token(tenant, token, at=at)


async def subscribe_meeting(app: web.Application, organizer: teams.Organizer, visit_id: UUID, join_web_url: str,
                            meeting_id: str) -> bool:
    """Subscribe to a Teams visit's meeting call events (once per visit); True when a subscription is live.

    The Teams meeting provider calls it (through `TeamsMeetings.meeting_listeners`, in the background) once
    a visit's meeting stands. It never raises for Graph's refusals: presence in Teams is then not live, the visit
    goes on, and the attendance report fills in after the call.
    """
    events = app[TEAMS]
    key = str(organizer.organisation_id)
    if isinstance(events.port, ClientPort):
        events.port.tenants[key] = organizer.tenant
    return await events.subscribe(key, visit_id, join_web_url, organizer_id=organizer.oid, meeting_id=meeting_id)


def _meeting_listener(app: web.Application) -> teams.MeetingListener:
    async def on_meeting(visit_id: UUID, organizer: teams.Organizer, meeting: Meeting) -> None:
        if meeting.join_url is not None:
            # Not awaited: the meeting is the clinician's to use now, while Graph checks our webhook.
            app[TEAMS].spawn(subscribe_meeting(app, organizer, visit_id, meeting.join_url, meeting.meeting_id))

    return on_meeting


async def _worker(app: web.Application) -> AsyncIterator[None]:
    port = ClientPort(app)
    events = TeamsEvents(app[DB], app[SETTINGS], app[ANNOUNCER], port, port.validation_token)
    app[TEAMS] = events
    provider = app[MEETINGS].get(teams.PROVIDER)
    listener = _meeting_listener(app)
    if isinstance(provider, teams.TeamsMeetings):
        provider.meeting_listeners.append(listener)
    events.intake.start()
    task = asyncio.create_task(events.run()) if app[SETTINGS].graph_worker_enabled else None
    yield
    if isinstance(provider, teams.TeamsMeetings):
        provider.meeting_listeners.remove(listener)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await events.stop()


def setup(app: web.Application) -> None:
    """Mount the webhook routes and the worker (after the announcer's cleanup context)."""
    app.router.add_post(NOTIFICATION_PATH, graph_notifications, name="graph_notifications")
    app.router.add_post(LIFECYCLE_PATH, graph_lifecycle, name="graph_lifecycle")
    app.cleanup_ctx.append(_worker)
