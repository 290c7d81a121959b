"""Presence: the event log and its storage (eventlog, lease, announcer, outbox), the event hub, the PostgreSQL
bus between processes, websockets, and write-back to FHIR."""
from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Mount presence's routes and background resources on the gateway."""
    from . import routes

    routes.setup(app)
