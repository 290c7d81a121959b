"""Write-back failures reach the error report: the worker's retries, dead letters and turning write-back off
are counted per configuration, reason code and day as they happen, and the report's figures are those the
test provoked and those the append-only attempts audit holds."""
from __future__ import annotations

import datetime as dt
from collections import Counter

from config_portal.error_report import report
from config_portal.organisations import NewOrganisation, add_organisation
from gateway.appkeys import SEALER
from gateway.configurations import set_organisation_zone
from gateway.reasons import writeback_code
from tests.zones import local_date, zone_on_another_date

from .conftest import WritebackStack, attempts, drained, people, record_all, wait_until


async def test_write_back_failures_are_counted_per_reason_and_outcome(wb_stack: WritebackStack) -> None:
    async with wb_stack.pool.acquire() as conn:
        org_id = await add_organisation(conn, wb_stack.gateway_app[SEALER], NewOrganisation(
            slug="wb-health", name="Write-back Health", idp_kind="oidc", issuer="https://idp.example.org",
            client_id="portal", client_secret="portal-secret-" + "x" * 16), "test-operator")
        await conn.execute("UPDATE configurations SET organisation_id = $1 WHERE id = $2", org_id,
                           wb_stack.configuration_id)
    # A token without Encounter write: write-back turns itself off (the event waits).
    async with wb_stack.pool.acquire() as conn:
        await conn.execute("UPDATE configurations SET writeback_scopes = 'system/Encounter.read' WHERE id = $1",
                           wb_stack.configuration_id)
    await wb_stack.set_strategy("fhir-r4-put")
    visit = await wb_stack.visit()
    p = await people(wb_stack.pool, visit)
    await record_all(wb_stack.pool, visit, [(p.patient, "lobby_entered")])

    async def turned_off() -> bool:
        return any(a["outcome"] == "disabled" for a in await attempts(wb_stack.pool))

    await wait_until(turned_off)
    # Back on, with the scopes it needs, and three server errors before the write goes through: three retries.
    wb_stack.faults.update({"fhir_fail_next": 3, "fhir_fail_status": 500})
    async with wb_stack.pool.acquire() as conn:
        await conn.execute("UPDATE configurations SET writeback_scopes = 'system/Encounter.read "
                           "system/Encounter.write' WHERE id = $1", wb_stack.configuration_id)
    await wb_stack.set_strategy("fhir-r4-put")
    await drained(wb_stack.pool)
    # An Encounter the EHR does not have: the dead letters, at once.
    missing = await wb_stack.visit("enc-does-not-exist")
    q = await people(wb_stack.pool, missing)
    await record_all(wb_stack.pool, missing, [(q.patient, "lobby_entered")])
    await drained(wb_stack.pool)

    today = dt.datetime.now(dt.timezone.utc).date()
    async with wb_stack.pool.acquire() as conn:
        found = await report(conn, org_id, today - dt.timedelta(days=6), today)
    counted = {(row.reason, outcome): n for row in found.writebacks
               for outcome, n in (("retry", row.retried), ("dead", row.gave_up), ("disabled", row.turned_off)) if n}
    assert all(row.day == today and row.configuration_id == wb_stack.configuration_id for row in found.writebacks)
    # What the test provoked.
    assert counted == {("fhir_500", "retry"): 3, ("fhir_404", "dead"): 1, ("scope_not_granted", "disabled"): 1}
    # And what the attempts audit holds, counted independently.
    audited = Counter((writeback_code(a["reason"]), a["outcome"]) for a in await attempts(wb_stack.pool)
                      if a["outcome"] in ("retry", "dead", "disabled"))
    assert counted == dict(audited)
    totals = {t.code: t.counts for t in found.writeback_totals()}
    assert totals == {"fhir_500": (3, 0, 0), "fhir_404": (0, 1, 0), "scope_not_granted": (0, 0, 1)}
    assert found.launches == [] and found.near_misses == []


async def test_a_write_back_failure_counts_on_the_organisations_day(wb_stack: WritebackStack) -> None:
    zone = zone_on_another_date()
    async with wb_stack.pool.acquire() as conn:
        org_id = await add_organisation(conn, wb_stack.gateway_app[SEALER], NewOrganisation(
            slug="wb-zone", name="Write-back Zone", idp_kind="oidc", issuer="https://idp.example.org",
            client_id="portal", client_secret="portal-secret-" + "x" * 16), "test-operator")
        await set_organisation_zone(conn, org_id, zone, "test-operator")
        await conn.execute("UPDATE configurations SET organisation_id = $1 WHERE id = $2", org_id,
                           wb_stack.configuration_id)
    await wb_stack.set_strategy("fhir-r4-put")
    # An Encounter the EHR does not have: a dead letter at once, counted on the organisation's today.
    missing = await wb_stack.visit("enc-does-not-exist")
    q = await people(wb_stack.pool, missing)
    await record_all(wb_stack.pool, missing, [(q.patient, "lobby_entered")])
    await drained(wb_stack.pool)
    local = local_date(zone)
    assert local != dt.datetime.now(dt.timezone.utc).date()
    async with wb_stack.pool.acquire() as conn:
        rows = await conn.fetch("SELECT day, reason, outcome, sum(count)::int AS n FROM writeback_failures "
                                "GROUP BY day, reason, outcome")
    assert [(r["day"], r["reason"], r["outcome"], r["n"]) for r in rows] == [(local, "fhir_404", "dead", 1)]
