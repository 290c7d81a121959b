"""Typed calls to sql/queries/portal.sql; each takes a connection so the caller owns the transaction."""
from __future__ import annotations

from dataclasses import dataclass

import asyncpg

import sql

Q = sql.queries("portal")

ROLES = ("admin", "approver", "report_reader")
MATCHES = ("subject", "email", "group")


@dataclass(frozen=True)
class Organisation:
    """An organisation served by this installation and how its people sign in."""

    id: int
    slug: str
    name: str
    idp_kind: str  # "entra" or "oidc"
    issuer: str
    tenant_id: str | None
    client_id: str
    client_secret: bytes  # sealed
    group_claim: str


@dataclass(frozen=True)
class Membership:
    """One grant of a role, matched by subject, email or group."""

    role: str
    matched_by: str
    value: str


@dataclass(frozen=True)
class LoginState:
    """A sign-in in flight, as taken back (once) at the callback."""

    organisation_id: int
    browser_hash: bytes
    flow: bytes  # sealed
    max_age: int | None
    return_to: str
    live: bool


@dataclass(frozen=True)
class PortalSession:
    """A live portal session and who it speaks for."""

    organisation_id: int
    organisation_slug: str
    organisation_name: str
    subject: str
    roles: tuple[str, ...]
    auth_time: float | None
    auth_age: float | None
    """Seconds since the person last typed their credentials at the identity provider."""


def _organisation(row: asyncpg.Record | None) -> Organisation | None:
    return Organisation(**dict(row)) if row is not None else None


async def insert_organisation(conn: asyncpg.Connection, slug: str, name: str, idp_kind: str, issuer: str,
                              tenant_id: str | None, client_id: str, sealed_secret: bytes,
                              group_claim: str) -> int:
    """Add an organisation; answers its id."""
    org_id: int = await conn.fetchval(Q["insert_organisation"], slug, name, idp_kind, issuer, tenant_id, client_id,
                                      sealed_secret, group_claim)
    return org_id


async def organisation_by_slug(conn: asyncpg.Connection, slug: str) -> Organisation | None:
    """The organisation with this slug, or None."""
    return _organisation(await conn.fetchrow(Q["organisation_by_slug"], slug))


async def organisation_by_id(conn: asyncpg.Connection, org_id: int) -> Organisation | None:
    """The organisation with this id, or None."""
    return _organisation(await conn.fetchrow(Q["organisation_by_id"], org_id))


async def insert_membership(conn: asyncpg.Connection, org_id: int, role: str, matched_by: str, value: str,
                            granted_by: str) -> bool:
    """Grant a role; answers False when exactly this grant already existed."""
    return await conn.fetchval(Q["insert_membership"], org_id, role, matched_by, value, granted_by) is not None


async def memberships_of(conn: asyncpg.Connection, org_id: int) -> list[Membership]:
    """Every grant of one organisation."""
    return [Membership(r["role"], r["matched_by"], r["value"]) for r in await conn.fetch(Q["memberships_of"], org_id)]


async def insert_login_state(conn: asyncpg.Connection, state_hash: bytes, org_id: int, browser_hash: bytes,
                             sealed_flow: bytes, max_age: int | None, return_to: str, ttl: int) -> None:
    """Keep a sign-in in flight for ttl seconds."""
    await conn.execute(Q["insert_login_state"], state_hash, org_id, browser_hash, sealed_flow, max_age, return_to,
                       float(ttl))


async def take_login_state(conn: asyncpg.Connection, state_hash: bytes) -> LoginState | None:
    """Take (delete and answer) the sign-in with this state; None when unknown or already taken."""
    row = await conn.fetchrow(Q["take_login_state"], state_hash)
    return LoginState(**dict(row)) if row is not None else None


async def purge_login_states(conn: asyncpg.Connection) -> None:
    """Forget sign-ins that were never finished."""
    await conn.execute(Q["purge_login_states"])


async def insert_session(conn: asyncpg.Connection, session_hash: bytes, org_id: int, subject: str,
                         roles: tuple[str, ...], auth_time: float | None) -> None:
    """Open a portal session."""
    await conn.execute(Q["insert_session"], session_hash, org_id, subject, list(roles), auth_time)


async def touch_session(conn: asyncpg.Connection, session_hash: bytes, idle_timeout: int,
                        lifetime: int) -> PortalSession | None:
    """The live session with this hash, marked as used now; None when unknown, idle too long or too old."""
    row = await conn.fetchrow(Q["touch_session"], session_hash, float(idle_timeout), float(lifetime))
    if row is None:
        return None
    return PortalSession(row["organisation_id"], row["slug"], row["name"], row["subject"], tuple(row["roles"]),
                         row["auth_time"], row["auth_age"])


async def delete_session(conn: asyncpg.Connection, session_hash: bytes) -> tuple[int, str, str] | None:
    """End a session (sign-out, or a fresh sign-in replacing it); answers (organisation id, slug, subject)."""
    row = await conn.fetchrow(Q["delete_session"], session_hash)
    return (row["id"], row["slug"], row["subject"]) if row is not None else None


async def purge_sessions(conn: asyncpg.Connection, idle_timeout: int, lifetime: int) -> None:
    """Forget sessions that can no longer be used."""
    await conn.execute(Q["purge_sessions"], float(idle_timeout), float(lifetime))
