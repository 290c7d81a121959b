"""Typed application keys of the configuration portal."""
from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.notify.acs import AcsClient
from gateway.smart import SmartClient

from .idp import IdentityProviders

IDPS = web.AppKey("portal_idps", IdentityProviders)
# The SMART client of the approver's standalone EHR sign-in (its own redirect URI, /portal/ehr-callback).
APPROVER_SMART = web.AppKey("portal_approver_smart", SmartClient)
# The SMS set-up: the ACS client of the phone numbers API (only when ACS is configured), and the event that
# wakes the worker following its long-running operations when a page starts one.
SMS_ACS = web.AppKey("portal_sms_acs", AcsClient)
SMS_WAKE = web.AppKey("portal_sms_wake", asyncio.Event)
