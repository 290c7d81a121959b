"""SMS opt-out: STOP, START and HELP as the carriers' inbound webhooks deliver them, and the check every text
passes on its way out.

The list holds a keyed digest of each number (HMAC-SHA256 with the gateway's lookup key), never the number:
a leaked table says nothing, and a number can still be looked up when a message is about to go to it. A message
to a number on the list is not sent and is counted (per day, across processes) and the caller gets
SmsOptedOut. Every SMS the gateway sends goes through `OptOutSms`, which the app factory wraps around the
configured carrier, so join links and reminders honour it alike.
"""
from __future__ import annotations

import logging

import asyncpg

import sql

from ..security import Sealer
from .errors import NotifyError
from .sms import SmsProvider, to_e164

log = logging.getLogger(__name__)
Q = sql.queries("sms")
DIGEST_NAMESPACE = "sms_opt_out"

# The keywords carriers treat as opting out, back in and asking for help (CTIA and the carriers' defaults).
STOP_WORDS = frozenset({"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
START_WORDS = frozenset({"START", "YES", "UNSTOP", "OPTIN"})
HELP_WORDS = frozenset({"HELP", "INFO"})
# The carriers' standard confirmations (these are Twilio's default wording for its opt-out handling).
STOP_REPLY = ("You have successfully been unsubscribed. You will not receive any more messages from this number. "
              "Reply START to resubscribe.")
START_REPLY = ("You have successfully been re-subscribed to messages from this number. Reply HELP for help. "
               "Reply STOP to unsubscribe. Msg&Data Rates May Apply.")


class SmsOptedOut(NotifyError):
    """The recipient replied STOP: the message was not sent (and was counted)."""

    status = 409
    reason = "sms_opted_out"
    title = "This number has opted out of text messages"


def digest(sealer: Sealer, e164: str) -> bytes:
    """The opt-out list's key for a number in E.164."""
    return sealer.lookup(DIGEST_NAMESPACE, e164)


def keyword_of(text: str) -> str | None:
    """"stop", "start" or "help" when the whole message is one of their keywords (any case), else None."""
    word = " ".join(text.split()).upper().strip(".!")
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


async def is_opted_out(conn: asyncpg.Connection, sealer: Sealer, e164: str) -> bool:
    """Whether the number replied STOP (and not START since)."""
    return bool(await conn.fetchval(Q["is_opted_out"], digest(sealer, e164)))


async def suppressed_total(conn: asyncpg.Connection) -> int:
    """How many messages were held back because their number had opted out, all days together."""
    return int(await conn.fetchval(Q["suppressed_total"]))


async def handle_inbound(pool: asyncpg.Pool, sealer: Sealer, sender: str, text: str, help_text: str) -> str | None:
    """Act on one text a patient sent us: STOP adds the number's digest to the list, START takes it off;
    answers the reply to send back (None: no reply, the message was not a keyword)."""
    kind = keyword_of(text)
    if kind is None:
        return None
    number = to_e164(sender)
    if number is None:
        return None
    if kind == "help":
        return help_text
    async with pool.acquire() as conn:
        await conn.execute(Q["opt_out" if kind == "stop" else "opt_in"], digest(sealer, number))
    log.info("inbound SMS keyword: %s", kind)  # which keyword only: never the number
    return STOP_REPLY if kind == "stop" else START_REPLY


class OptOutSms:
    """The SmsProvider every text goes through: refuses (and counts) a number on the opt-out list, then hands
    the message to the carrier."""

    def __init__(self, inner: SmsProvider, pool: asyncpg.Pool, sealer: Sealer, region: str | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self._pool = pool
        self._sealer = sealer
        self._region = region

    async def send(self, to: str, body: str, *, sender: str | None = None,
                   idempotency_key: str | None = None) -> str:
        """Send (from sender, when the carrier can choose; else its configured number; with the idempotency key
        for a carrier that honours one) unless the number opted out; SmsOptedOut (after counting it) when it
        did."""
        number = to_e164(to, self._region)
        if number is not None:
            async with self._pool.acquire() as conn:
                if await is_opted_out(conn, self._sealer, number):
                    await conn.execute(Q["count_suppressed"])
                    log.info("SMS not sent: the number has opted out")
                    raise SmsOptedOut("This number has replied STOP to our texts; no text was sent. Send the "
                                      "link by email or copy it.")
        # An invalid number is refused by the carrier's own check, with its own reason.
        return await self.inner.send(to, body, sender=sender, idempotency_key=idempotency_key)
