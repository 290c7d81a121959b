"""The EHR's appointment feed (HL7v2 SIU over MLLP, FHIR Appointment polling) and the durable schedule of the
confirmations and reminders it drives, sent by email (with an .ics invitation) and SMS.

`setup(app)` adds this part's resources: the feed's backend-services token cache, the MLLP listeners and FHIR
poller, and the sender. It serves no HTTP routes. Configuration is per FHIR base URL, in `appointment_feeds`
(`visitgate config feed`).
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.appkeys import SETTINGS

from .appkeys import FEED_TOKENS, LISTENERS, SENDER
from .feed import feed_context
from .sender import new_tokens, sender_context


def _poke(app: web.Application) -> None:
    if SENDER in app:
        app[SENDER].poke()


async def _tokens(app: web.Application) -> AsyncIterator[None]:
    app[FEED_TOKENS] = new_tokens(app)
    yield


def setup(app: web.Application) -> None:
    """Run the feed and the sender in this process when the settings say so (reminder_enabled)."""
    if not app[SETTINGS].reminder_enabled:
        return
    app.cleanup_ctx.append(_tokens)
    app.cleanup_ctx.append(sender_context(FEED_TOKENS, SENDER))
    app.cleanup_ctx.append(feed_context(FEED_TOKENS, _poke, LISTENERS))
