"""Notifications: join links by email (SMTP) and SMS (a provider interface with a sink and two carriers,
Azure Communication Services and Twilio).

The gateway builds one Notifier at start-up from its settings (`build_notifier`, called by the app
factory's cleanup_ctx once the HTTP session exists) and keeps it in `app[NOTIFIER]`; the factory then wraps its
SMS provider in the opt-out check (`optout.OptOutSms`), so every text honours STOP. Addresses and numbers are
given to it once, at send time, by callers that read them live from FHIR or from the clinician's form; nothing
here stores or logs them.
Messages carry no clinical detail: only the organisation's name and the link (and, in email, until when the link
works). The words are the caller's: launch writes them in the patient's language from its translation catalog
and hands them to `send_email`/`send_sms`; `email_link`/`sms_link` are the English ones for callers without a
catalog.
"""
from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from ..errors import ConfigError
from ..settings import Settings
from .email import EmailSender, SmtpConfig
from .errors import NotConfigured, NotifyError
from .optout import OptOutSms
from .sms import AcsSms, SinkSms, SmsProvider, TwilioSms, to_e164

__all__ = ["AcsSms", "EmailSender", "NotConfigured", "Notifier", "NotifyError", "SinkSms", "SmsProvider",
           "SmtpConfig", "TwilioSms", "build_notifier", "to_e164"]

SMS_PROVIDERS = ("none", "sink", "acs", "twilio")


@dataclass
class Notifier:
    """Sends join links; the one object the rest of the gateway talks to."""

    email: EmailSender
    sms: SmsProvider | None
    organisation_name: str
    region: str | None = None
    """The organisation's default phone region (numbers without a country code are read as dialled there)."""

    def join_text(self, link: str) -> str:
        """The whole message: who it is from and the link, nothing clinical."""
        return f"Your video visit with {self.organisation_name} is ready: {link}"

    async def email_link(self, to: str, link: str) -> None:
        """Email a join link to one address, in English."""
        body = (f"{self.join_text(link)}\n\n"
                "Open the link on a phone or computer with a camera and microphone a few minutes before "
                "the visit. If you did not expect this message, you can ignore it.\n")
        await self.send_email(to, f"Your video visit with {self.organisation_name}", body)

    async def sms_link(self, to: str, link: str) -> str:
        """Text a join link to one number, in English; answers the provider's message id."""
        return await self.send_sms(to, self.join_text(link))

    async def send_email(self, to: str, subject: str, body: str) -> None:
        """Email a message the caller wrote (in the patient's language) to one address."""
        await self.email.send(to, subject, body)

    async def send_sms(self, to: str, text: str, sender: str | None = None) -> str:
        """Text a message the caller wrote to one number (from sender, an organisation's own number, when the
        carrier can choose); answers the provider's message id."""
        if self.sms is None:
            raise NotConfigured("SMS is not set up on this gateway. Ask your administrator, or send the "
                                "link by email or copy it.")
        return await self.sms.send(to, text, sender=sender)


def help_text(settings: Settings) -> str:
    """What a patient who texts HELP gets back."""
    return settings.sms_help_text or (f"{settings.organisation_name}: video visit links and reminders. "
                                      "Reply STOP to stop these texts, START to get them again.")


def build_carrier(settings: Settings, http: aiohttp.ClientSession | None) -> SmsProvider | None:
    """The SMS carrier the settings name (not yet behind the opt-out check); ConfigError names what is missing."""
    region = settings.phone_region
    if settings.sms_provider == "none":
        return None
    if settings.sms_provider == "sink":
        return SinkSms(http, settings.sms_sink_url, region) if settings.sms_sink_url else SinkSms(region=region)
    if settings.sms_provider == "acs":
        needed = (("VISITGATE_ACS_ENDPOINT", settings.acs_endpoint),
                  ("VISITGATE_ACS_ACCESS_KEY", settings.acs_access_key), ("VISITGATE_SMS_FROM", settings.sms_from))
    elif settings.sms_provider == "twilio":
        needed = (("VISITGATE_TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
                  ("VISITGATE_TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
                  ("VISITGATE_SMS_FROM", settings.sms_from))
    else:
        raise ConfigError(f"VISITGATE_SMS_PROVIDER must be one of {', '.join(SMS_PROVIDERS)}")
    missing = [name for name, value in needed if not value]
    if missing:
        raise ConfigError(f"SMS provider {settings.sms_provider} needs: {', '.join(missing)}")
    if http is None:
        raise ConfigError(f"SMS provider {settings.sms_provider} needs the gateway's HTTP session")
    assert settings.sms_from
    if settings.sms_provider == "acs":
        assert settings.acs_endpoint and settings.acs_access_key
        return AcsSms(http, settings.acs_endpoint, settings.acs_access_key, settings.sms_from, region=region,
                      timeout=settings.http_timeout)
    assert settings.twilio_account_sid and settings.twilio_auth_token
    return TwilioSms(http, settings.twilio_account_sid, settings.twilio_auth_token, settings.sms_from,
                     api_url=settings.twilio_api_url, region=region, timeout=settings.http_timeout)


def build_notifier(settings: Settings, http: aiohttp.ClientSession | None = None) -> Notifier:
    """A Notifier from the settings; a misconfigured SMS provider stops start-up by name."""
    email = EmailSender(SmtpConfig(
        host=settings.smtp_host, port=settings.smtp_port, sender=settings.smtp_from,
        starttls=settings.smtp_starttls, tls=settings.smtp_tls, username=settings.smtp_username,
        password=settings.smtp_password, timeout=settings.smtp_timeout))
    return Notifier(email=email, sms=build_carrier(settings, http), organisation_name=settings.organisation_name,
                    region=settings.phone_region)
