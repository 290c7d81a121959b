"""The sandbox EHR's pages: a clinician's schedule with the app embedded, and a patient portal.

The clinician page mimics an EHR's embedded activity (Epic Hyperspace, Oracle Health PowerChart): the
schedule for today, and for a visit the EHR's own banner with the SMART app in an iframe below it. The
portal mimics MyChart: it sends the whole window to the gateway's patient launch URL.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from .appkeys import SETTINGS, STORE
from .launches import create_launch
from .store import Resource

# What the schedule and the portal list: visits that started up to 12 hours ago or start within 18.
CLINIC_DAY_BEFORE = timedelta(hours=12)
CLINIC_DAY_AFTER = timedelta(hours=18)

SMART_STYLE = {
    "color_background": "#f6f7f9",
    "color_error": "#b3261e",
    "color_highlight": "#0b6bcb",
    "color_modal_backdrop": "rgba(0, 0, 0, 0.45)",
    "color_success": "#1e7d32",
    "color_text": "#1c1f23",
    "dim_border_radius": "6px",
    "dim_font_size": "16px",
    "dim_spacing_size": "16px",
    "font_family_body": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    "font_family_heading": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
}


DEFAULT_DEPARTMENT = "family-medicine"
"""The clinic's department the sandbox names in provider launches, as Epic's integration record can add it."""


def launch_url(base: str, iss: str, launch: str, department: str | None = None) -> str:
    """The app's launch URL with iss and launch (and a department, if given) added to whatever query it
    already has."""
    sep = "&" if "?" in base else "?"
    params = {"iss": iss, "launch": launch}
    if department:
        params["department"] = department
    return base + sep + urlencode(params)


def _name(resource: Resource | None) -> str:
    if not resource:
        return "Unknown"
    names = resource.get("name") or [{}]
    first = names[0]
    return str(first.get("text") or " ".join([*first.get("given", []), first.get("family", "")]).strip() or resource["id"])


def _ref_id(reference: str, rtype: str) -> str | None:
    prefix = rtype + "/"
    return reference[len(prefix):] if reference.startswith(prefix) else None


def _participant(appointment: Resource, rtype: str) -> str | None:
    """The logical id of the appointment's first participant of a type."""
    for p in appointment.get("participant", []):
        found = _ref_id((p.get("actor") or {}).get("reference", ""), rtype)
        if found:
            return found
    return None


def _clinic_day_appointments(request: web.Request, rtype: str, person_id: str) -> list[Resource]:
    """The appointments of the clinic day around now where the person takes part, by start time.

    A window around now rather than the calendar date: the seeded schedule starts at the current half hour,
    so late in the evening it runs past midnight."""
    now = datetime.now().astimezone()
    store = request.app[STORE]
    return sorted(
        (
            a for a in store.all("Appointment")
            if _within(a.get("start", ""), now - CLINIC_DAY_BEFORE, now + CLINIC_DAY_AFTER)
            and any((p.get("actor") or {}).get("reference") == f"{rtype}/{person_id}" for p in a.get("participant", []))
        ),
        key=lambda a: a.get("start", ""),
    )


def _within(start: str, earliest: datetime, latest: datetime) -> bool:
    try:
        when = datetime.fromisoformat(start)
    except ValueError:
        return False
    return when.tzinfo is not None and earliest <= when <= latest


def _encounter_for(request: web.Request, appointment_id: str) -> str | None:
    for enc in request.app[STORE].all("Encounter"):
        if any(a.get("reference") == f"Appointment/{appointment_id}" for a in enc.get("appointment", [])):
            return str(enc["id"])
    return None


def _time(start: str) -> str:
    try:
        return datetime.fromisoformat(start).strftime("%H:%M")
    except ValueError:
        return start


def _not_found(request: web.Request, message: str) -> web.Response:
    return aiohttp_jinja2.render_template("error.html", request, {"title": "Not found", "message": message}, status=404)


async def index(request: web.Request) -> web.Response:
    """GET /: links to the clinician's EHR and the patient portal."""
    store = request.app[STORE]
    context: dict[str, Any] = {
        "practitioners": [(p["id"], _name(p)) for p in store.all("Practitioner")],
        "patients": [(p["id"], _name(p)) for p in store.all("Patient")],
    }
    return aiohttp_jinja2.render_template("index.html", request, context)


async def ehr_schedule(request: web.Request) -> web.Response:
    """GET /ehr?practitioner=: the clinician's schedule for today."""
    store = request.app[STORE]
    practitioners = store.all("Practitioner")
    practitioner_id = request.query.get("practitioner") or (practitioners[0]["id"] if practitioners else "")
    practitioner = store.get("Practitioner", practitioner_id)
    if practitioner is None:
        return _not_found(request, "No such clinician in this EHR.")
    rows = []
    for appt in _clinic_day_appointments(request, "Practitioner", practitioner_id):
        patient_id = _participant(appt, "Patient")
        rows.append(
            {
                "id": appt["id"],
                "time": _time(appt.get("start", "")),
                "patient": _name(store.get("Patient", patient_id) if patient_id else None),
                "kind": (appt.get("appointmentType") or {}).get("text", "Visit"),
                "href": f"/ehr/visit/{appt['id']}?" + urlencode({"practitioner": practitioner_id}),
            }
        )
    context = {
        "practitioner": _name(practitioner),
        "practitioners": [(p["id"], _name(p)) for p in practitioners],
        "practitioner_id": practitioner_id,
        "rows": rows,
        "today": datetime.now().astimezone().strftime("%A %d %B %Y"),
        "portal_sign_in_url": request.app[SETTINGS].portal_sign_in_url,
    }
    return aiohttp_jinja2.render_template("ehr.html", request, context)


async def ehr_visit(request: web.Request) -> web.Response:
    """GET /ehr/visit/{appointment_id}: the EHR's chrome with the SMART app launched in an iframe."""
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    appointment = store.get("Appointment", request.match_info["appointment_id"])
    if appointment is None:
        return _not_found(request, "No such appointment.")
    practitioner_id = request.query.get("practitioner") or _participant(appointment, "Practitioner")
    if not practitioner_id or store.get("Practitioner", practitioner_id) is None:
        return _not_found(request, "No such clinician in this EHR.")
    patient_id = _participant(appointment, "Patient")
    patient = store.get("Patient", patient_id) if patient_id else None
    # SMART's need_patient_banner: true when the EHR shows no banner of its own. `?banner=ehr` plays an EHR
    # that shows one (as Hyperspace usually does); by default the app must show it.
    ehr_banner = request.query.get("banner") == "ehr"
    launch = create_launch(
        request.app,
        practitioner_id=practitioner_id,
        patient_id=patient_id,
        encounter_id=_encounter_for(request, appointment["id"]),
        appointment_id=appointment["id"],
        need_patient_banner=not ehr_banner,
    )
    mrn = next((i.get("value") for i in (patient or {}).get("identifier", [])), "")
    context = {
        "patient": _name(patient),
        "birth_date": (patient or {}).get("birthDate", ""),
        "mrn": mrn,
        "time": _time(appointment.get("start", "")),
        "practitioner_id": practitioner_id,
        "ehr_banner": ehr_banner,
        # `?department=` plays another clinic of the same EHR; `?department=` empty, an EHR that sends none.
        "app_src": launch_url(settings.app_launch_url, settings.fhir_base, launch,
                              request.query.get("department", DEFAULT_DEPARTMENT)[:64]),
    }
    return aiohttp_jinja2.render_template("visit.html", request, context)


async def portal(request: web.Request) -> web.Response:
    """GET /portal?patient=: the patient's visits today, each with a "Begin visit" button."""
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    patients = store.all("Patient")
    patient_id = request.query.get("patient") or (patients[0]["id"] if patients else "")
    patient = store.get("Patient", patient_id)
    if patient is None:
        return _not_found(request, "No such patient.")
    rows = []
    for appt in _clinic_day_appointments(request, "Patient", patient_id):
        practitioner_id = _participant(appt, "Practitioner")
        rows.append(
            {
                "time": _time(appt.get("start", "")),
                "practitioner": _name(store.get("Practitioner", practitioner_id) if practitioner_id else None),
                "href": f"/portal/visit/{appt['id']}?" + urlencode({"patient": patient_id}),
            }
        )
    context = {
        "patient": _name(patient),
        "rows": rows,
        "can_launch": settings.patient_launch_url is not None,
        "today": datetime.now().astimezone().strftime("%A %d %B %Y"),
    }
    return aiohttp_jinja2.render_template("portal.html", request, context)


async def portal_visit(request: web.Request) -> web.Response:
    """GET /portal/visit/{appointment_id}: create a patient launch and send the window to the gateway."""
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    if settings.patient_launch_url is None:
        return _not_found(request, "Video visits are not set up for this portal.")
    appointment = store.get("Appointment", request.match_info["appointment_id"])
    patient_id = request.query.get("patient", "")
    if appointment is None or _participant(appointment, "Patient") != patient_id:
        return _not_found(request, "No such appointment for this patient.")
    launch = create_launch(
        request.app,
        practitioner_id=None,
        patient_id=patient_id,
        encounter_id=_encounter_for(request, appointment["id"]),
        appointment_id=appointment["id"],
        need_patient_banner=False,
    )
    return web.Response(
        status=302, headers={"Location": launch_url(settings.patient_launch_url, settings.fhir_base, launch)}
    )


async def smart_style(request: web.Request) -> web.Response:
    """GET /ehr/smart-style.json: the EHR's look, for apps that want to match it."""
    return web.json_response(SMART_STYLE)


def setup_routes(app: web.Application) -> None:
    """Add the pages."""
    app.router.add_get("/", index)
    app.router.add_get("/ehr", ehr_schedule)
    app.router.add_get("/ehr/smart-style.json", smart_style)
    app.router.add_get("/ehr/visit/{appointment_id}", ehr_visit)
    app.router.add_get("/portal", portal)
    app.router.add_get("/portal/visit/{appointment_id}", portal_visit)
