"""A visit ends three ways (the clinician, idle, past its window) and the sandbox Encounter is written back
`finished` once, with its period end, in both strategies; a no-show is `cancelled`; an end happens once."""
from __future__ import annotations

import asyncio
import json
import dataclasses
from typing import Any
from uuid import UUID

from presence.encounter_mapping import PRESENCE_URL
from presence.visit_end import end_visit, sweep, visit_end
from tests.writeback.conftest import (WritebackStack, assert_history_is_event_log, drained, people, record_all,
                                      visit_events, wait_until)


def _finished_once(versions: list[dict[str, Any]]) -> None:
    ended = [v for v in versions if v.get("status") == "finished"]
    assert len(ended) == 1, [v.get("status") for v in versions]
    assert ended[0] is versions[-1]


async def _visit_that_ran(stack: WritebackStack, still_connected: bool = False) -> tuple[UUID, Any]:
    visit = await stack.visit()
    p = await people(stack.pool, visit)
    events: list[tuple[UUID | None, str]] = [
        (p.patient, "lobby_entered"), (p.provider, "connected"), (p.patient, "admitted"), (p.patient, "connected")]
    if not still_connected:
        events += [(p.patient, "disconnected"), (p.provider, "disconnected"), (p.patient, "left")]
    await record_all(stack.pool, visit, events)
    return visit, p


async def test_a_visit_the_clinician_ends_is_written_back_finished_once_with_put(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    visit, p = await _visit_that_ran(wb_stack, still_connected=True)
    async with wb_stack.pool.acquire() as conn:
        ended = await end_visit(conn, visit, "clinician", p.provider)
        again = await end_visit(conn, visit, "clinician", p.provider)
    assert ended is not None and ended.reason == "clinician" and not ended.no_show
    assert again is None  # the first end stands
    await drained(wb_stack.pool)
    versions = await wb_stack.history()
    assert_history_is_event_log(versions, await visit_events(wb_stack.pool, visit), "fhir-r4-put")
    _finished_once(versions)
    final = versions[-1]
    assert final["statusHistory"][-1] == {"status": "finished", "period": {"start": final["period"]["end"]}}
    # Everyone still connected is disconnected at the end.
    presence = [x for x in final["extension"] if x["url"] == PRESENCE_URL]
    assert presence and all("end" in x["extension"][-1]["valuePeriod"] for x in presence)


async def test_a_visit_the_clinician_ends_gets_its_period_end_with_oracle_patch(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-patch")
    before = wb_stack.encounter()
    assert "end" not in before["period"]
    visit, p = await _visit_that_ran(wb_stack)
    async with wb_stack.pool.acquire() as conn:
        assert await end_visit(conn, visit, "clinician", p.provider) is not None
    await drained(wb_stack.pool)
    versions = await wb_stack.history()
    assert_history_is_event_log(versions, await visit_events(wb_stack.pool, visit), "fhir-r4-patch")
    ends = [v["period"].get("end") for v in versions]
    assert ends[-1] is not None and ends.count(ends[-1]) == 1  # written once


async def test_a_visit_everyone_left_ends_after_the_idle_time(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    visit, _p = await _visit_that_ran(wb_stack)
    quick = dataclasses.replace(wb_stack.settings, visit_idle_end=0.2)

    async def swept() -> bool:
        return visit in await sweep(wb_stack.pool, quick)

    await wait_until(swept, timeout=10)
    async with wb_stack.pool.acquire() as conn:
        found = await visit_end(conn, visit)
    assert found is not None and found.reason == "idle" and not found.no_show
    await drained(wb_stack.pool)
    _finished_once(await wb_stack.history())


async def test_a_visit_still_connected_is_not_ended_for_idleness(wb_stack: WritebackStack) -> None:
    visit, _p = await _visit_that_ran(wb_stack, still_connected=True)
    quick = dataclasses.replace(wb_stack.settings, visit_idle_end=0.0)
    await asyncio.sleep(0.1)
    assert visit not in await sweep(wb_stack.pool, quick)


async def test_a_visit_past_its_window_and_grace_ends_even_with_people_connected(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    visit, _p = await _visit_that_ran(wb_stack, still_connected=True)
    async with wb_stack.pool.acquire() as conn:
        await conn.execute("UPDATE visits SET window_end = now() - interval '2 hours' WHERE id = $1", visit)
    assert visit not in await sweep(wb_stack.pool, dataclasses.replace(wb_stack.settings, visit_grace=3 * 3600))
    assert visit in await sweep(wb_stack.pool, dataclasses.replace(wb_stack.settings, visit_grace=3600))
    async with wb_stack.pool.acquire() as conn:
        found = await visit_end(conn, visit)
    assert found is not None and found.reason == "window"
    await drained(wb_stack.pool)
    _finished_once(await wb_stack.history())


async def test_a_visit_the_patient_never_joined_is_a_no_show_written_cancelled(wb_stack: WritebackStack) -> None:
    await wb_stack.set_strategy("fhir-r4-put")
    visit = await wb_stack.visit()
    p = await people(wb_stack.pool, visit)
    await record_all(wb_stack.pool, visit, [(p.provider, "connected"), (p.provider, "disconnected")])
    async with wb_stack.pool.acquire() as conn:
        ended = await end_visit(conn, visit, "clinician", p.provider)
    assert ended is not None and ended.no_show
    await drained(wb_stack.pool)
    versions = await wb_stack.history()
    assert_history_is_event_log(versions, await visit_events(wb_stack.pool, visit), "fhir-r4-put")
    final = versions[-1]
    assert final["status"] == "cancelled"
    assert not any(x["url"] == PRESENCE_URL for x in final["extension"])  # no patient period: there was none
    assert [v["status"] for v in versions].count("cancelled") == 1


async def test_two_sweepers_and_a_clinician_end_a_visit_once(wb_stack: WritebackStack) -> None:
    visit, p = await _visit_that_ran(wb_stack)
    async with wb_stack.pool.acquire() as conn:
        await conn.execute("UPDATE visits SET window_end = now() - interval '5 hours' WHERE id = $1", visit)

    async def clinician() -> bool:
        async with wb_stack.pool.acquire() as conn:
            return await end_visit(conn, visit, "clinician", p.provider) is not None

    results = await asyncio.gather(sweep(wb_stack.pool, wb_stack.settings), sweep(wb_stack.pool, wb_stack.settings),
                                   clinician())
    ended_by = sum(visit in r for r in results[:2]) + int(results[2])
    assert ended_by == 1
    async with wb_stack.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM presence_events WHERE visit_id = $1 AND kind = 'visit_ended'",
                                   visit) == 1
        assert await conn.fetchval("SELECT count(*) FROM visit_ends WHERE visit_id = $1", visit) == 1


async def test_a_write_back_that_gives_up_is_told_to_the_organisations_webhook(wb_stack: WritebackStack) -> None:
    async with wb_stack.pool.acquire() as conn:
        org = await conn.fetchval(
            "INSERT INTO organisations (slug, name, idp_kind, issuer, client_id, client_secret)"
            " VALUES ('north', 'North Clinic', 'oidc', 'https://idp.example', 'portal', '\\x00') RETURNING id")
        await conn.execute("UPDATE configurations SET organisation_id = $1", org)
        await conn.execute("INSERT INTO webhook_endpoints (organisation_id, url, event_types, secret)"
                           " VALUES ($1, 'https://127.0.0.1:9/x', '{writeback.failed}', '\\x00')", org)
    await wb_stack.set_strategy("fhir-r4-put")
    visit = await wb_stack.visit("enc-does-not-exist")
    p = await people(wb_stack.pool, visit)
    await record_all(wb_stack.pool, visit, [(p.patient, "lobby_entered")])
    await drained(wb_stack.pool)
    async with wb_stack.pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_type, payload FROM webhook_outbox")
    assert [r["event_type"] for r in rows] == ["writeback.failed"]
    data = json.loads(rows[0]["payload"])["data"]
    assert data["visit_id"] == str(visit) and data["reason"] == "fhir_404 not-found"
    assert "enc-does-not-exist" not in rows[0]["payload"]


async def test_a_patient_who_waited_early_and_left_does_not_end_the_visit_for_idleness(
        wb_stack: WritebackStack) -> None:
    visit = await wb_stack.visit()
    p = await people(wb_stack.pool, visit)
    # The clinician's view was open while the patient tested their devices in the lobby; both went away.
    await record_all(wb_stack.pool, visit, [(p.provider, "connected"), (p.patient, "lobby_entered"),
                                            (p.patient, "left"), (p.provider, "disconnected")])
    await asyncio.sleep(0.1)
    assert visit not in await sweep(wb_stack.pool, dataclasses.replace(wb_stack.settings, visit_idle_end=0.0))
