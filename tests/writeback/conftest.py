"""Fixtures and checks for write-back: a gateway with quick write-back settings next to the sandbox EHR,
visits on the sandbox's Encounters, and the check that an Encounter's `_history` is the event log
written exactly once."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from aiohttp import web

import sql
from gateway import Settings
from gateway.appkeys import DB, SEALER
from gateway.ehr import EhrClient
from gateway.participants import add_guest, patient_participant, provider_participant
from gateway.security import Sealer, SigningKey
from gateway.backend_auth import BackendClient, BackendTokens
from presence.encounter_mapping import VisitEvent, derive, desired_encounter, patch_operations, unchanged
from presence.eventlog import record_event
from tests.conftest import CLIENT_ID, running_stack

Q = sql.queries("writeback")

QUICK = dict(writeback_backoff_base=0.05, writeback_backoff_max=0.5, writeback_poll_interval=0.05,
             writeback_lease_seconds=5.0, writeback_request_timeout=2.0, writeback_max_attempts=6,
             metrics_token="metrics-token-for-tests")  # the dead letters are read at /metrics


def validate_encounter(resource: dict[str, Any]) -> None:
    """Check a resource against the FHIR R4B Encounter model (identical to R4's for what we write)."""
    from fhir.resources.R4B.encounter import Encounter

    Encounter.model_validate({k: v for k, v in resource.items()})


@dataclass
class WritebackStack:
    """A gateway (write-back worker running) and the sandbox EHR, plus helpers to make visits."""

    gateway_url: str
    sandbox_url: str
    gateway_app: web.Application
    sandbox_app: web.Application
    configuration_id: int
    settings: Settings

    @property
    def fhir_base(self) -> str:
        """The sandbox's FHIR base URL."""
        return f"{self.sandbox_url}/fhir"

    @property
    def pool(self) -> asyncpg.Pool:
        """The gateway's database pool."""
        return self.gateway_app[DB]

    @property
    def faults(self) -> Any:
        """The sandbox's fault switches."""
        from sandbox.appkeys import FAULTS

        return self.sandbox_app[FAULTS]

    async def set_strategy(self, strategy: str) -> None:
        """Choose the configuration's write-back strategy."""
        from presence.writeback import set_strategy

        async with self.pool.acquire() as conn:
            await set_strategy(conn, self.configuration_id, strategy)

    async def visit(self, encounter_id: str = "enc-1", meeting_provider: str = "builtin") -> UUID:
        """A visit on one of the sandbox's Encounters, as a provider launch would create it."""
        return await make_visit(self.pool, self.gateway_app[SEALER], self.configuration_id, self.fhir_base,
                                encounter_id, meeting_provider)

    def encounter(self, encounter_id: str = "enc-1") -> dict[str, Any]:
        """The Encounter as the EHR holds it now."""
        from sandbox.appkeys import STORE

        found = self.sandbox_app[STORE].get("Encounter", encounter_id)
        assert found is not None
        return found

    def put_encounter(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store a new version of an Encounter in the EHR, as the EHR's own users would."""
        from sandbox.appkeys import STORE

        return self.sandbox_app[STORE].put(resource)  # type: ignore[no-any-return]

    async def history(self, encounter_id: str = "enc-1") -> list[dict[str, Any]]:
        """The Encounter's versions through FHIR `_history` (a Backend Services token), oldest first."""
        return await fhir_history(self.gateway_app, self.fhir_base, encounter_id)


async def fhir_history(gateway_app: web.Application, fhir_base: str, encounter_id: str) -> list[dict[str, Any]]:
    """GET {fhir_base}/Encounter/{id}/_history with a client_credentials token; versions oldest first."""
    from gateway.appkeys import SIGNING_KEY

    return await fhir_history_with_key(gateway_app[SIGNING_KEY], fhir_base, encounter_id)


async def fhir_history_with_key(key: SigningKey, fhir_base: str, encounter_id: str,
                                client_id: str = CLIENT_ID) -> list[dict[str, Any]]:
    """The same, for tests whose gateway runs in another process."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        tokens = BackendTokens(EhrClient(http), key)
        token = await tokens.token(BackendClient(0, fhir_base, client_id, "private_key_jwt",
                                                 "system/Encounter.read system/Encounter.write"))
        async with http.get(f"{fhir_base}/Encounter/{encounter_id}/_history",
                            headers={"Authorization": f"Bearer {token.access_token}"}) as r:
            assert r.status == 200, await r.text()
            bundle = await r.json()
    versions = [e["resource"] for e in bundle["entry"]]
    return sorted(versions, key=lambda v: int(v["meta"]["versionId"]))


async def make_visit(pool: asyncpg.Pool, sealer: Sealer, configuration_id: int, fhir_base: str,
                     encounter_id: str, meeting_provider: str = "builtin") -> UUID:
    """Insert a visit for an Encounter (sealed id and keyed digest, as launch does)."""
    async with pool.acquire() as conn:
        visit_id: UUID = await conn.fetchval(
            "INSERT INTO visits (configuration_id, encounter_key, encounter_ref, meeting_provider, meeting_id)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            configuration_id, sealer.lookup("encounter", f"{fhir_base}|{encounter_id}"),
            sealer.seal(encounter_id, "visits.encounter_ref"), meeting_provider, f"room-{uuid.uuid4().hex}")
    return visit_id


@dataclass(frozen=True)
class People:
    """A visit's participants."""

    provider: UUID
    patient: UUID
    guest: UUID


async def people(pool: asyncpg.Pool, visit_id: UUID, practitioner: str = "prac-1") -> People:
    """A clinician (by fhirUser), the patient and an interpreter in a visit."""
    async with pool.acquire() as conn:
        provider = await provider_participant(conn, visit_id, f"http://ehr.example/fhir/Practitioner/{practitioner}")
        patient = await patient_participant(conn, visit_id)
        guest = await add_guest(conn, visit_id, "interpreter")
    return People(provider, patient, guest)


def full_visit(p: People) -> list[tuple[UUID | None, str]]:
    """The events of a whole visit, in order: lobby, admission, connections, the end."""
    return [(p.patient, "lobby_entered"), (p.patient, "device_test_passed"), (p.provider, "connected"),
            (p.patient, "admitted"), (p.patient, "connected"), (p.guest, "connected"),
            (p.guest, "disconnected"), (p.patient, "disconnected"), (p.patient, "connected"),
            (None, "visit_ended")]


async def record_all(pool: asyncpg.Pool, visit_id: UUID, events: Sequence[tuple[UUID | None, str]]) -> None:
    """Append events one by one, each in its own transaction."""
    for participant, kind in events:
        await record_event(pool, visit_id, participant, kind)


async def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> None:
    """Poll an async predicate until it holds; bounded in time and in rounds."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if await predicate():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not reached within {timeout}s")


async def outbox_states(pool: asyncpg.Pool) -> dict[str, int]:
    """How many outbox rows are in each state."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM writeback_outbox GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def drained(pool: asyncpg.Pool, timeout: float = 15.0) -> None:
    """Wait until no outbox row is pending."""
    async def no_pending() -> bool:
        return (await outbox_states(pool)).get("pending", 0) == 0

    await wait_until(no_pending, timeout)


async def attempts(pool: asyncpg.Pool, visit_id: UUID | None = None) -> list[dict[str, Any]]:
    """The attempts audit, oldest first."""
    async with pool.acquire() as conn:
        if visit_id is None:
            rows = await conn.fetch("SELECT * FROM writeback_attempts ORDER BY id")
        else:
            rows = await conn.fetch(Q["attempts_of_visit"], visit_id)
    return [dict(r) for r in rows]


async def visit_events(pool: asyncpg.Pool, visit_id: UUID) -> list[VisitEvent]:
    """The event log of a visit, as the worker reads it."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(Q["visit_events"], visit_id)
    return [VisitEvent(r["id"], r["kind"], r["at"], r["participant_id"], r["role"], r["guest_kind"], r["fhir_user"],
                       None if r["detail"] is None else json.loads(r["detail"]))
            for r in rows]


def assert_history_is_event_log(versions: list[dict[str, Any]], events: list[VisitEvent], strategy: str,
                                meeting_provider: str = "builtin") -> None:
    """Every version after the first is the event log up to some event laid over the version before it,
    the prefixes only grow, no version repeats the one before, and the last holds every event: each event
    was written exactly once, in order. Every version validates against the FHIR models."""
    from sandbox.jsonpatch import apply_patch

    def apply(current: dict[str, Any], upto: int) -> dict[str, Any]:
        changes = derive(events[:upto], meeting_provider)
        if strategy == "fhir-r4-patch":
            return apply_patch(current, patch_operations(current, changes))  # type: ignore[no-any-return]
        return desired_encounter(current, changes)

    for version in versions:
        validate_encounter(version)
    prefix = 0
    for before, after in zip(versions, versions[1:]):
        assert not unchanged(before, after), f"version {after['meta']['versionId']} repeats the one before"
        found = next((n for n in range(prefix, len(events) + 1) if unchanged(apply(before, n), after)), None)
        assert found is not None, f"version {after['meta']['versionId']} is not the event log up to any event"
        prefix = found
    last = versions[-1]
    assert unchanged(apply(last, len(events)), last), "the last version misses events"


@pytest.fixture
async def wb_stack(database_url: str, signing_key_pem: bytes) -> AsyncIterator[WritebackStack]:
    """The shared running stack, with quick write-back settings."""
    async with running_stack(database_url, signing_key_pem, lambda _gateway, _sandbox: dict(QUICK)) as running:
        yield WritebackStack(running.gateway_url, running.sandbox_url, running.gateway_app, running.sandbox_app,
                             running.configuration_id, running.settings)
