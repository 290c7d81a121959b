"""A stand-in for Twilio Programmable Messaging (REST API 2010-04-01) and its signed incoming-message webhook.

- `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`: HTTP basic authentication with AccountSid:AuthToken
  (the path's account must be the authenticated one), a form-encoded body with To, From and Body (or
  MessagingServiceSid); answers 201 with the message resource (its `sid` starts with SM), and errors as Twilio
  does: `{"code", "message", "more_info", "status"}` with Twilio's error codes (20003 authentication, 21211
  invalid To, 21602 no Body, 21603 no From, 21604 no To, 21606 From not ours, 21617 Body too long, 20429 too
  many requests).
- `deliver_sms` posts an incoming message to a webhook the way Twilio does: form-encoded, signed with
  `X-Twilio-Signature` (base64 HMAC-SHA1 with the auth token over the full URL and the parameters sorted by
  name, each name followed by its value), and answers what the webhook replied (TwiML).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from .acs import Sent, valid_number
from .rate import RateLimit

MAX_BODY = 1600


def signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature as Twilio computes it."""
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


@dataclass
class Call:
    """One request the double received and what it answered."""

    status: int
    form: dict[str, str]
    code: int | None = None


@dataclass
class TwilioDouble:
    """One Twilio account: its SID and auth token, and the numbers it owns."""

    account_sid: str
    auth_token: str
    numbers: set[str]
    rate: RateLimit = field(default_factory=RateLimit)
    calls: list[Call] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    on_sms: Any = None
    """Called with each accepted Sent (the sandbox's phone shows them)."""

    def app(self) -> web.Application:
        """The aiohttp application serving the message API."""
        app = web.Application()
        self.add_routes(app.router, "")
        return app

    def add_routes(self, router: web.UrlDispatcher, prefix: str) -> None:
        """Add the message API under prefix (e.g. /twilio)."""
        router.add_post(prefix + "/2010-04-01/Accounts/{account}/Messages.json", self.create_message)

    def _error(self, status: int, code: int, message: str, form: dict[str, str]) -> web.Response:
        self.calls.append(Call(status, form, code))
        return web.json_response({"code": code, "message": message, "status": status,
                                  "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status=status)

    def _authenticated(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return scheme.lower() == "basic" and hmac.compare_digest(login.encode(), self.account_sid.encode()) \
            and hmac.compare_digest(password.encode(), self.auth_token.encode())

    async def create_message(self, request: web.Request) -> web.Response:
        """POST /2010-04-01/Accounts/{AccountSid}/Messages.json."""
        if request.content_type != "application/x-www-form-urlencoded":
            form: dict[str, str] = {}
        else:
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if not self._authenticated(request):
            return self._error(401, 20003, "Authenticate", form)
        if request.match_info["account"] != self.account_sid:
            return self._error(404, 20404, "The requested resource was not found", form)
        to, sender, body = form.get("To"), form.get("From"), form.get("Body")
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.", form)
        if not sender and not form.get("MessagingServiceSid"):
            return self._error(400, 21603, "A 'From' phone number is required.", form)
        if not body:
            return self._error(400, 21602, "Message body is required.", form)
        if len(body) > MAX_BODY:
            return self._error(400, 21617, "The concatenated message body exceeds the 1600 character limit.", form)
        if not valid_number(to):
            return self._error(400, 21211, f"Invalid 'To' Phone Number: {to[:20]}", form)
        if sender and sender not in self.numbers:
            return self._error(400, 21606, "The From phone number is not a valid, SMS-capable inbound phone "
                                           "number or short code for your account.", form)
        if not self.rate.take():
            return self._error(429, 20429, "Too Many Requests", form)
        sid = "SM" + uuid.uuid4().hex
        self.calls.append(Call(201, form))
        message = Sent(str(sender), to, body)
        self.sent.append(message)
        if self.on_sms is not None:
            self.on_sms(message)
        return web.json_response({"sid": sid, "account_sid": self.account_sid, "to": to, "from": sender,
                                  "body": body, "status": "queued", "num_segments": "1", "direction": "outbound-api",
                                  "api_version": "2010-04-01", "error_code": None, "error_message": None,
                                  "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json"},
                                 status=201)

    async def deliver_sms(self, http: aiohttp.ClientSession, webhook_url: str, sender: str, to: str,
                          body: str, *, auth_token: str | None = None) -> tuple[int, str]:
        """Post an incoming message to the webhook, signed (with auth_token when given, to test refusals);
        answers the webhook's status and body (TwiML)."""
        params = {"MessageSid": "SM" + uuid.uuid4().hex, "SmsSid": "", "AccountSid": self.account_sid,
                  "From": sender, "To": to, "Body": body, "NumMedia": "0", "NumSegments": "1",
                  "ApiVersion": "2010-04-01"}
        params["SmsSid"] = params["MessageSid"]
        headers = {"X-Twilio-Signature": signature(auth_token or self.auth_token, webhook_url, params)}
        async with http.post(webhook_url, data=params, headers=headers) as r:
            return r.status, await r.text()
