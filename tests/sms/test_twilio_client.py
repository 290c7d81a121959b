"""The Twilio client against the double, which holds it to Twilio's documented message API."""
from __future__ import annotations

import base64

import aiohttp
import pytest

from gateway.errors import ConfigError
from gateway.notify import NotifyError, TwilioSms

from .conftest import PATIENT, TWILIO_NUMBER, TWILIO_SID, TWILIO_TOKEN, Carrier


def _client(http: aiohttp.ClientSession, carrier: Carrier, token: str = TWILIO_TOKEN) -> TwilioSms:
    return TwilioSms(http, TWILIO_SID, token, TWILIO_NUMBER, api_url=f"{carrier.url}/twilio", region="US")


async def test_twilio_send_is_a_form_post_with_basic_auth_answered_201(carrier: Carrier,
                                                                       http: aiohttp.ClientSession) -> None:
    sid = await _client(http, carrier).send("206-555-0142", "Your visit: https://x/j")
    assert sid.startswith("SM")
    [call] = carrier.twilio.calls
    assert call.status == 201
    assert call.form == {"To": PATIENT, "From": TWILIO_NUMBER, "Body": "Your visit: https://x/j"}


async def test_twilio_wrong_token_is_unauthorized(carrier: Carrier, http: aiohttp.ClientSession) -> None:
    with pytest.raises(NotifyError) as refused:
        await _client(http, carrier, token="wrong-token").send(PATIENT, "hello")
    assert refused.value.reason == "sms_unauthorized"
    assert [(c.status, c.code) for c in carrier.twilio.calls] == [(401, 20003)]


async def test_twilio_double_refuses_what_twilio_refuses(carrier: Carrier, http: aiohttp.ClientSession) -> None:
    url = f"{carrier.url}/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    header = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    cases = [({"From": TWILIO_NUMBER, "Body": "x"}, 21604), ({"To": PATIENT, "Body": "x"}, 21603),
             ({"To": PATIENT, "From": TWILIO_NUMBER}, 21602), ({"To": "+15550100199", "From": TWILIO_NUMBER,
                                                              "Body": "x"}, 21211),
             ({"To": PATIENT, "From": "+12065550111", "Body": "x"}, 21606),
             ({"To": PATIENT, "From": TWILIO_NUMBER, "Body": "x" * 1601}, 21617)]
    for form, code in cases:
        async with http.post(url, data=form, headers={"Authorization": header}) as r:
            answer = await r.json()
            assert (r.status, answer["code"]) == (400, code), answer
            assert set(answer) >= {"code", "message", "status", "more_info"}


async def test_twilio_invalid_number_is_refused_before_sending(carrier: Carrier, http: aiohttp.ClientSession) -> None:
    with pytest.raises(NotifyError) as refused:
        await _client(http, carrier).send("+1 555 010 0199", "hello")
    assert refused.value.reason == "sms_bad_number"
    assert carrier.twilio.calls == []


async def test_the_carrier_doubles_accept_n_messages_a_second_and_429_beyond(carrier: Carrier,
                                                                            http: aiohttp.ClientSession) -> None:
    carrier.twilio.rate.set(3)
    client = _client(http, carrier)
    outcomes = []
    for _ in range(6):
        try:
            await client.send(PATIENT, "hello")
            outcomes.append("sent")
        except NotifyError as exc:
            outcomes.append(exc.reason)
    # A burst: the first second's worth goes, the rest is throttled (the bucket refills at 3 a second, so at
    # most one more may slip in while the burst runs).
    assert outcomes[:3] == ["sent"] * 3
    assert outcomes.count("sms_throttled") >= 2
    assert carrier.twilio.rate.refused == outcomes.count("sms_throttled")


async def test_twilio_settings_are_checked_at_start_up(http: aiohttp.ClientSession) -> None:
    with pytest.raises(ConfigError):
        TwilioSms(http, "not-a-sid", TWILIO_TOKEN, TWILIO_NUMBER)
    with pytest.raises(ConfigError):
        TwilioSms(http, TWILIO_SID, "", TWILIO_NUMBER)
    with pytest.raises(ConfigError):
        TwilioSms(http, TWILIO_SID, TWILIO_TOKEN, "555-0100")


def test_sms_settings_from_the_environment() -> None:
    from gateway.security import generate_signing_key_pem
    from gateway.settings import Settings

    env = {"VISITGATE_PUBLIC_URL": "https://visits.example.org",
           "VISITGATE_SECRET_KEY": base64.b64encode(b"s" * 32).decode(),
           "VISITGATE_SIGNING_KEY": generate_signing_key_pem().decode(),
           "VISITGATE_SMS_PROVIDER": "Twilio", "VISITGATE_TWILIO_ACCOUNT_SID": TWILIO_SID,
           "VISITGATE_TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "VISITGATE_SMS_FROM": TWILIO_NUMBER,
           "VISITGATE_PHONE_REGION": "gb", "VISITGATE_SMS_WEBHOOK_SECRET": "w" * 20}
    settings = Settings.from_env(env)
    assert (settings.sms_provider, settings.phone_region, settings.twilio_api_url) == (
        "twilio", "GB", "https://api.twilio.com")
    assert TWILIO_TOKEN not in repr(settings) and "w" * 20 not in repr(settings)
    for bad in ({"VISITGATE_PHONE_REGION": "XX"}, {"VISITGATE_SMS_WEBHOOK_SECRET": "short"}):
        with pytest.raises(ConfigError):
            Settings.from_env({**env, **bad})
