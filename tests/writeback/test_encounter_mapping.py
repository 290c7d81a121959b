"""The mapping from presence events to the Encounter, as pure functions (no database, no server)."""
from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest

from gateway.backend_auth import allows_encounter_update
from presence.encounter_mapping import (ALLOWED_PATCH, DEVICE_TEST_URL, PRESENCE_URL, VIRTUAL_SERVICE_URL, VisitEvent, derive,
                                        desired_encounter, patch_operations, unchanged)
from presence.writeback import backoff, parse_retry_after
from sandbox.jsonpatch import apply_patch

from .conftest import validate_encounter

T0 = dt.datetime(2025, 3, 4, 9, 0, tzinfo=dt.timezone.utc)
PATIENT, PROVIDER, GUEST = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
ROLES = {PATIENT: ("patient", None, None), GUEST: ("guest", "interpreter", None),
         PROVIDER: ("provider", None, "https://ehr.example/fhir/Practitioner/prac-1")}


def events(*spec: tuple[int, uuid.UUID | None, str]) -> list[VisitEvent]:
    """Events from (seconds after T0, participant, kind), numbered in order."""
    out = []
    for n, (seconds, who, kind) in enumerate(spec, start=1):
        role, guest_kind, fhir_user = ROLES[who] if who else (None, None, None)
        out.append(VisitEvent(n, kind, T0 + dt.timedelta(seconds=seconds), who, role, guest_kind, fhir_user))
    return out


WHOLE = events((0, PATIENT, "lobby_entered"), (5, PROVIDER, "connected"), (60, PATIENT, "admitted"),
               (61, PATIENT, "connected"), (70, GUEST, "connected"), (300, GUEST, "disconnected"),
               (400, PATIENT, "disconnected"), (410, PATIENT, "connected"), (600, None, "visit_ended"))


def encounter(**extra: Any) -> dict[str, Any]:
    """A planned virtual Encounter as an EHR holds it."""
    return {"resourceType": "Encounter", "id": "enc-9", "meta": {"versionId": "1"}, "status": "planned",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
            "subject": {"reference": "Patient/pat-9"},
            "participant": [{"individual": {"reference": "Practitioner/prac-1"}}],
            "period": {"start": "2025-03-04T09:00:00Z"}, **extra}


def test_a_visit_moves_the_encounter_along_planned_arrived_in_progress_finished() -> None:
    result = desired_encounter(encounter(), derive(WHOLE, "builtin"))
    validate_encounter(result)
    assert result["status"] == "finished"
    history = result["statusHistory"]
    assert [h["status"] for h in history] == ["planned", "arrived", "in-progress", "finished"]
    for before, after in zip(history, history[1:]):  # stretches touch but never overlap
        assert before["period"]["end"] == after["period"]["start"]
    assert result["period"] == {"start": "2025-03-04T09:01:00.000Z", "end": "2025-03-04T09:10:00.000Z"}


def test_clinicians_get_participant_periods_and_patients_and_guests_our_extension() -> None:
    result = desired_encounter(encounter(), derive(WHOLE, "builtin"))
    assert result["participant"] == [{"individual": {"reference": "Practitioner/prac-1"},
                                      "period": {"start": "2025-03-04T09:00:05.000Z",
                                                 "end": "2025-03-04T09:10:00.000Z"}}]
    presence = [x for x in result["extension"] if x["url"] == PRESENCE_URL]
    assert [(p["extension"][0]["valueCode"], p["extension"][1]["valueString"]) for p in presence] == [
        ("patient", "patient"), ("guest", "guest-1"), ("patient", "patient")]
    assert not any(p.get("individual", {}).get("reference", "").startswith("Patient")
                   for p in result["participant"])


def _stretches(changes: Any) -> list[tuple[str, str | None]]:
    """(start, end) of each connected stretch, as seconds after T0 (None while open)."""
    def seconds(at: str | None) -> str | None:
        return None if at is None else str(int((dt.datetime.fromisoformat(at.replace("Z", "+00:00")) - T0)
                                                .total_seconds()))
    return [(seconds(p.start), seconds(p.end)) for p in changes.presence]


def test_a_clinician_with_the_view_and_the_room_open_is_connected_until_the_last_closes() -> None:
    # View at 5 s, room at 60 s, the view's tab closed at 100 s, the room left at 500 s.
    changes = derive(events((5, PROVIDER, "connected"), (60, PROVIDER, "connected"), (100, PROVIDER, "disconnected"),
                            (500, PROVIDER, "disconnected")), "builtin")
    assert changes.practitioners == (("Practitioner/prac-1", "2025-03-04T09:00:05.000Z",
                                      "2025-03-04T09:08:20.000Z"),)
    assert _stretches(changes) == [("5", "500")]


def test_a_reloaded_room_whose_new_socket_opens_first_stays_connected() -> None:
    # The reloaded page's socket is written before the old page's close: still one stretch, still open.
    changes = derive(events((0, PATIENT, "connected"), (30, PATIENT, "connected"), (31, PATIENT, "disconnected")),
                     "builtin")
    assert _stretches(changes) == [("0", None)]


def test_the_lobby_closing_after_the_room_opened_does_not_end_the_patients_stretch() -> None:
    changes = derive(events((0, PATIENT, "lobby_entered"), (60, PATIENT, "admitted"), (61, PATIENT, "connected"),
                            (62, PATIENT, "left"), (300, PATIENT, "disconnected")), "builtin")
    assert _stretches(changes) == [("61", "300")]


def test_a_removal_ends_the_stretch_however_many_sockets_were_open() -> None:
    changes = derive(events((0, GUEST, "connected"), (5, GUEST, "connected"), (50, GUEST, "removed"),
                            (51, GUEST, "disconnected"), (52, GUEST, "disconnected")), "builtin")
    assert _stretches(changes) == [("0", "50")]


def test_the_meeting_is_named_in_the_virtual_service_extension_without_secrets() -> None:
    result = desired_encounter(encounter(), derive(WHOLE, "teams"))
    (service,) = [x for x in result["extension"] if x["url"] == VIRTUAL_SERVICE_URL]
    assert service["extension"] == [{"url": "channelType", "valueCoding": {
        "system": "http://hl7.org/fhir/virtual-service-type", "code": "ms-teams", "display": "Microsoft Teams"}}]


@pytest.mark.parametrize("upto", range(len(WHOLE) + 1))
def test_applying_the_same_events_twice_gives_the_same_encounter(upto: int) -> None:
    changes = derive(WHOLE[:upto], "builtin")
    once = desired_encounter(encounter(), changes)
    assert unchanged(once, desired_encounter(once, changes))
    validate_encounter(once)
    patched = apply_patch(encounter(extension=[]), patch_operations(encounter(extension=[]), changes))
    assert patch_operations(patched, changes) == []
    validate_encounter(patched)


def test_events_in_any_order_derive_the_same_changes() -> None:
    assert derive(list(reversed(WHOLE)), "builtin") == derive(WHOLE, "builtin")


def test_transitions_out_of_order_are_never_sent() -> None:
    skipped = events((0, PATIENT, "admitted"), (10, None, "visit_ended"))
    assert derive(skipped, "builtin").transitions == ()
    assert desired_encounter(encounter(), derive(skipped, "builtin"))["status"] == "planned"
    # The EHR cancelled the visit, or finished it already: our events do not move it anywhere.
    for status in ("cancelled", "entered-in-error", "finished"):
        current = encounter(status=status)
        result = desired_encounter(current, derive(WHOLE[:3], "builtin"))
        assert result["status"] == status and "statusHistory" not in result


def test_the_ehrs_own_extensions_and_earlier_history_are_kept() -> None:
    theirs = {"url": "https://ehr.example/ext", "valueString": "x"}
    old = {"status": "planned", "period": {"start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00Z"}}
    result = desired_encounter(encounter(extension=[theirs], statusHistory=[old]), derive(WHOLE, "builtin"))
    assert result["extension"][0] == theirs and result["statusHistory"][0] == old
    assert unchanged(result, desired_encounter(result, derive(WHOLE, "builtin")))


def test_patch_uses_only_the_operations_oracle_health_documents() -> None:
    current = encounter(extension=[{"url": "https://ehr.example/ext", "valueString": "x"}])
    ops = patch_operations(current, derive(WHOLE, "builtin"))
    assert ops and all((op["op"], op["path"]) in ALLOWED_PATCH for op in ops)
    # The period had no end: the visit's end is added (replace needs the member, RFC 6902 4.3).
    assert {op["path"] for op in ops} == {"/period/start", "/period/end", "/extension"}
    # No extension yet: the array is added whole (an append to a missing array is refused by RFC 6902).
    added = [op for op in patch_operations(encounter(), derive(WHOLE, "builtin")) if "extension" in op["path"]]
    assert [(op["op"], op["path"]) for op in added] == [("add", "/extension")]
    assert isinstance(added[0]["value"], list) and len(added[0]["value"]) > 1


# Encounters as EHRs hold them: without extension, participant, statusHistory or period, with their own.
_THEIRS = {"url": "https://ehr.example/ext", "valueString": "x"}
_SPREAD = {
    "bare": encounter(),
    "no_participant": {k: v for k, v in encounter().items() if k != "participant"},
    "no_period": {k: v for k, v in encounter().items() if k != "period"},
    "empty_period": encounter(period={}),
    "period_with_end": encounter(period={"start": "2025-03-04T09:00:00Z", "end": "2025-03-04T09:30:00Z"}),
    "their_extension": encounter(extension=[_THEIRS]),
    "empty_extension": encounter(extension=[]),
    "status_history": encounter(statusHistory=[{"status": "planned", "period": {"end": "2025-03-04T08:00:00Z"}}]),
    "in_progress": encounter(status="in-progress", extension=[_THEIRS]),
    "finished_by_ehr": encounter(status="finished"),
}
_PREFIXES = (1, 2, 3, 5, 7, len(WHOLE))


@pytest.mark.parametrize("name", sorted(_SPREAD))
@pytest.mark.parametrize("upto", _PREFIXES)
def test_patches_apply_under_a_strict_independent_json_patch_and_the_sandbox_alike(name: str, upto: int) -> None:
    import jsonpatch

    current = _SPREAD[name]
    changes = derive(WHOLE[:upto], "builtin")
    ops = patch_operations(current, changes)
    assert all((op["op"], op["path"]) in ALLOWED_PATCH for op in ops)
    # jsonpatch (PyPI) is the independent RFC 6902 implementation; the sandbox must agree with it exactly.
    theirs = jsonpatch.JsonPatch(ops).apply(current)
    assert apply_patch(current, ops) == theirs
    validate_encounter(theirs)
    # Laid over its own result, the patch changes nothing (so a repeated write is never made).
    assert patch_operations(theirs, changes) == []


def test_the_sandbox_refuses_an_append_to_a_missing_array_as_jsonpatch_does() -> None:
    import jsonpatch
    import jsonpointer

    from sandbox.jsonpatch import PatchError

    ops = [{"op": "add", "path": "/extension/-", "value": _THEIRS}]
    with pytest.raises((jsonpatch.JsonPatchException, jsonpointer.JsonPointerException)):
        jsonpatch.JsonPatch(ops).apply(encounter())
    with pytest.raises(PatchError):
        apply_patch(encounter(), ops)


def test_nothing_in_the_mapping_carries_patient_data_or_participant_ids() -> None:
    text = json.dumps(desired_encounter(encounter(), derive(WHOLE, "builtin")))
    for participant in (PATIENT, PROVIDER, GUEST):
        assert str(participant) not in text


RELAY_OK = {"camera": True, "microphone": True, "speaker": True, "candidates": ["host", "srflx", "relay"],
            "relay": "ok", "rtt": "under_50ms"}
NO_RELAY = {"camera": False, "microphone": True, "speaker": False, "candidates": ["host"], "relay": "failed",
            "rtt": None}


def with_device_tests() -> list[VisitEvent]:
    """WHOLE with a failed then a passed device test of the patient's and a failed one of the guest's."""
    tests = [VisitEvent(0, "device_test_failed", T0 + dt.timedelta(seconds=20), PATIENT, "patient", None, None, NO_RELAY),
             VisitEvent(0, "device_test_passed", T0 + dt.timedelta(seconds=30), PATIENT, "patient", None, None, RELAY_OK),
             VisitEvent(0, "device_test_failed", T0 + dt.timedelta(seconds=65), GUEST, "guest", "interpreter", None,
                        NO_RELAY)]
    merged = sorted(WHOLE + tests, key=lambda e: e.at)
    return [VisitEvent(n, e.kind, e.at, e.participant_id, e.role, e.guest_kind, e.fhir_user, e.detail)
            for n, e in enumerate(merged, start=1)]


def test_each_participants_latest_device_test_is_written_back_as_our_extension() -> None:
    result = desired_encounter(encounter(), derive(with_device_tests(), "builtin"))
    validate_encounter(result)
    found = [{x["url"]: x for x in ext["extension"] if x["url"] != "candidateType"} | {
        "candidateType": [x["valueCode"] for x in ext["extension"] if x["url"] == "candidateType"]}
        for ext in result["extension"] if ext["url"] == DEVICE_TEST_URL]
    assert [(f["participant"]["valueString"], f["result"]["valueCode"]) for f in found] == [
        ("patient", "passed"), ("guest-1", "failed")]
    patient, guest = found
    assert patient["relay"]["valueCode"] == "ok" and patient["roundTripTime"]["valueCode"] == "under_50ms"
    assert patient["candidateType"] == ["host", "srflx", "relay"]
    assert patient["speaker"]["valueBoolean"] is True and patient["tested"]["valueDateTime"] == "2025-03-04T09:00:30.000Z"
    assert guest["relay"]["valueCode"] == "failed" and "roundTripTime" not in guest
    assert guest["camera"]["valueBoolean"] is False and guest["speaker"]["valueBoolean"] is False
    text = json.dumps(result)
    assert all(str(p) not in text for p in (PATIENT, PROVIDER, GUEST))


def test_a_device_test_written_back_twice_changes_nothing_with_put_or_patch() -> None:
    for upto in range(len(with_device_tests()) + 1):
        changes = derive(with_device_tests()[:upto], "builtin")
        once = desired_encounter(encounter(), changes)
        assert unchanged(once, desired_encounter(once, changes))
        patched = apply_patch(encounter(extension=[]), patch_operations(encounter(extension=[]), changes))
        assert patch_operations(patched, changes) == []
        validate_encounter(patched)


def test_a_device_test_result_outside_the_vocabulary_is_left_out() -> None:
    odd = {"camera": "yes", "candidates": ["host", "<script>"], "relay": "Mrs Smith", "rtt": "12 ms",
           "speaker": None}
    log = events((0, PATIENT, "lobby_entered"))
    log.append(VisitEvent(2, "device_test_passed", T0, PATIENT, "patient", None, None, odd))
    (ext,) = [x for x in desired_encounter(encounter(), derive(log, "builtin"))["extension"]
              if x["url"] == DEVICE_TEST_URL]
    assert {x["url"] for x in ext["extension"]} == {"participant", "role", "result", "tested", "candidateType"}
    assert "Mrs Smith" not in json.dumps(ext) and "<script>" not in json.dumps(ext)


@pytest.mark.parametrize(("scopes", "allowed"), [
    ("system/Encounter.read system/Encounter.write", True), ("system/Encounter.rus", True),
    ("system/*.*", True), ("system/Encounter.read", False), ("system/Encounter.cu", False),
    ("user/Encounter.read user/Encounter.write", False)])
def test_write_back_needs_system_scopes_to_read_and_update_encounters(scopes: str, allowed: bool) -> None:
    assert allows_encounter_update(frozenset(scopes.split())) is allowed


def test_backoff_grows_with_jitter_is_capped_and_honours_retry_after() -> None:
    for attempt in range(1, 12):
        delay = backoff(attempt, 1.0, 60.0)
        assert min(60.0, 2 ** (attempt - 1)) / 2 <= delay <= min(60.0, 2 ** (attempt - 1))
    assert backoff(1, 1.0, 60.0, retry_after=120) == 120
    assert parse_retry_after("7") == 7 and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
