"""STOP, START and HELP through both carriers' inbound webhooks, and the opt-out check on every text."""
from __future__ import annotations

import logging

import aiohttp
import pytest

from gateway.appkeys import DB, NOTIFIER
from gateway.notify.optout import START_REPLY, STOP_REPLY, SmsOptedOut, suppressed_total
from tests.conftest import database_text

from .conftest import (ACS_NUMBER, PATIENT, TWILIO_NUMBER, WEBHOOK_SECRET, Carrier, StartGateway,
                       carrier_settings)

PATIENT_AS_TYPED = "(206) 555-0142"  # what the EHR holds, read in the organisation's region (US)


async def _acs_inbound(gateway_url: str, carrier: Carrier, http: aiohttp.ClientSession, text: str) -> int:
    return await carrier.acs.deliver_sms(http, f"{gateway_url}/sms/inbound/acs?code={WEBHOOK_SECRET}", PATIENT,
                                         ACS_NUMBER, text)


async def test_acs_event_grid_subscription_is_validated_only_with_the_secret(
        carrier: Carrier, start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(**carrier_settings("acs", carrier))
    assert await carrier.acs.validate_subscription(http, f"{gateway.url}/sms/inbound/acs?code={WEBHOOK_SECRET}") == 200
    assert await carrier.acs.validate_subscription(http, f"{gateway.url}/sms/inbound/acs?code=guess") == 400
    async with http.post(f"{gateway.url}/sms/inbound/acs", json=[]) as r:
        assert r.status == 401, await r.text()


async def test_acs_stop_means_no_more_sms_counted_and_start_brings_them_back(
        carrier: Carrier, start_gateway: StartGateway, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await start_gateway(**carrier_settings("acs", carrier))
    notifier = gateway.app[NOTIFIER]
    await notifier.send_sms(PATIENT_AS_TYPED, "Your visit link: https://x/j/1")
    assert [(m.to, m.message) for m in carrier.acs.sent] == [(PATIENT, "Your visit link: https://x/j/1")]

    assert await _acs_inbound(gateway.url, carrier, http, " stop ") == 200
    # The carrier-standard confirmation goes back from the number that received the STOP.
    assert [(m.sender, m.to, m.message) for m in carrier.acs.sent[1:]] == [(ACS_NUMBER, PATIENT, STOP_REPLY)]

    for _ in range(2):
        with pytest.raises(SmsOptedOut):
            await notifier.send_sms(PATIENT_AS_TYPED, "A reminder")
    assert len(carrier.acs.sent) == 2  # nothing more went out
    async with gateway.app[DB].acquire() as conn:
        assert await suppressed_total(conn) == 2

    assert await _acs_inbound(gateway.url, carrier, http, "START") == 200
    assert carrier.acs.sent[-1].message == START_REPLY
    await notifier.send_sms(PATIENT, "A reminder")
    assert carrier.acs.sent[-1].message == "A reminder"

    # The list kept a keyed digest, never the number; the logs never saw it either.
    assert await _acs_inbound(gateway.url, carrier, http, "STOP") == 200
    async with gateway.app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sms_opt_outs") == 1
        _tables, text = await database_text(conn)
    for form in (PATIENT, PATIENT[1:], PATIENT[2:], "555-0142", "5550142"):
        assert form not in text
        assert form not in caplog.text


async def test_acs_help_is_answered_with_the_organisations_text(
        carrier: Carrier, start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(**carrier_settings("acs", carrier), sms_help_text="Riverside Clinic: call 555.")
    assert await _acs_inbound(gateway.url, carrier, http, "help") == 200
    assert [(m.to, m.message) for m in carrier.acs.sent] == [(PATIENT, "Riverside Clinic: call 555.")]
    assert await _acs_inbound(gateway.url, carrier, http, "see you at 10") == 200
    assert len(carrier.acs.sent) == 1  # not a keyword: no answer


async def test_twilio_stop_start_and_help_are_answered_in_twiml(
        carrier: Carrier, start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(**carrier_settings("twilio", carrier))
    webhook = f"{gateway.url}/sms/inbound/twilio"
    notifier = gateway.app[NOTIFIER]

    status, body = await carrier.twilio.deliver_sms(http, webhook, PATIENT, TWILIO_NUMBER, "Stop")
    assert status == 200, body
    assert STOP_REPLY.replace("&", "&amp;") in body and body.startswith("<?xml")
    with pytest.raises(SmsOptedOut):
        await notifier.send_sms(PATIENT_AS_TYPED, "A reminder")
    assert carrier.twilio.sent == []
    async with gateway.app[DB].acquire() as conn:
        assert await suppressed_total(conn) == 1

    status, body = await carrier.twilio.deliver_sms(http, webhook, PATIENT, TWILIO_NUMBER, "START")
    assert status == 200 and "re-subscribed" in body and "Msg&amp;Data" in body
    await notifier.send_sms(PATIENT_AS_TYPED, "A reminder")
    assert [(m.sender, m.to) for m in carrier.twilio.sent] == [(TWILIO_NUMBER, PATIENT)]

    status, body = await carrier.twilio.deliver_sms(http, webhook, PATIENT, TWILIO_NUMBER, "HELP")
    assert status == 200 and "Riverside Clinic" in body and "Reply STOP" in body


async def test_twilio_webhook_with_a_bad_signature_is_refused_and_changes_nothing(
        carrier: Carrier, start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(**carrier_settings("twilio", carrier))
    webhook = f"{gateway.url}/sms/inbound/twilio"
    status, _ = await carrier.twilio.deliver_sms(http, webhook, PATIENT, TWILIO_NUMBER, "STOP",
                                                 auth_token="someone-elses-token")
    assert status == 403
    async with http.post(webhook, data={"From": PATIENT, "Body": "STOP"}) as r:
        assert r.status == 403
    async with gateway.app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sms_opt_outs") == 0


async def test_a_webhook_of_a_carrier_not_configured_is_not_served(
        carrier: Carrier, start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(**carrier_settings("twilio", carrier))
    assert await carrier.acs.deliver_sms(http, f"{gateway.url}/sms/inbound/acs?code={WEBHOOK_SECRET}", PATIENT,
                                         ACS_NUMBER, "STOP") == 404
