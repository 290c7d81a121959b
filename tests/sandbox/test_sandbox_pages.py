"""The EHR and portal pages, the test-control endpoints, and the command line."""
from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sandbox_helpers import APP_LAUNCH_URL, BASE_URL, FHIR_BASE, PATIENT_LAUNCH_URL, query_of

from sandbox import FAULTS, LAUNCHES, STORE, SandboxSettings, create_sandbox_app
from sandbox.__main__ import parse_args


async def test_home_links_to_ehr_and_portal(ehr: TestClient[Any, Any]) -> None:
    text = await (await ehr.get("/")).text()
    assert 'href="/ehr?practitioner=prac-1"' in text and 'href="/portal?patient=pat-1"' in text
    assert 'name="viewport"' in text


async def test_schedule_lists_todays_visits_with_begin_buttons(ehr: TestClient[Any, Any]) -> None:
    r = await ehr.get("/ehr", params={"practitioner": "prac-1"})
    assert r.status == 200, await r.text()
    text = await r.text()
    assert text.count("Begin virtual visit") == 3
    first = datetime.fromisoformat(ehr.server.app[STORE].get("Appointment", "appt-1")["start"])
    assert "Alex Testpatient" in text and first.strftime("%H:%M") in text
    assert 'href="/ehr/visit/appt-1?practitioner=prac-1"' in text


async def test_schedule_defaults_to_the_first_practitioner(ehr: TestClient[Any, Any]) -> None:
    text = await (await ehr.get("/ehr")).text()
    assert "Dr Ada Sandbox" in text and text.count("Begin virtual visit") == 3


async def test_visit_page_embeds_the_app_with_a_fresh_launch(ehr: TestClient[Any, Any]) -> None:
    text = await (await ehr.get("/ehr/visit/appt-2", params={"practitioner": "prac-1"})).text()
    match = re.search(r'<iframe id="app"[^>]*src="([^"]+)"', text)
    assert match, text
    src = html.unescape(match.group(1))
    assert src.startswith(APP_LAUNCH_URL + "?")
    q = query_of(src)
    assert q["iss"] == FHIR_BASE
    context = ehr.server.app[LAUNCHES].get(q["launch"])
    assert context is not None
    assert (context.practitioner_id, context.patient_id, context.encounter_id, context.appointment_id) == (
        "prac-1", "pat-2", "enc-2", "appt-2")
    assert context.need_patient_banner is True
    assert 'id="patient-banner"' not in text  # the EHR shows none, so it asks the app to
    assert 'allow="camera; microphone; display-capture; autoplay; fullscreen"' in text


async def test_visit_page_with_the_ehrs_own_banner_tells_the_app_it_need_not_show_one(
        ehr: TestClient[Any, Any]) -> None:
    text = await (await ehr.get("/ehr/visit/appt-2", params={"practitioner": "prac-1", "banner": "ehr"})).text()
    assert 'id="patient-banner"' in text
    match = re.search(r'<iframe id="app"[^>]*src="([^"]+)"', text)
    assert match, text
    context = ehr.server.app[LAUNCHES].get(query_of(html.unescape(match.group(1)))["launch"])
    assert context is not None and context.need_patient_banner is False


async def test_visit_page_for_unknown_appointment_is_404(ehr: TestClient[Any, Any]) -> None:
    assert (await ehr.get("/ehr/visit/appt-99")).status == 404


async def test_portal_begins_a_visit_by_sending_the_window_to_the_patient_launch(ehr: TestClient[Any, Any]) -> None:
    text = await (await ehr.get("/portal", params={"patient": "pat-1"})).text()
    assert text.count("Begin visit") == 2
    assert 'target="_top"' in text
    r = await ehr.get("/portal/visit/appt-1", params={"patient": "pat-1"}, allow_redirects=False)
    assert r.status == 302
    location = r.headers["Location"]
    assert location.startswith(PATIENT_LAUNCH_URL + "?")
    context = ehr.server.app[LAUNCHES].get(query_of(location)["launch"])
    assert context is not None
    assert (context.practitioner_id, context.patient_id, context.encounter_id) == (None, "pat-1", "enc-1")
    assert context.need_patient_banner is False


async def test_portal_refuses_another_patients_appointment(ehr: TestClient[Any, Any]) -> None:
    r = await ehr.get("/portal/visit/appt-2", params={"patient": "pat-1"}, allow_redirects=False)
    assert r.status == 404


async def test_portal_without_patient_launch_url_disables_the_button(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    client = await aiohttp_client(create_sandbox_app(SandboxSettings(base_url=BASE_URL, app_launch_url=APP_LAUNCH_URL)))
    text = await (await client.get("/portal", params={"patient": "pat-1"})).text()
    assert "<button type=\"button\" disabled>Begin visit</button>" in text
    assert "not set up" in text


async def test_smart_style_is_served(ehr: TestClient[Any, Any]) -> None:
    style = await (await ehr.get("/ehr/smart-style.json")).json()
    assert style["color_highlight"].startswith("#")


async def test_control_endpoints_create_launches_set_faults_and_store_resources(ehr: TestClient[Any, Any]) -> None:
    r = await ehr.post("/_sandbox/launches", json={"practitioner_id": "prac-2", "patient_id": "pat-4", "encounter_id": "enc-4"})
    launch = (await r.json())["launch"]
    assert ehr.server.app[LAUNCHES].get(launch) is not None
    r = await ehr.post("/_sandbox/faults", json={"fhir_status": 500, "token_error": "server_error"})
    assert r.status == 200 and ehr.server.app[FAULTS].fhir_status == 500
    assert (await ehr.post("/_sandbox/faults", json={"no_such_fault": True})).status == 400
    r = await ehr.post("/_sandbox/resources", json={"resourceType": "Patient", "id": "pat-9", "name": [{"text": "Nine"}]})
    assert (await r.json())["meta"]["versionId"] == "1"
    assert ehr.server.app[STORE].get("Patient", "pat-9") is not None


async def test_control_endpoints_do_not_exist_without_test_controls(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    client = await aiohttp_client(create_sandbox_app(SandboxSettings(base_url=BASE_URL, app_launch_url=APP_LAUNCH_URL)))
    for path in ("/_sandbox/launches", "/_sandbox/faults", "/_sandbox/resources"):
        assert (await client.post(path, json={})).status == 404


def test_command_line_builds_settings_with_clients() -> None:
    settings, host, port = parse_args([
        "--host", "127.0.0.1", "--port", "9001", "--base-url", "http://localhost:9001",
        "--app-launch-url", "http://127.0.0.1:8080/launch", "--test-controls",
        "--client-json", '[{"client_id": "gw", "redirect_uris": ["http://127.0.0.1:8080/cb"], '
                         '"auth_method": "private_key_jwt", "jwks_url": "http://127.0.0.1:8080/jwks"}]',
    ])
    assert (host, port) == ("127.0.0.1", 9001)
    assert settings.fhir_base == "http://localhost:9001/fhir" and settings.test_controls
    assert settings.clients[0].redirect_uris == ("http://127.0.0.1:8080/cb",)


@pytest.mark.parametrize("hhmm", ["00:05", "09:00", "10:29", "10:31", "17:45", "23:50"])
def test_the_first_visit_is_under_way_at_any_time_of_day(hhmm: str) -> None:
    # The demo and the tests start at any hour: appt-1 must be on now, with join links good for a while.
    from sandbox.seed import seed
    from sandbox.store import FhirStore

    hour, minute = (int(x) for x in hhmm.split(":"))
    now = datetime(2026, 11, 22, hour, minute, 7, tzinfo=timezone(timedelta(hours=-5)))
    store = FhirStore()
    seed(store, now)
    first = store.get("Appointment", "appt-1")
    assert first is not None
    start, end = datetime.fromisoformat(first["start"]), datetime.fromisoformat(first["end"])
    assert start <= now < start + timedelta(minutes=30)
    assert end + timedelta(hours=1) - now >= timedelta(minutes=50)  # joinlinks.GRACE after the end
    starts = sorted(datetime.fromisoformat(a["start"]) for a in store.all("Appointment"))
    assert starts[0] == start and starts[-1] - now < timedelta(hours=18)  # all on the schedule page
