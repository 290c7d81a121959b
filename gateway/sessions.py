"""Who a browser is: provider handles (from the EHR launch), resolved for any part that needs it."""
from __future__ import annotations

from typing import NamedTuple
from uuid import UUID

import asyncpg

import sql

from .security import token_hash

Q = sql.queries("sessions")


class ProviderIdentity(NamedTuple):
    """Whom a live provider handle speaks for, and how long the handle itself still works."""

    visit_id: UUID
    fhir_user: str | None
    handle_expires_in: float


async def provider_identity(conn: asyncpg.Connection, handle: str) -> ProviderIdentity | None:
    """The visit and EHR user of a live provider handle, or None."""
    if not handle or len(handle) > 128:
        return None
    row = await conn.fetchrow(Q["provider_identity"], token_hash(handle))
    return ProviderIdentity(row["visit_id"], row["fhir_user"], row["handle_expires_in"]) if row else None


def renew_after(ttl: float, expires_in: float) -> int:
    """Seconds after which a provider page renews its handle: a third of its life, so a failed try can be retried."""
    return max(1, int(min(ttl, expires_in) / 3))
