"""Live presence from Teams end to end with the Graph and Entra double: the launch's meeting is subscribed to
through the gateway's Graph client (app token from the double's Entra, the double checking our webhook's
handshake), the Teams join page's roster reaches the event log as the clinician and the patient who came through
our lobby, the attendance report then adds nothing, and nothing about the patient goes to Graph."""
from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from uuid import UUID

import aiohttp
import pytest

from config_portal.organisations import NewOrganisation, add_organisation
from gateway import participants, teams
from gateway.appkeys import DB, SEALER
from presence.appkeys import TEAMS
from presence.eventlog import record_event
from sandbox import graph_events

from ..conftest import database_text, running_stack
from .conftest import ORG, TeamsVisit
from .graph_helpers import CLIENT_ID, CLINICIAN_OID, TENANT_ID, graph_double

PATIENT_NAME = "Quintessa Canarypatient"


@pytest.fixture(scope="session")
def notification_key_pem() -> bytes:
    """The gateway's key for Graph's notifications (once per session: RSA is slow)."""
    return graph_events.private_key_pem()


@pytest.fixture
async def live_teams(database_url: str, signing_key_pem: bytes, tmp_path: Path,
                     notification_key_pem: bytes) -> AsyncIterator[TeamsVisit]:
    """As tests/teams/conftest.py's teams_visit, with a notification key and quick workers; the application
    also has the attendance reports' role."""
    async with graph_double(tmp_path) as double:
        double.entra.tenants[TENANT_ID].apps[CLIENT_ID].roles.add("OnlineMeetingArtifact.Read.All")
        overrides = {"graph_url": double.origin, "entra_authority_host": double.origin, "idp_ca_file": double.ca_path,
                     "graph_budget": 3.0, "graph_notification_key_pem": notification_key_pem,
                     "graph_poll_interval": 0.05, "graph_reconcile_delay": 0.0}
        async with running_stack(database_url, signing_key_pem, lambda gw, sb: overrides) as stack:
            double.entra.tenants[TENANT_ID].apps[CLIENT_ID].redirect_uris.add(f"{stack.gateway_url}/teams/callback")
            app = stack.gateway_app
            async with app[DB].acquire() as conn:
                org_id = await add_organisation(conn, app[SEALER], NewOrganisation(
                    slug=ORG, name="Teams Health", idp_kind="entra", tenant_id=TENANT_ID,
                    client_id="portal-client", client_secret="portal-secret"), "test-operator")
                await conn.execute("UPDATE configurations SET meeting_provider = 'teams', organisation_id = $1 "
                                   "WHERE id = $2", org_id, stack.configuration_id)
                await teams.save_tenant(conn, app[SEALER], org_id, double.tenant(), "test-operator", None)
            ssl_context = ssl.create_default_context(cafile=str(double.ca_path))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context)) as popup:
                yield TeamsVisit(stack, double, org_id, popup)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Poll until the predicate holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_teams_visit_has_live_presence_from_the_roster(live_teams: TeamsVisit) -> None:
    stack, double = live_teams.stack, live_teams.double
    _, page = await live_teams.provider_page()
    assert (await live_teams.sign_in(page, CLINICIAN_OID)).status == 200
    await live_teams.provider_page()  # the launch that makes the meeting, and (in the background) subscribes
    pool = stack.gateway_app[DB]

    async def subscribed() -> bool:
        return await pool.fetchval("SELECT count(*) FROM graph_subscriptions WHERE status = 'active'") == 1

    await wait_for(subscribed)
    meeting = next(iter(double.graph.meetings.values()))
    visit: UUID = await pool.fetchval("SELECT id FROM visits")
    async with pool.acquire() as conn:
        patient = await participants.patient_participant(conn, visit)
    for kind in ("lobby_entered", "left"):  # the patient came through our lobby and was handed over
        await record_event(pool, visit, patient, kind)

    doctor = await double.graph.join(meeting.id, "Dr Alex Example", organizer=True)
    person = await double.graph.join(meeting.id, PATIENT_NAME)
    await double.graph.admit(meeting.id, person.id)

    async def kinds() -> list[tuple[str, str, UUID]]:
        rows = await pool.fetch("SELECT e.kind, p.role, p.id FROM presence_events e JOIN participants p"
                                " ON p.id = e.participant_id WHERE e.visit_id = $1 AND e.kind IN"
                                " ('connected', 'disconnected') ORDER BY e.id", visit)
        return [(r["role"], r["kind"], r["id"]) for r in rows]

    async def both_in() -> bool:
        return {(role, kind) for role, kind, _ in await kinds()} == {("provider", "connected"),
                                                                     ("patient", "connected")}

    await wait_for(both_in)
    assert [pid for role, _, pid in await kinds() if role == "patient"] == [patient]
    await double.graph.leave(meeting.id, person.id)
    await double.graph.leave(meeting.id, doctor.id)

    async def both_out() -> bool:
        return len(await kinds()) == 4

    await wait_for(both_out)
    # Each notification came with a validationToken, checked against the keys of the double's Entra, read once.
    assert double.entra.keys_served == 1
    outcomes = stack.gateway_app[TEAMS].outcomes
    assert outcomes.get("applied", 0) >= 4 and "bad_token" not in outcomes
    # Everything the attendance report shows was seen live: reconciling adds nothing.
    assert await stack.gateway_app[TEAMS].reconcile_visit(visit) == 0
    assert len(await kinds()) == 4

    sent = double.graph.graph_bodies()
    assert PATIENT_NAME not in sent and "enc-1" not in sent and "pat-1" not in sent
    async with pool.acquire() as conn:
        _tables, text = await database_text(conn)
    assert PATIENT_NAME not in text and person.id not in text
