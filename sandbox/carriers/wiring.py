"""The carrier doubles inside the sandbox: ACS at /acs and Twilio at /twilio, with fixed demo credentials.

What they accept lands on the sandbox phone (/phone), and the phone can text back (STOP, START, HELP or
anything else) through either carrier's inbound webhook, so the demo shows opt-out end to end. Test controls
(`POST /_sandbox/carriers`) set the throughput (messages a second, 429 beyond) and how long phone number
operations take.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from typing import Any, TypeVar

from aiohttp import web

from ..appkeys import HTTP_SESSION
from ..phone import PHONE, Received
from .acs import AcsDouble, Sent
from .twilio import TwilioDouble

DEMO_ACS_KEY = base64.b64encode(b"visitgate-sandbox-acs-access-key-not-a-secret").decode()
DEMO_ACS_NUMBER = "+18005550100"
DEMO_TWILIO_SID = "AC" + "5a" * 16
DEMO_TWILIO_TOKEN = "visitgate-sandbox-twilio-token"
DEMO_TWILIO_NUMBER = "+12065550100"
DEMO_WEBHOOK_SECRET = "visitgate-sandbox-event-grid"
DEMO_LRO_DELAY = 4.0
"""Seconds the demo's phone number operations take: long enough to watch the progress."""

ACS = web.AppKey("sandbox_acs", AcsDouble)
TWILIO = web.AppKey("sandbox_twilio", TwilioDouble)
INBOUND = web.AppKey("sandbox_sms_inbound", dict)
"""Where each carrier delivers texts the phone sends: {"acs": url, "twilio": url} (set by the demo)."""


def setup(app: web.Application, *, lro_delay: float = DEMO_LRO_DELAY) -> None:
    """Mount both doubles and the phone's reply form."""
    def to_phone(sent: Sent) -> None:
        app[PHONE].add(Received(to=sent.to, body=sent.message, at=dt.datetime.now().astimezone(), sender=sent.sender))

    app[ACS] = AcsDouble(access_key=base64.b64decode(DEMO_ACS_KEY), owned_number=DEMO_ACS_NUMBER,
                         lro_delay=lro_delay, on_sms=to_phone)
    app[TWILIO] = TwilioDouble(account_sid=DEMO_TWILIO_SID, auth_token=DEMO_TWILIO_TOKEN,
                               numbers={DEMO_TWILIO_NUMBER}, on_sms=to_phone)
    app[INBOUND] = {}
    app[ACS].add_routes(app.router, "/acs")
    app[TWILIO].add_routes(app.router, "/twilio")
    app.router.add_post("/phone/reply", reply)


async def reply(request: web.Request) -> web.Response:
    """POST /phone/reply: the phone texts one of the carriers' numbers; the carrier hands it to the gateway."""
    form = await request.post()
    sender, to, body = (str(form.get(k, "")).strip() for k in ("from", "to", "body"))
    if not sender or not to or not body or len(body) > 1600:
        raise web.HTTPBadRequest(text="from, to and body are needed")
    app = request.app
    http = app[HTTP_SESSION]
    if to in app[ACS].numbers and "acs" in app[INBOUND]:
        await app[ACS].deliver_sms(http, app[INBOUND]["acs"], sender, to, body)
    elif to in app[TWILIO].numbers and "twilio" in app[INBOUND]:
        status, twiml = await app[TWILIO].deliver_sms(http, app[INBOUND]["twilio"], sender, to, body)
        if status == 200 and "<Message>" in twiml:
            # Twilio sends the webhook's TwiML reply back to the phone.
            text = twiml.split("<Message>", 1)[1].split("</Message>", 1)[0]
            text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
            app[PHONE].add(Received(to=sender, body=text, at=dt.datetime.now().astimezone(), sender=to))
    else:
        raise web.HTTPBadRequest(text="that number belongs to no carrier the gateway uses")
    raise web.HTTPSeeOther("/phone")


async def post_carriers(request: web.Request) -> web.Response:
    """POST /_sandbox/carriers {"rate": N|null, "lro_delay": seconds}: the doubles' throughput and LRO time."""
    body = await request.json()
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="a JSON object")
    if "rate" in body:
        rate = body["rate"]
        if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
            raise web.HTTPBadRequest(text="rate is a positive number of messages a second, or null")
        for double in (request.app[ACS], request.app[TWILIO]):
            double.rate.set(float(rate) if rate is not None else None)
    if "lro_delay" in body:
        delay = body["lro_delay"]
        if not isinstance(delay, (int, float)) or delay < 0:
            raise web.HTTPBadRequest(text="lro_delay is a number of seconds")
        request.app[ACS].lro_delay = float(delay)
    return web.json_response({"rate": request.app[ACS].rate.per_second, "lro_delay": request.app[ACS].lro_delay,
                              "refused": request.app[ACS].rate.refused + request.app[TWILIO].rate.refused})


S = TypeVar("S")


def with_demo_carrier(app: web.Application, settings: S, sandbox_url: str, carrier: str = "acs") -> S:
    """For the demo: the gateway texts through a carrier double (ACS by default), and the phone's replies come
    back through that carrier's webhook. Returns the changed settings (the sandbox imports no gateway code)."""
    gateway_url = getattr(settings, "public_url")
    changes: dict[str, Any]
    if carrier == "acs":
        changes = dict(sms_provider="acs", acs_endpoint=f"{sandbox_url}/acs", acs_access_key=DEMO_ACS_KEY,
                       sms_from=DEMO_ACS_NUMBER, sms_webhook_secret=DEMO_WEBHOOK_SECRET)
        app[INBOUND]["acs"] = f"{gateway_url}/sms/inbound/acs?code={DEMO_WEBHOOK_SECRET}"
    else:
        changes = dict(sms_provider="twilio", twilio_account_sid=DEMO_TWILIO_SID, twilio_auth_token=DEMO_TWILIO_TOKEN,
                       twilio_api_url=f"{sandbox_url}/twilio", sms_from=DEMO_TWILIO_NUMBER)
        app[INBOUND]["twilio"] = f"{gateway_url}/sms/inbound/twilio"
    return dataclasses.replace(settings, **changes)  # type: ignore[type-var]
