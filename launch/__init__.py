"""SMART App Launch: the clinician's launch from the EHR into a visit, and the provider view."""
from __future__ import annotations

from .routes import setup

__all__ = ["setup"]
