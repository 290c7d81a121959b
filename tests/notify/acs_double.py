"""A small stand-in for Azure Communication Services SMS (POST {endpoint}/sms?api-version=2021-03-07).

It checks what the real service checks, as documented: access-key authentication (HMAC-SHA256 over
"POST\\n<path and query>\\n<x-ms-date>;<host>;<x-ms-content-sha256>" with the base64-decoded key), the
content hash of the exact body, a request date within 15 minutes, the api-version, and the request body's
shape (E.164 `from` owned by the resource, 1..100 `smsRecipients` with E.164 `to`, a non-empty `message`).
It answers 202 with one result per recipient, 401 for bad authentication and 400 for a bad body, and
records every call. It shares no code with the adapter under test.
"""
from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
MAX_SKEW = dt.timedelta(minutes=15)
AUTH = re.compile(r"^HMAC-SHA256 SignedHeaders=(?P<headers>[^&]+)&Signature=(?P<signature>[A-Za-z0-9+/=]+)$")


@dataclass
class Call:
    """One request the double received, and what it answered."""

    status: int
    headers: dict[str, str]
    body: Any
    error: str | None = None


@dataclass
class AcsDouble:
    """State and rules of the double: the resource's access key and its one phone number."""

    access_key: bytes
    owned_number: str
    calls: list[Call] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    """Statuses to answer (in order) before handling requests normally, e.g. [503] for one outage."""
    refuse_numbers: set[str] = field(default_factory=set)
    """Recipients the carrier will not deliver to (per-recipient failure inside a 202)."""

    def app(self) -> web.Application:
        """The aiohttp application serving the SMS endpoint."""
        app = web.Application()
        app.router.add_post("/sms", self.send)
        return app

    def _refuse(self, request: web.Request, status: int, code: str, message: str, body: Any = None) -> web.Response:
        self.calls.append(Call(status, dict(request.headers), body, code))
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    def _authenticate(self, request: web.Request, raw: bytes) -> str | None:
        """None when the request is properly signed; otherwise what is wrong."""
        header = request.headers.get("Authorization", "")
        match = AUTH.match(header)
        if match is None:
            return "missing or malformed Authorization"
        if match["headers"] != "x-ms-date;host;x-ms-content-sha256":
            return "SignedHeaders must be x-ms-date;host;x-ms-content-sha256"
        date = request.headers.get("x-ms-date")
        content_hash = request.headers.get("x-ms-content-sha256")
        if not date or not content_hash:
            return "x-ms-date and x-ms-content-sha256 are required"
        try:
            sent = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return "x-ms-date is not an RFC 1123 date"
        if sent.tzinfo is None or abs(dt.datetime.now(dt.timezone.utc) - sent) > MAX_SKEW:
            return "x-ms-date is too far from now"
        if content_hash != base64.b64encode(hashlib.sha256(raw).digest()).decode():
            return "x-ms-content-sha256 does not match the body"
        string_to_sign = f"{request.method}\n{request.path_qs}\n{date};{request.host};{content_hash}"
        expected = base64.b64encode(hmac.new(self.access_key, string_to_sign.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, match["signature"].encode()):
            return "signature does not match"
        return None

    def _check_body(self, raw: bytes, content_type: str) -> tuple[Any, str | None]:
        if content_type.split(";")[0].strip() != "application/json":
            return None, "Content-Type must be application/json"
        try:
            body = json.loads(raw)
        except ValueError:
            return None, "body is not JSON"
        if not isinstance(body, dict):
            return body, "body must be an object"
        if not isinstance(body.get("from"), str) or not E164.match(body["from"]):
            return body, "from must be an E.164 number"
        if body["from"] != self.owned_number:
            return body, "from is not a number of this resource"
        if not isinstance(body.get("message"), str) or not body["message"]:
            return body, "message is required"
        recipients = body.get("smsRecipients")
        if not isinstance(recipients, list) or not 1 <= len(recipients) <= 100:
            return body, "smsRecipients must hold 1 to 100 recipients"
        for recipient in recipients:
            if not isinstance(recipient, dict) or not isinstance(recipient.get("to"), str) \
                    or not E164.match(recipient["to"]):
                return body, "each recipient needs an E.164 `to`"
            first_sent = recipient.get("repeatabilityFirstSent")
            if first_sent is not None:
                try:
                    email.utils.parsedate_to_datetime(first_sent)
                except (TypeError, ValueError):
                    return body, "repeatabilityFirstSent must be an RFC 1123 date"
        options = body.get("smsSendOptions")
        if options is not None and (not isinstance(options, dict)
                                    or not isinstance(options.get("enableDeliveryReport"), bool)):
            return body, "smsSendOptions.enableDeliveryReport is required when options are given"
        return body, None

    async def send(self, request: web.Request) -> web.Response:
        """POST /sms?api-version=2021-03-07."""
        raw = await request.read()
        if request.query.get("api-version") != "2021-03-07":
            return self._refuse(request, 404, "UnsupportedApiVersion", "The api-version is not supported.")
        problem = self._authenticate(request, raw)
        if problem is not None:
            return self._refuse(request, 401, "Denied", f"Denied by the resource provider. ({problem})")
        body, problem = self._check_body(raw, request.headers.get("Content-Type", ""))
        if problem is not None:
            return self._refuse(request, 400, "BadRequest", problem, body)
        if self.fail_next:
            status = self.fail_next.pop(0)
            return self._refuse(request, status, "ServiceUnavailable", "Try again later.", body)
        results = []
        for recipient in body["smsRecipients"]:
            if recipient["to"] in self.refuse_numbers:
                results.append({"to": recipient["to"], "httpStatusCode": 400, "successful": False,
                                "errorMessage": "Invalid To phone number format."})
            else:
                results.append({"to": recipient["to"], "messageId": f"Outgoing_{uuid.uuid4().hex}",
                                "httpStatusCode": 202, "repeatabilityResult": "accepted", "successful": True})
        self.calls.append(Call(202, dict(request.headers), body))
        return web.json_response({"value": results}, status=202)
