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

from gateway.appkeys import DB, GRAPH, SETTINGS
from gateway.errors import BadRequest, GraphRefused, GraphUnavailable, WebhookRefused
from gateway.graph import GraphClient, TeamsTenant
from gateway.web import MISSING, csrf_exempt, json_body, serves_json

from .appkeys import ANNOUNCER, TEAMS, TEAMS_TENANTS
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
    """presence.teams_events' way to Graph, through the gateway's one Graph client (gateway.graph).

    Background work (renewals, lifecycle, reconciliation) knows a subscription's tenant by its id only: the
    tenants this process met in subscribe_meeting are remembered in memory (their credentials are never
    written by this module), others are asked of `TEAMS_TENANTS` (the organisation's Teams settings).
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self.tenants: dict[str, TeamsTenant] = {}

    async def __call__(self, tenant_id: str, method: str, path: str, *, json: object = None,
                       beta: bool = False) -> tuple[int, object]:
        """Call Graph; Graph's 4xx refusals come back as their status (the caller decides), faults raise."""
        tenant = self.tenants.get(tenant_id)
        lookup = self._app.get(TEAMS_TENANTS)
        if tenant is None and lookup is not None:
            tenant = await lookup(tenant_id)
        if tenant is None:
            raise GraphUnavailable("No Teams settings are known for this tenant.", reason="graph_tenant_unknown")
        client: GraphClient = self._app[GRAPH]
        try:
            # A POST that failed with a 5xx may have created the subscription: not retried blindly.
            answer = await client.request(tenant, method, path, json=json, beta=beta,
                                          retry_server_errors=method != "POST")
        except GraphRefused as exc:
            return exc.upstream_status or 400, None
        return answer.status, answer.json


async def subscribe_meeting(app: web.Application, tenant: TeamsTenant, visit_id: UUID, join_web_url: str, *,
                            organizer_id: str, meeting_id: str) -> bool:
    """Subscribe to a Teams visit's meeting call events (once per visit); True when a subscription is live.

    Called by the Teams meeting provider after createOrGet. It never raises for Graph's refusals: presence in
    Teams is then not live, the visit goes on, and the attendance report still fills in after the call.
    """
    teams = app[TEAMS]
    if isinstance(teams.port, ClientPort):
        teams.port.tenants[tenant.tenant_id] = tenant
    return await teams.subscribe(tenant.tenant_id, visit_id, join_web_url, organizer_id=organizer_id,
                                 meeting_id=meeting_id)


async def _worker(app: web.Application) -> AsyncIterator[None]:
    teams = TeamsEvents(app[DB], app[SETTINGS], app[ANNOUNCER], ClientPort(app))
    app[TEAMS] = teams
    teams.intake.start()
    task = asyncio.create_task(teams.run()) if app[SETTINGS].graph_worker_enabled else None
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await teams.intake.stop()


def setup(app: web.Application) -> None:
    """Mount the webhook routes and the worker (after the announcer's cleanup context)."""
    app.router.add_post(NOTIFICATION_PATH, graph_notifications, name="graph_notifications")
    app.router.add_post(LIFECYCLE_PATH, graph_lifecycle, name="graph_lifecycle")
    app.cleanup_ctx.append(_worker)
