"""Visits' participants: who is in a visit, known only by an opaque id and a role.

Launch creates them (the clinician, the patient, guests) and presence reads them; both use this module, so it
lives in the shell. The presence event log itself belongs to presence (presence.eventlog).
"""
from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

import sql

Q = sql.queries("participants")


@dataclass(frozen=True)
class Participant:
    """Someone in a visit, known only by an opaque id and a role."""

    id: UUID
    visit_id: UUID
    role: str
    guest_kind: str | None
    fhir_user: str | None


async def _ensure(conn: asyncpg.Connection, query: str, *args: object) -> UUID:
    # Two racing creators: the loser sees neither its own insert nor the winner's row; one retry does.
    for _ in range(2):
        value = await conn.fetchval(query, *args)
        if value is not None:
            return value  # type: ignore[no-any-return]
    raise RuntimeError("participant could not be created")


async def provider_participant(conn: asyncpg.Connection, visit_id: UUID, fhir_user: str | None) -> UUID:
    """The participant of this clinician in this visit, created on first use."""
    return await _ensure(conn, Q["ensure_provider_participant"], visit_id, fhir_user or "")


async def patient_participant(conn: asyncpg.Connection, visit_id: UUID) -> UUID:
    """The visit's patient participant, created on first use."""
    return await _ensure(conn, Q["ensure_patient_participant"], visit_id)


async def named_participants(conn: asyncpg.Connection, visit_id: UUID) -> set[UUID]:
    """The visit's patient and guests: the participants who give a display name."""
    return {r["id"] for r in await conn.fetch(Q["named_participants"], visit_id)}


async def add_guest(conn: asyncpg.Connection, visit_id: UUID, guest_kind: str) -> UUID:
    """A new guest (interpreter, family member, ...) in the visit."""
    value: UUID = await conn.fetchval(Q["add_guest"], visit_id, guest_kind)
    return value


async def get_participant(conn: asyncpg.Connection, participant_id: UUID) -> Participant | None:
    """A participant by id."""
    row = await conn.fetchrow(Q["get_participant"], participant_id)
    return Participant(**dict(row)) if row else None


async def admission_state(conn: asyncpg.Connection, participant_id: UUID) -> str | None:
    """The participant's latest admission decision: "admitted", "denied", "removed", or None if none yet.

    Read from the event log (which presence writes) because the room page, in launch, asks it too.
    """
    kind: str | None = await conn.fetchval(Q["admission_state"], participant_id)
    return kind
