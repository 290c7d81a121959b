"""Typed application keys of the configuration portal."""
from __future__ import annotations

from aiohttp import web

from .idp import IdentityProviders

IDPS = web.AppKey("portal_idps", IdentityProviders)
