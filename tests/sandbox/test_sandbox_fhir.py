"""The FHIR API: reads, searches, versioned writes, JSON Patch, history, scopes and faults."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sandbox_helpers import FHIR_BASE, token_for

from sandbox import FAULTS, STORE
from sandbox.appkeys import OAUTH

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PATCH_JSON = {"Content-Type": "application/json-patch+json"}


@pytest.fixture
async def auth(ehr: TestClient[Any, Any]) -> dict[str, str]:
    """Authorization header of a clinician's token that may read everything and write Encounters."""
    body = await token_for(ehr)
    return {"Authorization": f"Bearer {body['access_token']}"}


async def _outcome(r: Any) -> dict[str, Any]:
    body: dict[str, Any] = await r.json(content_type=None)
    assert body["resourceType"] == "OperationOutcome", body
    return body


# --- read ------------------------------------------------------------------------------------------


async def test_read_answers_resource_with_etag_and_last_modified(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    r = await ehr.get("/fhir/Encounter/enc-1", headers=auth)
    assert r.status == 200, await r.text()
    assert r.content_type == "application/fhir+json"
    enc = await r.json()
    assert enc["class"]["code"] == "VR" and enc["status"] == "planned"
    assert enc["meta"]["versionId"] == "1"
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Last-Modified"].endswith("GMT")


async def test_unknown_resource_is_404_outcome(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    r = await ehr.get("/fhir/Patient/nobody", headers=auth)
    assert r.status == 404
    await _outcome(r)


async def test_unknown_type_is_404_outcome(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    r = await ehr.get("/fhir/Observation/x", headers=auth)
    assert r.status == 404
    await _outcome(r)


async def test_read_without_token_is_401(ehr: TestClient[Any, Any]) -> None:
    r = await ehr.get("/fhir/Patient/pat-1")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    await _outcome(r)


async def test_unknown_token_is_401(ehr: TestClient[Any, Any]) -> None:
    r = await ehr.get("/fhir/Patient/pat-1", headers={"Authorization": "Bearer made-up"})
    assert r.status == 401


async def test_expired_token_is_401(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    token = ehr.server.app[OAUTH].access_tokens[auth["Authorization"].split()[1]]
    token.expires_at = time.time() - 1
    assert (await ehr.get("/fhir/Patient/pat-1", headers=auth)).status == 401


# --- scopes ----------------------------------------------------------------------------------------


async def test_read_needs_a_scope_for_the_type(ehr: TestClient[Any, Any]) -> None:
    body = await token_for(ehr, scope="launch user/Encounter.rs")
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).status == 200
    r = await ehr.get("/fhir/Patient/pat-1", headers=auth)
    assert r.status == 403
    await _outcome(r)


async def test_v1_read_scope_allows_reads_but_not_writes(ehr: TestClient[Any, Any]) -> None:
    body = await token_for(ehr, scope="launch user/*.read")
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    enc = await (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).json()
    r = await ehr.put("/fhir/Encounter/enc-1", json=enc, headers={**auth, **FHIR_JSON})
    assert r.status == 403


async def test_write_scope_allows_put(ehr: TestClient[Any, Any]) -> None:
    body = await token_for(ehr, scope="launch user/Encounter.read user/Encounter.write")
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    enc = await (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).json()
    r = await ehr.put("/fhir/Encounter/enc-1", json=enc, headers={**auth, **FHIR_JSON})
    assert r.status == 200, await r.text()


async def test_search_needs_the_s_permission(ehr: TestClient[Any, Any]) -> None:
    body = await token_for(ehr, scope="launch user/Encounter.r")
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).status == 200
    assert (await ehr.get("/fhir/Encounter", headers=auth)).status == 403


async def test_patient_scopes_see_only_the_launch_patient(ehr: TestClient[Any, Any]) -> None:
    body = await token_for(ehr, scope="launch patient/*.rs", practitioner_id=None, patient_id="pat-1", encounter_id="enc-1")
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await ehr.get("/fhir/Patient/pat-1", headers=auth)).status == 200
    assert (await ehr.get("/fhir/Patient/pat-2", headers=auth)).status == 404
    assert (await ehr.get("/fhir/Encounter/enc-2", headers=auth)).status == 404
    bundle = await (await ehr.get("/fhir/Encounter", headers=auth)).json()
    assert {e["resource"]["id"] for e in bundle["entry"]} == {"enc-1", "enc-6"}
    # Clinicians are not patient data; the portal may show who the visit is with.
    assert (await ehr.get("/fhir/Practitioner/prac-3", headers=auth)).status == 200


# --- search ----------------------------------------------------------------------------------------


async def test_search_encounters_by_patient(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    r = await ehr.get("/fhir/Encounter", params={"patient": "pat-1"}, headers=auth)
    bundle = await r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 2
    assert {e["resource"]["id"] for e in bundle["entry"]} == {"enc-1", "enc-6"}
    assert bundle["entry"][0]["fullUrl"].startswith(FHIR_BASE + "/Encounter/")


async def test_search_encounter_by_subject_reference_and_appointment(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    by_subject = await (await ehr.get("/fhir/Encounter", params={"subject": "Patient/pat-2"}, headers=auth)).json()
    assert [e["resource"]["id"] for e in by_subject["entry"]] == ["enc-2"]
    by_appt = await (await ehr.get("/fhir/Encounter", params={"appointment": "appt-4"}, headers=auth)).json()
    assert [e["resource"]["id"] for e in by_appt["entry"]] == ["enc-4"]


async def test_search_appointments_by_practitioner_and_day(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    # The seeded visits start at the current half hour: late in the evening some fall on the next day.
    starts = {a["id"]: a["start"][:10] for a in ehr.server.app[STORE].all("Appointment")}
    day = starts["appt-1"]
    params = {"practitioner": "prac-1", "date": day}
    bundle = await (await ehr.get("/fhir/Appointment", params=params, headers=auth)).json()
    expected = {a for a in ("appt-1", "appt-2", "appt-3") if starts[a] == day}
    assert {e["resource"]["id"] for e in bundle["entry"]} == expected and "appt-1" in expected
    params = {"actor": "Practitioner/prac-2", "date": "eq2001-01-01"}
    bundle = await (await ehr.get("/fhir/Appointment", params=params, headers=auth)).json()
    assert bundle["total"] == 0


async def test_search_appointments_by_patient(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    bundle = await (await ehr.get("/fhir/Appointment", params={"patient": "pat-1"}, headers=auth)).json()
    assert {e["resource"]["id"] for e in bundle["entry"]} == {"appt-1", "appt-6"}


async def test_search_practitioner_roles_by_practitioner(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    bundle = await (await ehr.get("/fhir/PractitionerRole", params={"practitioner": "prac-2"}, headers=auth)).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["role-2"]


async def test_search_by_id_and_count(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    bundle = await (await ehr.get("/fhir/Patient", params={"_id": "pat-1,pat-3"}, headers=auth)).json()
    assert {e["resource"]["id"] for e in bundle["entry"]} == {"pat-1", "pat-3"}
    bundle = await (await ehr.get("/fhir/Patient", params={"_count": "2"}, headers=auth)).json()
    assert bundle["total"] == 5 and len(bundle["entry"]) == 2


async def test_search_ignores_unknown_parameters(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    bundle = await (await ehr.get("/fhir/Patient", params={"favourite-colour": "blue"}, headers=auth)).json()
    assert bundle["total"] == 5


# --- PUT -------------------------------------------------------------------------------------------


async def test_put_with_current_if_match_makes_a_new_version(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    enc = await (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).json()
    enc["status"] = "in-progress"
    r = await ehr.put("/fhir/Encounter/enc-1", json=enc, headers={**auth, **FHIR_JSON, "If-Match": 'W/"1"'})
    assert r.status == 200, await r.text()
    assert r.headers["ETag"] == 'W/"2"'
    assert (await r.json())["status"] == "in-progress"
    assert ehr.server.app[STORE].get("Encounter", "enc-1")["status"] == "in-progress"  # type: ignore[index]


async def test_put_with_stale_if_match_is_412(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    enc = await (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).json()
    ok = await ehr.put("/fhir/Encounter/enc-1", json=enc, headers={**auth, **FHIR_JSON, "If-Match": 'W/"1"'})
    assert ok.status == 200
    enc["status"] = "cancelled"
    r = await ehr.put("/fhir/Encounter/enc-1", json=enc, headers={**auth, **FHIR_JSON, "If-Match": 'W/"1"'})
    assert r.status == 412
    await _outcome(r)
    assert ehr.server.app[STORE].get("Encounter", "enc-1")["status"] == "planned"  # type: ignore[index]


async def test_concurrent_puts_with_the_same_if_match_let_only_one_win(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    enc = await (await ehr.get("/fhir/Encounter/enc-2", headers=auth)).json()
    headers = {**auth, **FHIR_JSON, "If-Match": 'W/"1"'}
    results = await asyncio.gather(*(ehr.put("/fhir/Encounter/enc-2", json=enc, headers=headers) for _ in range(5)))
    assert sorted(r.status for r in results) == [200, 412, 412, 412, 412]


async def test_put_with_mismatched_id_is_400(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    enc = await (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).json()
    r = await ehr.put("/fhir/Encounter/enc-2", json=enc, headers={**auth, **FHIR_JSON})
    assert r.status == 400
    await _outcome(r)


async def test_put_without_if_match_updates(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    enc = await (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).json()
    r = await ehr.put("/fhir/Encounter/enc-1", json=enc, headers={**auth, **FHIR_JSON})
    assert r.status == 200 and r.headers["ETag"] == 'W/"2"'


# --- PATCH -----------------------------------------------------------------------------------------


async def test_patch_applies_json_patch_and_bumps_the_version(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    ops = [
        {"op": "test", "path": "/status", "value": "planned"},
        {"op": "replace", "path": "/status", "value": "arrived"},
        {"op": "add", "path": "/statusHistory", "value": []},
        {"op": "add", "path": "/statusHistory/-", "value": {"status": "planned", "period": {"end": "2026-01-01T09:00:00Z"}}},
    ]
    r = await ehr.patch("/fhir/Encounter/enc-1", json=ops, headers={**auth, **PATCH_JSON, "If-Match": 'W/"1"'})
    assert r.status == 200, await r.text()
    enc = await r.json()
    assert enc["status"] == "arrived" and enc["statusHistory"][0]["status"] == "planned"
    assert enc["meta"]["versionId"] == "2"


async def test_failing_patch_is_422_and_changes_nothing(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    ops = [
        {"op": "replace", "path": "/status", "value": "arrived"},
        {"op": "test", "path": "/status", "value": "planned"},
    ]
    r = await ehr.patch("/fhir/Encounter/enc-1", json=ops, headers={**auth, **PATCH_JSON})
    assert r.status == 422
    await _outcome(r)
    stored = ehr.server.app[STORE].get("Encounter", "enc-1")
    assert stored is not None and stored["status"] == "planned" and stored["meta"]["versionId"] == "1"


async def test_patch_with_stale_if_match_is_412(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    ops = [{"op": "replace", "path": "/status", "value": "arrived"}]
    r = await ehr.patch("/fhir/Encounter/enc-1", json=ops, headers={**auth, **PATCH_JSON, "If-Match": 'W/"7"'})
    assert r.status == 412


async def test_patch_needs_json_patch_content_type(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    ops = [{"op": "replace", "path": "/status", "value": "arrived"}]
    r = await ehr.patch("/fhir/Encounter/enc-1", json=ops, headers=auth)
    assert r.status == 415


async def test_patch_cannot_change_the_id(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    r = await ehr.patch("/fhir/Encounter/enc-1", json=[{"op": "replace", "path": "/id", "value": "enc-9"}], headers={**auth, **PATCH_JSON})
    assert r.status == 422


# --- history ----------------------------------------------------------------------------------------


async def test_history_lists_versions_newest_first_and_vread_reads_one(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    ops = [{"op": "replace", "path": "/status", "value": "arrived"}]
    await ehr.patch("/fhir/Encounter/enc-1", json=ops, headers={**auth, **PATCH_JSON})
    r = await ehr.get("/fhir/Encounter/enc-1/_history", headers=auth)
    bundle = await r.json()
    assert bundle["type"] == "history" and bundle["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["2", "1"]
    r = await ehr.get("/fhir/Encounter/enc-1/_history/1", headers=auth)
    assert r.status == 200 and r.headers["ETag"] == 'W/"1"'
    assert (await r.json())["status"] == "planned"
    assert (await ehr.get("/fhir/Encounter/enc-1/_history/9", headers=auth)).status == 404


async def test_store_keeps_history_for_in_process_writes(ehr: TestClient[Any, Any]) -> None:
    store = ehr.server.app[STORE]
    enc = store.get("Encounter", "enc-3")
    assert enc is not None
    enc["status"] = "finished"
    stored = store.put(enc)
    assert stored["meta"]["versionId"] == "2"
    assert [v["status"] for v in store.history("Encounter", "enc-3")] == ["finished", "planned"]
    new = store.put({"resourceType": "Patient", "name": [{"text": "Zed Newcomer"}]})
    assert new["id"] and new["meta"]["versionId"] == "1"


# --- faults ----------------------------------------------------------------------------------------


async def test_fhir_status_fault_answers_that_status(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    ehr.server.app[FAULTS].fhir_status = 503
    r = await ehr.get("/fhir/Encounter/enc-1", headers=auth)
    assert r.status == 503
    await _outcome(r)


async def test_fhir_delay_fault_delays_answers(ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    ehr.server.app[FAULTS].fhir_delay = 0.2
    start = time.monotonic()
    assert (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).status == 200
    assert time.monotonic() - start >= 0.2


async def test_answer_after_fault_answers_that_long_after_arrival_with_the_work_done_meanwhile(
        ehr: TestClient[Any, Any], auth: dict[str, str]) -> None:
    # A server whose latency is the setting: the write is applied when the request arrives, the answer
    # leaves once the time is up (errors too), and nothing of the sandbox's own work is added on top.
    ehr.server.app[FAULTS].update({"fhir_answer_after": 0.4})
    current = await (await ehr.get("/fhir/Encounter/enc-1", headers=auth)).json()
    start = time.monotonic()
    put = asyncio.create_task(ehr.put("/fhir/Encounter/enc-1", json={**current, "status": "finished"},
                                      headers={**auth, "Content-Type": "application/fhir+json"}))
    await asyncio.sleep(0.2)
    assert not put.done()
    assert ehr.server.app[STORE].get("Encounter", "enc-1")["status"] == "finished"  # type: ignore[index]
    assert (await put).status == 200 and time.monotonic() - start >= 0.4
    start = time.monotonic()
    assert (await ehr.get("/fhir/Encounter/no-such", headers=auth)).status == 404
    assert time.monotonic() - start >= 0.4
    with pytest.raises(ValueError):
        ehr.server.app[FAULTS].update({"fhir_answer_after": -1})
