"""Typed application keys of the gateway shell; each part declares its own in its own module."""
from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import asyncpg
from aiohttp import web

from .events import Announcer
from .meetings import MeetingProvider
from .security import Sealer, SigningKey
from .settings import Settings

if TYPE_CHECKING:  # the notifier's module reads these keys; the type alone must not import it back
    from .notify import Notifier

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", asyncpg.Pool)
HTTP = web.AppKey("http", aiohttp.ClientSession)
SEALER = web.AppKey("sealer", Sealer)
SIGNING_KEY = web.AppKey("signing_key", SigningKey)
MEETINGS = web.AppKey("meetings", dict[str, MeetingProvider])
DSN = web.AppKey("dsn", str)  # for connections outside the pool (the presence LISTEN connection)
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")  # join links by email and SMS; built in gateway.notify's cleanup_ctx
ANNOUNCER = web.AppKey("announcer", Announcer)  # this process's coalesced event notifications
