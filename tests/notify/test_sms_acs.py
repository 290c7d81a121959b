"""The Azure Communication Services SMS adapter against a double that checks the documented contract."""
from __future__ import annotations

import base64
import email.utils
import json
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.errors import ConfigError
from gateway.notify import AcsSms, NotifyError

from sandbox.carriers.acs import AcsDouble

KEY = base64.b64encode(b"k" * 64).decode()
SENDER = "+18005550100"


@pytest.fixture
async def acs() -> AsyncIterator[tuple[AcsDouble, str]]:
    """The double on 127.0.0.1 and its endpoint URL."""
    double = AcsDouble(access_key=base64.b64decode(KEY), owned_number=SENDER)
    server = TestServer(double.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield double, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def test_acs_send_is_signed_and_accepted(acs: tuple[AcsDouble, str], http: aiohttp.ClientSession) -> None:
    double, endpoint = acs
    message_id = await AcsSms(http, endpoint, KEY, SENDER).send("+1 (206) 555-0199", "Your visit: https://x/j")
    assert message_id.startswith("Outgoing_")
    [call] = double.calls
    assert call.status == 202, call.error
    assert call.body["from"] == SENDER
    assert call.body["message"] == "Your visit: https://x/j"
    [recipient] = call.body["smsRecipients"]
    assert recipient["to"] == "+12065550199"  # normalised to E.164
    assert recipient["repeatabilityRequestId"] and recipient["repeatabilityFirstSent"]
    assert call.headers["Authorization"].startswith(
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=")


async def test_acs_send_with_the_wrong_key_is_rejected(acs: tuple[AcsDouble, str],
                                                       http: aiohttp.ClientSession) -> None:
    double, endpoint = acs
    wrong = base64.b64encode(b"w" * 64).decode()
    with pytest.raises(NotifyError) as refused:
        await AcsSms(http, endpoint, wrong, SENDER).send("+12065550199", "hello")
    assert refused.value.reason == "sms_unauthorized"
    assert [c.status for c in double.calls] == [401]
    assert double.calls[0].error == "Denied"


async def _post_signed(http: aiohttp.ClientSession, sms: AcsSms, endpoint: str, signed_body: bytes,
                       sent_body: bytes, date: str | None = None) -> int:
    headers = sms.signed_headers(signed_body, date=date)
    async with http.post(f"{endpoint}/sms?api-version=2021-03-07", data=sent_body, headers=headers) as r:
        return r.status


def _body(to: str = "+12065550199") -> bytes:
    return json.dumps({"from": SENDER, "smsRecipients": [{"to": to}], "message": "hi"}).encode()


async def test_double_rejects_a_body_that_is_not_the_one_signed(acs: tuple[AcsDouble, str],
                                                                http: aiohttp.ClientSession) -> None:
    double, endpoint = acs
    sms = AcsSms(http, endpoint, KEY, SENDER)
    assert await _post_signed(http, sms, endpoint, _body(), _body()) == 202
    assert await _post_signed(http, sms, endpoint, _body(), _body("+12065550166")) == 401


async def test_double_rejects_a_stale_date(acs: tuple[AcsDouble, str], http: aiohttp.ClientSession) -> None:
    _double, endpoint = acs
    sms = AcsSms(http, endpoint, KEY, SENDER)
    stale = email.utils.formatdate(time.time() - 20 * 60, usegmt=True)
    assert await _post_signed(http, sms, endpoint, _body(), _body(), date=stale) == 401


async def test_double_rejects_a_recipient_not_in_e164(acs: tuple[AcsDouble, str], http: aiohttp.ClientSession) -> None:
    double, endpoint = acs
    sms = AcsSms(http, endpoint, KEY, SENDER)
    body = _body("555-0100")
    assert await _post_signed(http, sms, endpoint, body, body) == 400
    assert double.calls[-1].error == "BadRequest"


async def test_acs_sender_must_be_the_resources_number(acs: tuple[AcsDouble, str],
                                                       http: aiohttp.ClientSession) -> None:
    _double, endpoint = acs
    with pytest.raises(NotifyError) as refused:
        await AcsSms(http, endpoint, KEY, "+18005550111").send("+12065550199", "hello")
    assert refused.value.reason == "sms_failed"


async def test_acs_retries_an_outage_once_with_the_same_repeatability_id(acs: tuple[AcsDouble, str],
                                                                        http: aiohttp.ClientSession) -> None:
    double, endpoint = acs
    double.fail_next = [503]
    await AcsSms(http, endpoint, KEY, SENDER).send("+12065550199", "hello")
    assert [c.status for c in double.calls] == [503, 202]
    first, second = (c.body["smsRecipients"][0] for c in double.calls)
    assert first == second  # same repeatabilityRequestId and FirstSent: the service will not send twice


async def test_acs_recipient_refused_by_the_carrier_is_an_error(acs: tuple[AcsDouble, str],
                                                                http: aiohttp.ClientSession) -> None:
    double, endpoint = acs
    double.refuse_numbers = {"+12065550199"}
    with pytest.raises(NotifyError) as refused:
        await AcsSms(http, endpoint, KEY, SENDER).send("+12065550199", "hello")
    assert refused.value.reason == "sms_refused"


async def test_acs_number_without_country_code_is_not_sent(acs: tuple[AcsDouble, str],
                                                           http: aiohttp.ClientSession) -> None:
    double, endpoint = acs
    with pytest.raises(NotifyError) as refused:
        await AcsSms(http, endpoint, KEY, SENDER).send("555-0100", "hello")
    assert refused.value.reason == "sms_bad_number"
    assert double.calls == []


async def test_acs_configuration_is_checked_at_start_up(http: aiohttp.ClientSession) -> None:
    with pytest.raises(ConfigError):
        AcsSms(http, "https://contoso.communication.azure.com", "not base64!", SENDER)
    with pytest.raises(ConfigError):
        AcsSms(http, "https://contoso.communication.azure.com", KEY, "0800 555 0100")
    with pytest.raises(ConfigError):
        AcsSms(http, "contoso.communication.azure.com", KEY, SENDER)


async def test_acs_signs_the_host_without_the_default_port(http: aiohttp.ClientSession) -> None:
    sms = AcsSms(http, "https://contoso.communication.azure.com:443/", KEY, SENDER)
    assert sms.signed_headers(b"{}")["Host"] == "contoso.communication.azure.com"


async def test_a_repeated_repeatability_id_is_delivered_once(acs: tuple[AcsDouble, str],
                                                             http: aiohttp.ClientSession) -> None:
    """A reminder sent again with its key (its process died between sending and recording): ACS answers as
    the first time and the patient gets one text; another key is another text."""
    double, endpoint = acs
    key = str(uuid.uuid4())
    sms = AcsSms(http, endpoint, KEY, SENDER)
    first = await sms.send("+12065550199", "Reminder", idempotency_key=key)
    again = await sms.send("+12065550199", "Reminder", idempotency_key=key)
    other = await sms.send("+12065550199", "Reminder", idempotency_key=str(uuid.uuid4()))
    assert first == again != other
    ids = [c.body["smsRecipients"][0]["repeatabilityRequestId"] for c in double.calls]
    assert ids[:2] == [key, key] and ids[2] != key
    assert len(double.sent) == 2 and double.repeats == 1


async def test_a_repeatability_id_that_is_not_a_guid_is_refused(acs: tuple[AcsDouble, str],
                                                                http: aiohttp.ClientSession) -> None:
    double, endpoint = acs
    with pytest.raises(NotifyError) as refused:
        await AcsSms(http, endpoint, KEY, SENDER).send("+12065550199", "hello", idempotency_key="row-7")
    assert refused.value.reason == "sms_failed"
    assert double.calls[0].status == 400 and double.sent == []
