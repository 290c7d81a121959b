"""Typed application keys of the presence part."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .bus import PresenceBus
from .hub import Hub

if TYPE_CHECKING:  # the worker's module reads these keys; the type alone must not import it back
    from .writeback import WritebackWorker

HUB = web.AppKey("presence_hub", Hub)
BUS = web.AppKey("presence_bus", PresenceBus)
WRITEBACK: web.AppKey[WritebackWorker] = web.AppKey("writeback_worker")
