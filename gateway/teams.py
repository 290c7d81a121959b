"""Microsoft Teams for visits: an organisation's Entra application, its clinicians' one-time links, and the
meeting of a visit (createOrGet through gateway.graph).

What is kept: per organisation, the tenant ID, the application's client ID and its credential (sealed, never
shown again); per clinician, the EHR user (their fhirUser reference, sealed, with a keyed lookup) and their Entra
object ID and tenant. No Microsoft token is kept: app tokens live in MSAL's in-memory cache, and the clinician's
sign-in tokens are dropped once their id_token said who they are. Nothing about a patient goes to Graph: the
meeting's externalId is our opaque visit ID and its subject a fixed phrase.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

import sql

from .configurations import append_audit
from .errors import GraphError, GraphPolicyDenied
from .graph import CertificateCredential, GraphClient, SecretCredential, TeamsTenant
from .meetings import Meeting
from .security import Sealer

log = logging.getLogger(__name__)
Q = sql.queries("teams")

CREDENTIAL_CONTEXT = "teams_tenants.credential"
EHR_USER_CONTEXT = "teams_links.ehr_user_ref"
FLOW_CONTEXT = "teams_sign_ins.flow"
JOIN_URL_CONTEXT = "visits.meeting_join_ref"
MEETING_SUBJECT = "Video visit"
"""Every meeting's subject: Teams shows it to all who join, so it says nothing about the patient or reason."""
PROVIDER = "teams"


@dataclass(frozen=True)
class TenantSettings:
    """An organisation's Teams settings as the portal shows them (the credential never leaves sealed)."""

    tenant_id: str
    client_id: str
    credential_kind: str
    thumbprint: str | None
    checked_at: dt.datetime
    updated_by: str
    last_problem: str | None
    last_problem_at: dt.datetime | None


@dataclass(frozen=True)
class Organizer:
    """Who organizes a visit's Teams meeting: the clinician's Entra object ID in the organisation's tenant."""

    organisation_id: int
    tenant: TeamsTenant
    oid: str


@dataclass(frozen=True)
class Link:
    """A clinician's link, as admins see it."""

    id: int
    ehr_user: str
    entra_oid: str
    entra_tenant_id: str
    linked_at: dt.datetime


def seal_credential(sealer: Sealer, tenant: TeamsTenant) -> tuple[str, bytes, str | None]:
    """(kind, sealed credential, thumbprint) for storing a tenant's credential."""
    if isinstance(tenant.credential, CertificateCredential):
        return "certificate", sealer.seal(tenant.credential.private_key_pem, CREDENTIAL_CONTEXT), \
            tenant.credential.thumbprint
    return "secret", sealer.seal(tenant.credential.secret, CREDENTIAL_CONTEXT), None


def _tenant_of(sealer: Sealer, row: asyncpg.Record) -> TeamsTenant:
    secret = sealer.unseal(row["credential"], CREDENTIAL_CONTEXT)
    credential = (CertificateCredential(secret, row["thumbprint"]) if row["credential_kind"] == "certificate"
                  else SecretCredential(secret))
    return TeamsTenant(tenant_id=row["tenant_id"], client_id=row["client_id"], credential=credential)


async def tenant_settings(conn: asyncpg.Connection, organisation_id: int) -> TenantSettings | None:
    """The organisation's Teams settings, or None when it has none."""
    row = await conn.fetchrow(Q["tenant_of_organisation"], organisation_id)
    if row is None:
        return None
    return TenantSettings(row["tenant_id"], row["client_id"], row["credential_kind"], row["thumbprint"],
                          row["checked_at"], row["updated_by"], row["last_problem"], row["last_problem_at"])


async def tenant_of(conn: asyncpg.Connection, sealer: Sealer, organisation_id: int) -> TeamsTenant | None:
    """The organisation's Teams application, credential unsealed, or None."""
    row = await conn.fetchrow(Q["tenant_of_organisation"], organisation_id)
    return _tenant_of(sealer, row) if row is not None else None


async def save_tenant(conn: asyncpg.Connection, sealer: Sealer, organisation_id: int, tenant: TeamsTenant,
                      actor: str, before: TenantSettings | None) -> None:
    """Store checked Teams settings, audited (before and after, without the credential)."""
    kind, sealed, thumbprint = seal_credential(sealer, tenant)
    async with conn.transaction():
        await conn.execute(Q["save_tenant"], organisation_id, tenant.tenant_id, tenant.client_id, kind, sealed,
                           thumbprint, actor)
        await append_audit(conn, actor, "teams.settings", f"organisation:{organisation_id}", {
            "before": before and {"tenant_id": before.tenant_id, "client_id": before.client_id,
                                  "credential_kind": before.credential_kind, "thumbprint": before.thumbprint},
            "after": {"tenant_id": tenant.tenant_id, "client_id": tenant.client_id, "credential_kind": kind,
                      "thumbprint": thumbprint, "credential": "replaced"}}, organisation_id=organisation_id)


async def note_problem(conn: asyncpg.Connection, organisation_id: int, message: str) -> None:
    """Keep what Graph refused that an admin must fix, for the portal's Teams page."""
    await conn.execute(Q["note_problem"], organisation_id, message[:2000])


def ehr_user_key(sealer: Sealer, fhir_user: str) -> bytes:
    """The keyed lookup of an EHR user (links are kept per organisation)."""
    return sealer.lookup("teams_link", fhir_user)


async def organizer_for(conn: asyncpg.Connection, sealer: Sealer, configuration_id: int,
                        fhir_user: str | None) -> tuple[int, TeamsTenant, str | None] | None:
    """For a Teams launch: (organisation, its application, the clinician's Entra object ID or None when they
    have not signed in to Microsoft 365 yet); None when the organisation has no Teams settings."""
    key = ehr_user_key(sealer, fhir_user) if fhir_user else b""
    row = await conn.fetchrow(Q["organizer_for"], configuration_id, key)
    if row is None:
        return None
    return row["organisation_id"], _tenant_of(sealer, row), row["entra_oid"]


async def save_link(conn: asyncpg.Connection, sealer: Sealer, organisation_id: int, fhir_user: str, oid: str,
                    tenant_id: str) -> int:
    """Link an EHR user to their Entra account (replacing an older link of theirs), audited."""
    async with conn.transaction():
        link_id: int = await conn.fetchval(Q["save_link"], organisation_id,
                                           ehr_user_key(sealer, fhir_user),
                                           sealer.seal(fhir_user, EHR_USER_CONTEXT), oid, tenant_id)
        await append_audit(conn, f"ehr-user:{fhir_user}", "teams.link", f"organisation:{organisation_id}",
                           {"before": None, "after": {"ehr_user": fhir_user, "entra_oid": oid,
                                                      "entra_tenant_id": tenant_id}},
                           organisation_id=organisation_id)
    return link_id


async def links_of(conn: asyncpg.Connection, sealer: Sealer, organisation_id: int) -> list[Link]:
    """Every clinician link of the organisation, newest first."""
    return [Link(r["id"], sealer.unseal(r["ehr_user_ref"], EHR_USER_CONTEXT), r["entra_oid"], r["entra_tenant_id"],
                 r["linked_at"]) for r in await conn.fetch(Q["links_of"], organisation_id)]


async def remove_link(conn: asyncpg.Connection, sealer: Sealer, organisation_id: int, link_id: int,
                      actor: str) -> bool:
    """Remove a link (the clinician signs in to Microsoft 365 again at their next Teams visit), audited."""
    async with conn.transaction():
        row = await conn.fetchrow(Q["delete_link"], organisation_id, link_id)
        if row is None:
            return False
        await append_audit(conn, actor, "teams.unlink", f"organisation:{organisation_id}", {
            "before": {"ehr_user": sealer.unseal(row["ehr_user_ref"], EHR_USER_CONTEXT),
                       "entra_oid": row["entra_oid"], "entra_tenant_id": row["entra_tenant_id"]},
            "after": None}, organisation_id=organisation_id)
    return True


async def linked_oids(conn: asyncpg.Connection, organisation_id: int, limit: int = 5) -> list[str]:
    """The Entra object IDs of the most recently linked clinicians (for the settings' live check)."""
    return [r["entra_oid"] for r in await conn.fetch(Q["linked_oids"], organisation_id, limit)]


# --- the pop-up sign-in's state ---------------------------------------------------------------------------

async def store_sign_in(conn: asyncpg.Connection, sealer: Sealer, state_hash: bytes, organisation_id: int,
                        visit_id: UUID, fhir_user: str, flow: dict[str, Any], ttl: int) -> None:
    """Keep a started sign-in (MSAL's flow, sealed) for the clinician's provider session (visit, EHR user)."""
    await conn.execute(Q["purge_sign_ins"])
    await conn.execute(Q["insert_sign_in"], state_hash, organisation_id, visit_id,
                       sealer.seal(fhir_user, EHR_USER_CONTEXT), sealer.seal(json.dumps(flow), FLOW_CONTEXT),
                       float(ttl))


async def take_sign_in(conn: asyncpg.Connection, sealer: Sealer,
                       state_hash: bytes) -> tuple[int, str, dict[str, Any]] | None:
    """The sign-in a state names (single use): (organisation, EHR user, MSAL's flow), or None (unknown, used,
    expired, or its clinician's session in the visit has ended)."""
    row = await conn.fetchrow(Q["take_sign_in"], state_hash)
    if row is None or not row["live"]:
        return None
    fhir_user = sealer.unseal(row["ehr_user_ref"], EHR_USER_CONTEXT)
    if not await conn.fetchval(Q["provider_session_lives"], row["visit_id"], fhir_user):
        return None
    flow: dict[str, Any] = json.loads(sealer.unseal(row["flow"], FLOW_CONTEXT))
    return row["organisation_id"], fhir_user, flow


# --- the meeting --------------------------------------------------------------------------------------------

def meeting_request(visit_id: str) -> dict[str, Any]:
    """createOrGet's body: our opaque visit ID as externalId, a fixed subject, patients and guests held in the
    Teams lobby (only the organizer bypasses it), and no dial-in bypass."""
    return {"externalId": visit_id, "subject": MEETING_SUBJECT,
            "lobbyBypassSettings": {"scope": "organizer", "isDialInBypassEnabled": False}}


MeetingListener = Callable[[UUID, Organizer, Meeting], Awaitable[None]]


class TeamsMeetings:
    """The `teams` meeting provider: one Teams meeting per visit, organized by the clinician."""

    name = PROVIDER

    def __init__(self, graph: GraphClient) -> None:
        self._graph = graph
        self.meeting_listeners: list[MeetingListener] = []
        """Awaited as `listener(visit_id, organizer, meeting)` once per visit, when its meeting is named (in
        whichever process named it), e.g. to subscribe to the meeting's call events."""

    async def create_meeting(self, visit_id: str, *, organizer: Any = None, deadline: float | None = None) -> Meeting:
        """createOrGet the visit's meeting for its organizer (idempotent by externalId: concurrent launches
        of one visit get one meeting); GraphError when Graph refuses or stays down past the deadline."""
        if not isinstance(organizer, Organizer):
            raise GraphError("no organizer for the Teams meeting", reason="teams_no_organizer")
        answer = await self._graph.request(organizer.tenant, "POST",
                                           f"/users/{organizer.oid}/onlineMeetings/createOrGet",
                                           json=meeting_request(visit_id), deadline=deadline)
        doc = answer.json if isinstance(answer.json, dict) else {}
        meeting_id, join_url = doc.get("id"), doc.get("joinWebUrl")
        if not isinstance(meeting_id, str) or not meeting_id or not isinstance(join_url, str) \
                or not join_url.startswith("https://"):
            raise GraphError("Microsoft Graph answered a meeting without an id or an https join address",
                             reason="graph_invalid")
        return Meeting(provider=self.name, meeting_id=meeting_id, join_url=join_url)


async def set_meeting(conn: asyncpg.Connection, sealer: Sealer, visit_id: UUID,
                      meeting: Meeting) -> tuple[str, str | None, bool]:
    """Name the visit's Teams meeting unless another launch already did: (meeting id, join URL) that stand, and
    whether this call named it."""
    sealed = sealer.seal(meeting.join_url, JOIN_URL_CONTEXT) if meeting.join_url else None
    row = await conn.fetchrow(Q["set_teams_meeting"], visit_id, meeting.meeting_id, sealed)
    if row["meeting_id"] is None:
        # Another launch named it while this statement ran: its snapshot predates that; read it afresh.
        row = {**dict(await conn.fetchrow(Q["meeting_of_visit"], visit_id)), "named_now": False}
    join = sealer.unseal(row["meeting_join_ref"], JOIN_URL_CONTEXT) if row["meeting_join_ref"] else None
    return row["meeting_id"], join, bool(row["named_now"])


async def join_url_of(conn: asyncpg.Connection, sealer: Sealer, visit_id: UUID) -> str | None:
    """The Teams join address of a visit's meeting, or None (not Teams, or no meeting yet)."""
    row = await conn.fetchrow(Q["meeting_of_visit"], visit_id)
    if row is None or row["meeting_provider"] != PROVIDER or row["meeting_join_ref"] is None:
        return None
    return sealer.unseal(row["meeting_join_ref"], JOIN_URL_CONTEXT)


async def make_meeting(pool: asyncpg.Pool, sealer: Sealer, provider: TeamsMeetings, visit_id: UUID,
                       organizer: Organizer, deadline: float | None = None) -> tuple[str, str | None]:
    """The visit's meeting, made now if it has none (no database connection is held while Graph answers); a
    policy refusal is kept for the admins, then raised."""
    try:
        meeting = await provider.create_meeting(str(visit_id), organizer=organizer, deadline=deadline)
    except GraphPolicyDenied as exc:
        async with pool.acquire() as conn:
            await note_problem(conn, organizer.organisation_id, exc.admin_message)
        raise
    async with pool.acquire() as conn:
        meeting_id, join_url, named_now = await set_meeting(conn, sealer, visit_id, meeting)
    if named_now:
        # Once per visit across every process: what follows a new meeting (the live-presence subscription).
        for listener in list(provider.meeting_listeners):
            try:
                await listener(visit_id, organizer, meeting)
            except Exception:  # a listener's failure must not cost the clinician the meeting
                log.exception("a Teams meeting listener failed for visit %s", visit_id)
    return meeting_id, join_url
