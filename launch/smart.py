"""The SMART App Launch client the launch uses: it lives in gateway.smart (the portal's approver sign-in uses it
too, and imports point down); these names stay importable from here."""
from __future__ import annotations

from gateway.smart import Client, SmartClient, SmartConfiguration, TokenGrant

__all__ = ["Client", "SmartClient", "SmartConfiguration", "TokenGrant"]
