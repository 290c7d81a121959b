"""Finding or creating an encounter's visit and its meeting: the one way both launches open a visit."""
from __future__ import annotations

import logging

import asyncpg
from aiohttp import web

from gateway import teams
from gateway.appkeys import MEETINGS, SEALER
from gateway.errors import LaunchRefused

from . import store
from .teams import STARTED_MEETINGS

log = logging.getLogger(__name__)


async def open_visit(conn: asyncpg.Connection, app: web.Application, config: store.LaunchConfiguration,
                     encounter: str, patient: str | None, *, same_patient: bool = False,
                     department: str | None = None, fhir_user: str | None = None) -> store.Visit:
    """The visit of an encounter (created if new) with its meeting (created if it has none yet).

    Safe under concurrent launches of one encounter: they meet on one visit, and the first meeting named
    stands. With same_patient, an encounter whose visit was opened for another patient is refused
    (LaunchRefused `patient_mismatch`) before anything more is made for it. Call it outside a transaction:
    creating the meeting may call out to the meeting service.

    A Teams meeting is organized by the clinician (`fhir_user`, linked to their Microsoft 365 account); it is
    started here and awaited by the provider view (launch.teams). Without that link (a patient's launch, a
    clinician's first Teams visit) or when Graph refuses or stays down, the view says what to do (sign in,
    retry, ask the admin).
    """
    sealer = app[SEALER]
    visit = await store.find_or_create_visit(
        conn, configuration_id=config.id,
        encounter_key=sealer.lookup("encounter", f"{config.fhir_base_url}|{encounter}"),
        encounter_ref=sealer.seal(encounter, "visits.encounter_ref"),
        patient_ref=sealer.seal(patient, "visits.patient_ref") if patient else None,
        meeting_provider=config.meeting_provider, department=department)
    if same_patient and visit.patient_ref is not None and \
            sealer.unseal(visit.patient_ref, "visits.patient_ref") != patient:
        raise LaunchRefused("the encounter belongs to another patient", reason="patient_mismatch")
    if visit.meeting_id is None and visit.meeting_provider == teams.PROVIDER:
        return await _open_teams_meeting(conn, app, config, visit, fhir_user)
    if visit.meeting_id is None:
        meeting = await app[MEETINGS][visit.meeting_provider].create_meeting(str(visit.id))
        named = await store.set_meeting(conn, visit.id, meeting.meeting_id)
        visit = store.Visit(visit.id, named, visit.meeting_provider, visit.patient_ref)
    return visit


async def _open_teams_meeting(conn: asyncpg.Connection, app: web.Application, config: store.LaunchConfiguration,
                              visit: store.Visit, fhir_user: str | None) -> store.Visit:
    found = await teams.organizer_for(conn, app[SEALER], config.id, fhir_user) if fhir_user else None
    organisation_id, tenant, oid = found if found is not None else (0, None, None)
    if tenant is None or oid is None:
        return visit  # no Teams settings, or the clinician has not signed in to Microsoft 365 yet
    # Made in the background, beside the view's FHIR reads (started just before): the redirect to the view
    # does not wait for Graph, the view does (launch.teams), and a Graph failure is the view's to explain.
    app[STARTED_MEETINGS].start(app, visit.id, teams.Organizer(organisation_id, tenant, oid))
    return visit
