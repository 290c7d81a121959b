"""The phone number operations outlive the gateway process that started them: another process resumes them."""
from __future__ import annotations

import asyncio

import asyncpg

from config_portal.organisations import NewOrganisation, add_organisation
from gateway.appkeys import DB, SEALER

from .conftest import Carrier, StartGateway, carrier_settings


async def _step(pool: asyncpg.Pool, op_id: int, want: set[str], limit: float = 20.0) -> asyncpg.Record:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT step, lease_until, number FROM sms_operations WHERE id = $1", op_id)
        if row["step"] in want:
            return row
        assert loop.time() < deadline, dict(row)
        await asyncio.sleep(0.05)


async def test_a_restart_mid_operation_resumes_where_it_stood(carrier: Carrier, start_gateway: StartGateway,
                                                             database_url: str) -> None:
    settings = dict(carrier_settings("acs", carrier), sms_operation_poll_interval=0.1)
    first = await start_gateway(**settings)
    async with first.app[DB].acquire() as conn:
        org_id = await add_organisation(conn, first.app[SEALER], NewOrganisation(
            slug="riverside", name="Riverside", idp_kind="oidc", issuer="https://idp.example/riverside",
            client_id="c", client_secret="s" * 20), "test-operator")
        op_id = await conn.fetchval(
            "INSERT INTO sms_operations (organisation_id, kind, step, requested_by) "
            "VALUES ($1, 'purchase', 'requested', 'riverside:admin') RETURNING id", org_id)
    carrier.acs.hold_operations = True  # ACS takes its time: the search stays running

    await _step(first.app[DB], op_id, {"searching"})
    await first.server.close()  # the process stops mid-operation
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        row = await _step(pool, op_id, {"searching"})
        assert row["lease_until"] is None  # let go on the way out, not held until the lease runs out

        carrier.acs.hold_operations = False  # ACS finishes while no gateway runs
        await start_gateway(**settings)  # the next process picks the operation up
        row = await _step(pool, op_id, {"succeeded", "failed"})
        assert row["step"] == "succeeded"
        assert row["number"] in carrier.acs.numbers
        kinds = [op.kind for op in carrier.acs.operations.values()]
        assert kinds == ["search", "purchase"]  # nothing started twice
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM sms_numbers WHERE number = $1", row["number"]) == 1
    finally:
        await pool.close()
