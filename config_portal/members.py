"""Who holds which role in an organisation, as its admins manage it in the portal: grants by subject, email or
group, revocations, each audited with before and after. An organisation never loses its last admin grant.

Roles are resolved at sign-in, so a change takes effect at the person's next sign-in.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

import sql
from gateway.configurations import append_audit

from . import store
from .errors import PortalError

Q = sql.queries("portal")
MAX_VALUE = 320


class MembershipRefused(PortalError):
    """A grant or revocation the portal will not make, with what to do instead."""

    status = 400
    reason = "membership_refused"
    title = "That change to the members was not made"


class LastAdmin(MembershipRefused):
    """Revoking the organisation's only admin grant."""

    status = 409
    reason = "last_admin"


@dataclass(frozen=True)
class Member:
    """One grant as the members page lists it."""

    id: int
    role: str
    matched_by: str
    value: str
    granted_by: str
    granted_at: dt.datetime


async def members_of(conn: asyncpg.Connection, org_id: int) -> list[Member]:
    """Every grant of the organisation, by role."""
    return [Member(**dict(r)) for r in await conn.fetch(Q["members_of"], org_id)]


def checked_grant(role: str, matched_by: str, value: str) -> tuple[str, str, str]:
    """The grant as it will be stored (an email in lower case), or a refusal saying what is wrong."""
    if role not in store.ROLES:
        raise MembershipRefused("Choose a role: admin, approver or report reader.")
    if matched_by not in store.MATCHES:
        raise MembershipRefused("Choose how the person is recognised: by subject, email or group.")
    value = value.strip()
    if matched_by == "email":
        value = value.lower()
        if value.count("@") != 1 or value.startswith("@") or value.endswith("@"):
            raise MembershipRefused("That is not an email address.")
    if not value or len(value) > MAX_VALUE or any(ord(c) < 32 for c in value):
        raise MembershipRefused(f"The {matched_by} must be 1 to {MAX_VALUE} printable characters.")
    return role, matched_by, value


async def grant(conn: asyncpg.Connection, org_id: int, role: str, matched_by: str, value: str,
                actor: str) -> bool:
    """Grant a role, audited with before and after; False when exactly this grant existed already."""
    role, matched_by, value = checked_grant(role, matched_by, value)
    async with conn.transaction():
        await conn.fetchval(Q["lock_organisation"], org_id)
        added = await store.insert_membership(conn, org_id, role, matched_by, value, actor)
        if added:
            await append_audit(conn, actor, "role.grant", f"organisation:{org_id}",
                               {"before": None, "after": {"role": role, "matched_by": matched_by, "value": value}},
                               organisation_id=org_id)
    return added


async def revoke(conn: asyncpg.Connection, org_id: int, membership_id: int, actor: str) -> bool:
    """Revoke one grant, audited with before and after; False when it no longer exists. Refuses the last admin."""
    async with conn.transaction():
        await conn.fetchval(Q["lock_organisation"], org_id)
        row = await conn.fetchrow(Q["membership_of"], org_id, membership_id)
        if row is None:
            return False
        if row["role"] == "admin" and await conn.fetchval(Q["count_admins"], org_id) <= 1:
            raise LastAdmin("This is the organisation's last admin grant: grant the admin role to someone else "
                            "first, then revoke this one.")
        await conn.execute(Q["delete_membership"], org_id, membership_id)
        before = {"role": row["role"], "matched_by": row["matched_by"], "value": row["value"]}
        await append_audit(conn, actor, "role.revoke", f"organisation:{org_id}", {"before": before, "after": None},
                           organisation_id=org_id)
    return True
