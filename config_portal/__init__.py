"""The configuration portal: organisations' admins, approvers and report readers, signed in with their own
identity provider."""
from __future__ import annotations

from .routes import setup

__all__ = ["setup"]
