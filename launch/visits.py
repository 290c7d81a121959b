"""Finding or creating an encounter's visit and its meeting: the one way both launches open a visit."""
from __future__ import annotations

import logging

import asyncpg
from aiohttp import web

from gateway.appkeys import MEETINGS, SEALER
from gateway.errors import LaunchRefused

from . import store

log = logging.getLogger(__name__)


async def open_visit(conn: asyncpg.Connection, app: web.Application, config: store.LaunchConfiguration,
                     encounter: str, patient: str | None, *, same_patient: bool = False,
                     department: str | None = None) -> store.Visit:
    """The visit of an encounter (created if new) with its meeting (created if it has none yet).

    Safe under concurrent launches of one encounter: they meet on one visit, and the first meeting named
    stands. With same_patient, an encounter whose visit was opened for another patient is refused
    (LaunchRefused `patient_mismatch`) before anything more is made for it. Call it outside a transaction:
    creating the meeting may call out to the meeting service.
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
    if visit.meeting_id is None:
        meeting = await app[MEETINGS][visit.meeting_provider].create_meeting(str(visit.id))
        named = await store.set_meeting(conn, visit.id, meeting.meeting_id)
        visit = store.Visit(visit.id, named, visit.meeting_provider, visit.patient_ref)
    return visit
