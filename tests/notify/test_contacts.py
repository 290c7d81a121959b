"""Choosing and masking contact details, checking the invite form, and the notify settings."""
from __future__ import annotations

import base64
import datetime as dt

import pytest

from gateway import Settings
from gateway.errors import ConfigError
from gateway.notify import SinkSms, build_notifier, to_e164
from launch.invites import InviteRefused, mask_email, mask_phone, parse_form, pick_contact

NOW = dt.datetime(2025, 6, 15, 12, 0, tzinfo=dt.timezone.utc)


def test_pick_email_prefers_home_over_work_and_skips_old_and_ended() -> None:
    telecom = [
        {"system": "email", "value": "work@example.org", "use": "work"},
        {"system": "email", "value": "old@example.org", "use": "old"},
        {"system": "email", "value": "ended@example.org", "use": "home", "period": {"end": "2025-06-14"}},
        {"system": "email", "value": "later@example.org", "use": "home", "period": {"start": "2025-07"}},
        {"system": "email", "value": "home@example.org", "use": "home", "period": {"start": "2020-01-01"}},
        {"system": "phone", "value": "+15550100", "use": "home"},
    ]
    assert pick_contact(telecom, "email", NOW) == "home@example.org"


def test_pick_email_falls_back_to_work_when_nothing_else() -> None:
    assert pick_contact([{"system": "email", "value": "w@example.org", "use": "work"}], "email", NOW) == "w@example.org"


def test_pick_email_respects_rank_within_the_same_use() -> None:
    telecom = [{"system": "email", "value": "second@example.org", "rank": 2},
               {"system": "email", "value": "first@example.org", "rank": 1}]
    assert pick_contact(telecom, "email", NOW) == "first@example.org"


def test_pick_sms_prefers_sms_then_mobile_over_home_phone() -> None:
    telecom = [{"system": "phone", "value": "+15550100", "use": "home"},
               {"system": "phone", "value": "+15550101", "use": "mobile"}]
    assert pick_contact(telecom, "sms", NOW) == "+15550101"
    assert pick_contact([*telecom, {"system": "sms", "value": "+15550102"}], "sms", NOW) == "+15550102"


def test_period_with_an_end_in_the_past_is_skipped() -> None:
    telecom = [{"system": "phone", "value": "+15550101", "use": "mobile",
                "period": {"end": "2025-06-15T11:00:00Z"}}]
    assert pick_contact(telecom, "sms", NOW) is None
    telecom[0]["period"] = {"end": "2025-06-15T13:00:00+00:00"}
    assert pick_contact(telecom, "sms", NOW) == "+15550101"


def test_malformed_telecom_is_ignored() -> None:
    assert pick_contact(None, "email", NOW) is None
    assert pick_contact(["x", {"system": "email"}, {"system": "email", "value": 3},
                         {"system": "email", "value": "a@b.org", "period": {"end": "soon"}}], "email", NOW) is None


def test_masks_show_little() -> None:
    assert mask_email("pat.person@example.org") == "p***@example.org"
    assert mask_phone("+1-555-0142-7319") == "*** ** 19"
    assert mask_phone("12") == "***"


def test_e164_normalisation() -> None:
    assert to_e164("+1 (206) 555-0199") == "+12065550199"
    assert to_e164("0044 20 7946 0958") == "+442079460958"
    assert to_e164("555-0100") is None
    assert to_e164("+0 555") is None


def test_numbers_are_validated_not_only_shaped() -> None:
    assert to_e164("+1 555 010 0199") is None  # no such area code: refused before any carrier sees it
    assert to_e164("+1 206 555 01") is None  # too short for the United States
    assert to_e164("x" * 100) is None


def test_national_numbers_are_read_in_the_organisations_region() -> None:
    assert to_e164("(206) 555-0199") is None  # no region: we do not guess a country code
    assert to_e164("(206) 555-0199", "US") == "+12065550199"
    assert to_e164("020 7946 0958", "GB") == "+442079460958"
    assert to_e164("+34 600 000 000", "US") == "+34600000000"  # an international number stays itself
    assert to_e164("011 44 20 7946 0958", "US") == "+442079460958"  # the US international prefix


def test_parse_form_for_a_guest_drops_the_address_when_copying() -> None:
    form = parse_form({"channel": "copy", "role": "guest", "guest_kind": "other", "address": "x@example.org"})
    assert form.address is None and form.guest_kind == "other"


def test_parse_form_refuses_overlong_fields() -> None:
    with pytest.raises(InviteRefused):
        parse_form({"channel": "email", "role": "guest", "guest_kind": "family", "address": "a" * 400})


def _settings(**changes: object) -> Settings:
    return Settings(public_url="http://127.0.0.1:1", secret_key=b"k" * 32, signing_key_pem=b"", **changes)  # type: ignore[arg-type]


def test_notify_settings_from_env() -> None:
    from gateway.security import generate_signing_key_pem

    env = {"VISITGATE_PUBLIC_URL": "https://visits.example.org",
           "VISITGATE_SECRET_KEY": base64.b64encode(b"s" * 32).decode(),
           "VISITGATE_SIGNING_KEY": generate_signing_key_pem().decode(),
           "VISITGATE_ORGANISATION_NAME": "Riverside Clinic", "VISITGATE_SMTP_HOST": "smtp.example.org",
           "VISITGATE_SMTP_PORT": "587", "VISITGATE_SMTP_STARTTLS": "true", "VISITGATE_SMTP_USERNAME": "gw",
           "VISITGATE_SMTP_PASSWORD": "pw", "VISITGATE_SMS_PROVIDER": "ACS",
           "VISITGATE_ACS_ENDPOINT": "https://r.communication.azure.com/", "VISITGATE_ACS_ACCESS_KEY": "a2V5",
           "VISITGATE_SMS_FROM": "+18005550100"}
    settings = Settings.from_env(env)
    assert (settings.organisation_name, settings.smtp_host, settings.smtp_port) == ("Riverside Clinic", "smtp.example.org", 587)
    assert settings.smtp_starttls and not settings.smtp_tls
    assert settings.sms_provider == "acs" and settings.acs_endpoint == "https://r.communication.azure.com"
    assert "pw" not in repr(settings) and "a2V5" not in repr(settings)


def test_acs_without_its_settings_stops_start_up_by_name() -> None:
    with pytest.raises(ConfigError, match="VISITGATE_ACS_ACCESS_KEY"):
        build_notifier(_settings(sms_provider="acs", acs_endpoint="https://r.communication.azure.com",
                                 sms_from="+18005550100"))
    with pytest.raises(ConfigError, match="VISITGATE_SMS_PROVIDER"):
        build_notifier(_settings(sms_provider="carrier-pigeon"))


async def test_sink_without_url_keeps_messages_in_memory() -> None:
    notifier = build_notifier(_settings(sms_provider="sink", organisation_name="Riverside Clinic"))
    assert isinstance(notifier.sms, SinkSms)
    await notifier.sms_link("+1 206 555 0100", "http://127.0.0.1:1/join?t=x")
    [message] = notifier.sms.sent
    assert message.to == "+12065550100"
    assert message.body == "Your video visit with Riverside Clinic is ready: http://127.0.0.1:1/join?t=x"
