"""The sandbox EHR's scheduling: book, reschedule and cancel virtual appointments from its pages.

Each change is stored as a new version of the FHIR Appointment (so a `_lastUpdated` search sees it) and sent
as an SIU message over MLLP to the interface address set in the settings (`siu_target`, "host:port"), as a
hospital's interface engine would; the ACK's code is kept for the page and the tests.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from .appkeys import SETTINGS, STORE
from .seed import ACT_CODE_SYSTEM, SERVICE_TYPE_SYSTEM
from .siu import send_siu, siu_message

log = logging.getLogger(__name__)


@dataclass
class SiuFeed:
    """Where SIU messages go (None: nowhere) and the ACK codes that came back, newest last."""

    target: tuple[str, int] | None = None
    acks: list[str] = field(default_factory=list)


SIU_FEED = web.AppKey("sandbox_siu_feed", SiuFeed)


def _target(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    return host, int(port)


async def _send(app: web.Application, trigger: str, appointment: dict[str, Any]) -> str | None:
    """Send the appointment's SIU message, if there is a target; the ACK code, or None when not sent."""
    feed = app[SIU_FEED]
    if feed.target is None:
        return None
    store = app[STORE]
    patient_id = next((p["actor"]["reference"].split("/", 1)[1] for p in appointment.get("participant", [])
                       if (p.get("actor") or {}).get("reference", "").startswith("Patient/")), None)
    patient = store.get("Patient", patient_id) if patient_id else None
    encounter = next((e["id"] for e in store.all("Encounter")
                      if any(a.get("reference") == f"Appointment/{appointment['id']}"
                             for a in e.get("appointment", []))), None)
    try:
        code = await send_siu(*feed.target, siu_message(trigger, appointment, patient=patient,
                                                        encounter_id=encounter))
    except (OSError, TimeoutError) as exc:
        log.warning("SIU %s for %s not delivered (%s)", trigger, appointment["id"], type(exc).__name__)
        code = "unsent"
    feed.acks.append(code)
    return code


def _start(form: Any) -> datetime:
    raw = str(form.get("start", ""))
    try:
        start = datetime.fromisoformat(raw)
    except ValueError:
        raise web.HTTPBadRequest(text="start must be a date and time") from None
    return start if start.tzinfo is not None else start.astimezone()


def _answer(request: web.Request, appointment: dict[str, Any], ack: str | None) -> web.Response:
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"appointment": appointment["id"], "ack": ack})
    raise web.HTTPSeeOther("/ehr/appointments")


async def book(request: web.Request) -> web.Response:
    """POST /ehr/appointments: book a virtual appointment (and its planned Encounter), send SIU S12."""
    form = await request.post()
    store = request.app[STORE]
    patient, practitioner = str(form.get("patient", "")), str(form.get("practitioner", "prac-1"))
    if store.get("Patient", patient) is None or store.get("Practitioner", practitioner) is None:
        raise web.HTTPBadRequest(text="unknown patient or practitioner")
    try:
        minutes = int(str(form.get("minutes", "30")))
    except ValueError:
        raise web.HTTPBadRequest(text="minutes must be a number") from None
    start = _start(form)
    appointment_id = f"appt-{uuid.uuid4().hex[:12]}"
    appointment = store.put({
        "resourceType": "Appointment", "id": appointment_id, "status": "booked",
        "appointmentType": {"text": "Virtual visit"},
        "serviceType": [{"coding": [{"system": SERVICE_TYPE_SYSTEM, "code": "video-visit", "display": "Video visit"}],
                         "text": "Video visit"}],
        "start": start.isoformat(), "end": (start + timedelta(minutes=minutes)).isoformat(),
        "minutesDuration": minutes,
        "participant": [{"actor": {"reference": f"Patient/{patient}"}, "required": "required", "status": "accepted"},
                        {"actor": {"reference": f"Practitioner/{practitioner}"}, "required": "required",
                         "status": "accepted"}]})
    store.put({"resourceType": "Encounter", "id": f"enc-{appointment_id[5:]}", "status": "planned",
               "class": {"system": ACT_CODE_SYSTEM, "code": "VR", "display": "virtual"},
               "subject": {"reference": f"Patient/{patient}"},
               "participant": [{"individual": {"reference": f"Practitioner/{practitioner}"}}],
               "appointment": [{"reference": f"Appointment/{appointment_id}"}],
               "period": {"start": start.isoformat()}})
    return _answer(request, appointment, await _send(request.app, "S12", appointment))


def _existing(request: web.Request) -> dict[str, Any]:
    found = request.app[STORE].get("Appointment", request.match_info["appointment_id"])
    if found is None:
        raise web.HTTPNotFound(text="no such appointment")
    return dict(found)


async def reschedule(request: web.Request) -> web.Response:
    """POST /ehr/appointments/{id}/reschedule: move it to `start` (same length), send SIU S13."""
    form = await request.post()
    appointment = _existing(request)
    start = _start(form)
    minutes = int(appointment.get("minutesDuration", 30))
    appointment.update(start=start.isoformat(), end=(start + timedelta(minutes=minutes)).isoformat(),
                       status="booked")
    stored = request.app[STORE].put(appointment)
    return _answer(request, stored, await _send(request.app, "S13", stored))


async def cancel(request: web.Request) -> web.Response:
    """POST /ehr/appointments/{id}/cancel: cancel it, send SIU S15."""
    appointment = _existing(request)
    appointment["status"] = "cancelled"
    stored = request.app[STORE].put(appointment)
    return _answer(request, stored, await _send(request.app, "S15", stored))


async def appointments_page(request: web.Request) -> web.Response:
    """GET /ehr/appointments: every appointment, with forms to book, move and cancel."""
    store = request.app[STORE]
    rows = sorted(store.all("Appointment"), key=lambda a: a.get("start", ""))
    return aiohttp_jinja2.render_template("appointments.html", request, {
        "rows": rows, "patients": [(p["id"], " ".join((p.get("name") or [{}])[0].get("given", [])))
                                   for p in store.all("Patient")],
        "acks": request.app[SIU_FEED].acks[-5:], "target": request.app[SIU_FEED].target})


def setup_routes(app: web.Application) -> None:
    """Add the scheduling pages; SIU goes to the settings' siu_target (tests may set SIU_FEED's target)."""
    app[SIU_FEED] = SiuFeed(target=_target(app[SETTINGS].siu_target))
    app.router.add_get("/ehr/appointments", appointments_page)
    app.router.add_post("/ehr/appointments", book)
    app.router.add_post("/ehr/appointments/{appointment_id}/reschedule", reschedule)
    app.router.add_post("/ehr/appointments/{appointment_id}/cancel", cancel)
