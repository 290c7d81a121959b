"""Typed application keys of the launch part."""
from __future__ import annotations

from aiohttp import web

from .i18n import Catalogs
from .smart import SmartClient
from .store import ApprovedBases

SMART = web.AppKey("smart", SmartClient)
CATALOGS = web.AppKey("catalogs", Catalogs)
APPROVED_BASES = web.AppKey("approved_bases", ApprovedBases)
