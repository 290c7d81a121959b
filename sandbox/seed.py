"""Synthetic data for the sandbox EHR: fictional people and video visits around the time it starts.

Everything here is made up. Names are obviously synthetic, phone numbers are in the 555-01xx range kept
for fiction, email addresses are at example.org, identifiers are in sandbox-only systems.

Stable ids, for tests to refer to:

- Practitioners `prac-1` (Dr Ada Sandbox), `prac-2` (Dr Ben Placeholder), `prac-3` (Dr Cleo Fixture),
  each with a PractitionerRole `role-1` .. `role-3`.
- Each practitioner signs in to the EHR (the SMART standalone launch's sign-in page) with a user name and a
  password from `PRACTITIONER_SIGN_IN`: `ada.sandbox` / `ada-ehr-pw`, `ben.placeholder` / `ben-ehr-pw`,
  `cleo.fixture` / `cleo-ehr-pw`. The page shows them: they are test fixtures, nobody's secret.
- Patients `pat-1` .. `pat-5` (Alex Testpatient, Bea Example, Cam Synthetic, Dee Mockwell, Eli Fictive),
  each with an MRN `SBX-0001` .. `SBX-0005`. Bea Example (`pat-2`) prefers Spanish (`Patient.communication`:
  `es-MX` preferred, English too), so her join links and messages come in Spanish.
- Appointments `appt-1` .. `appt-6`, status booked, each a video visit, and for each a planned virtual
  Encounter `enc-1` .. `enc-6` pointing at it. The schedule is laid out from the moment the app is built,
  so the demo and the tests find visits that are on whatever the time of day: appt-1 starts at the half
  hour that moment falls in (T), so it is under way, and its join links (valid until an hour after its
  end) work for at least 50 minutes:

  | appointment | local time | patient | practitioner |
  |---|---|---|---|
  | appt-1 | T+0:00-T+0:20 | pat-1 | prac-1 |
  | appt-2 | T+0:30-T+0:50 | pat-2 | prac-1 |
  | appt-3 | T+1:00-T+1:20 | pat-3 | prac-1 |
  | appt-4 | T+2:00-T+2:30 | pat-4 | prac-2 |
  | appt-5 | T+4:30-T+4:50 | pat-5 | prac-2 |
  | appt-6 | T+5:00-T+5:20 | pat-1 | prac-3 |
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from .store import FhirStore

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
MRN_SYSTEM = "urn:visitgate:sandbox:mrn"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SERVICE_TYPE_SYSTEM = "urn:visitgate:sandbox:service-type"

# (id, given, family, npi-like number). The 999 prefix keeps them out of real NPI ranges people recognise.
PRACTITIONERS = (
    ("prac-1", "Ada", "Sandbox", "9990000011"),
    ("prac-2", "Ben", "Placeholder", "9990000029"),
    ("prac-3", "Cleo", "Fixture", "9990000037"),
)
# (practitioner id, user name, password) for the EHR's own sign-in page (SMART standalone launch).
PRACTITIONER_SIGN_IN = (
    ("prac-1", "ada.sandbox", "ada-ehr-pw"),
    ("prac-2", "ben.placeholder", "ben-ehr-pw"),
    ("prac-3", "cleo.fixture", "cleo-ehr-pw"),
)
# (id, given, family, birthDate, gender)
PATIENTS = (
    ("pat-1", "Alex", "Testpatient", "1980-04-12", "female"),
    ("pat-2", "Bea", "Example", "1992-09-30", "female"),
    ("pat-3", "Cam", "Synthetic", "1975-01-05", "male"),
    ("pat-4", "Dee", "Mockwell", "2001-06-21", "other"),
    ("pat-5", "Eli", "Fictive", "1958-12-02", "male"),
)
# Patient.communication of the patients who have one: the language a patient's link and messages come in.
COMMUNICATION: dict[str, list[dict[str, Any]]] = {
    "pat-2": [
        {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en", "display": "English"}]}},
        {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es-MX", "display": "Spanish (Mexico)"}],
                      "text": "Spanish"}, "preferred": True},
    ],
}
# (appointment number, minutes after the first visit starts, length in minutes, patient, practitioner)
VISITS = (
    (1, 0, 20, "pat-1", "prac-1"),
    (2, 30, 20, "pat-2", "prac-1"),
    (3, 60, 20, "pat-3", "prac-1"),
    (4, 120, 30, "pat-4", "prac-2"),
    (5, 270, 20, "pat-5", "prac-2"),
    (6, 300, 20, "pat-1", "prac-3"),
)


def first_visit_start(now: datetime) -> datetime:
    """When appt-1 starts for a sandbox built at `now` (local, aware): the half hour now falls in."""
    return now.replace(minute=now.minute - now.minute % 30, second=0, microsecond=0)


def _human_name(given: str, family: str, prefix: str | None = None) -> dict[str, Any]:
    name: dict[str, Any] = {"use": "official", "family": family, "given": [given]}
    if prefix:
        name["prefix"] = [prefix]
    name["text"] = " ".join(p for p in (prefix, given, family) if p)
    return name


def practitioner_display(given: str, family: str) -> str:
    """How the EHR shows a clinician's name."""
    return f"Dr {given} {family}"


def seed(store: FhirStore, now: datetime | None = None) -> None:
    """Fill the store with the synthetic practitioners, patients and the visits around now."""
    # Local wall-clock time with its offset, as a clinic's schedule is written.
    first = first_visit_start(now or datetime.now().astimezone())
    names: dict[str, str] = {}

    for n, (pid, given, family, npi) in enumerate(PRACTITIONERS, start=1):
        names[pid] = practitioner_display(given, family)
        store.put(
            {
                "resourceType": "Practitioner",
                "id": pid,
                "active": True,
                "identifier": [{"system": NPI_SYSTEM, "value": npi}],
                "name": [_human_name(given, family, "Dr")],
                "telecom": [{"system": "email", "value": f"{given.lower()}.{family.lower()}@example.org", "use": "work"}],
            }
        )
        store.put(
            {
                "resourceType": "PractitionerRole",
                "id": f"role-{n}",
                "active": True,
                "practitioner": {"reference": f"Practitioner/{pid}", "display": names[pid]},
                "code": [{"text": "Physician"}],
                "specialty": [{"text": "Family medicine"}],
            }
        )

    for n, (pid, given, family, birth_date, gender) in enumerate(PATIENTS, start=1):
        names[pid] = f"{given} {family}"
        store.put(
            {
                "resourceType": "Patient",
                "id": pid,
                "active": True,
                "identifier": [
                    {
                        "use": "usual",
                        "type": {
                            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}],
                            "text": "MRN",
                        },
                        "system": MRN_SYSTEM,
                        "value": f"SBX-{n:04d}",
                    }
                ],
                "name": [_human_name(given, family)],
                "birthDate": birth_date,
                "gender": gender,
                "telecom": [
                    {"system": "phone", "value": f"+1-206-555-01{n:02d}", "use": "mobile"},
                    {"system": "email", "value": f"{given.lower()}.{family.lower()}@example.org", "use": "home"},
                ],
                **({"communication": COMMUNICATION[pid]} if pid in COMMUNICATION else {}),
            }
        )

    for n, offset, minutes, patient_id, practitioner_id in VISITS:
        start = first + timedelta(minutes=offset)
        end = start + timedelta(minutes=minutes)
        store.put(
            {
                "resourceType": "Appointment",
                "id": f"appt-{n}",
                "status": "booked",
                "appointmentType": {"text": "Virtual visit"},
                "serviceType": [
                    {"coding": [{"system": SERVICE_TYPE_SYSTEM, "code": "video-visit", "display": "Video visit"}], "text": "Video visit"}
                ],
                "description": "Follow-up video visit",
                "start": start.isoformat(),
                "end": end.isoformat(),
                "minutesDuration": minutes,
                "participant": [
                    {"actor": {"reference": f"Patient/{patient_id}", "display": names[patient_id]}, "required": "required", "status": "accepted"},
                    {"actor": {"reference": f"Practitioner/{practitioner_id}", "display": names[practitioner_id]}, "required": "required", "status": "accepted"},
                ],
            }
        )
        store.put(
            {
                "resourceType": "Encounter",
                "id": f"enc-{n}",
                "status": "planned",
                "class": {"system": ACT_CODE_SYSTEM, "code": "VR", "display": "virtual"},
                "subject": {"reference": f"Patient/{patient_id}", "display": names[patient_id]},
                "participant": [
                    {
                        "type": [
                            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PPRF", "display": "primary performer"}]}
                        ],
                        "individual": {"reference": f"Practitioner/{practitioner_id}", "display": names[practitioner_id]},
                    }
                ],
                "appointment": [{"reference": f"Appointment/appt-{n}"}],
                "period": {"start": start.isoformat()},
            }
        )
