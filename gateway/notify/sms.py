"""SMS providers: the interface the gateway sends through, a sink for the demo and tests, and two carriers,
Azure Communication Services (ACS) and Twilio, each through its one client.

Phone numbers arrive from the caller (read from FHIR, or typed by the clinician) just before sending and
are never logged or kept, except by SinkSms in memory, which exists for the demo and the tests only. They are
parsed and validated with `phonenumbers` (Google's libphonenumber metadata) in the organisation's default
region, so a national number ("(206) 555-0100" in the US) is understood where the organisation is.
"""
from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import phonenumbers
from yarl import URL

from ..errors import ConfigError
from .acs import SMS_API_VERSION, AcsClient
from .errors import NotifyError

MAX_BODY = 1600
"""Characters of one message at most: Twilio's documented limit, and more than ten segments anywhere."""
MAX_ANSWER = 64 * 1024


def to_e164(number: str, region: str | None = None) -> str | None:
    """The number in E.164 if it is a valid phone number, read as dialled in region (an ISO 3166 code such as
    "US"; None: only international numbers with + or 00 are understood); None when it is not a valid number."""
    text = number.strip()
    if len(text) > 40:
        return None
    if region is None and text.startswith("00"):
        text = "+" + text[2:]
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


class SmsProvider(Protocol):
    """What every SMS provider offers the gateway."""

    name: str

    async def send(self, to: str, body: str, *, sender: str | None = None,
                   idempotency_key: str | None = None) -> str:
        """Send one text message; returns the provider's message id. Raises NotifyError on failure.

        sender: the organisation's own number to send from (None: the carrier's configured number; a carrier
        without numbers of its own, the sink, ignores it).
        idempotency_key: the same key on a second call (a reminder sent again after its process died
        mid-send) lets a carrier that honours one deliver the message once (ACS repeatabilityRequestId)."""
        ...


def _recipient(to: str, region: str | None, body: str) -> str:
    """The recipient in E.164, after checking the message can be sent at all; NotifyError otherwise."""
    number = to_e164(to, region)
    if number is None:
        raise NotifyError("The phone number is not a valid mobile number.", reason="sms_bad_number")
    if not body or len(body) > MAX_BODY:
        raise NotifyError(f"A text message holds 1 to {MAX_BODY} characters.", reason="sms_bad_body")
    return number


def _sender(number: str) -> str:
    found = to_e164(number)
    if found is None:
        raise ConfigError("the SMS sending number must be a valid number in E.164 (+ country code)")
    return found


@dataclass(frozen=True)
class SmsMessage:
    """A message kept by SinkSms when it has no URL to post to."""

    to: str
    body: str


class SinkSms:
    """A stand-in carrier: POSTs {"to", "body"} as JSON to a sink (the sandbox's phone), or keeps it in memory."""

    name = "sink"

    def __init__(self, http: aiohttp.ClientSession | None = None, url: str | None = None,
                 region: str | None = None) -> None:
        if url is not None and http is None:
            raise ValueError("SinkSms needs an HTTP session to post to a URL")
        self._http = http
        self.url = url
        self.region = region
        self.sent: list[SmsMessage] = []

    async def send(self, to: str, body: str, *, sender: str | None = None,
                   idempotency_key: str | None = None) -> str:
        """Hand the message to the sink (with the idempotency key as `id`, which the sandbox phone honours); the
        sink has no numbers of its own, so sender is not used."""
        number = _recipient(to, self.region, body)
        message_id = f"sink-{idempotency_key or uuid.uuid4()}"
        if self.url is None or self._http is None:
            self.sent.append(SmsMessage(number, body))
            return message_id
        payload = {"to": number, "body": body, **({"id": idempotency_key} if idempotency_key else {})}
        try:
            async with self._http.post(self.url, json=payload) as response:
                status = response.status
                await response.content.read(MAX_ANSWER)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotifyError(f"The SMS sink could not be reached ({type(exc).__name__}).",
                              reason="sms_failed") from None
        if status >= 300:
            raise NotifyError(f"The SMS sink answered {status}.", reason="sms_failed")
        return message_id


class AcsSms:
    """Azure Communication Services SMS (REST, api-version 2021-03-07) with access-key (HMAC) authentication."""

    name = "acs"
    # Transient answers worth one more try; the repeatability id makes a retry safe (no double send).
    _RETRY = frozenset({429, 500, 502, 503, 504})

    def __init__(self, http: aiohttp.ClientSession, endpoint: str, access_key: str, sender: str,
                 attempts: int = 2, region: str | None = None, timeout: float = 10.0) -> None:
        self.client = AcsClient(http, endpoint, access_key, timeout=timeout)
        self._url = self.client.url("/sms", SMS_API_VERSION)
        self.sender = _sender(sender)
        self.region = region
        self._attempts = max(1, attempts)

    def signed_headers(self, body: bytes, date: str | None = None) -> dict[str, str]:
        """The headers of one send carrying body, signed now (or at date)."""
        return self.client.signed_headers("POST", self._url, body, date)

    async def send(self, to: str, body: str, *, sender: str | None = None,
                   idempotency_key: str | None = None) -> str:
        """Send one message (from the configured number, or sender); answers the ACS message id. ACS takes a
        repeated repeatabilityRequestId as the same request and delivers it once; the first-sent time is not
        kept across processes, so a resend after a crash carries a later one (the id is what ACS matches)."""
        number = _recipient(to, self.region, body)
        first_sent = email.utils.formatdate(usegmt=True)
        payload = {
            "from": _sender(sender) if sender else self.sender,
            "smsRecipients": [{"to": number, "repeatabilityRequestId": idempotency_key or str(uuid.uuid4()),
                               "repeatabilityFirstSent": first_sent}],
            "message": body,
            "smsSendOptions": {"enableDeliveryReport": False},
        }
        answer = None
        for attempt in range(self._attempts):
            try:
                answer = await self.client.request("POST", self._url, payload)
            except NotifyError:
                if attempt + 1 < self._attempts:
                    continue
                raise NotifyError("The SMS service could not be reached.", reason="sms_failed") from None
            if answer.status not in self._RETRY:
                break
        assert answer is not None
        return _acs_result(answer.status, answer.body)


def _acs_result(status: int, answer: Any) -> str:
    """The message id of a 202 whose one recipient succeeded; NotifyError for anything else."""
    if status in (401, 403):
        raise NotifyError("The SMS service refused our credentials (check the ACS access key).",
                          reason="sms_unauthorized")
    if status == 429:
        raise NotifyError("The SMS service asked us to slow down.", reason="sms_throttled")
    if status != 202:
        code = answer.get("error", {}).get("code") if isinstance(answer, dict) and isinstance(
            answer.get("error"), dict) else None
        raise NotifyError(f"The SMS service answered {status}" + (f" ({code})." if isinstance(code, str) else "."),
                          reason="sms_failed")
    items = answer.get("value") if isinstance(answer, dict) else None
    item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else None
    if item is None:
        raise NotifyError("The SMS service answered without a result.", reason="sms_failed")
    if item.get("successful") is not True:
        raise NotifyError(f"The SMS service did not take the message ({item.get('httpStatusCode')}).",
                          reason="sms_refused")
    return str(item.get("messageId", ""))


TWILIO_API = "https://api.twilio.com"
# Twilio error codes (its error dictionary) that mean "this recipient, not us": refused, not retried.
_TWILIO_RECIPIENT_ERRORS = frozenset({21211, 21408, 21610, 21612, 21614})


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1, keyed with the auth token, of the full URL followed by each POST
    parameter's name and value, sorted by name."""
    data = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


class TwilioSms:
    """Twilio Programmable Messaging (REST 2010-04-01): form-encoded POSTs with HTTP basic authentication."""

    name = "twilio"

    def __init__(self, http: aiohttp.ClientSession, account_sid: str, auth_token: str, sender: str,
                 api_url: str = TWILIO_API, region: str | None = None, timeout: float = 10.0) -> None:
        if not (account_sid.startswith("AC") and len(account_sid) == 34 and account_sid[2:].isalnum()):
            raise ConfigError("the Twilio account SID looks like AC followed by 32 hexadecimal digits")
        if not auth_token:
            raise ConfigError("the Twilio auth token is empty")
        base = URL(api_url.rstrip("/"))
        if base.scheme not in ("https", "http") or not base.host:
            raise ConfigError("the Twilio API URL must be like https://api.twilio.com")
        self._http = http
        # HTTP basic authentication written out (aiohttp deprecates its BasicAuth helper).
        self._authorization = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._url = base.with_path(base.path.rstrip("/") + f"/2010-04-01/Accounts/{account_sid}/Messages.json")
        self.sender = _sender(sender)
        self.region = region
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))

    async def send(self, to: str, body: str, *, sender: str | None = None,
                   idempotency_key: str | None = None) -> str:
        """Send one message; answers Twilio's message SID. Not retried, and idempotency_key is not used: Twilio's
        API has no such key, and a second POST after a lost answer could text the patient twice."""
        number = _recipient(to, self.region, body)
        form = {"To": number, "From": _sender(sender) if sender else self.sender, "Body": body}
        try:
            async with self._http.post(self._url, data=form, headers={"Authorization": self._authorization},
                                       timeout=self._timeout,
                                       allow_redirects=False) as response:
                status = response.status
                raw = await response.content.read(MAX_ANSWER)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotifyError(f"Twilio could not be reached ({type(exc).__name__}).", reason="sms_failed") from None
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        return _twilio_result(status, answer)


def _twilio_result(status: int, answer: Any) -> str:
    """The SID of a 201; NotifyError carrying Twilio's error code for anything else."""
    if status == 201 and isinstance(answer, dict) and isinstance(answer.get("sid"), str):
        return str(answer["sid"])
    code = answer.get("code") if isinstance(answer, dict) else None
    said = f" (error {code})" if isinstance(code, int) else ""
    if status in (401, 403):
        raise NotifyError(f"Twilio refused our credentials{said} (check the account SID and auth token).",
                          reason="sms_unauthorized")
    if status == 429:
        raise NotifyError(f"Twilio asked us to slow down{said}.", reason="sms_throttled")
    if status == 400 and code in _TWILIO_RECIPIENT_ERRORS:
        raise NotifyError(f"Twilio did not take the message for this number{said}.", reason="sms_refused")
    raise NotifyError(f"Twilio answered {status}{said}.", reason="sms_failed")
