"""Typed application keys of the presence part."""
from __future__ import annotations

from aiohttp import web

from .bus import PresenceBus
from .hub import Hub
from .lease import ProcessLease
from .writeback import WritebackWorker

HUB = web.AppKey("presence_hub", Hub)
BUS = web.AppKey("presence_bus", PresenceBus)
WRITEBACK = web.AppKey("writeback_worker", WritebackWorker)
LEASE = web.AppKey("presence_lease", ProcessLease)
