"""The write-back worker: presence events, through the transactional outbox, to the FHIR Encounter.

Every gateway process may run it. A worker leases whole visits by their oldest pending outbox row
(`FOR UPDATE SKIP LOCKED`), derives the Encounter from ALL the visit's events, compares it with what the
EHR holds and writes only when something changes, with `If-Match`. So a process killed between a
successful write and marking its rows done costs one extra read, never a second version.

Failures: 429 (after Retry-After), 5xx, 401 and timeouts back off exponentially with jitter; 412 re-reads
and re-applies a bounded number of times; any other 4xx, and anything that exhausts its attempts, goes to
the dead letters (outbox state 'dead', with its reason, a log line and a metric). Every attempt is
recorded in the append-only writeback_attempts table. Reasons hold status codes and OperationOutcome issue
codes only, never a response body.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
import uuid
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from gateway import metrics
from gateway.ehr import EhrClient, EhrResponse, fhir_base_url
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.fhir import valid_id
from gateway.security import Sealer
from gateway.settings import Settings

from gateway.backend_auth import BackendClient, BackendTokens, TokenUnavailable, WritebackDisabled
from . import outbox, webhooks
from .encounter_mapping import EncounterChanges, derive, desired_encounter, patch_operations, unchanged
# For operators, the portal and tests, where they always were.
from .outbox import backlog as backlog, dead_letters as dead_letters, set_strategy as set_strategy

log = logging.getLogger(__name__)

CONFIG_REFRESH = 5.0  # at most this many seconds between re-reads of which configurations write back
CACHE_SIZE = 10_000  # Encounters remembered as we last wrote them, to skip a read before the next write
RETRY_AFTER_MAX = 3600.0
_ETAG = re.compile(r'^(?:W/)?"([^"]+)"$')
_ISSUE_CODE = re.compile(r"^[a-z][a-z-]{0,39}$")
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Retryable(Exception):
    """A failure worth trying again later."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class Permanent(Exception):
    """A failure that will not go away by itself: the events go to the dead letters."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class WritebackConfig:
    """A configuration that writes back, as the worker needs it."""

    id: int
    fhir_base_url: str
    strategy: str
    client: BackendClient


@dataclass(frozen=True)
class Outcome:
    """What one attempt did."""

    kind: str  # "written" | "unchanged"
    up_to_event_id: int
    version_id: str | None
    status: int | None = None


class WritebackMetrics:
    """Counters of attempts, dead letters and configurations turned off."""

    def __init__(self, app: web.Application) -> None:
        reg = metrics.registry(app)
        self.attempts = Counter("visitgate_writeback_attempts", "Write-back attempts by outcome",
                                ["outcome"], registry=reg)
        self.dead_letters = Counter("visitgate_writeback_dead_letters", "Events sent to the dead letters",
                                    ["reason"], registry=reg)
        self.requests = Counter("visitgate_writeback_fhir_requests", "FHIR requests made by write-back",
                                ["method"], registry=reg)
        self.disabled = Counter("visitgate_writeback_disabled", "Configurations whose write-back was turned off",
                                registry=reg)


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before the next attempt: Retry-After when the server gave one, else exponential with jitter."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), RETRY_AFTER_MAX)
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return random.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _issue_codes(answer: EhrResponse) -> str:
    """The OperationOutcome issue codes of an error answer (codes only: diagnostics may hold patient data)."""
    doc = answer.json_or_none()
    if doc is None or doc.get("resourceType") != "OperationOutcome":
        return ""
    codes = [i.get("code") for i in doc.get("issue") or [] if isinstance(i, dict)]
    return ",".join(sorted({c for c in codes if isinstance(c, str) and _ISSUE_CODE.match(c)}))[:120]


def _failure(answer: EhrResponse) -> Exception:
    status = answer.status
    codes = _issue_codes(answer)
    reason = f"fhir_{status}" + (f" {codes}" if codes else "")
    if status == 429:
        return Retryable(reason, status, parse_retry_after(answer.headers.get("Retry-After")))
    if status >= 500 or status in (401, 408):
        return Retryable(reason, status)
    return Permanent(reason, status)


class WritebackWorker:
    """Claims visits from the outbox and writes their Encounters back, per-server concurrency bounded."""

    def __init__(self, pool: asyncpg.Pool, ehr: EhrClient, sealer: Sealer, tokens: BackendTokens,
                 settings: Settings, counters: WritebackMetrics) -> None:
        self._pool = pool
        self._ehr = ehr
        self._sealer = sealer
        self._tokens = tokens
        self._settings = settings
        self._metrics = counters
        self.worker_id = uuid.uuid4()
        # Per FHIR server: visits claimed and not finished (up to twice the concurrency, so the next visit's
        # events are already read when a slot frees), and the slots that bound FHIR requests in flight.
        self._inflight: dict[str, int] = defaultdict(int)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._configs: list[WritebackConfig] = []
        self._configs_read = -CONFIG_REFRESH
        self._cache: OrderedDict[tuple[str, str], tuple[str, dict[str, Any]]] = OrderedDict()

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and work until cancelled; then cancel the work in flight and give its visits back."""
        poll = self._settings.writeback_poll_interval
        outage = 0  # consecutive rounds without the database
        try:
            while True:
                # Cleared before claiming, so a slot freed during the claim wakes the next round at once.
                self._wake.clear()
                try:
                    claimed = await self._claim_round()
                    if outage:
                        log.info("write-back: database back after %d failed round(s)", outage)
                    outage = 0
                except _DB_ERRORS as exc:
                    if not outage:
                        log.warning("write-back: database unavailable (%s); trying again", type(exc).__name__)
                    outage += 1
                    await asyncio.sleep(min(poll * 2 ** min(outage, 10), 2.0))
                    continue
                if not claimed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), poll)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(*_DB_ERRORS):
                async with asyncio.timeout(2):
                    async with self._pool.acquire() as conn:
                        await outbox.release_mine(conn, self.worker_id)

    def poke(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    async def _active_configs(self, conn: asyncpg.Connection) -> list[WritebackConfig]:
        refresh = min(CONFIG_REFRESH, self._settings.writeback_poll_interval * 10)
        if time.monotonic() - self._configs_read >= refresh:
            before = {c.id for c in self._configs}  # taken before the query: a turn-off meanwhile is no return
            rows = await outbox.active_configurations(conn)
            for row in rows:
                if row["id"] not in before:
                    self._tokens.forget(row["id"])  # back on (or new): a remembered refusal no longer holds
            self._configs = [WritebackConfig(r["id"], r["fhir_base_url"], r["writeback_strategy"],
                                             BackendClient(r["id"], r["fhir_base_url"], r["client_id"],
                                                           r["client_auth"], r["writeback_scopes"]))
                             for r in rows]
            self._configs_read = time.monotonic()
        return self._configs

    async def _claim_round(self) -> int:
        settings = self._settings
        claimed = 0
        async with self._pool.acquire() as conn:
            for config in await self._active_configs(conn):
                held = self._inflight[config.fhir_base_url]
                free = 2 * settings.writeback_concurrency - held
                # Claim in batches: a round trip per freed slot would cost more than the slots are idle.
                if free <= 0 or (held and free < max(settings.writeback_concurrency // 2, 1)):
                    continue
                rows = await outbox.claim_visits(conn, config.id, free, settings.writeback_lease_seconds,
                                                 self.worker_id)
                for row in rows:
                    self._inflight[config.fhir_base_url] += 1
                    task = asyncio.create_task(self._work(config, row.event_id, row.visit_id, row.attempts))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                claimed += len(rows)
        return claimed

    # --- one visit --------------------------------------------------------------------------------

    async def _work(self, config: WritebackConfig, head: int, visit_id: UUID, attempt: int) -> None:
        started = time.monotonic()
        settings = self._settings
        up_to = head
        try:
            try:
                if attempt > settings.writeback_max_attempts:
                    raise Permanent("max_attempts")
                # Stop well inside the lease, so another worker never works on the visit at the same time.
                async with asyncio.timeout(settings.writeback_lease_seconds * 0.8):
                    changes, encounter_ref = await self._changes(visit_id)
                    up_to = max(up_to, changes.up_to_event_id)
                    outcome = await self._write(config, changes, encounter_ref)
            except TimeoutError as exc:
                raise Retryable("lease_timeout") from exc
            await self._finish(config, visit_id, outcome, started)
        except Retryable as exc:
            if attempt >= settings.writeback_max_attempts:
                await self._dead(config, visit_id, up_to, f"gave_up: {exc.reason}", exc.status, started)
            else:
                delay = backoff(attempt, settings.writeback_backoff_base, settings.writeback_backoff_max,
                                exc.retry_after)
                await self._retry(config, visit_id, head, up_to, exc, delay, started)
        except Permanent as exc:
            await self._dead(config, visit_id, up_to, exc.reason, exc.status, started)
        except WritebackDisabled as exc:
            await self._disable(config, visit_id, head, up_to, exc.reason, started)
        except _DB_ERRORS as exc:
            # The lease runs out and the visit is taken again; the write, if it happened, will not repeat.
            log.warning("write-back of a visit interrupted by the database (%s)", type(exc).__name__)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("write-back failed unexpectedly; the visit will be retried after its lease")
        finally:
            self._inflight[config.fhir_base_url] -= 1
            self._wake.set()

    async def _changes(self, visit_id: UUID) -> tuple[EncounterChanges, bytes]:
        async with self._pool.acquire() as conn:
            found = await outbox.visit_log(conn, visit_id)
        if found is None:
            raise Permanent("visit_missing")
        return derive(found.events, found.meeting_provider), found.encounter_ref

    async def _write(self, config: WritebackConfig, changes: EncounterChanges, encounter_ref: bytes) -> Outcome:
        encounter_id = self._sealer.unseal(encounter_ref, "visits.encounter_ref")
        if not valid_id(encounter_id):
            raise Permanent("encounter_id_invalid")
        try:
            token = await self._tokens.token(config.client)
        except TokenUnavailable as exc:
            raise Retryable(exc.reason) from exc
        url = f"{fhir_base_url(config.fhir_base_url) or config.fhir_base_url}/Encounter/{encounter_id}"
        key = (config.fhir_base_url, encounter_id)
        headers = {"Authorization": f"Bearer {token.access_token}", "Accept": "application/fhir+json"}
        for _ in range(self._settings.writeback_max_conflict_rounds):
            cached = self._cache.get(key)
            version, current = cached if cached else await self._read(config.fhir_base_url, url, headers)
            if config.strategy == "fhir-r4-patch":
                ops = patch_operations(current, changes)
                if not ops and cached:
                    self._cache.pop(key, None)  # never skip a write on our memory alone: read and look again
                    continue
                if not ops:
                    return Outcome("unchanged", changes.up_to_event_id, version)
                body, content_type, method = json.dumps(ops).encode(), "application/json-patch+json", "PATCH"
            else:
                desired = desired_encounter(current, changes)
                if unchanged(current, desired) and cached:
                    self._cache.pop(key, None)
                    continue
                if unchanged(current, desired):
                    return Outcome("unchanged", changes.up_to_event_id, version)
                body, content_type, method = json.dumps(desired).encode(), "application/fhir+json", "PUT"
            answer = await self._send(config.fhir_base_url, method, url, {
                **headers, "Content-Type": content_type, "If-Match": f'W/"{version}"'}, body)
            if answer.status in (200, 201):
                written = self._remember(key, answer)
                return Outcome("written", changes.up_to_event_id, written, answer.status)
            self._cache.pop(key, None)
            if answer.status == 412:
                continue  # someone else wrote in between: read again and re-apply
            if answer.status == 401:
                self._tokens.forget(config.id)
            raise _failure(answer)
        raise Retryable("fhir_412 conflict_storm", 412)

    async def _read(self, server: str, url: str, headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
        answer = await self._send(server, "GET", url, headers, None)
        if answer.status != 200:
            raise _failure(answer)
        resource = answer.json_or_none()
        if resource is None:
            raise Retryable("fhir_malformed")
        if resource.get("resourceType") != "Encounter":
            raise Permanent("fhir_not_an_encounter")
        version = _version_of(answer.headers, resource)
        if version is None:
            raise Permanent("fhir_no_version")  # without a version there is no safe If-Match
        return version, resource

    async def _send(self, server: str, method: str, url: str, headers: dict[str, str],
                    body: bytes | None) -> EhrResponse:
        slots = self._slots.get(server)
        if slots is None:
            slots = self._slots[server] = asyncio.Semaphore(self._settings.writeback_concurrency)
        self._metrics.requests.labels(method).inc()
        try:
            # Only the request itself holds one of the server's slots: the database work and building the
            # body happen outside, so a slot is never idle while we compute.
            async with slots:
                answer = await self._ehr.request(method, url, what="fhir", headers=headers, data=body,
                                                 timeout=self._settings.writeback_request_timeout)
        except UpstreamTimeout as exc:
            raise Retryable("fhir_timeout") from exc
        except UpstreamUnavailable as exc:
            raise Retryable(exc.reason) from exc
        except UpstreamError as exc:
            if exc.reason.endswith(("_redirect", "_too_large", "_bad_url")):
                # A redirect elsewhere, an answer over the cap, a URL we refuse: no retry changes those.
                raise Permanent(exc.reason, exc.upstream_status) from exc
            raise Retryable(exc.reason, exc.upstream_status) from exc  # an answer cut short, say
        return answer

    def _remember(self, key: tuple[str, str], answer: EhrResponse) -> str | None:
        resource = answer.json_or_none()
        if resource is None:
            return None
        version = _version_of(answer.headers, resource)
        if version is not None and resource.get("resourceType") == "Encounter":
            self._cache[key] = (version, resource)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return version

    # --- recording outcomes -----------------------------------------------------------------------

    async def _attempt(self, conn: asyncpg.Connection, config: WritebackConfig, visit_id: UUID, up_to: int,
                       outcome: str, status: int | None, reason: str | None, version: str | None,
                       started: float) -> None:
        await outbox.record_attempt(conn, visit_id, config.id, up_to, config.strategy, outcome, status, reason,
                                    version, int((time.monotonic() - started) * 1000), self._settings.time_zone)
        self._metrics.attempts.labels(outcome).inc()

    async def _finish(self, config: WritebackConfig, visit_id: UUID, outcome: Outcome, started: float) -> None:
        async with self._pool.acquire() as conn:
            await outbox.finish_visit(conn, visit_id, outcome.up_to_event_id, config.id, config.strategy,
                                      outcome.kind, outcome.status, outcome.version_id,
                                      int((time.monotonic() - started) * 1000))
        self._metrics.attempts.labels(outcome.kind).inc()

    async def _retry(self, config: WritebackConfig, visit_id: UUID, head: int, up_to: int, exc: Retryable,
                     delay: float, started: float) -> None:
        log.info("write-back of a visit will be retried in %.1fs: %s", delay, exc.reason)
        async with self._pool.acquire() as conn, conn.transaction():
            await outbox.retry_visit(conn, head, delay, exc.reason)
            await self._attempt(conn, config, visit_id, up_to, "retry", exc.status, exc.reason, None, started)

    async def _dead(self, config: WritebackConfig, visit_id: UUID, up_to: int, reason: str, status: int | None,
                    started: float) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            dead = await outbox.dead_letter_visit(conn, visit_id, up_to, reason)
            await self._attempt(conn, config, visit_id, up_to, "dead", status, reason, None, started)
            await webhooks.writeback_failed(conn, visit_id, up_to, reason)
        self._metrics.dead_letters.labels(reason.split(" ", 1)[0].split(":", 1)[0]).inc(dead)
        log.warning("write-back gave up on %d event(s) of configuration %d: %s", dead, config.id, reason)

    async def _disable(self, config: WritebackConfig, visit_id: UUID, head: int, up_to: int, reason: str,
                       started: float) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            turned_off = await outbox.disable(conn, config.id, reason)
            await outbox.release_visit(conn, head)
            await self._attempt(conn, config, visit_id, up_to, "disabled", None, reason, None, started)
        self._configs = [c for c in self._configs if c.id != config.id]
        if turned_off:
            self._metrics.disabled.inc()
            log.warning("write-back turned off for configuration %d: %s", config.id, reason)


def _version_of(headers: Any, resource: dict[str, Any]) -> str | None:
    etag = headers.get("ETag") if headers is not None else None
    match = _ETAG.match(etag.strip()) if isinstance(etag, str) else None
    if match:
        return match.group(1)
    version = (resource.get("meta") or {}).get("versionId")
    return version if isinstance(version, str) and version else None
