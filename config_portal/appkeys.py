"""Typed application keys of the configuration portal."""
from __future__ import annotations

from aiohttp import web

from gateway.smart import SmartClient

from .idp import IdentityProviders

IDPS = web.AppKey("portal_idps", IdentityProviders)
# The SMART client of the approver's standalone EHR sign-in (its own redirect URI, /portal/ehr-callback).
APPROVER_SMART = web.AppKey("portal_approver_smart", SmartClient)
