"""Who a browser is: provider handles (from the EHR launch), resolved for any part that needs it."""
from __future__ import annotations

from uuid import UUID

import asyncpg

import sql

from .security import token_hash

Q = sql.queries("sessions")


async def provider_identity(conn: asyncpg.Connection, handle: str) -> tuple[UUID, str | None] | None:
    """(visit id, EHR user id) of a live provider handle, or None."""
    if not handle or len(handle) > 128:
        return None
    row = await conn.fetchrow(Q["provider_identity"], token_hash(handle))
    return (row["visit_id"], row["fhir_user"]) if row else None
