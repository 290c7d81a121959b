"""The one client of Azure Communication Services (ACS): HMAC-SHA256 signed requests, time and size limits,
and the mapping of its answers to NotifyError. SMS sending (gateway.notify.sms.AcsSms) and the phone numbers
API (search, purchase and release: long-running operations the portal's SMS set-up follows) both go
through it.

Every request is signed as ACS documents for access keys: the string "VERB\\npath?query\\ndate;host;hash" with
the base64-decoded key, sent as `Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&
Signature=…`, next to `x-ms-date` and `x-ms-content-sha256` (the body's SHA-256; that of nothing for a GET).
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from ..errors import ConfigError
from .errors import NotifyError

SMS_API_VERSION = "2021-03-07"
NUMBERS_API_VERSION = "2022-12-01"
MAX_ANSWER = 64 * 1024
"""Bytes of an answer we read at most: every ACS answer we use is a small JSON document."""
# What an operation's status may be, as ACS spells it; anything else is treated as a failed operation.
OPERATION_STATES = ("notStarted", "running", "succeeded", "failed")


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


@dataclass(frozen=True)
class AcsAnswer:
    """One answer of ACS: its status, the headers we use and the JSON body (None when it had none)."""

    status: int
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Operation:
    """Where a long-running operation stands: ACS's status and, once it has one, the resource it made."""

    status: str
    resource_location: str | None
    error: str | None


class AcsClient:
    """Signed requests to one ACS resource, with the gateway's HTTP session."""

    def __init__(self, http: aiohttp.ClientSession, endpoint: str, access_key: str, *,
                 timeout: float = 10.0) -> None:
        url = URL(endpoint.rstrip("/"))
        if url.scheme not in ("https", "http") or not url.host:
            raise ConfigError("the ACS endpoint must be a URL like https://<resource>.communication.azure.com")
        try:
            self._key = base64.b64decode(access_key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the ACS access key must be base64 (as shown in the Azure portal)") from None
        if not self._key:
            raise ConfigError("the ACS access key is empty")
        self._http = http
        self.endpoint = url
        # Host as sent on the wire: the port only when it is not the scheme's default.
        self._host = url.host if url.is_default_port() else f"{url.host}:{url.port}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))

    def url(self, path: str, api_version: str) -> URL:
        """The resource's URL for path (e.g. /sms), with the api-version."""
        return self.endpoint.with_path(self.endpoint.path.rstrip("/") + path).with_query(
            {"api-version": api_version})

    def signed_headers(self, method: str, url: URL, body: bytes, date: str | None = None) -> dict[str, str]:
        """The headers of one request to url carrying body, signed now (or at date)."""
        date = date or email.utils.formatdate(usegmt=True)
        content_hash = acs_content_hash(body)
        signature = acs_signature(self._key, method, url.raw_path_qs, date, self._host, content_hash)
        headers = {"Host": self._host, "x-ms-date": date, "x-ms-content-sha256": content_hash,
                   "Authorization": acs_authorization(signature)}
        if body:
            headers["Content-Type"] = "application/json"
        return headers

    def _own(self, url: URL) -> bool:
        # An operation-location must be on the resource itself: the signature would go to whoever else it named.
        return url.scheme == self.endpoint.scheme and url.host == self.endpoint.host \
            and url.port == self.endpoint.port

    async def request(self, method: str, url: URL, payload: Any = None) -> AcsAnswer:
        """One signed request; NotifyError when ACS cannot be reached or its answer is unreadable."""
        if not self._own(url):
            raise NotifyError("ACS pointed to another host; the request was not made.", reason="acs_bad_answer")
        data = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        try:
            async with self._http.request(method, url, data=data or None, timeout=self._timeout,
                                          headers=self.signed_headers(method, url, data),
                                          allow_redirects=False) as response:
                raw = await response.content.read(MAX_ANSWER + 1)
                headers = {k.lower(): v for k, v in response.headers.items()
                           if k.lower() in ("operation-location", "location", "operation-id", "search-id",
                                            "retry-after")}
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotifyError(f"Azure Communication Services could not be reached ({type(exc).__name__}).",
                              reason="acs_unreachable") from None
        if len(raw) > MAX_ANSWER:
            raise NotifyError("Azure Communication Services answered too much.", reason="acs_bad_answer")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        return AcsAnswer(status, headers, body)

    # --- phone numbers: search, purchase, release (long-running operations) -------------------------------

    async def start_search(self, country: str, number_type: str, area_code: str | None = None) -> str:
        """Ask ACS for one number with SMS in both directions; answers the operation's URL to follow."""
        payload: dict[str, Any] = {"phoneNumberType": number_type, "assignmentType": "application",
                                   "capabilities": {"calling": "none", "sms": "inbound+outbound"}, "quantity": 1}
        if area_code:
            payload["areaCode"] = area_code
        answer = await self.request("POST", self.url(f"/availablePhoneNumbers/countries/{country}/:search",
                                                     NUMBERS_API_VERSION), payload)
        return self._operation_started(answer, "search")

    async def search_result(self, location: str) -> tuple[str, str]:
        """(search id, the number offered) of a finished search, read from its resource location."""
        answer = await self.request("GET", self._resolve(location))
        self._raise_for(answer, "read the search result")
        body = answer.body if isinstance(answer.body, dict) else {}
        numbers = body.get("phoneNumbers")
        search_id = body.get("searchId")
        if not isinstance(search_id, str) or not isinstance(numbers, list) or not numbers \
                or not isinstance(numbers[0], str):
            raise NotifyError("ACS found no number for this search.", reason="acs_no_number")
        return search_id, numbers[0]

    async def start_purchase(self, search_id: str) -> str:
        """Buy what a search found; answers the operation's URL to follow."""
        answer = await self.request("POST", self.url(f"/availablePhoneNumbers/searchResults/{search_id}:purchase",
                                                     NUMBERS_API_VERSION))
        return self._operation_started(answer, "purchase")

    async def start_release(self, number: str) -> str:
        """Give a number back to ACS; answers the operation's URL to follow."""
        answer = await self.request("DELETE", self.url(f"/phoneNumbers/{number}", NUMBERS_API_VERSION))
        return self._operation_started(answer, "release")

    async def operation(self, location: str) -> Operation:
        """Where a long-running operation stands now."""
        answer = await self.request("GET", self._resolve(location))
        self._raise_for(answer, "read the operation")
        body = answer.body if isinstance(answer.body, dict) else {}
        status = body.get("status")
        if status not in OPERATION_STATES:
            return Operation("failed", None, "unreadable operation status")
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        where = body.get("resourceLocation")
        return Operation(str(status), where if isinstance(where, str) else None,
                         str(message)[:200] if message else None)

    def _resolve(self, location: str) -> URL:
        url = URL(location)
        if url.is_absolute():
            return url
        # A location relative to the resource (ACS's resourceLocation): under the endpoint's own path.
        return self.endpoint.with_path(self.endpoint.path.rstrip("/") + url.path).with_query(url.query)

    def _operation_started(self, answer: AcsAnswer, what: str) -> str:
        self._raise_for(answer, what)
        location = answer.headers.get("operation-location")
        if answer.status != 202 or not location:
            raise NotifyError(f"ACS did not start the {what} (answered {answer.status}).", reason="acs_bad_answer")
        if not self._own(self._resolve(location)):
            raise NotifyError("ACS pointed to another host; the request was not made.", reason="acs_bad_answer")
        return location

    @staticmethod
    def _raise_for(answer: AcsAnswer, what: str) -> None:
        if answer.status in (401, 403):
            raise NotifyError("Azure Communication Services refused our credentials (check the access key).",
                              reason="acs_unauthorized")
        if answer.status == 429:
            raise NotifyError("Azure Communication Services asked us to slow down.", reason="acs_throttled")
        if answer.status >= 300:
            error = answer.body.get("error") if isinstance(answer.body, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            raise NotifyError(f"Azure Communication Services could not {what} ({answer.status}"
                              + (f", {code})." if isinstance(code, str) else ")."), reason="acs_failed")
