"""No patient data in the database or the logs: canary values seeded in the EHR must never land."""
from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.appkeys import DB
from presence import usage
from presence.visit_end import end_visit
from tests.conftest import Stack, database_text
from tests.notify.helpers import invite

CANARIES = {
    "given": "Zephyrinacanary",
    "family": "Quillfeathercanary",
    "birth_date": "1931-02-03",
    "phone": "+1-206-555-0173",
    "email": "zephyrina.canary@example.invalid",
    "mrn": "MRN-CANARY-77310",
    "patient_id": "canarypat-5d2e",
    "encounter_id": "canaryenc-8f1a",
}


@pytest.fixture
def stack_overrides() -> Any:
    """Texts go to the sandbox's SMS sink, so a link can be texted to the canary patient."""
    return lambda gateway_url, sandbox_url: dict(sms_provider="sink", sms_sink_url=f"{sandbox_url}/_sms")


def _seed_canary_patient(stack: Stack) -> None:
    from sandbox.appkeys import STORE

    store = stack.sandbox_app[STORE]
    store.put({"resourceType": "Patient", "id": CANARIES["patient_id"],
               "name": [{"use": "official", "family": CANARIES["family"], "given": [CANARIES["given"]]}],
               "birthDate": CANARIES["birth_date"], "gender": "female",
               "identifier": [{"system": "urn:oid:1.2.3.4", "value": CANARIES["mrn"]}],
               "telecom": [{"system": "phone", "value": CANARIES["phone"]},
                           {"system": "email", "value": CANARIES["email"]}]})
    store.put({"resourceType": "Encounter", "id": CANARIES["encounter_id"], "status": "planned",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
               "subject": {"reference": f"Patient/{CANARIES['patient_id']}"},
               "appointment": [{"reference": "Appointment/appt-1"}]})


async def test_launches_leave_no_patient_data_in_database_or_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _seed_canary_patient(stack)
    for _ in range(2):
        response, visited = await stack.launch(stack.new_launch(patient=CANARIES["patient_id"],
                                                                encounter=CANARIES["encounter_id"]))
        body = await response.text()
        assert response.status == 200, body
        assert CANARIES["family"] in body  # the banner did read it live
    # The link texted to the patient (number read live) is counted on the visit's usage row: a count only.
    sent = await invite(stack, visited[-1].rstrip("/").rsplit("/", 1)[-1], channel="sms", role="patient")
    assert sent.status == 200, await sent.text()
    async with stack.gateway_app[DB].acquire() as conn:
        # The visit ends and the usage report's follower counts it, so its row is in the dump too.
        await end_visit(conn, await conn.fetchval("SELECT id FROM visits"), "clinician")
    await usage.catch_up(stack.gateway_app[DB])
    async with stack.gateway_app[DB].acquire() as conn:
        tables, dump = await database_text(conn)
        assert {"visits", "provider_sessions", "launch_states", "audit_log", "configurations"} <= tables
        assert await conn.fetchval("SELECT count(*) FROM visit_usage") == 1
        assert await conn.fetchval("SELECT sms_sent FROM visit_usage") == 1
        assert await conn.fetchval("SELECT count(*) FROM visits") == 1
    stored = dump.lower()
    # The sandbox is the EHR: it may log its own patients. Everything else is ours and must not.
    ours = [r for r in caplog.records if not r.name.startswith("sandbox")]
    assert any(r.name == "visitgate.access" for r in ours), "the gateway's access log should be captured"
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours).lower()
    for name, value in CANARIES.items():
        assert value.lower() not in stored, f"{name} landed in the database"
        assert value.lower() not in logs, f"{name} landed in the logs"


async def test_provider_handle_in_the_url_never_reaches_logs_or_database(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    # The provider view's path carries a bearer handle (the EHR iframe has no cookies): anyone who reads it
    # can open the visit until it runs out, and the page renews it, so the logs keep the route's pattern
    # instead and neither the handle nor the one renewal hands out lands anywhere.
    caplog.set_level(logging.DEBUG)
    response, _visited = await stack.launch()
    assert response.status == 200
    handle = response.url.path.removeprefix("/provider/")
    assert len(handle) >= 32 and "/" not in handle
    assert (await stack.get(f"{stack.gateway_url}/provider/{handle}/room")).status == 200
    stale = "x" * len(handle)  # a refused handle is not logged either: it may be a valid one mistyped
    assert (await stack.get(f"{stack.gateway_url}/provider/{stale}")).status in (401, 403, 404, 410)
    assert (await stack.get(f"{stack.gateway_url}/provider/{handle}/nowhere")).status == 404
    async with stack.browser.post(f"{stack.gateway_url}/provider/{handle}/renew",
                                  headers={"Origin": stack.gateway_url}) as renewed:
        assert renewed.status == 200
        fresh = (await renewed.json())["handle"]
    ours = [r for r in caplog.records if not r.name.startswith("sandbox")]
    access = [r.getMessage() for r in ours if r.name == "visitgate.access"]
    assert any("/provider/{handle}/room 200" in line for line in access), access
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours)
    assert any("/provider/{handle}/renew 200" in line for line in access), access
    assert handle not in logs and stale not in logs and fresh not in logs
    async with stack.gateway_app[DB].acquire() as conn:
        _tables, dump = await database_text(conn)
    assert handle not in dump and fresh not in dump  # handles are found by their hash


async def test_a_name_typed_in_the_lobby_lives_only_in_memory(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    import datetime as dt

    from yarl import URL

    from gateway import joinlinks, participants
    from tests.conftest import recv_until

    caplog.set_level(logging.DEBUG)
    handle = await stack.provider_handle()
    typed = f"{CANARIES['given']} {CANARIES['family']}"
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id = await conn.fetchval("SELECT id FROM visits")
        patient = await participants.patient_participant(conn, visit_id)
        session = await joinlinks.create_session(conn, patient, visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    stack.browser.cookie_jar.update_cookies({joinlinks.PARTICIPANT_COOKIE: session.handle}, URL(stack.gateway_url))
    lobby = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await lobby.send_json({"type": "auth", "id": 1, "where": "lobby"})
    await lobby.send_json({"type": "hello", "id": 2, "display_name": typed})
    await lobby.send_json({"type": "subscribe", "id": 3, "after": None})
    await recv_until(lobby, "snapshot", 20, 5.0)  # the name went round through PostgreSQL first (sealed)
    view = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await view.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    await view.send_json({"type": "subscribe", "id": 2, "after": None})
    snapshot = await recv_until(view, "snapshot", 20, 5.0)
    assert snapshot["display_names"] == {str(patient): typed}  # the clinician sees it
    await lobby.close()
    await view.close()
    async with stack.gateway_app[DB].acquire() as conn:
        _tables, dump = await database_text(conn)
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in caplog.records).lower()
    for part in (CANARIES["given"], CANARIES["family"]):
        assert part.lower() not in dump.lower(), "a typed name landed in the database"
        assert part.lower() not in logs, "a typed name landed in the logs"
