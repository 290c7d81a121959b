"""The provider view's FHIR reads, and starting them at the launch's callback so the view does not wait.

The view needs the Encounter and the Patient (in parallel), then the Appointment the Encounter names: two
EHR round trips one after the other. They can start as soon as the callback holds the clinician's token, so
the callback's own database work, its redirect and the view's session lookup happen while the EHR answers
instead of before it asks. What was read lives only in this process's memory, for the one page it was read
for, and for seconds: a view that finds no reads started for its handle (another process, a renewed handle,
a reload) reads for itself, as it always did.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.errors import FhirError
from gateway.fhir import FhirClient, parse_reference

log = logging.getLogger(__name__)

STARTED_READS_TTL = 30.0  # seconds a started read waits for its view (the redirect takes milliseconds)
STARTED_READS_MAX = 1000  # launches in flight in one process; beyond it the oldest reads are dropped


@dataclass
class ViewReads:
    """What the provider view read from FHIR for one page: resources (or None) and the reasons of failures."""

    encounter: dict[str, Any] | None = None
    patient: dict[str, Any] | None = None
    appointment: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


async def _read_or_note(fhir: FhirClient, resource_type: str, logical_id: str | None,
                        problems: list[str]) -> dict[str, Any] | None:
    if logical_id is None:
        return None
    try:
        return await fhir.read(resource_type, logical_id)
    except FhirError as exc:
        log.info("provider view could not read %s: %s", resource_type, exc.reason)
        problems.append(exc.reason)
        return None


async def read_for_view(fhir: FhirClient, encounter_id: str, patient_id: str | None) -> ViewReads:
    """The Encounter and Patient (in parallel), then the Appointment the Encounter names."""
    reads = ViewReads()
    reads.encounter, reads.patient = await asyncio.gather(
        _read_or_note(fhir, "Encounter", encounter_id, reads.problems),
        _read_or_note(fhir, "Patient", patient_id, reads.problems))
    if reads.encounter is not None:
        listed = reads.encounter.get("appointment")
        refs: list[Any] = listed if isinstance(listed, list) else []
        appointment_id = next((parse_reference(r.get("reference"), "Appointment") for r in refs
                               if isinstance(r, dict)), None)
        reads.appointment = await _read_or_note(fhir, "Appointment", appointment_id, reads.problems)
    return reads


def patient_name(patient: dict[str, Any]) -> str:
    """How a Patient resource names its patient (official or usual name first), for a page to show now."""
    names = patient.get("name")
    if not isinstance(names, list):
        return "(no name on record)"
    official = [n for n in names if isinstance(n, dict) and n.get("use") in (None, "official", "usual")]
    for name in official or [n for n in names if isinstance(n, dict)]:
        if isinstance(name.get("text"), str):
            return str(name["text"])
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        family = name.get("family")
        text = " ".join([*given, family if isinstance(family, str) else ""]).strip()
        if text:
            return text
    return "(no name on record)"


class StartedReads:
    """Reads started by callbacks, by the hash of the handle their view will be opened with; each taken once."""

    def __init__(self) -> None:
        self._started: OrderedDict[bytes, tuple[float, asyncio.Task[ViewReads]]] = OrderedDict()

    def start(self, handle_hash: bytes, fhir: FhirClient, encounter_id: str, patient_id: str | None) -> None:
        """Begin the view's reads now; the view that comes with this handle takes them."""
        self._expire()
        while len(self._started) >= STARTED_READS_MAX:
            _, (_, oldest) = self._started.popitem(last=False)
            oldest.cancel()
        task = asyncio.create_task(read_for_view(fhir, encounter_id, patient_id))
        task.add_done_callback(_quiet)
        self._started[handle_hash] = (time.monotonic() + STARTED_READS_TTL, task)

    def drop(self, handle_hash: bytes) -> None:
        """Forget (and stop) reads whose launch did not get as far as its view."""
        found = self._started.pop(handle_hash, None)
        if found is not None:
            found[1].cancel()

    def take(self, handle_hash: bytes) -> asyncio.Task[ViewReads] | None:
        """The reads started for this handle, once; None when there are none (or they are too old)."""
        self._expire()
        found = self._started.pop(handle_hash, None)
        return found[1] if found is not None else None

    def _expire(self) -> None:
        now = time.monotonic()
        while self._started:
            handle_hash, (expires_at, task) = next(iter(self._started.items()))
            if expires_at > now:
                return
            del self._started[handle_hash]
            task.cancel()

    def close(self) -> None:
        """Stop every read still waiting for its view (the process is stopping)."""
        for _, task in self._started.values():
            task.cancel()
        self._started.clear()


def _quiet(task: asyncio.Task[ViewReads]) -> None:
    # read_for_view turns FHIR failures into problems; anything else (a cancellation, a bug) must not be
    # reported as "exception never retrieved" when no view comes to take the task.
    if not task.cancelled():
        task.exception()


STARTED_READS = web.AppKey("started_reads", StartedReads)


async def started_reads_ctx(app: web.Application) -> AsyncIterator[None]:
    """Hold this process's started reads for its life, and stop those still waiting at its end."""
    app[STARTED_READS] = StartedReads()
    try:
        yield
    finally:
        app[STARTED_READS].close()


async def reads_for(app: web.Application, handle_hash: bytes, fhir: FhirClient, encounter_id: str,
                    patient_id: str | None) -> ViewReads:
    """The view's reads: those its callback started, or fresh ones."""
    task = app[STARTED_READS].take(handle_hash)
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError):
            if not task.cancelled():
                try:
                    return await asyncio.shield(task)
                except Exception:  # a started read that failed oddly: read again rather than fail the page
                    log.warning("a started provider-view read failed; reading again")
    return await read_for_view(fhir, encounter_id, patient_id)
