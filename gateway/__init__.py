"""The gateway shell: settings, the app factory, database, security, FHIR client, meetings."""
from __future__ import annotations

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
