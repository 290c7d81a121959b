"""Hostile or odd deliveries to the carriers' webhooks get a 4xx or nothing done, never a 500; the doubles'
throughput limit and its sandbox control."""
from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.appkeys import DB, NOTIFIER
from gateway.notify import NotifyError
from sandbox import SandboxSettings, create_sandbox_app

from .conftest import ACS_NUMBER, PATIENT, WEBHOOK_SECRET, Carrier, StartGateway, carrier_settings


@pytest.mark.parametrize("body", [b"not json", b"{}", b"[]", b"[1, 2]", b'[{"eventType": "x"}]',
                                  b'[{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}}]',
                                  b"[" + b",".join([b'{"data": {}}'] * 101) + b"]"])
async def test_malformed_event_grid_deliveries_are_refused(carrier: Carrier, start_gateway: StartGateway,
                                                           http: aiohttp.ClientSession, body: bytes) -> None:
    gateway = await start_gateway(**carrier_settings("acs", carrier))
    async with http.post(f"{gateway.url}/sms/inbound/acs?code={WEBHOOK_SECRET}", data=body,
                         headers={"Content-Type": "application/json"}) as r:
        assert 400 <= r.status < 500, await r.text()


async def test_a_text_to_a_number_not_ours_changes_nothing(carrier: Carrier, start_gateway: StartGateway,
                                                          http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(**carrier_settings("acs", carrier))
    carrier.acs.numbers.add("+18335550177")  # the resource's, but not the gateway's sender nor a bought one
    status = await carrier.acs.deliver_sms(http, f"{gateway.url}/sms/inbound/acs?code={WEBHOOK_SECRET}", PATIENT,
                                           "+18335550177", "STOP")
    assert status == 200
    assert carrier.acs.sent == []
    async with gateway.app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sms_opt_outs") == 0


async def test_a_signed_twilio_delivery_without_a_body_is_answered_with_nothing(
        carrier: Carrier, start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(**carrier_settings("twilio", carrier))
    status, body = await carrier.twilio.deliver_sms(http, f"{gateway.url}/sms/inbound/twilio", "not a number",
                                                    "+12065550100", "STOP")
    assert status == 200 and "<Message>" not in body, body


async def test_the_acs_double_throttles_beyond_its_rate(carrier: Carrier, start_gateway: StartGateway) -> None:
    gateway = await start_gateway(**carrier_settings("acs", carrier))
    carrier.acs.rate.set(1)
    await gateway.app[NOTIFIER].send_sms(PATIENT, "first")
    with pytest.raises(NotifyError) as refused:
        await gateway.app[NOTIFIER].send_sms(PATIENT, "second")  # tried twice, refused twice
    assert refused.value.reason == "sms_throttled"
    assert [m.message for m in carrier.acs.sent] == ["first"]
    assert carrier.acs.rate.refused == 2
    assert ACS_NUMBER in carrier.acs.numbers


async def test_the_sandbox_sets_its_carriers_rate_and_operation_time() -> None:
    app = create_sandbox_app(SandboxSettings(base_url="http://localhost:1", app_launch_url="http://127.0.0.1:2/launch",
                                             test_controls=True))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.make_url("/_sandbox/carriers"), json={"rate": 50, "lro_delay": 0}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["rate"] == 50
            for bad in ({"rate": -1}, {"rate": "fast"}, {"lro_delay": -2}, [1]):
                async with http.post(server.make_url("/_sandbox/carriers"), json=bad) as r:
                    assert r.status == 400, bad
    finally:
        await server.close()
