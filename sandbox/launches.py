"""Launch contexts: what the EHR hands to the app in `launch=` when a clinician or patient starts a visit."""
from __future__ import annotations

from aiohttp import web

from .appkeys import LAUNCHES
from .grants import LaunchContext


def create_launch(
    app: web.Application,
    *,
    practitioner_id: str | None,
    patient_id: str | None,
    encounter_id: str | None,
    appointment_id: str | None = None,
    need_patient_banner: bool = True,
) -> str:
    """Register a launch context and return its opaque id (valid 10 minutes, reusable until then)."""
    context = LaunchContext(
        practitioner_id=practitioner_id,
        patient_id=patient_id,
        encounter_id=encounter_id,
        appointment_id=appointment_id,
        need_patient_banner=need_patient_banner,
    )
    return app[LAUNCHES].add(context)
