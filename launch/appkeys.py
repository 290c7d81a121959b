"""Typed application keys of the launch part."""
from __future__ import annotations

from aiohttp import web
from babel.support import Translations

from .smart import SmartClient

SMART = web.AppKey("smart", SmartClient)
TRANSLATIONS = web.AppKey("translations", Translations)
