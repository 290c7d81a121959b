"""A stand-in for Azure Communication Services: SMS, the phone numbers API and inbound SMS events.

It checks what the real service checks, as documented: access-key authentication on every request
(HMAC-SHA256 over "VERB\\n<path and query>\\n<x-ms-date>;<host>;<x-ms-content-sha256>" with the base64-decoded
key, `Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=…`), the content hash
of the exact body, a request date within 15 minutes of now, the api-version, and each body's shape.

- `POST /sms?api-version=2021-03-07`: E.164 `from` owned by the resource, 1..100 `smsRecipients` with valid
  E.164 `to`, a non-empty `message`; 202 with one result per recipient. A recipient's `repeatabilityRequestId`
  (a GUID, with `repeatabilityFirstSent`) seen before is answered as the first time and not delivered again.
- Phone numbers (api-version 2022-12-01), long-running operations that finish `lro_delay` seconds after they
  start: `POST /availablePhoneNumbers/countries/{cc}/:search` (202 + operation-location, search-id),
  `GET /phoneNumbers/operations/{id}`, `GET /availablePhoneNumbers/searchResults/{id}`,
  `POST /availablePhoneNumbers/searchResults/{id}:purchase` (202), `DELETE /phoneNumbers/{number}` (202).
- `deliver_sms` posts a `Microsoft.Communication.SMSReceived` event to a webhook the way Event Grid does
  (after the subscription validation handshake, `validate_subscription`).

It answers 401 for bad authentication, 400 for a bad body, 404 for what does not exist, 429 beyond its rate,
and records every call. It shares no code with the gateway's client.
"""
from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import phonenumbers
from aiohttp import web

from .rate import RateLimit

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
GUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
MAX_SKEW = dt.timedelta(minutes=15)
AUTH = re.compile(r"^HMAC-SHA256 SignedHeaders=(?P<headers>[^&]+)&Signature=(?P<signature>[A-Za-z0-9+/=]+)$")
SMS_API = "2021-03-07"
NUMBERS_API = "2022-12-01"
NUMBER_TYPES = ("tollFree", "geographic")
# Numbers the double offers, by country and type: fictitious but valid (libphonenumber's metadata agrees).
OFFERED = {("US", "tollFree"): "+1833555{:04d}", ("US", "geographic"): "+1206555{:04d}",
           ("GB", "geographic"): "+44161496{:04d}"}


def valid_number(number: object) -> bool:
    """Whether number is E.164 and a valid phone number (the real service refuses the others)."""
    if not isinstance(number, str) or not E164.match(number):
        return False
    try:
        return bool(phonenumbers.is_valid_number(phonenumbers.parse(number, None)))
    except phonenumbers.NumberParseException:
        return False


@dataclass
class Call:
    """One request the double received, and what it answered."""

    status: int
    headers: dict[str, str]
    body: Any
    error: str | None = None
    path: str = ""


@dataclass
class Operation:
    """One long-running operation: a search, a purchase or a release."""

    id: str
    kind: str
    started: float
    resource_location: str | None = None
    fail: bool = False
    done: Any = None
    """What to do when it succeeds (once)."""
    finished: bool = False


@dataclass
class Sent:
    """One text the double accepted."""

    sender: str
    to: str
    message: str


@dataclass
class AcsDouble:
    """State and rules of the double: the resource's access key, its phone numbers, its operations."""

    access_key: bytes
    owned_number: str
    """The resource's first number; purchased ones are added to `numbers`."""
    lro_delay: float = 0.0
    """Seconds a phone number operation runs before it succeeds."""
    prefix: str = ""
    """The path the double is mounted under (the sandbox serves it at /acs)."""
    rate: RateLimit = field(default_factory=RateLimit)
    numbers: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    """Statuses to answer (in order) before handling requests normally, e.g. [503] for one outage."""
    refuse_numbers: set[str] = field(default_factory=set)
    """Recipients the carrier will not deliver to (per-recipient failure inside a 202)."""
    fail_operations: bool = False
    """Phone number operations started from now on end `failed`."""
    hold_operations: bool = False
    """While true, every operation stays `running` whatever its age (a test decides when ACS finishes)."""
    operations: dict[str, Operation] = field(default_factory=dict)
    searches: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeatable: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The result of each repeatabilityRequestId accepted (lower case), answered again for a repeat."""
    repeats: int = 0
    """Requests repeated with an id already accepted (answered, not delivered again)."""
    on_sms: Any = None
    """Called with each accepted Sent (the sandbox's phone shows them)."""
    _next_number: int = 100

    def __post_init__(self) -> None:
        self.numbers.add(self.owned_number)

    def app(self) -> web.Application:
        """The aiohttp application serving the resource's endpoints."""
        app = web.Application()
        self.add_routes(app.router, "")
        return app

    def add_routes(self, router: web.UrlDispatcher, prefix: str) -> None:
        """Add the endpoints under prefix (e.g. /acs) to an application's router."""
        self.prefix = prefix
        router.add_post(f"{prefix}/sms", self.send)
        router.add_post(prefix + "/availablePhoneNumbers/countries/{country}/:search", self.search)
        router.add_get(prefix + "/availablePhoneNumbers/searchResults/{search_id}", self.search_result)
        router.add_post(prefix + "/availablePhoneNumbers/searchResults/{search_id}:purchase", self.purchase)
        router.add_get(prefix + "/phoneNumbers/operations/{operation_id}", self.operation)
        router.add_delete(prefix + "/phoneNumbers/{number}", self.release)

    # --- the contract every request meets -----------------------------------------------------------------

    def _refuse(self, request: web.Request, status: int, code: str, message: str, body: Any = None) -> web.Response:
        self.calls.append(Call(status, dict(request.headers), body, code, request.path))
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
        string_to_sign = f"{request.method}\n{request.raw_path}\n{date};{request.host};{content_hash}"
        expected = base64.b64encode(hmac.new(self.access_key, string_to_sign.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, match["signature"].encode()):
            return "signature does not match"
        return None

    async def _admit(self, request: web.Request, api_version: str) -> tuple[bytes, web.Response | None]:
        """The body, or the refusal of a request that does not meet the contract."""
        raw = await request.read()
        if request.query.get("api-version") != api_version:
            return raw, self._refuse(request, 404, "UnsupportedApiVersion", "The api-version is not supported.")
        problem = self._authenticate(request, raw)
        if problem is not None:
            return raw, self._refuse(request, 401, "Denied", f"Denied by the resource provider. ({problem})")
        if self.fail_next:
            status = self.fail_next.pop(0)
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            return raw, self._refuse(request, status, "ServiceUnavailable", "Try again later.", body)
        return raw, None

    # --- SMS ----------------------------------------------------------------------------------------------

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
        if body["from"] not in self.numbers:
            return body, "from is not a number of this resource"
        if not isinstance(body.get("message"), str) or not body["message"]:
            return body, "message is required"
        recipients = body.get("smsRecipients")
        if not isinstance(recipients, list) or not 1 <= len(recipients) <= 100:
            return body, "smsRecipients must hold 1 to 100 recipients"
        for recipient in recipients:
            if not isinstance(recipient, dict) or not valid_number(recipient.get("to")):
                return body, "each recipient needs a valid E.164 `to`"
            first_sent = recipient.get("repeatabilityFirstSent")
            request_id = recipient.get("repeatabilityRequestId")
            if (first_sent is None) != (request_id is None):
                return body, "repeatabilityRequestId and repeatabilityFirstSent go together"
            if request_id is not None and not (isinstance(request_id, str) and GUID.match(request_id)):
                return body, "repeatabilityRequestId must be a GUID (36 characters)"
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
        raw, refused = await self._admit(request, SMS_API)
        if refused is not None:
            return refused
        body, problem = self._check_body(raw, request.headers.get("Content-Type", ""))
        if problem is not None:
            return self._refuse(request, 400, "BadRequest", problem, body)
        if not self.rate.take():
            return self._refuse(request, 429, "TooManyRequests", "Rate limit exceeded.", body)
        results: list[dict[str, Any]] = []
        for recipient in body["smsRecipients"]:
            request_id = recipient.get("repeatabilityRequestId")
            if request_id is not None and request_id.lower() in self.repeatable:
                # A repeated request (a retry, or a resend after the sender died mid-send): ACS answers what
                # it answered the first time and does not deliver the message again.
                self.repeats += 1
                results.append(self.repeatable[request_id.lower()])
            elif recipient["to"] in self.refuse_numbers:
                results.append({"to": recipient["to"], "httpStatusCode": 400, "successful": False,
                                "errorMessage": "Invalid To phone number format."})
            else:
                results.append({"to": recipient["to"], "messageId": f"Outgoing_{uuid.uuid4().hex}",
                                "httpStatusCode": 202, "repeatabilityResult": "accepted", "successful": True})
                if request_id is not None:
                    self.repeatable[request_id.lower()] = results[-1]
                sent = Sent(body["from"], recipient["to"], body["message"])
                self.sent.append(sent)
                if self.on_sms is not None:
                    self.on_sms(sent)
        self.calls.append(Call(202, dict(request.headers), body, path=request.path))
        return web.json_response({"value": results}, status=202)

    # --- phone numbers: long-running operations ----------------------------------------------------------

    def _base(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}{self.prefix}"

    def _start(self, request: web.Request, kind: str, done: Any, resource: str | None = None,
               extra: dict[str, str] | None = None) -> web.Response:
        op = Operation(f"{kind}_{uuid.uuid4().hex}", kind, time.monotonic(), resource, self.fail_operations, done)
        self.operations[op.id] = op
        self.calls.append(Call(202, dict(request.headers), None, path=request.path))
        headers = {"operation-location": f"{self._base(request)}/phoneNumbers/operations/{op.id}"
                                         f"?api-version={NUMBERS_API}", "operation-id": op.id,
                   "Retry-After": "1", **(extra or {})}
        return web.Response(status=202, headers=headers)

    async def search(self, request: web.Request) -> web.Response:
        """POST /availablePhoneNumbers/countries/{cc}/:search."""
        raw, refused = await self._admit(request, NUMBERS_API)
        if refused is not None:
            return refused
        try:
            body = json.loads(raw)
        except ValueError:
            return self._refuse(request, 400, "BadRequest", "body is not JSON")
        country = request.match_info["country"]
        if not isinstance(body, dict) or body.get("phoneNumberType") not in NUMBER_TYPES \
                or body.get("assignmentType") not in ("application", "person") \
                or not isinstance(body.get("capabilities"), dict) \
                or body["capabilities"].get("sms") not in ("none", "inbound", "outbound", "inbound+outbound") \
                or body["capabilities"].get("calling") not in ("none", "inbound", "outbound", "inbound+outbound"):
            return self._refuse(request, 400, "BadRequest", "phoneNumberType, assignmentType and capabilities "
                                "(calling, sms) are required", body)
        pattern = OFFERED.get((country, body["phoneNumberType"]))
        if pattern is None:
            return self._refuse(request, 400, "BadRequest", f"No {body['phoneNumberType']} numbers in {country}.")
        search_id = str(uuid.uuid4())
        self._next_number += 1
        self.searches[search_id] = {"searchId": search_id, "phoneNumbers": [pattern.format(self._next_number)],
                                    "phoneNumberType": body["phoneNumberType"],
                                    "assignmentType": body["assignmentType"], "capabilities": body["capabilities"],
                                    "cost": {"amount": 2.0, "currencyCode": "USD", "billingFrequency": "monthly"},
                                    "searchExpiresBy": (dt.datetime.now(dt.timezone.utc)
                                                        + dt.timedelta(minutes=15)).isoformat(),
                                    "ready": False, "purchased": False}
        resource = f"/availablePhoneNumbers/searchResults/{search_id}?api-version={NUMBERS_API}"

        def done() -> None:
            self.searches[search_id]["ready"] = True

        return self._start(request, "search", done, resource,
                           {"search-id": search_id, "location": f"{self._base(request)}{resource}"})

    async def search_result(self, request: web.Request) -> web.Response:
        """GET /availablePhoneNumbers/searchResults/{id}."""
        _raw, refused = await self._admit(request, NUMBERS_API)
        if refused is not None:
            return refused
        found = self.searches.get(request.match_info["search_id"])
        if found is None or not found["ready"]:
            return self._refuse(request, 404, "NotFound", "No such search result.")
        self.calls.append(Call(200, dict(request.headers), None, path=request.path))
        return web.json_response({k: v for k, v in found.items() if k not in ("ready", "purchased")})

    async def purchase(self, request: web.Request) -> web.Response:
        """POST /availablePhoneNumbers/searchResults/{id}:purchase."""
        _raw, refused = await self._admit(request, NUMBERS_API)
        if refused is not None:
            return refused
        found = self.searches.get(request.match_info["search_id"])
        if found is None or not found["ready"]:
            return self._refuse(request, 404, "NotFound", "No such search result.")
        if found["purchased"]:
            return self._refuse(request, 409, "Conflict", "This search was purchased already.")
        found["purchased"] = True

        def done() -> None:
            self.numbers.update(found["phoneNumbers"])

        return self._start(request, "purchase", done)

    async def release(self, request: web.Request) -> web.Response:
        """DELETE /phoneNumbers/{number}."""
        _raw, refused = await self._admit(request, NUMBERS_API)
        if refused is not None:
            return refused
        number = request.match_info["number"]
        if number not in self.numbers or number == self.owned_number:
            return self._refuse(request, 404, "NotFound", "The phone number is not one of this resource's.")

        def done() -> None:
            self.numbers.discard(number)

        return self._start(request, "releasePhoneNumber", done)

    async def operation(self, request: web.Request) -> web.Response:
        """GET /phoneNumbers/operations/{id}: notStarted, running, then succeeded (or failed)."""
        _raw, refused = await self._admit(request, NUMBERS_API)
        if refused is not None:
            return refused
        op = self.operations.get(request.match_info["operation_id"])
        if op is None:
            return self._refuse(request, 404, "NotFound", "No such operation.")
        elapsed = time.monotonic() - op.started
        body: dict[str, Any] = {"id": op.id, "operationType": op.kind, "createdDateTime": "", "status": "running"}
        if elapsed >= self.lro_delay and not self.hold_operations:
            if op.fail:
                body.update(status="failed", error={"code": "OperationFailed", "message": "The operation failed."})
            else:
                body["status"] = "succeeded"
                if not op.finished:
                    op.finished = True
                    if op.done is not None:
                        op.done()
                if op.resource_location:
                    body["resourceLocation"] = op.resource_location
        elif elapsed < self.lro_delay / 4:
            body["status"] = "notStarted"
        self.calls.append(Call(200, dict(request.headers), None, path=request.path))
        return web.json_response(body)

    # --- inbound SMS, as Event Grid delivers them ---------------------------------------------------------

    @staticmethod
    async def validate_subscription(http: aiohttp.ClientSession, webhook_url: str) -> int:
        """Event Grid's handshake: post a SubscriptionValidationEvent; answers the status (200 only when the
        webhook echoed the validation code)."""
        code = str(uuid.uuid4())
        event = [{"id": str(uuid.uuid4()), "topic": "/subscriptions/x", "subject": "", "eventTime": _now(),
                  "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "dataVersion": "2",
                  "metadataVersion": "1", "data": {"validationCode": code, "validationUrl": ""}}]
        async with http.post(webhook_url, json=event, headers={"aeg-event-type": "SubscriptionValidation"}) as r:
            answer = await r.json() if r.status == 200 else None
        return 200 if isinstance(answer, dict) and answer.get("validationResponse") == code else 400

    async def deliver_sms(self, http: aiohttp.ClientSession, webhook_url: str, sender: str, to: str,
                          message: str) -> int:
        """Post a Microsoft.Communication.SMSReceived event (an SMS a phone sent to one of our numbers)."""
        if to not in self.numbers:
            raise ValueError("the resource has no such number")
        event = [{"id": str(uuid.uuid4()), "topic": "/subscriptions/x/resourceGroups/x/providers/"
                  "Microsoft.Communication/communicationServices/sandbox", "subject": f"/phonenumber/{to}",
                  "eventType": "Microsoft.Communication.SMSReceived", "dataVersion": "1.0", "metadataVersion": "1",
                  "eventTime": _now(),
                  "data": {"messageId": f"Incoming_{uuid.uuid4().hex}", "from": sender, "to": to,
                           "message": message, "receivedTimestamp": _now()}}]
        async with http.post(webhook_url, json=event, headers={"aeg-event-type": "Notification"}) as r:
            await r.read()
            return r.status


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()

