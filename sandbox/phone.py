"""The sandbox's phone and mailbox: where the demo's join-link SMS and email land, so the demo needs no
outside service.

- `POST /_sms` takes `{"to": "+1...", "body": "...", "id": "<optional idempotency key>"}` from the gateway's
  sink SMS provider (a repeated id is accepted and not delivered again, as a carrier would); `GET /phone`
  shows what arrived, newest first, with links clickable.
- An in-process SMTP server (aiosmtpd, a real one) delivers into the mailbox that `GET /mailbox` shows.

Everything is held in this process's memory only (bounded), like the rest of the sandbox.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.policy
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp_jinja2
from aiohttp import web

from .appkeys import FAULTS

KEEP = 200
"""Messages each inbox keeps; older ones fall off."""
_LINK = re.compile(r"(https?://[^\s<>\"']+)")


@dataclass(frozen=True)
class Received:
    """One message that arrived."""

    to: str
    body: str
    at: dt.datetime
    subject: str | None = None
    sender: str | None = None

    def parts(self) -> list[tuple[str, bool]]:
        """The body as (text, is_link) pieces, for the page to make links clickable."""
        pieces = _LINK.split(self.body)
        return [(piece, i % 2 == 1) for i, piece in enumerate(pieces) if piece]


class Inbox:
    """The last KEEP messages, newest first."""

    def __init__(self) -> None:
        self._messages: deque[Received] = deque(maxlen=KEEP)
        self._ids: deque[str] = deque(maxlen=10 * KEEP)
        self.repeats = 0  # messages sent again with an id already delivered (not delivered twice)

    def first_time(self, message_id: str) -> bool:
        """Whether a sender's idempotency id is new (a carrier delivers a repeated one once)."""
        if message_id in self._ids:
            self.repeats += 1
            return False
        self._ids.append(message_id)
        return True

    def add(self, message: Received) -> None:
        """Keep one message."""
        self._messages.appendleft(message)

    def newest_first(self, to: str | None = None) -> list[Received]:
        """The messages, optionally only those to one recipient."""
        return [m for m in self._messages if to is None or m.to == to]


PHONE = web.AppKey("sandbox_phone", Inbox)
MAILBOX = web.AppKey("sandbox_mailbox", Inbox)


async def receive_sms(request: web.Request) -> web.Response:
    """POST /_sms: a text message for the sandbox phone."""
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("to"), str) or not isinstance(body.get("body"), str):
        raise web.HTTPBadRequest(text='body must be {"to": "...", "body": "..."}')
    if not body["to"].strip() or len(body["to"]) > 32 or len(body["body"]) > 1600:
        raise web.HTTPBadRequest(text="to must be a phone number and body at most 1600 characters")
    message_id = body.get("id")
    if message_id is not None and (not isinstance(message_id, str) or not 0 < len(message_id) <= 64):
        raise web.HTTPBadRequest(text="id, when given, is the sender's idempotency key (1 to 64 characters)")
    if message_id is not None and not request.app[PHONE].first_time(message_id):
        # As ACS does with a repeated repeatabilityRequestId: accepted, not delivered again.
        return web.json_response({"ok": True, "repeated": True}, status=200)
    request.app[PHONE].add(Received(to=body["to"].strip(), body=body["body"], at=dt.datetime.now().astimezone()))
    delay = request.app[FAULTS].sms_answer_after
    if delay > 0:
        await asyncio.sleep(delay)
    return web.json_response({"ok": True}, status=201)


def _listing(request: web.Request, key: web.AppKey[Inbox]) -> list[Received]:
    return request.app[key].newest_first(request.query.get("to") or None)


def _as_json(messages: list[Received]) -> web.Response:
    return web.json_response({"messages": [
        {"to": m.to, "body": m.body, "subject": m.subject, "from": m.sender, "at": m.at.isoformat()}
        for m in messages]})


async def phone(request: web.Request) -> web.Response:
    """GET /phone: the text messages the sandbox phone received."""
    messages = _listing(request, PHONE)
    if "application/json" in request.headers.get("Accept", ""):
        return _as_json(messages)
    return aiohttp_jinja2.render_template("phone.html", request, {"messages": messages})


async def mailbox(request: web.Request) -> web.Response:
    """GET /mailbox: the email the sandbox's SMTP server received."""
    messages = _listing(request, MAILBOX)
    if "application/json" in request.headers.get("Accept", ""):
        return _as_json(messages)
    return aiohttp_jinja2.render_template("mailbox.html", request, {"messages": messages})


class MailboxHandler:
    """aiosmtpd handler: every message accepted goes into the mailbox as text."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Parse and keep the message (aiosmtpd calls this once per message)."""
        raw = envelope.original_content or envelope.content
        parsed = email.message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(),
                                          policy=email.policy.default)
        part = parsed.get_body(preferencelist=("plain", "html"))
        text = part.get_content().replace("\r\n", "\n") if part is not None else ""
        self.inbox.add(Received(to=", ".join(envelope.rcpt_tos), body=text, at=dt.datetime.now().astimezone(),
                                subject=str(parsed.get("Subject", "")), sender=envelope.mail_from))
        return "250 Message accepted for delivery"


def smtp_server(host: str, port: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that runs a real SMTP server (aiosmtpd) on host:port, delivering into the app's mailbox."""
    async def serve(app: web.Application) -> AsyncIterator[None]:
        from aiosmtpd.smtp import SMTP  # imported here: only the demo runs an SMTP server

        # aiosmtpd logs every SMTP command, recipients included: the demo's console does not need them.
        mail_log = logging.getLogger("mail.log")
        level = mail_log.level
        mail_log.setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(MailboxHandler(app[MAILBOX]), hostname="sandbox.localhost"),
                                          host, port)
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()
            mail_log.setLevel(level)

    return serve


S = TypeVar("S")


def with_demo_messaging(app: web.Application, settings: S, sandbox_url: str, smtp_port: int) -> S:
    """For the demo: run the SMTP server on 127.0.0.1:smtp_port and point the gateway's settings at it and
    at the phone's SMS sink. Returns the changed settings (a dataclass; the sandbox imports no gateway code)."""
    app.cleanup_ctx.append(smtp_server("127.0.0.1", smtp_port))
    return dataclasses.replace(settings, sms_provider="sink", sms_sink_url=f"{sandbox_url}/_sms",  # type: ignore[type-var]
                               smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_from="visits@visitgate.localhost",
                               smtp_starttls=False, smtp_tls=False)


def setup_routes(app: web.Application) -> None:
    """Add the phone and the mailbox (their inboxes start empty)."""
    app[PHONE] = Inbox()
    app[MAILBOX] = Inbox()
    app.router.add_post("/_sms", receive_sms)
    app.router.add_get("/phone", phone)
    app.router.add_get("/mailbox", mailbox)
