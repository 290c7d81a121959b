"""Typed application keys of the presence part."""
from __future__ import annotations

from aiohttp import web

from .bus import PresenceBus
from .hub import Hub

HUB = web.AppKey("presence_hub", Hub)
BUS = web.AppKey("presence_bus", PresenceBus)

from .writeback import WritebackWorker  # noqa: E402  (write-back's keys, appended)

WRITEBACK = web.AppKey("writeback_worker", WritebackWorker)
