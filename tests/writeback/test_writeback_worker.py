"""The write-back worker against the sandbox EHR: writes, retries, conflicts, dead letters, credentials."""
from __future__ import annotations

import logging
from typing import Any

import aiohttp
import asyncpg
import pytest

from presence.encounter_mapping import PRESENCE_URL

from .conftest import (WritebackStack, assert_history_is_event_log, attempts, drained, full_visit, outbox_states,
                       people, record_all, visit_events, wait_until)


async def _whole_visit(stack: WritebackStack, encounter_id: str = "enc-1") -> Any:
    visit = await stack.visit(encounter_id)
    p = await people(stack.pool, visit)
    await record_all(stack.pool, visit, full_visit(p))
    return visit


async def test_a_whole_visit_is_written_back_with_put_exactly_once(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    visit = await _whole_visit(wb_stack)
    await drained(wb_stack.pool)
    versions = await wb_stack.history()
    assert_history_is_event_log(versions, await visit_events(wb_stack.pool, visit), "fhir-r4-put")
    final = versions[-1]
    assert final["status"] == "finished"
    assert [h["status"] for h in final["statusHistory"]] == ["planned", "arrived", "in-progress", "finished"]
    assert final["participant"][0]["period"]["end"] == final["period"]["end"]
    roles = [x["extension"][0]["valueCode"] for x in final["extension"] if x["url"] == PRESENCE_URL]
    assert sorted(roles) == ["guest", "patient", "patient"]
    outcomes = {a["outcome"] for a in await attempts(wb_stack.pool, visit)}
    assert outcomes <= {"written", "unchanged"} and "written" in outcomes
    assert (await outbox_states(wb_stack.pool)) == {"done": 10}


async def test_a_whole_visit_is_written_back_with_oracle_patch(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-patch")
    # Oracle Health's Encounters carry extensions of their own; the patch keeps them.
    ehr_extension = {"url": "https://fhir-ehr.example/StructureDefinition/custom", "valueString": "kept"}
    wb_stack.put_encounter({**wb_stack.encounter(), "extension": [ehr_extension]})
    visit = await _whole_visit(wb_stack)
    await drained(wb_stack.pool)
    versions = await wb_stack.history()
    assert_history_is_event_log(versions[1:], await visit_events(wb_stack.pool, visit), "fhir-r4-patch")
    final = versions[-1]
    assert final["extension"][0] == ehr_extension
    assert final["status"] == "planned"  # Oracle's PATCH cannot change the status; the period says it all
    assert final["period"]["start"] != versions[0]["period"]["start"]
    assert any(x["extension"][0]["valueCode"] == "provider" for x in final["extension"] if x["url"] == PRESENCE_URL)


async def test_events_already_written_by_a_dead_process_are_not_written_again(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    visit = await _whole_visit(wb_stack)
    await drained(wb_stack.pool)
    before = await wb_stack.history()
    # As if the process died after its PUT succeeded and before it marked the rows done.
    async with wb_stack.pool.acquire() as conn:
        await conn.execute("UPDATE writeback_outbox SET state = 'pending', finished_at = NULL, available_at = now()")
    await drained(wb_stack.pool)
    assert len(await wb_stack.history()) == len(before)
    assert (await attempts(wb_stack.pool, visit))[-1]["outcome"] == "unchanged"


async def test_server_errors_are_retried_until_written(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    wb_stack.faults.update({"fhir_fail_next": 3, "fhir_fail_status": 500})
    visit = await _whole_visit(wb_stack)
    await drained(wb_stack.pool)
    audit = await attempts(wb_stack.pool, visit)
    retries = [a for a in audit if a["outcome"] == "retry"]
    assert retries and all(a["reason"] == "fhir_500 exception" and a["http_status"] == 500 for a in retries)
    assert audit[-1]["outcome"] in ("written", "unchanged")
    assert_history_is_event_log(await wb_stack.history(), await visit_events(wb_stack.pool, visit), "fhir-r4-put")


async def test_too_many_requests_waits_as_long_as_retry_after_says(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    wb_stack.faults.update({"fhir_fail_next": 1, "fhir_fail_status": 429, "fhir_retry_after": 1})
    visit = await wb_stack.visit()
    p = await people(wb_stack.pool, visit)
    await record_all(wb_stack.pool, visit, [(p.patient, "lobby_entered")])

    async def retried() -> bool:
        return any(a["outcome"] == "retry" for a in await attempts(wb_stack.pool, visit))

    await wait_until(retried)
    async with wb_stack.pool.acquire() as conn:
        wait = await conn.fetchval(
            "SELECT extract(epoch FROM o.available_at - a.at) FROM writeback_outbox o, writeback_attempts a"
            " WHERE a.outcome = 'retry' AND o.state = 'pending'")
    # Both times are the database's: the backoff (0.05 s base here) gave way to Retry-After's second.
    assert wait is None or float(wait) >= 0.9
    await drained(wb_stack.pool)
    audit = await attempts(wb_stack.pool, visit)
    assert [a["reason"] for a in audit if a["outcome"] == "retry"] == ["fhir_429 throttled"]
    assert audit[-1]["outcome"] == "written"


async def test_timeouts_are_retried_and_a_late_write_is_not_repeated(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    wb_stack.faults.update({"fhir_delay": wb_stack.settings.writeback_request_timeout + 0.5})
    visit = await _whole_visit(wb_stack)

    async def timed_out() -> bool:
        return any(a["reason"] == "fhir_timeout" for a in await attempts(wb_stack.pool, visit))

    await wait_until(timed_out, timeout=20)
    wb_stack.faults.update({"fhir_delay": 0.0})
    await drained(wb_stack.pool, timeout=20)
    assert_history_is_event_log(await wb_stack.history(), await visit_events(wb_stack.pool, visit), "fhir-r4-put")


async def test_a_few_conflicts_are_resolved_by_reading_again(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    visit = await wb_stack.visit()
    p = await people(wb_stack.pool, visit)
    await record_all(wb_stack.pool, visit, [(p.patient, "lobby_entered")])
    await drained(wb_stack.pool)
    # The EHR's own user changes the Encounter, and the next writes meet 412s.
    wb_stack.put_encounter({**wb_stack.encounter(), "serviceType": {"text": "Video visit"}})
    wb_stack.faults.update({"fhir_412_next": 3})
    await record_all(wb_stack.pool, visit, [(p.patient, "admitted")])
    await drained(wb_stack.pool)
    final = wb_stack.encounter()
    assert final["serviceType"] == {"text": "Video visit"} and final["status"] == "in-progress"
    assert (await attempts(wb_stack.pool, visit))[-1]["outcome"] == "written"


async def test_a_storm_of_conflicts_backs_off_and_then_writes(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    wb_stack.faults.update({"fhir_412_next": wb_stack.settings.writeback_max_conflict_rounds * 2})
    visit = await _whole_visit(wb_stack)
    await drained(wb_stack.pool)
    reasons = [a["reason"] for a in await attempts(wb_stack.pool, visit) if a["outcome"] == "retry"]
    assert reasons and set(reasons) == {"fhir_412 conflict_storm"}
    assert_history_is_event_log(await wb_stack.history(), await visit_events(wb_stack.pool, visit), "fhir-r4-put")


async def test_a_missing_encounter_goes_to_the_dead_letters(wb_stack: WritebackStack,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    visit = await wb_stack.visit("enc-does-not-exist")
    p = await people(wb_stack.pool, visit)
    with caplog.at_level(logging.WARNING, logger="presence.writeback"):
        await record_all(wb_stack.pool, visit, [(p.patient, "lobby_entered"), (p.patient, "admitted")])
        await drained(wb_stack.pool)
    from presence.writeback import dead_letters

    async with wb_stack.pool.acquire() as conn:
        dead = await dead_letters(conn)
    assert {d["reason"] for d in dead} == {"fhir_404 not-found"} and len(dead) >= 1
    assert "gave up" in caplog.text and "fhir_404" in caplog.text
    assert (await attempts(wb_stack.pool, visit))[-1]["outcome"] == "dead"
    async with aiohttp.ClientSession() as http:
        for wrong in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": "Basic bWV0cmljcw=="}):
            async with http.get(f"{wb_stack.gateway_url}/metrics", headers=wrong) as refused:
                assert refused.status == 401 and "dead_letters" not in await refused.text()
        async with http.get(f"{wb_stack.gateway_url}/metrics",
                            headers={"Authorization": f"Bearer {wb_stack.settings.metrics_token}"}) as r:
            assert r.status == 200
            text = await r.text()
    assert 'visitgate_writeback_dead_letters_total{reason="fhir_404"}' in text
    assert 'visitgate_writeback_attempts_total{outcome="dead"} 1.0' in text


async def test_write_back_is_off_with_a_reason_when_the_scope_is_not_granted(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    async with wb_stack.pool.acquire() as conn:
        await conn.execute("UPDATE configurations SET writeback_scopes = 'system/Encounter.read' WHERE id = $1",
                           wb_stack.configuration_id)
    visit = await wb_stack.visit()
    p = await people(wb_stack.pool, visit)
    await record_all(wb_stack.pool, visit, [(p.patient, "lobby_entered")])

    async def disabled() -> bool:
        async with wb_stack.pool.acquire() as conn:
            return await conn.fetchval("SELECT writeback_disabled_reason FROM configurations WHERE id = $1",
                                       wb_stack.configuration_id) is not None

    await wait_until(disabled)
    async with wb_stack.pool.acquire() as conn:
        reason = await conn.fetchval("SELECT writeback_disabled_reason FROM configurations WHERE id = $1",
                                     wb_stack.configuration_id)
    assert reason == "scope_not_granted: system/Encounter read and update"
    assert len(await wb_stack.history()) == 1  # nothing was written
    assert (await outbox_states(wb_stack.pool)) == {"pending": 1}  # kept for when write-back is back on
    assert (await attempts(wb_stack.pool, visit))[-1]["outcome"] == "disabled"


async def test_attempts_audit_is_append_only_and_holds_no_patient_data(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    await _whole_visit(wb_stack)
    await drained(wb_stack.pool)
    async with wb_stack.pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError):
            await conn.execute("UPDATE writeback_attempts SET reason = 'x'")
        with pytest.raises(asyncpg.RaiseError):
            await conn.execute("DELETE FROM writeback_attempts")
        dump = " ".join(str(dict(r)) for r in await conn.fetch("SELECT * FROM writeback_attempts"))
        dump += " ".join(str(dict(r)) for r in await conn.fetch("SELECT * FROM writeback_outbox"))
    for secret in ("enc-1", "pat-1", "Patient", "Sandbox"):  # ids, references and names from the EHR
        assert secret not in dump
