"""Backend services token errors that no retry can cure turn write-back off at once, after one token request;
and write-back shares the launch's discovery (one fetch for both)."""
from __future__ import annotations

import asyncio
import logging
import re

import pytest

from gateway.appkeys import DB, SEALER
from presence.appkeys import WRITEBACK
from presence.writeback import set_strategy
from tests.conftest import running_stack

from .conftest import QUICK, WritebackStack, make_visit, outbox_states, people, record_all, wait_until


def _asked(caplog: pytest.LogCaptureFixture, method: str, path: str) -> int:
    """How many times the sandbox EHR was asked `method path` (from its access log)."""
    line = re.compile(rf'"{method} {re.escape(path)}(\?\S*)? HTTP/')
    return sum(1 for r in caplog.records if r.name == "sandbox.access" and line.search(r.getMessage()))


async def _disabled_reason(stack: WritebackStack) -> str | None:
    async with stack.pool.acquire() as conn:
        reason: str | None = await conn.fetchval(
            "SELECT writeback_disabled_reason FROM configurations WHERE id = $1", stack.configuration_id)
    return reason


@pytest.mark.parametrize("error", ["invalid_request", "invalid_client", "unauthorized_client", "invalid_scope"])
async def test_a_token_error_no_retry_can_cure_turns_write_back_off_after_one_token_request(
        wb_stack: WritebackStack, caplog: pytest.LogCaptureFixture, error: str) -> None:
    caplog.set_level(logging.INFO, logger="sandbox.access")
    await wb_stack.set_strategy("fhir-r4-put")
    wb_stack.faults.token_error = error
    # Two visits at once: both are claimed together, and still only one token request is made.
    first, second = await wb_stack.visit("enc-1"), await wb_stack.visit("enc-2")
    for visit in (first, second):
        p = await people(wb_stack.pool, visit)
        await record_all(wb_stack.pool, visit, [(p.patient, "lobby_entered")])

    async def turned_off() -> bool:
        return await _disabled_reason(wb_stack) is not None

    await wait_until(turned_off)
    assert await _disabled_reason(wb_stack) == f"token_refused: {error}"
    # New events for the configuration: kept for when write-back is back on, and no more token requests.
    for visit in (first, second):
        p = await people(wb_stack.pool, visit, practitioner="prac-2")
        await record_all(wb_stack.pool, visit, [(p.provider, "connected")])
    for _ in range(10):  # ten poll intervals and more, each woken at once
        wb_stack.gateway_app[WRITEBACK].poke()
        await asyncio.sleep(wb_stack.settings.writeback_poll_interval * 2)
    assert _asked(caplog, "POST", "/oauth/token") == 1
    assert await outbox_states(wb_stack.pool) == {"pending": 4}
    wb_stack.faults.token_error = None  # for the test's own reads of the Encounters' history
    assert len(await wb_stack.history("enc-1")) == 1 and len(await wb_stack.history("enc-2")) == 1


async def test_write_back_turned_back_on_asks_for_a_token_again(wb_stack: WritebackStack,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sandbox.access")
    await wb_stack.set_strategy("fhir-r4-put")
    wb_stack.faults.token_error = "invalid_client"
    visit = await wb_stack.visit()
    p = await people(wb_stack.pool, visit)
    await record_all(wb_stack.pool, visit, [(p.patient, "lobby_entered")])

    async def turned_off() -> bool:
        return await _disabled_reason(wb_stack) is not None

    await wait_until(turned_off)
    wb_stack.faults.token_error = None  # someone fixed the EHR's build
    await wb_stack.set_strategy("fhir-r4-put")

    async def written() -> bool:
        return (await outbox_states(wb_stack.pool)).get("pending", 0) == 0

    await wait_until(written)
    assert _asked(caplog, "POST", "/oauth/token") == 2
    assert len(await wb_stack.history()) == 2


async def test_launch_and_write_back_share_one_discovery_fetch(database_url: str, signing_key_pem: bytes,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sandbox.access")
    async with running_stack(database_url, signing_key_pem, lambda _g, _s: dict(QUICK)) as stack:
        response, _ = await stack.launch(stack.new_launch(encounter="enc-1"))
        assert response.status == 200, await response.text()

        pool = stack.gateway_app[DB]
        async with pool.acquire() as conn:
            await set_strategy(conn, stack.configuration_id, "fhir-r4-put")
        visit = await make_visit(pool, stack.gateway_app[SEALER], stack.configuration_id, stack.fhir_base, "enc-2",
                                 meeting_provider="builtin")
        p = await people(pool, visit)
        await record_all(pool, visit, [(p.patient, "lobby_entered")])

        async def written() -> bool:
            return (await outbox_states(pool)).get("pending", 0) == 0

        await wait_until(written)
    assert _asked(caplog, "POST", "/oauth/token") == 2  # the clinician's code, write-back's client credentials
    assert _asked(caplog, "GET", "/fhir/.well-known/smart-configuration") == 1
