"""The patient portal launch: SMART launch with patient context from the sandbox's MyChart-like portal into
the lobby, on the same visit a clinician's launch of that encounter opens."""
from __future__ import annotations

import logging
import re
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
from yarl import URL

from gateway import joinlinks
from gateway.appkeys import DB
from tests.conftest import Stack, database_text, reason_code
from tests.test_privacy import CANARIES, _seed_canary_patient

from .conftest import get_page


def patient_launch(stack: Stack, patient: str = "pat-1", encounter: str | None = "enc-1") -> str:
    """A launch context as the portal creates it: a patient, no clinician."""
    from sandbox import create_launch

    return create_launch(stack.sandbox_app, practitioner_id=None, patient_id=patient, encounter_id=encounter,
                         need_patient_banner=False)


async def test_portal_begin_visit_lands_in_the_lobby_with_a_session(stack: Stack) -> None:
    portal = await get_page(stack.browser, f"{stack.sandbox_url}/portal?patient=pat-1")
    body = await portal.text()
    assert portal.status == 200, body
    hrefs = re.findall(r'href="(/portal/visit/[^"]+)"', body)
    assert hrefs, body
    start = urljoin(stack.sandbox_url, hrefs[0].replace("&amp;", "&"))
    response, visited = await stack.follow(start)
    page = await response.text()
    assert response.status == 200, page
    paths = [urlsplit(u).path for u in visited]
    assert paths == ["/portal/visit/appt-1", "/launch/patient", "/oauth/authorize", "/launch/callback", "/lobby"]
    authorize = parse_qs(urlsplit(visited[2]).query)
    assert authorize["scope"][0].split() == ["launch", "openid", "fhirUser", "patient/Patient.read",
                                             "patient/Encounter.read", "patient/Appointment.read"]
    assert 'id="display-name"' in page
    cookie = stack.browser.cookie_jar.filter_cookies(URL(stack.gateway_url))[joinlinks.PARTICIPANT_COOKIE].value
    async with stack.gateway_app[DB].acquire() as conn:
        participant = await joinlinks.participant_for_session(conn, cookie)
        assert participant is not None and participant.role == "patient"
        assert await conn.fetchval("SELECT count(*) FROM visits") == 1
        assert await conn.fetchval("SELECT count(*) FROM launch_states") == 0


async def test_patient_launch_joins_the_visit_a_provider_launch_opened(stack: Stack) -> None:
    provider, _ = await stack.launch(stack.new_launch(encounter="enc-1"))
    assert provider.status == 200, await provider.text()
    response, visited = await stack.follow(
        f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={patient_launch(stack)}")
    assert response.status == 200, await response.text()
    assert urlsplit(visited[-1]).path == "/lobby"
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM visits") == 1
        assert await conn.fetchval("SELECT count(*) FROM participants WHERE role = 'patient'") == 1
        assert await conn.fetchval("SELECT count(*) FROM participant_sessions") == 1
    # And the other way round: the provider launches after the patient, into the same visit.
    again, _ = await stack.launch(stack.new_launch(encounter="enc-1"))
    assert again.status == 200
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM visits") == 1


async def test_patient_launch_first_then_provider_launch_share_one_visit(stack: Stack) -> None:
    launch = patient_launch(stack, encounter="enc-3", patient="pat-3")
    response, _ = await stack.follow(f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={launch}")
    assert response.status == 200, await response.text()
    provider, _ = await stack.launch(stack.new_launch(patient="pat-3", encounter="enc-3"))
    assert provider.status == 200, await provider.text()
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM visits") == 1
        assert await conn.fetchval("SELECT meeting_id IS NOT NULL FROM visits")


async def test_a_second_portal_launch_from_the_same_browser_keeps_its_session(stack: Stack) -> None:
    for _ in range(2):
        response, _ = await stack.follow(
            f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={patient_launch(stack)}")
        assert response.status == 200
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM participant_sessions") == 1
        assert await conn.fetchval("SELECT count(*) FROM participants") == 1


async def test_patient_launch_into_another_patients_visit_is_refused(stack: Stack) -> None:
    provider, _ = await stack.launch(stack.new_launch(patient="pat-1", encounter="enc-1"))
    assert provider.status == 200
    response, visited = await stack.follow(
        f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={patient_launch(stack, patient='pat-2')}")
    body = await response.text()
    assert response.status == 400 and reason_code(body) == "patient_mismatch", body
    assert "patient portal" in body
    assert joinlinks.PARTICIPANT_COOKIE not in stack.browser.cookie_jar.filter_cookies(URL(stack.gateway_url))
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM participants") == 0


async def test_patient_launch_without_encounter_is_refused(stack: Stack) -> None:
    response, _ = await stack.follow(
        f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={patient_launch(stack, encounter=None)}")
    assert response.status == 400 and reason_code(await response.text()) == "no_encounter"


async def test_patient_launch_from_unapproved_iss_gets_a_patient_facing_page(stack: Stack) -> None:
    response = await get_page(stack.browser, f"{stack.gateway_url}/launch/patient?iss=https://elsewhere.example/fhir&launch=x")
    body = await response.text()
    assert response.status == 403 and reason_code(body) == "unknown_iss"
    assert "Go back to your patient portal" in body and "administrator" not in body


async def test_provider_launch_states_stay_provider_launches(stack: Stack) -> None:
    response, visited = await stack.launch()
    assert response.status == 200 and urlsplit(visited[-1]).path.startswith("/provider/")
    assert joinlinks.PARTICIPANT_COOKIE not in stack.browser.cookie_jar.filter_cookies(URL(stack.gateway_url))


async def test_patient_launch_leaves_no_patient_data_in_database_or_logs(stack: Stack,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _seed_canary_patient(stack)
    launch = patient_launch(stack, patient=CANARIES["patient_id"], encounter=CANARIES["encounter_id"])
    response, _ = await stack.follow(f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={launch}")
    assert response.status == 200, await response.text()
    async with stack.gateway_app[DB].acquire() as conn:
        tables, dump = await database_text(conn)
        assert {"join_links", "participant_sessions"} <= tables
    stored = dump.lower()
    ours = [r for r in caplog.records if not r.name.startswith("sandbox")]
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours).lower()
    for name, value in CANARIES.items():
        assert value.lower() not in stored, f"{name} landed in the database"
        assert value.lower() not in logs, f"{name} landed in the logs"
