"""Typed application keys of the appointments part."""
from __future__ import annotations

from aiohttp import web

from gateway.backend_auth import BackendTokens

from .feed import Listeners
from .sender import Sender

FEED_TOKENS = web.AppKey("appointment_feed_tokens", BackendTokens)
SENDER = web.AppKey("reminder_sender", Sender)
LISTENERS = web.AppKey("mllp_listeners", Listeners)
