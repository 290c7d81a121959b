"""SMS providers: the interface the gateway sends through, a sink for the demo and tests, and Azure
Communication Services (ACS) as a real carrier.

Phone numbers arrive from the caller (read from FHIR, or typed by the clinician) just before sending and
are never logged or kept, except by SinkSms in memory, which exists for the demo and the tests only.
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from yarl import URL

from ..errors import ConfigError
from .errors import NotifyError


_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_PUNCTUATION = re.compile(r"[\s\-.()/]")


def to_e164(number: str) -> str | None:
    """The number in E.164 (+ and up to 15 digits) with spaces, dashes, dots and brackets removed; None if
    it is not an international number (we do not guess a country code)."""
    compact = _PUNCTUATION.sub("", number)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    return compact if _E164.match(compact) else None


class SmsProvider(Protocol):
    """What every SMS provider offers the gateway."""

    name: str

    async def send(self, to: str, body: str, *, idempotency_key: str | None = None) -> str:
        """Send one text message; returns the provider's message id. Raises NotifyError on failure.

        idempotency_key: the same key on a second call (a reminder sent again after its process died
        mid-send) lets a carrier that honours one deliver the message once (ACS repeatabilityRequestId)."""
        ...


@dataclass(frozen=True)
class SmsMessage:
    """A message kept by SinkSms when it has no URL to post to."""

    to: str
    body: str


class SinkSms:
    """A stand-in carrier: POSTs {"to", "body"} as JSON to a sink (the sandbox's phone), or keeps it in memory."""

    name = "sink"

    def __init__(self, http: aiohttp.ClientSession | None = None, url: str | None = None) -> None:
        if url is not None and http is None:
            raise ValueError("SinkSms needs an HTTP session to post to a URL")
        self._http = http
        self.url = url
        self.sent: list[SmsMessage] = []

    async def send(self, to: str, body: str, *, idempotency_key: str | None = None) -> str:
        """Hand the message to the sink (with the idempotency key as `id`, which the sandbox phone honours)."""
        number = to_e164(to)
        if number is None:
            raise NotifyError("The phone number is not an international number (+ country code).",
                              reason="sms_bad_number")
        message_id = f"sink-{idempotency_key or uuid.uuid4()}"
        if self.url is None or self._http is None:
            self.sent.append(SmsMessage(number, body))
            return message_id
        payload = {"to": number, "body": body, **({"id": idempotency_key} if idempotency_key else {})}
        try:
            async with self._http.post(self.url, json=payload) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotifyError(f"The SMS sink could not be reached ({type(exc).__name__}).",
                              reason="sms_failed") from None
        if status >= 300:
            raise NotifyError(f"The SMS sink answered {status}.", reason="sms_failed")
        return message_id


ACS_API_VERSION = "2021-03-07"


def acs_content_hash(body: bytes) -> str:
    """x-ms-content-sha256: the base64 SHA-256 of the exact body bytes."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def acs_signature(access_key: bytes, method: str, path_and_query: str, date: str, host: str,
                  content_hash: str) -> str:
    """The HMAC-SHA256 signature ACS expects over "VERB\\npath?query\\ndate;host;content-hash"."""
    string_to_sign = f"{method.upper()}\n{path_and_query}\n{date};{host};{content_hash}"
    return base64.b64encode(hmac.new(access_key, string_to_sign.encode(), hashlib.sha256).digest()).decode()


def acs_authorization(signature: str) -> str:
    """The Authorization header value naming the signed headers, in the order they were signed."""
    return f"HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={signature}"


class AcsSms:
    """Azure Communication Services SMS (REST, api-version 2021-03-07) with access-key (HMAC) authentication."""

    name = "acs"
    # Transient answers worth one more try; the repeatability id makes a retry safe (no double send).
    _RETRY = frozenset({429, 500, 502, 503, 504})

    def __init__(self, http: aiohttp.ClientSession, endpoint: str, access_key: str, sender: str,
                 attempts: int = 2) -> None:
        url = URL(endpoint.rstrip("/"))
        if url.scheme not in ("https", "http") or not url.host:
            raise ConfigError("the ACS endpoint must be a URL like https://<resource>.communication.azure.com")
        try:
            self._key = base64.b64decode(access_key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the ACS access key must be base64 (as shown in the Azure portal)") from None
        if not self._key:
            raise ConfigError("the ACS access key is empty")
        number = to_e164(sender)
        if number is None:
            raise ConfigError("the SMS sending number must be in E.164 (+ country code)")
        self._http = http
        self._url = url.with_path(url.path.rstrip("/") + "/sms").with_query({"api-version": ACS_API_VERSION})
        # Host as sent on the wire: the port only when it is not the scheme's default.
        self._host = url.host if url.is_default_port() else f"{url.host}:{url.port}"
        self._sender = number
        self._attempts = max(1, attempts)

    def signed_headers(self, body: bytes, date: str | None = None) -> dict[str, str]:
        """The headers of one request carrying body, signed now (or at date)."""
        date = date or email.utils.formatdate(usegmt=True)
        content_hash = acs_content_hash(body)
        signature = acs_signature(self._key, "POST", self._url.raw_path_qs, date, self._host, content_hash)
        return {"Content-Type": "application/json", "Host": self._host, "x-ms-date": date,
                "x-ms-content-sha256": content_hash, "Authorization": acs_authorization(signature)}

    async def send(self, to: str, body: str, *, idempotency_key: str | None = None) -> str:
        """Send one message; answers the ACS message id. ACS takes a repeated repeatabilityRequestId as the
        same request; the first-sent time is not kept across processes, so a resend after a crash may be
        refused as a mismatch (sms_failed) rather than sent twice."""
        number = to_e164(to)
        if number is None:
            raise NotifyError("The phone number is not an international number (+ country code).",
                              reason="sms_bad_number")
        first_sent = email.utils.formatdate(usegmt=True)
        payload = {
            "from": self._sender,
            "smsRecipients": [{"to": number, "repeatabilityRequestId": idempotency_key or str(uuid.uuid4()),
                               "repeatabilityFirstSent": first_sent}],
            "message": body,
            "smsSendOptions": {"enableDeliveryReport": False},
        }
        data = json.dumps(payload, separators=(",", ":")).encode()
        status, answer = 0, None
        for attempt in range(self._attempts):
            try:
                async with self._http.post(self._url, data=data, headers=self.signed_headers(data)) as response:
                    status = response.status
                    raw = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt + 1 < self._attempts:
                    continue
                raise NotifyError(f"The SMS service could not be reached ({type(exc).__name__}).",
                                  reason="sms_failed") from None
            answer = _json_or_none(raw)
            if status not in self._RETRY:
                break
        return _acs_result(status, answer)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _acs_result(status: int, answer: Any) -> str:
    """The message id of a 202 whose one recipient succeeded; NotifyError for anything else."""
    if status in (401, 403):
        raise NotifyError("The SMS service refused our credentials (check the ACS access key).",
                          reason="sms_unauthorized")
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
