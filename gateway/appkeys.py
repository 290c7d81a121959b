"""Typed application keys of the gateway shell; each part declares its own in its own module."""
from __future__ import annotations

import aiohttp
import asyncpg
from aiohttp import web

from .ehr import EhrClient
from .graph import GraphClient
from .meetings import MeetingProvider
from .notify import Notifier
from .security import Sealer, SigningKey
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", asyncpg.Pool)
HTTP = web.AppKey("http", aiohttp.ClientSession)
SEALER = web.AppKey("sealer", Sealer)
SIGNING_KEY = web.AppKey("signing_key", SigningKey)
MEETINGS = web.AppKey("meetings", dict[str, MeetingProvider])
DSN = web.AppKey("dsn", str)  # for connections outside the pool (the presence LISTEN connection)
NOTIFIER = web.AppKey("notifier", Notifier)  # join links by email and SMS
EHR = web.AppKey("ehr", EhrClient)  # every call to an EHR: launch, FHIR reads, backend services, write-back
GRAPH = web.AppKey("graph", GraphClient)  # every call to Microsoft Graph and Entra ID (Teams meetings, presence)
