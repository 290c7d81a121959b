"""A Teams visit over HTTP: the clinician's one-time sign-in, one meeting per visit whatever the concurrency,
Graph's throttling and outages, the access policy's refusal, and nothing about the patient sent to Graph."""
from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import logging
import re
from typing import Any

import msal
import pytest
from yarl import URL

from gateway import joinlinks, participants
from gateway.appkeys import DB, GRAPH, MEETINGS
from gateway.teams import TeamsMeetings
from presence import eventlog

from ..conftest import database_text, reason_code
from ..test_privacy import CANARIES, _seed_canary_patient
from .conftest import TeamsVisit
from .graph_helpers import CLINICIAN_OID, OTHER_OID


async def _linked(visit: TeamsVisit, oid: str = CLINICIAN_OID) -> None:
    _, page = await visit.provider_page()
    callback = await visit.sign_in(page, oid)
    assert callback.status == 200, await callback.text()


async def test_first_launch_offers_the_sign_in_then_later_launches_go_straight_in(teams_visit: TeamsVisit) -> None:
    _, page = await teams_visit.provider_page()
    assert 'id="teams-sign-in"' in page and 'id="join-teams"' not in page
    callback = await teams_visit.sign_in(page, CLINICIAN_OID)
    assert callback.status == 200 and "teams-signed-in" in await callback.text()
    rows = await teams_visit.stack.gateway_app[DB].fetch("SELECT entra_oid, entra_tenant_id FROM teams_links")
    assert [r["entra_oid"] for r in rows] == [CLINICIAN_OID]
    # Only the link is kept: MSAL's one cache holds no account, no refresh or access token of the clinician.
    cache = teams_visit.stack.gateway_app[GRAPH].token_cache
    for kind in (msal.TokenCache.CredentialType.ACCOUNT, msal.TokenCache.CredentialType.REFRESH_TOKEN,
                 msal.TokenCache.CredentialType.ID_TOKEN):
        assert not list(cache.search(kind)), kind
    _, again = await teams_visit.provider_page()
    join = re.search(r'id="join-teams" href="([^"]+)"', again)
    assert join and join.group(1).startswith(teams_visit.double.origin + "/teams/l/meetup-join/"), again
    meeting = next(iter(teams_visit.double.graph.meetings.values()))
    assert meeting.organizer_oid == CLINICIAN_OID
    assert meeting.lobby_bypass == {"scope": "organizer", "isDialInBypassEnabled": False}


async def test_a_used_or_unknown_sign_in_state_is_refused(teams_visit: TeamsVisit) -> None:
    r = await teams_visit.stack.get(f"{teams_visit.stack.gateway_url}/teams/callback?state=nope&code=x")
    assert r.status == 400 and reason_code(await r.text()) == "invalid_state"


async def test_ten_concurrent_launches_of_one_encounter_give_one_meeting(teams_visit: TeamsVisit) -> None:
    await _linked(teams_visit)
    named: list[str] = []

    async def on_meeting(visit_id: Any, organizer: Any, meeting: Any) -> None:
        named.append(meeting.meeting_id)

    provider = teams_visit.stack.gateway_app[MEETINGS]["teams"]
    assert isinstance(provider, TeamsMeetings)
    provider.meeting_listeners.append(on_meeting)
    launches = [teams_visit.stack.new_launch() for _ in range(10)]
    pages = await asyncio.gather(*(teams_visit.provider_page(launch) for launch in launches))
    urls = {re.search(r'id="join-teams" href="([^"]+)"', page).group(1) for _, page in pages}  # type: ignore[union-attr]
    assert len(urls) == 1
    assert len(teams_visit.double.graph.meetings) == 1
    rows = await teams_visit.stack.gateway_app[DB].fetch("SELECT meeting_id FROM visits")
    assert len(rows) == 1 and rows[0]["meeting_id"] == next(iter(teams_visit.double.graph.meetings))
    assert named == [rows[0]["meeting_id"]]  # the listeners hear of the meeting once


async def test_throttling_within_the_budget_is_retried(teams_visit: TeamsVisit) -> None:
    await _linked(teams_visit)
    graph = teams_visit.double.graph
    graph.throttle_next, graph.retry_after = 2, 0
    _, page = await teams_visit.provider_page()
    assert 'id="join-teams"' in page, page
    assert graph.graph_calls >= 3


async def test_a_server_error_storm_gives_a_retry_page_not_a_500(teams_visit: TeamsVisit) -> None:
    await _linked(teams_visit)
    graph = teams_visit.double.graph
    graph.fail_next = 10_000
    url, page = await teams_visit.provider_page()
    assert 'id="teams-problem"' in page and 'id="teams-retry"' in page and "graph_unavailable" in page
    graph.fail_next = 0
    again = await teams_visit.stack.get(url)
    assert 'id="join-teams"' in await again.text()


async def test_throttling_past_the_budget_gives_a_retry_page(teams_visit: TeamsVisit) -> None:
    await _linked(teams_visit)
    graph = teams_visit.double.graph
    graph.throttle_next, graph.retry_after = 10_000, 60
    _, page = await teams_visit.provider_page()
    assert 'id="teams-retry"' in page and "graph_throttled" in page


async def test_a_clinician_outside_the_access_policy_gets_a_plain_message_and_the_admin_the_fix(
        teams_visit: TeamsVisit) -> None:
    await _linked(teams_visit, OTHER_OID)
    _, page = await teams_visit.provider_page()
    assert 'id="teams-problem"' in page and "administrator" in page
    assert "Grant-CsApplicationAccessPolicy" not in page and "Traceback" not in page
    problem = await teams_visit.stack.gateway_app[DB].fetchval("SELECT last_problem FROM teams_tenants")
    assert "Grant-CsApplicationAccessPolicy" in problem and OTHER_OID in problem


async def test_nothing_about_the_patient_goes_to_graph_or_stays_with_us(teams_visit: TeamsVisit,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    stack = teams_visit.stack
    _seed_canary_patient(stack)
    launch = stack.new_launch(patient=CANARIES["patient_id"], encounter=CANARIES["encounter_id"])
    _, first = await teams_visit.provider_page(launch)
    assert (await teams_visit.sign_in(first, CLINICIAN_OID)).status == 200
    _, page = await teams_visit.provider_page(
        stack.new_launch(patient=CANARIES["patient_id"], encounter=CANARIES["encounter_id"]))
    assert 'id="join-teams"' in page and CANARIES["family"] in page  # the banner read it live
    sent = teams_visit.double.graph.graph_bodies().lower()
    async with stack.gateway_app[DB].acquire() as conn:
        _, stored = await database_text(conn)
    ours = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in caplog.records
                     if not r.name.startswith("sandbox")).lower()
    for name, value in CANARIES.items():
        assert value.lower() not in sent, f"{name} was sent to Graph"
        assert value.lower() not in stored.lower(), f"{name} landed in the database"
        assert value.lower() not in ours, f"{name} landed in the logs"
    body = json.loads(next(r.body for r in teams_visit.double.graph.requests if r.path.endswith("/createOrGet")))
    visit_id = await stack.gateway_app[DB].fetchval("SELECT id::text FROM visits")
    assert body == {"externalId": visit_id, "subject": "Video visit",
                    "lobbyBypassSettings": {"scope": "organizer", "isDialInBypassEnabled": False}}


async def test_an_admitted_patient_is_handed_to_the_teams_join(teams_visit: TeamsVisit) -> None:
    await _linked(teams_visit)
    _, page = await teams_visit.provider_page()
    join = re.search(r'id="join-teams" href="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    stack = teams_visit.stack
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id = await conn.fetchval("SELECT id FROM visits")
        patient = await participants.patient_participant(conn, visit_id)
        session = await joinlinks.create_session(conn, patient, visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    stack.browser.cookie_jar.update_cookies({joinlinks.PARTICIPANT_COOKIE: session.handle}, URL(stack.gateway_url))
    waiting = await stack.get(f"{stack.gateway_url}/room")
    assert waiting.status == 303 and waiting.headers["Location"] == "/lobby"  # our lobby and device test first
    await eventlog.record_event(stack.gateway_app[DB], visit_id, patient, "admitted")
    handed = await stack.get(f"{stack.gateway_url}/room")
    assert handed.status == 303 and handed.headers["Location"] == html.unescape(join)


async def test_a_link_from_another_tenant_asks_for_the_sign_in_again(teams_visit: TeamsVisit) -> None:
    await _linked(teams_visit)
    await teams_visit.stack.gateway_app[DB].execute(
        "UPDATE teams_links SET entra_tenant_id = '00000000-0000-0000-0000-000000000000'")
    _, page = await teams_visit.provider_page()
    assert 'id="teams-sign-in"' in page and not teams_visit.double.graph.meetings


async def test_two_processes_naming_one_meeting_at_once_agree_and_only_one_names_it(teams_visit: TeamsVisit) -> None:
    from gateway.appkeys import SEALER
    from gateway.meetings import Meeting
    from gateway.teams import set_meeting
    await teams_visit.provider_page()  # a visit without a meeting (the clinician is not linked)
    pool, sealer = teams_visit.stack.gateway_app[DB], teams_visit.stack.gateway_app[SEALER]
    visit_id = await pool.fetchval("SELECT id FROM visits")
    first = Meeting("teams", "m-1", "https://teams.example/l/meetup-join/1")
    async with pool.acquire() as holder, pool.acquire() as other:
        transaction = holder.transaction()
        await transaction.start()
        assert await set_meeting(holder, sealer, visit_id, first) == ("m-1", first.join_url, True)
        waiting = asyncio.create_task(set_meeting(other, sealer, visit_id, Meeting("teams", "m-2", "https://x/2")))
        await asyncio.sleep(0.2)  # it waits on the row lock, with a snapshot from before the commit
        await transaction.commit()
        assert await waiting == ("m-1", first.join_url, False)


async def test_a_sign_in_whose_clinician_session_ended_is_refused(teams_visit: TeamsVisit) -> None:
    _, page = await teams_visit.provider_page()
    await teams_visit.stack.gateway_app[DB].execute("UPDATE provider_sessions SET expires_at = now()")
    callback = await teams_visit.sign_in(page, CLINICIAN_OID)
    assert callback.status == 400 and reason_code(await callback.text()) == "invalid_state"
    assert not await teams_visit.stack.gateway_app[DB].fetch("SELECT 1 FROM teams_links")
