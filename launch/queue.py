"""The clinician's clinic queue page (/provider/{handle}/queue) and its patient names.

The page is opened from the provider view, in the EHR's frame, with the same handle and browser binding; its
script watches the queue over the presence socket (presence.queue). Patient names are not on the socket:
the page asks /provider/{handle}/queue/patients, which reads each visit's Patient from FHIR now, with the
clinician's own access token from their session, and answers the names to this page only. Nothing of them
is kept or logged; a Patient that cannot be read is answered as a reason code.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

import aiohttp_jinja2
from aiohttp import web

from gateway import clinic_queue
from gateway.appkeys import DB, EHR, SEALER, SETTINGS
from gateway.errors import BadRequest, FhirError, SessionExpired
from gateway.fhir import FhirClient
from gateway.sessions import renew_after
from gateway.web import serves_json

from .page_strings import for_page
from .room import no_store
from .sessions import provider_session
from .view_reads import patient_name

log = logging.getLogger(__name__)

PATIENT_READS_AT_ONCE = 6  # FHIR reads in flight for one queue (the EHR's rate limits are per token)
MAX_ASKED = 50  # visits one request may name


async def _owner(request: web.Request) -> tuple[Any, clinic_queue.QueueOwner]:
    session = await provider_session(request)
    async with request.app[DB].acquire() as conn:
        owner = await clinic_queue.queue_owner(conn, session.visit_id, session.fhir_user,
                                               request.app[SETTINGS].time_zone)
    if owner is None:
        raise SessionExpired("This visit page has expired. Open the visit again from the EHR.")
    return session, owner


async def queue_page(request: web.Request) -> web.Response:
    """GET /provider/{handle}/queue: today's queue of the clinician's visits (and their department's)."""
    session, owner = await _owner(request)
    handle = request.match_info["handle"]
    context = {
        "department": owner.department if owner.department_allowed else None,
        "visit_url": str(request.app.router["provider_view"].url_for(handle=handle)),
        "time_zone": owner.time_zone,
        "renew_in": renew_after(request.app[SETTINGS].provider_handle_ttl, session.handle_expires_in),
        **for_page(request, "queue"),
    }
    return no_store(aiohttp_jinja2.render_template("queue.html", request, context))


def _asked(request: web.Request) -> set[UUID] | None:
    values = request.query.getall("visit", [])
    if not values:
        return None
    if len(values) > MAX_ASKED:
        raise BadRequest("too many visits asked for", reason="invalid_visit")
    try:
        return {UUID(v) for v in values if len(v) <= 36}
    except ValueError:
        raise BadRequest("a visit id is malformed", reason="invalid_visit") from None


@serves_json
async def queue_patients(request: web.Request) -> web.Response:
    """GET /provider/{handle}/queue/patients?scope=own|department[&visit=…]: the patient of each visit in the
    clinician's queue, read live from FHIR with their own token, as JSON for the queue page only."""
    scope = request.query.get("scope", "own")
    if scope not in clinic_queue.SCOPES:
        raise BadRequest("unknown queue", reason="invalid_scope")
    asked = _asked(request)
    session, owner = await _owner(request)
    async with request.app[DB].acquire() as conn:
        visits = await clinic_queue.queue_visits(conn, owner, scope)
    sealer = request.app[SEALER]
    fhir = FhirClient(request.app[EHR], session.fhir_base_url,
                      sealer.unseal(session.access_token, "provider_sessions.access_token"))
    limit = asyncio.Semaphore(PATIENT_READS_AT_ONCE)

    async def one(visit: clinic_queue.QueueVisit) -> dict[str, str | None]:
        answer: dict[str, str | None] = {"visit": str(visit.id), "patient": None, "problem": None}
        if visit.patient_ref is None:
            answer["problem"] = "no_patient"
            return answer
        try:
            async with limit:
                patient = await fhir.read("Patient", sealer.unseal(visit.patient_ref, "visits.patient_ref"))
        except FhirError as exc:
            log.info("clinic queue could not read a Patient: %s", exc.reason)
            answer["problem"] = exc.reason
            return answer
        answer["patient"] = patient_name(patient)
        return answer

    wanted = [v for v in visits if asked is None or v.id in asked]
    found = await asyncio.gather(*(one(v) for v in wanted))
    return no_store(web.json_response({"scope": scope, "visits": list(found)}))
