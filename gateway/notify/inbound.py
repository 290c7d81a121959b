"""The carriers' inbound SMS webhooks: where STOP, START and HELP arrive.

- ACS delivers `Microsoft.Communication.SMSReceived` events through an Event Grid subscription. Event Grid first
  sends a `Microsoft.EventGrid.SubscriptionValidationEvent`, answered with its validation code. Event Grid signs
  nothing, so the subscription's endpoint URL carries our secret (`?code=`, VISITGATE_SMS_WEBHOOK_SECRET);
  without the secret configured the route answers 404. Replies go out through ACS, from the number that
  received the message (the configured sender or one the organisation bought).
- Twilio posts a form and signs it (`X-Twilio-Signature`: HMAC-SHA1 with the auth token over the full URL and
  the sorted parameters); the reply goes back in the answer as TwiML.

The patient's number is used only to find its digest on the opt-out list; it is never logged or stored.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

import sql

from ..appkeys import DB, NOTIFIER, SEALER, SETTINGS
from ..web import csrf_exempt, serves_json
from . import help_text
from .errors import NotifyError
from .optout import OptOutSms, handle_inbound
from .sms import AcsSms, SmsProvider, TwilioSms, to_e164, twilio_signature

log = logging.getLogger(__name__)
Q = sql.queries("sms")
VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
SMS_RECEIVED = "Microsoft.Communication.SMSReceived"
MAX_EVENTS = 100


def _carrier(app: web.Application) -> SmsProvider | None:
    sms = app[NOTIFIER].sms
    return sms.inner if isinstance(sms, OptOutSms) else sms


@csrf_exempt
@serves_json
async def acs_events(request: web.Request) -> web.Response:
    """POST /sms/inbound/acs?code=…: Event Grid's deliveries of ACS events (an array of events)."""
    settings = request.app[SETTINGS]
    carrier = _carrier(request.app)
    if settings.sms_webhook_secret is None or not isinstance(carrier, AcsSms):
        raise web.HTTPNotFound()
    offered = request.query.get("code", "")
    if not hmac.compare_digest(offered.encode(), settings.sms_webhook_secret.encode()):
        return web.json_response({"error": "unauthorized"}, status=401)
    try:
        events = await request.json()
    except ValueError:
        return web.json_response({"error": "not JSON"}, status=400)
    if isinstance(events, dict):
        events = [events]
    if not isinstance(events, list) or not 0 < len(events) <= MAX_EVENTS \
            or not all(isinstance(e, dict) for e in events):
        return web.json_response({"error": "expected an array of events"}, status=400)
    for event in events:
        data = event.get("data")
        if not isinstance(data, dict):
            return web.json_response({"error": "an event without data"}, status=400)
        if event.get("eventType") == VALIDATION:
            code = data.get("validationCode")
            if not isinstance(code, str) or not code:
                return web.json_response({"error": "no validationCode"}, status=400)
            log.info("Event Grid subscription validated")
            return web.json_response({"validationResponse": code})
    for event in events:
        if event.get("eventType") == SMS_RECEIVED:
            await _acs_received(request.app, carrier, event["data"])
    return web.json_response({})


async def _acs_received(app: web.Application, carrier: AcsSms, data: dict[str, Any]) -> None:
    # The documented sample spells the fields From/To/Message and numbers without "+"; the SDKs' models
    # from/to/message: both are read.
    sender, ours, text = (_field(data, name) for name in ("from", "to", "message"))
    if sender is None or ours is None or text is None:
        return
    sender = _international(sender)
    our_number = to_e164(_international(ours))
    if our_number is None or not await _is_ours(app, carrier, our_number):
        log.info("inbound SMS to a number that is not ours: ignored")
        return
    reply = await handle_inbound(app[DB], app[SEALER], sender, text, help_text(app[SETTINGS]))
    if reply is None:
        return
    try:
        # Straight to the carrier: a STOP confirmation goes to a number that has just opted out.
        await carrier.send(sender, reply, sender=our_number)
    except NotifyError as exc:
        log.warning("the reply to an inbound SMS was not sent: %s", exc.reason)


def _field(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name, data.get(name.capitalize()))
    return value if isinstance(value, str) else None


def _international(number: str) -> str:
    return number if number.startswith("+") else "+" + number


async def _is_ours(app: web.Application, carrier: AcsSms, number: str) -> bool:
    if number == carrier.sender:
        return True
    async with app[DB].acquire() as conn:
        return bool(await conn.fetchval(Q["number_is_ours"], number))


def twiml(reply: str | None) -> web.Response:
    """A TwiML answer: the reply as one message, or nothing to send."""
    inner = f"<Message>{escape(reply)}</Message>" if reply else ""
    return web.Response(text=f'<?xml version="1.0" encoding="UTF-8"?><Response>{inner}</Response>',
                        content_type="text/xml")


@csrf_exempt
async def twilio_inbound(request: web.Request) -> web.Response:
    """POST /sms/inbound/twilio: Twilio's incoming-message webhook, signed with our auth token."""
    settings = request.app[SETTINGS]
    if not isinstance(_carrier(request.app), TwilioSms) or not settings.twilio_auth_token:
        raise web.HTTPNotFound()
    form = await request.post()
    params = [(k, v) for k, v in form.items() if isinstance(v, str)]
    # Twilio signs the URL it was given: our public URL, this path and any query.
    url = settings.public_url + request.path_qs
    expected = twilio_signature(settings.twilio_auth_token, url, params)
    offered = request.headers.get("X-Twilio-Signature", "")
    if not hmac.compare_digest(expected.encode(), offered.encode()):
        log.info("Twilio webhook refused: bad signature")
        return web.Response(status=403, text="bad signature")
    sender, text = form.get("From"), form.get("Body")
    if not isinstance(sender, str) or not isinstance(text, str):
        return twiml(None)
    reply = await handle_inbound(request.app[DB], request.app[SEALER], sender, text, help_text(settings))
    return twiml(reply)


def add_routes(app: web.Application) -> None:
    """The inbound webhooks (served only when their carrier is the configured one)."""
    app.router.add_post("/sms/inbound/acs", acs_events)
    app.router.add_post("/sms/inbound/twilio", twilio_inbound)
