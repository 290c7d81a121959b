"""Configurations (one per FHIR base URL), their revisions and their append-only audit trail.

A configuration row holds the values in force (what launches and write-back read); every change is a revision
that proposes values, and a revision's values are copied into the configuration only when it is approved.
The portal and the command line both go through these functions, so both are audited the same way.
"""
from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from dataclasses import dataclass
from typing import Any

import asyncpg

import sql

from .ehr import fhir_base_url
from .errors import ConfigError, NotFound
from .security import Sealer

Q = sql.queries("configurations")

WRITEBACK_STRATEGIES = ("fhir-r4-put", "fhir-r4-patch", "none")
CLIENT_AUTHS = ("public", "client_secret_basic", "private_key_jwt")
EHRS = ("epic", "oracle", "smart")
ENVIRONMENTS = ("test", "production")
MEETING_PROVIDERS = ("builtin", "teams")
DEFAULT_SCOPES = ("launch openid fhirUser user/Patient.read user/Encounter.read user/Appointment.read "
                  "user/Practitioner.read")
# What the patient portal's launch asks for (the patient's own records, read live for the lobby).
PATIENT_SCOPES = "launch openid fhirUser patient/Patient.read patient/Encounter.read patient/Appointment.read"
SECRET_CONTEXT = "configurations.client_secret"
# The fields a revision proposes, in the order pages and audit entries show them (the secret is never shown).
FIELDS = ("fhir_base_url", "environment", "ehr", "client_id", "client_auth", "scopes", "meeting_provider",
          "writeback_strategy", "approver")
EHR_SIGN_IN_VALID_FOR = 1800.0  # seconds an approver's EHR sign-in proves a revision for


@dataclass(frozen=True)
class NewConfiguration:
    """What an operator or admin gives to register an EHR environment (or to change one)."""

    fhir_base_url: str
    environment: str
    client_id: str
    client_auth: str
    scopes: str = DEFAULT_SCOPES
    client_secret: str | None = None
    meeting_provider: str = "builtin"
    writeback_strategy: str = "none"
    """How visits are written back to the FHIR Encounter: fhir-r4-put, fhir-r4-patch or none."""
    ehr: str = "smart"
    approver: str | None = None
    """The subject of the approver named for it (portal), or None (operator's command line)."""
    keep_secret: bool = False
    """A change that leaves the stored client secret as it is (the portal never shows it back)."""

    def __post_init__(self) -> None:
        base = fhir_base_url(self.fhir_base_url.strip())
        if base is None:
            raise ConfigError("the FHIR base URL must be an absolute http(s) URL without query or fragment")
        # Stored in the one spelling launches look it up in (gateway.ehr.fhir_base_url).
        object.__setattr__(self, "fhir_base_url", base)
        if self.environment not in ENVIRONMENTS:
            raise ConfigError("the environment must be 'test' or 'production'")
        if self.ehr not in EHRS:
            raise ConfigError("the EHR must be epic, oracle or smart")
        if self.client_auth not in CLIENT_AUTHS:
            raise ConfigError("client auth must be public, client_secret_basic or private_key_jwt")
        has_secret = bool(self.client_secret) or self.keep_secret
        if (self.client_auth == "client_secret_basic") != has_secret:
            raise ConfigError("a client secret is needed for client_secret_basic, and only for it")
        if self.writeback_strategy not in WRITEBACK_STRATEGIES:
            raise ConfigError("write-back must be one of " + ", ".join(WRITEBACK_STRATEGIES))
        if self.meeting_provider not in MEETING_PROVIDERS:
            raise ConfigError("the meeting provider must be one of " + ", ".join(MEETING_PROVIDERS))
        if not self.client_id or len(self.client_id) > 255 or not self.client_id.isprintable() \
                or "launch" not in self.scopes.split() or len(self.scopes) > 2000:
            raise ConfigError("a client ID and the `launch` scope are required")

    def values(self) -> dict[str, Any]:
        """The proposed values as audit entries and pages show them (no secret)."""
        return {name: getattr(self, name) for name in FIELDS}


@dataclass(frozen=True)
class Configuration:
    """A configuration as stored: the values in force, its state, and whose it is."""

    id: int
    organisation_id: int | None
    fhir_base_url: str
    environment: str
    ehr: str
    client_id: str
    client_auth: str
    client_secret: bytes | None
    scopes: str
    meeting_provider: str
    writeback_strategy: str
    approver: str | None
    status: str
    approved_by: str | None
    approved_at: dt.datetime | None
    retired_by: str | None
    retired_at: dt.datetime | None
    writeback_disabled_reason: str | None

    def values(self) -> dict[str, Any]:
        """The values in force (no secret)."""
        return {name: getattr(self, name) for name in FIELDS}


@dataclass(frozen=True)
class Revision:
    """One proposal of values for a configuration, and what became of it."""

    id: int
    configuration_id: int
    number: int
    fhir_base_url: str
    environment: str
    ehr: str
    client_id: str
    client_auth: str
    client_secret: bytes | None
    scopes: str
    meeting_provider: str
    writeback_strategy: str
    approver: str | None
    state: str
    proposed_by: str
    proposed_at: dt.datetime
    decided_by: str | None
    decided_at: dt.datetime | None
    decision_reason: str | None
    ehr_fhir_user: str | None
    ehr_signed_in_at: dt.datetime | None
    ehr_sign_in_age: float | None

    def values(self) -> dict[str, Any]:
        """The proposed values (no secret)."""
        return {name: getattr(self, name) for name in FIELDS}


async def append_audit(conn: asyncpg.Connection, actor: str, action: str, subject: str,
                       details: dict[str, Any], *, organisation_id: int | None = None) -> None:
    """Record who did what (in which organisation: the one given, else a configuration's own); the table
    refuses updates and deletes."""
    await conn.execute(Q["append_audit"], actor, action, subject, json.dumps(details, default=str), organisation_id)


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Field by field, what differs between two sets of values: {field: {"before": …, "after": …}}."""
    return {k: {"before": before.get(k), "after": after.get(k)} for k in FIELDS if before.get(k) != after.get(k)}


async def get(conn: asyncpg.Connection, config_id: int) -> Configuration | None:
    """The configuration with this id, or None."""
    row = await conn.fetchrow(Q["configuration_by_id"], config_id)
    return Configuration(**dict(row)) if row is not None else None


async def get_revision(conn: asyncpg.Connection, revision_id: int) -> Revision | None:
    """The revision with this id, or None."""
    row = await conn.fetchrow(Q["revision_by_id"], revision_id)
    return Revision(**dict(row)) if row is not None else None


async def revisions_of(conn: asyncpg.Connection, config_id: int) -> list[Revision]:
    """Every revision of a configuration, oldest first."""
    return [Revision(**dict(r)) for r in await conn.fetch(Q["revisions_of"], config_id)]


async def by_base(conn: asyncpg.Connection, base: str) -> tuple[int, int | None, str] | None:
    """(id, organisation id, status) of the configuration of this FHIR base URL (any organisation), or None."""
    row = await conn.fetchrow(Q["configuration_by_base"], base)
    return (row["id"], row["organisation_id"], row["status"]) if row is not None else None


async def of_organisation(conn: asyncpg.Connection, org_id: int) -> list[dict[str, Any]]:
    """An organisation's configurations, with the id of each one's pending revision (if any)."""
    return [dict(r) for r in await conn.fetch(Q["organisation_configurations"], org_id)]


async def approvers_of(conn: asyncpg.Connection, org_id: int) -> list[str]:
    """The subjects an organisation's configurations may name as approver."""
    return [r["subject"] for r in await conn.fetch(Q["approvers_of"], org_id)]


async def organisation_id(conn: asyncpg.Connection, slug: str) -> int:
    """The id of the organisation with this short name; ConfigError when there is none."""
    row = await conn.fetchrow(Q["organisation_for_configurations"], slug)
    if row is None:
        raise ConfigError(f"no organisation is named {slug!r}")
    return int(row["id"])


async def waives_oracle_approval(conn: asyncpg.Connection, org_id: int | None) -> bool:
    """Whether the organisation lets its Oracle Health configurations be approved without an EHR sign-in."""
    return org_id is not None and bool(await conn.fetchval(Q["organisation_waives_oracle"], org_id))


async def set_waive_oracle_approval(conn: asyncpg.Connection, org_id: int, waive: bool, actor: str) -> None:
    """Turn the organisation's Oracle Health waiver on or off, audited."""
    async with conn.transaction():
        before = await waives_oracle_approval(conn, org_id)
        await conn.execute(Q["set_waive_oracle_approval"], org_id, waive)
        await append_audit(conn, actor, "organisation.waive_oracle_approval", f"organisation:{org_id}",
                           {"before": before, "after": waive})


def _seal(sealer: Sealer, new: NewConfiguration, current: bytes | None) -> bytes | None:
    if new.client_auth != "client_secret_basic":
        return None
    if new.client_secret:
        return sealer.seal(new.client_secret, SECRET_CONTEXT)
    return current


async def propose_new(conn: asyncpg.Connection, sealer: Sealer, new: NewConfiguration, actor: str, *,
                      organisation_id: int | None) -> tuple[int, int]:
    """Add a configuration, pending, with its first revision; answers (configuration id, revision id).

    A FHIR base URL already registered (in any organisation) is refused: one configuration per base.
    """
    try:
        return await _propose_new(conn, sealer, new, actor, organisation_id)
    except asyncpg.UniqueViolationError as exc:  # the same URL added at the same moment elsewhere
        raise ConfigError("this FHIR base URL is already registered") from exc


async def _propose_new(conn: asyncpg.Connection, sealer: Sealer, new: NewConfiguration, actor: str,
                       organisation_id: int | None) -> tuple[int, int]:
    async with conn.transaction():
        if await by_base(conn, new.fhir_base_url) is not None:
            raise ConfigError("this FHIR base URL is already registered")
        secret = _seal(sealer, new, None)
        config_id: int = await conn.fetchval(
            Q["insert_configuration"], new.fhir_base_url, new.environment, new.client_id, new.client_auth,
            secret, new.scopes, new.meeting_provider, new.writeback_strategy, new.ehr, new.approver,
            organisation_id)
        row = await conn.fetchrow(Q["insert_revision"], config_id, *_revision_args(new, secret), actor)
        await append_audit(conn, actor, "configuration.add", f"configuration:{config_id}",
                           {"revision": row["number"], "organisation_id": organisation_id,
                            "before": None, "after": new.values()})
    return config_id, int(row["id"])


def _revision_args(new: NewConfiguration, secret: bytes | None) -> tuple[Any, ...]:
    return (new.fhir_base_url, new.environment, new.ehr, new.client_id, new.client_auth, secret, new.scopes,
            new.meeting_provider, new.writeback_strategy, new.approver)


async def propose_change(conn: asyncpg.Connection, sealer: Sealer, config_id: int, new: NewConfiguration,
                         actor: str) -> int:
    """Propose new values for a configuration; answers the revision's id.

    A newer proposal supersedes the pending one. The values in force stay until the revision is approved; a
    configuration never approved simply shows its latest proposal. A retired configuration takes no change.
    """
    try:
        return await _propose_change(conn, sealer, config_id, new, actor)
    except asyncpg.UniqueViolationError as exc:  # another proposal, or the same URL elsewhere, at the same moment
        raise ConfigError("another change was saved at the same moment; reload the page and try again") from exc


async def _propose_change(conn: asyncpg.Connection, sealer: Sealer, config_id: int, new: NewConfiguration,
                          actor: str) -> int:
    async with conn.transaction():
        current = await get(conn, config_id)
        if current is None:
            raise NotFound("no such configuration")
        if current.status == "retired":
            raise ConfigError("a retired configuration cannot be changed")
        other = await by_base(conn, new.fhir_base_url)
        if other is not None and other[0] != config_id:
            raise ConfigError("this FHIR base URL is already registered")
        secret = _seal(sealer, new, current.client_secret if new.keep_secret else None)
        superseded = await conn.fetchval(Q["supersede_pending"], config_id)
        row = await conn.fetchrow(Q["insert_revision"], config_id, *_revision_args(new, secret), actor)
        await conn.execute(Q["set_proposed_values"], config_id, new.fhir_base_url, new.environment, new.client_id,
                           new.client_auth, secret, new.scopes, new.meeting_provider, new.writeback_strategy,
                           new.ehr, new.approver)
        await append_audit(conn, actor, "configuration.propose", f"configuration:{config_id}",
                           {"revision": row["number"], "superseded": superseded,
                            "before": current.values(), "after": new.values(),
                            "changed": changes(current.values(), new.values()),
                            "secret_changed": bool(new.client_secret)})
    return int(row["id"])


async def record_ehr_sign_in(conn: asyncpg.Connection, revision_id: int, fhir_user: str, actor: str) -> None:
    """Keep the proof of the approver's EHR sign-in on a pending revision: who and when, nothing else."""
    async with conn.transaction():
        await conn.execute(Q["record_ehr_sign_in"], revision_id, fhir_user)
        revision = await get_revision(conn, revision_id)
        subject = f"configuration:{revision.configuration_id}" if revision else f"revision:{revision_id}"
        await append_audit(conn, actor, "configuration.ehr_sign_in", subject,
                           {"revision_id": revision_id, "fhir_user": fhir_user})


async def approve(conn: asyncpg.Connection, revision_id: int, actor: str, *, via: str,
                  reason: str | None = None) -> None:
    """Approve a pending revision: its values come into force. via says how it was proved: "ehr_sign_in" (the
    revision must carry a recent proof), "waived" (Oracle Health, the organisation waived it) or "operator"."""
    if via not in ("ehr_sign_in", "waived", "operator"):
        raise ValueError(via)
    async with conn.transaction():
        revision = await get_revision(conn, revision_id)
        if revision is None or revision.state != "pending":
            raise ConfigError("this revision is no longer waiting for a decision")
        if via == "ehr_sign_in" and (revision.ehr_fhir_user is None or revision.ehr_sign_in_age is None
                                     or revision.ehr_sign_in_age > EHR_SIGN_IN_VALID_FOR):
            raise ConfigError("sign in to the EHR first: approving needs a recent EHR sign-in against this "
                              "FHIR base URL")
        current = await get(conn, revision.configuration_id)
        assert current is not None  # a revision's configuration is never deleted
        if current.status == "retired":
            raise ConfigError("a retired configuration cannot be approved")
        await conn.fetchval(Q["decide_revision"], revision_id, "approved", actor, reason)
        await conn.fetchval(Q["apply_revision"], revision_id, actor)
        await append_audit(conn, actor, "configuration.approve", f"configuration:{revision.configuration_id}",
                           {"revision": revision.number, "via": via, "fhir_user": revision.ehr_fhir_user,
                            "reason": reason, "before": current.values() if current.status == "approved" else None,
                            "after": revision.values(), "status_before": current.status})


async def approve_if_waived(conn: asyncpg.Connection, revision_id: int, actor: str, *, ehr: str,
                            organisation_id: int | None) -> bool:
    """Approve a just-proposed revision when its organisation waived the approver for Oracle Health (the
    seeds' Oracle flow has no approver step); answers whether it did. Epic and others always wait."""
    if ehr != "oracle" or not await waives_oracle_approval(conn, organisation_id):
        return False
    await approve(conn, revision_id, actor, via="waived")
    return True


async def reject(conn: asyncpg.Connection, revision_id: int, actor: str, reason: str) -> None:
    """Reject a pending revision with a reason; a configuration never approved becomes rejected, an approved
    one keeps its values in force."""
    reason = reason.strip()
    if not reason or len(reason) > 1000:
        raise ConfigError("say why (1 to 1000 characters)")
    async with conn.transaction():
        revision = await get_revision(conn, revision_id)
        if revision is None or revision.state != "pending":
            raise ConfigError("this revision is no longer waiting for a decision")
        await conn.fetchval(Q["decide_revision"], revision_id, "rejected", actor, reason)
        await conn.execute(Q["reject_new_configuration"], revision.configuration_id)
        await append_audit(conn, actor, "configuration.reject", f"configuration:{revision.configuration_id}",
                           {"revision": revision.number, "reason": reason, "fhir_user": revision.ehr_fhir_user,
                            "proposed": revision.values()})


async def retire(conn: asyncpg.Connection, config_id: int, actor: str) -> None:
    """Retire a configuration: its launches are refused from now on; a pending revision is superseded."""
    async with conn.transaction():
        current = await get(conn, config_id)
        if current is None:
            raise NotFound("no such configuration")
        if await conn.fetchval(Q["retire_configuration"], config_id, actor) is None:
            raise ConfigError("this configuration is already retired")
        await conn.fetchval(Q["supersede_pending"], config_id)
        await append_audit(conn, actor, "configuration.retire", f"configuration:{config_id}",
                           {"status_before": current.status, "values": current.values()})


async def add_approved(conn: asyncpg.Connection, sealer: Sealer, new: NewConfiguration, approved_by: str, *,
                       organisation_id: int | None = None) -> int:
    """Register a configuration and approve it in one step (operators' scripts, tests): proposed and approved
    through the same functions as the portal's, audited as "operator"."""
    async with conn.transaction():
        config_id, revision_id = await propose_new(conn, sealer, new, approved_by, organisation_id=organisation_id)
        await approve(conn, revision_id, approved_by, via="operator")
    return config_id


async def list_all(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every configuration, without secrets."""
    return [dict(r) for r in await conn.fetch(Q["list_configurations"])]


async def note_signing_key(conn: asyncpg.Connection, kid: str, alg: str) -> bool:
    """Audit the gateway's signing key when it is not the one last in use (a key rotation, or the first key);
    True when it was new. Every EHR that checks our client assertions must fetch the new JWKS, so admins of
    every organisation see this row (installation-wide: no organisation)."""
    async with conn.transaction():
        await conn.execute(Q["lock_signing_key_note"])
        last: str | None = await conn.fetchval(Q["last_signing_key"])
        if last == kid:
            return False
        await append_audit(conn, "gateway", "key.rotate", "signing_key",
                           {"before": {"kid": last} if last else None, "after": {"kid": kid, "alg": alg}})
    return True


def zone_named(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone of this name, or ConfigError naming what is wrong."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"the time zone must be an IANA name such as Europe/Paris, not {name[:64]!r}") from exc


async def zone_known(conn: asyncpg.Connection, name: str) -> bool:
    """Whether the database knows this time zone name (its counters convert to zones in SQL)."""
    return bool(await conn.fetchval(Q["zone_known"], name))


async def organisation_zone(conn: asyncpg.Connection, organisation_id: int | None,
                            default: str) -> zoneinfo.ZoneInfo:
    """The organisation's time zone for its reports, queues and messages; the gateway's (default) if it has
    none of its own or is unknown."""
    name = await conn.fetchval(Q["organisation_time_zone"], organisation_id) if organisation_id else None
    try:
        return zoneinfo.ZoneInfo(name or default)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        # Names are checked when set; a zone the system lost since then falls back rather than failing a page.
        return zoneinfo.ZoneInfo(default)


async def set_organisation_zone(conn: asyncpg.Connection, organisation_id: int, name: str | None,
                                actor: str) -> None:
    """Set (or with None clear) an organisation's own time zone, audited."""
    if name is not None:
        zone_named(name)
        # The counters of the error report compute the organisation's day in the database (sql/queries/launch.sql).
        if not await zone_known(conn, name):
            raise ConfigError(f"the database does not know the time zone {name[:64]!r}: update its tz data first")
    async with conn.transaction():
        if await conn.fetchval(Q["set_organisation_time_zone"], organisation_id, name) is None:
            raise NotFound("no such organisation")
        await append_audit(conn, actor, "organisation.time_zone", f"organisation:{organisation_id}",
                           {"time_zone": name}, organisation_id=organisation_id)
