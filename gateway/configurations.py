"""Configurations (one per FHIR base URL) and their append-only audit trail."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

import sql

from .ehr import fhir_base_url
from .errors import ConfigError
from .security import Sealer

Q = sql.queries("configurations")

WRITEBACK_STRATEGIES = ("fhir-r4-put", "fhir-r4-patch", "none")
DEFAULT_SCOPES = ("launch openid fhirUser user/Patient.read user/Encounter.read user/Appointment.read "
                  "user/Practitioner.read")
# What the patient portal's launch asks for (the patient's own records, read live for the lobby).
PATIENT_SCOPES = "launch openid fhirUser patient/Patient.read patient/Encounter.read patient/Appointment.read"


@dataclass(frozen=True)
class NewConfiguration:
    """What an operator or admin gives to register an EHR environment."""

    fhir_base_url: str
    environment: str
    client_id: str
    client_auth: str
    scopes: str = DEFAULT_SCOPES
    client_secret: str | None = None
    meeting_provider: str = "builtin"
    writeback_strategy: str = "none"
    """How visits are written back to the FHIR Encounter: fhir-r4-put, fhir-r4-patch or none."""

    def __post_init__(self) -> None:
        base = fhir_base_url(self.fhir_base_url)
        if base is None:
            raise ConfigError("the FHIR base URL must be an absolute http(s) URL without query or fragment")
        # Stored in the one spelling launches look it up in (gateway.ehr.fhir_base_url).
        object.__setattr__(self, "fhir_base_url", base)
        if self.environment not in ("test", "production"):
            raise ConfigError("the environment must be 'test' or 'production'")
        if self.client_auth not in ("public", "client_secret_basic", "private_key_jwt"):
            raise ConfigError("client auth must be public, client_secret_basic or private_key_jwt")
        if (self.client_auth == "client_secret_basic") != bool(self.client_secret):
            raise ConfigError("a client secret is needed for client_secret_basic, and only for it")
        if self.writeback_strategy not in WRITEBACK_STRATEGIES:
            raise ConfigError("write-back must be one of " + ", ".join(WRITEBACK_STRATEGIES))
        if not self.client_id or "launch" not in self.scopes.split():
            raise ConfigError("a client ID and the `launch` scope are required")


async def append_audit(conn: asyncpg.Connection, actor: str, action: str, subject: str,
                       details: dict[str, Any], *, organisation_id: int | None = None) -> None:
    """Record who did what (in which organisation: the one given, else a configuration's own); the table
    refuses updates and deletes."""
    await conn.execute(Q["append_audit"], actor, action, subject, json.dumps(details), organisation_id)


async def add_approved(conn: asyncpg.Connection, sealer: Sealer, new: NewConfiguration, approved_by: str) -> int:
    """Register a configuration already approved by an operator (until the portal's approval flow exists)."""
    secret = sealer.seal(new.client_secret, "configurations.client_secret") if new.client_secret else None
    async with conn.transaction():
        config_id: int = await conn.fetchval(
            Q["insert_configuration"], new.fhir_base_url, new.environment, new.client_id, new.client_auth,
            secret, new.scopes, new.meeting_provider, new.writeback_strategy)
        await append_audit(conn, approved_by, "configuration.add", f"configuration:{config_id}",
                           {"fhir_base_url": new.fhir_base_url, "environment": new.environment,
                            "client_id": new.client_id, "client_auth": new.client_auth, "scopes": new.scopes,
                            "writeback_strategy": new.writeback_strategy})
        await conn.fetchval(Q["approve_configuration"], config_id, approved_by)
        await append_audit(conn, approved_by, "configuration.approve", f"configuration:{config_id}",
                           {"via": "operator command"})
    return config_id


async def list_all(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every configuration, without secrets."""
    return [dict(r) for r in await conn.fetch(Q["list_configurations"])]
