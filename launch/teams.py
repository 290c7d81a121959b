"""The Teams side of the launch: the clinician's "Join in Teams" (or one-time Microsoft 365 sign-in in a
pop-up, or what went wrong, with a retry), the sign-in's callback, and the patient's hand-off to Teams.

Entra's pages refuse to be framed and the provider view lives in the EHR's iframe, so the sign-in runs in a
pop-up window: the view links straight to Entra's authorize address (state bound server-side to the
clinician's EHR user, PKCE and nonce kept sealed), the pop-up comes back to /teams/callback, which keeps only
the link (EHR user -> Entra object ID and tenant) and closes itself; the view, watching the pop-up, reloads and
makes the meeting.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import aiohttp_jinja2
from aiohttp import web

from gateway import teams
from gateway.appkeys import DB, GRAPH, MEETINGS, SEALER, SETTINGS
from gateway.errors import GraphError, GraphPolicyDenied, LaunchRefused, StateInvalid
from gateway.security import new_token, token_hash

from . import store

log = logging.getLogger(__name__)

SIGN_IN_TTL = 600
CALLBACK_PATH = "/teams/callback"


def redirect_uri(app: web.Application) -> str:
    """The redirect URI to register in the organisation's Entra application."""
    return f"{app[SETTINGS].public_url}{CALLBACK_PATH}"


class StartedMeetings:
    """Meetings being made in this process, by visit: started at the launch's callback (beside the view's FHIR
    reads), awaited by the provider view; concurrent launches of one visit share one Graph call."""

    def __init__(self) -> None:
        self._tasks: dict[UUID, asyncio.Task[tuple[str, str | None]]] = {}

    def start(self, app: web.Application, visit_id: UUID, organizer: teams.Organizer) -> None:
        """Make the visit's meeting in the background, unless that is under way already."""
        if visit_id in self._tasks:
            return
        provider = app[MEETINGS][teams.PROVIDER]
        assert isinstance(provider, teams.TeamsMeetings)
        deadline = asyncio.get_running_loop().time() + app[SETTINGS].graph_budget
        task = asyncio.create_task(teams.make_meeting(app[DB], app[SEALER], provider, visit_id, organizer,
                                                      deadline))
        self._tasks[visit_id] = task
        task.add_done_callback(lambda done: self._done(visit_id, done))

    def _done(self, visit_id: UUID, task: asyncio.Task[tuple[str, str | None]]) -> None:
        if self._tasks.get(visit_id) is task:
            del self._tasks[visit_id]
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here, so a failure no view came for is not reported as lost; the view explains it.
            log.warning("Teams meeting for visit %s not made at launch: %s", visit_id,
                        getattr(task.exception(), "reason", type(task.exception()).__name__))

    async def wait(self, visit_id: UUID) -> None:
        """Wait for the visit's meeting under way here, if any (its failure is the view's to retry)."""
        task = self._tasks.get(visit_id)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    def close(self) -> None:
        """Stop every meeting still being made (the process is stopping)."""
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()


STARTED_MEETINGS = web.AppKey("started_meetings", StartedMeetings)


async def started_meetings_ctx(app: web.Application) -> AsyncIterator[None]:
    """Hold this process's meetings in the making, and stop them at its end."""
    app[STARTED_MEETINGS] = StartedMeetings()
    try:
        yield
    finally:
        app[STARTED_MEETINGS].close()


async def provider_context(app: web.Application, session: store.ProviderSession) -> dict[str, Any]:
    """What the provider view shows of a Teams visit: the join address, or the sign-in, or a problem with a
    retry. Waits for the meeting its launch started; makes it if the visit still has none and the clinician is
    linked (a first launch after the sign-in, another process, or a retry after Graph was down)."""
    sealer = app[SEALER]
    await app[STARTED_MEETINGS].wait(session.visit_id)
    async with app[DB].acquire() as conn:
        row = await conn.fetchrow(teams.Q["meeting_of_visit"], session.visit_id)
        if row["meeting_join_ref"] is not None:
            return {"join_url": sealer.unseal(row["meeting_join_ref"], teams.JOIN_URL_CONTEXT)}
        found = await teams.organizer_for(conn, sealer, row["configuration_id"], session.fhir_user) \
            if session.fhir_user else None
        if found is None:
            return {"problem": "not_set_up"}
        organisation_id, tenant, oid = found
        if oid is None:
            state = new_token()
            flow = await app[GRAPH].begin_sign_in(tenant, redirect_uri(app), state)
            assert session.fhir_user is not None
            await teams.store_sign_in(conn, sealer, token_hash(state), organisation_id, session.visit_id,
                                      session.fhir_user, flow, SIGN_IN_TTL)
            return {"sign_in_url": flow["auth_uri"]}
    provider = app[MEETINGS][teams.PROVIDER]
    assert isinstance(provider, teams.TeamsMeetings)
    deadline = asyncio.get_running_loop().time() + app[SETTINGS].graph_budget
    try:
        _, join_url = await teams.make_meeting(app[DB], sealer, provider, session.visit_id,
                                               teams.Organizer(organisation_id, tenant, oid), deadline)
    except GraphPolicyDenied:
        return {"problem": "policy"}
    except GraphError as exc:
        log.warning("Teams meeting for visit %s not made: %s", session.visit_id, exc.reason)
        return {"problem": "unavailable", "reason": exc.reason}
    return {"join_url": join_url} if join_url else {"problem": "unavailable", "reason": "graph_invalid"}


async def sign_in_callback(request: web.Request) -> web.Response:
    """GET /teams/callback: the pop-up's return from Microsoft; keeps the clinician's link, then closes."""
    app = request.app
    state = request.query.get("state", "")
    if not state or len(state) > 128:
        raise StateInvalid("This Microsoft sign-in answer cannot be used. Start it again from the visit.")
    sealer = app[SEALER]
    async with app[DB].acquire() as conn:
        taken = await teams.take_sign_in(conn, sealer, token_hash(state))
        if taken is None:
            raise StateInvalid("This Microsoft sign-in has expired or was already used. Start it again from the "
                               "visit.")
        organisation_id, fhir_user, flow = taken
        tenant = await teams.tenant_of(conn, sealer, organisation_id)
    if tenant is None:
        raise LaunchRefused("Your organisation's Teams settings were removed.", reason="teams_not_set_up")
    response = {k: v for k, v in request.query.items() if k in ("code", "state", "error", "session_state")}
    oid, tenant_id = await app[GRAPH].finish_sign_in(tenant, flow, response)
    async with app[DB].acquire() as conn:
        await teams.save_link(conn, sealer, organisation_id, fhir_user, oid, tenant_id)
    log.info("a clinician linked their Microsoft 365 account (organisation %s)", organisation_id)
    page = aiohttp_jinja2.render_template("teams_signed_in.html", request, {})
    page.headers["Cache-Control"] = "no-store"
    return page


async def patient_join_url(app: web.Application, visit_id: Any) -> str | None:
    """Where an admitted patient or guest of a Teams visit goes: the meeting's join address (Teams' own lobby
    holds them there), or None for a built-in visit."""
    async with app[DB].acquire() as conn:
        return await teams.join_url_of(conn, app[SEALER], visit_id)


ROUTES: list[web.AbstractRouteDef] = [web.get(CALLBACK_PATH, sign_in_callback, name="teams_callback")]
