"""Typed application keys of the launch part."""
from __future__ import annotations

from aiohttp import web

from .i18n import Catalogs
from .smart import SmartClient

SMART = web.AppKey("smart", SmartClient)
CATALOGS = web.AppKey("catalogs", Catalogs)
