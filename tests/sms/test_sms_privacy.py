"""Join links by SMS through a carrier, STOP from the patient, and the link refused: the patient's number is in
neither the database nor the logs."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.appkeys import DB
from gateway.notify import to_e164
from tests.conftest import Stack, database_text, running_stack
from tests.notify.helpers import invite, launch_handle
from tests.test_privacy import CANARIES, _seed_canary_patient

from .conftest import ACS_NUMBER, WEBHOOK_SECRET, Carrier, carrier_settings

@pytest.fixture
async def acs_stack(database_url: str, signing_key_pem: bytes, carrier: Carrier) -> AsyncIterator[Stack]:
    """The gateway and sandbox EHR, with SMS through the ACS double."""
    async with running_stack(database_url, signing_key_pem,
                             lambda _gw, _sb: dict(carrier_settings("acs", carrier), phone_region="US")) as stack:
        yield stack


async def test_join_links_by_sms_honour_stop_and_keep_no_patient_number(
        acs_stack: Stack, carrier: Carrier, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    stack = acs_stack
    _seed_canary_patient(stack)
    patient = to_e164(CANARIES["phone"])
    assert patient is not None
    handle = await launch_handle(stack, patient=CANARIES["patient_id"], encounter=CANARIES["encounter_id"])
    response = await invite(stack, handle, channel="sms", role="patient")
    assert response.status == 200, await response.text()
    assert [m.to for m in carrier.acs.sent] == [patient]

    webhook = f"{stack.gateway_url}/sms/inbound/acs?code={WEBHOOK_SECRET}"
    assert await carrier.acs.deliver_sms(http, webhook, patient, ACS_NUMBER, "STOP") == 200
    response = await invite(stack, handle, channel="sms", role="patient")
    answer = await response.json()
    assert response.status == 409 and answer["reason"] == "sms_opted_out", answer
    assert len(carrier.acs.sent) == 2  # the link, then the STOP confirmation; nothing since

    async with stack.gateway_app[DB].acquire() as conn:
        _tables, dump = await database_text(conn)
        assert await conn.fetchval("SELECT count(*) FROM sms_opt_outs") == 1
        assert await conn.fetchval("SELECT sum(messages) FROM sms_suppressed") == 1
    ours = [r for r in caplog.records if not r.name.startswith("sandbox")]
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours)
    for text, where in ((dump, "the database"), (logs, "the logs")):
        for form in (CANARIES["phone"], patient, patient[1:], patient[2:]):
            assert form not in text, f"the patient's number landed in {where}"
    # The numbers the SMS tables keep are the organisation's own senders only (none was bought here).
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sms_numbers") == 0
