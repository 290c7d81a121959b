"""The sandbox EHR's HL7v2 appointment feed: SIU messages built from its Appointments and sent over MLLP.

Like a real EHR's interface engine, the message carries the patient's name, MRN and phone in PID (the gateway
must not keep them), the appointment's ids in SCH-1/SCH-2, its timing in TQ1 (v2.5.1) and SCH-11, and the FHIR
ids of the patient and encounter as identifiers of type `FHIR` (PID-3, PV1-19).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from typing import Any

import hl7
from hl7.mllp import open_hl7_connection

log = logging.getLogger(__name__)

EVENTS = {"booked": "S12", "rescheduled": "S13", "modified": "S14", "cancelled": "S15", "deleted": "S17"}


def _dtm(value: str | dt.datetime) -> str:
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.strftime("%Y%m%d%H%M%S%z")


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields at their HL7 positions (1-based), empty between."""
    last = max(fields) if fields else 0
    return "|".join([name] + [fields.get(i, "") for i in range(1, last + 1)])


def siu_message(trigger: str, appointment: dict[str, Any], *, patient: dict[str, Any] | None = None,
                encounter_id: str | None = None, control_id: str | None = None,
                sent_at: dt.datetime | None = None) -> bytes:
    """One SIU message (v2.5.1) for an Appointment resource; the patient's name, MRN and phone go in PID as a
    real feed's would."""
    control = control_id or uuid.uuid4().hex[:20]
    now = sent_at or dt.datetime.now(dt.timezone.utc)
    start, end = appointment.get("start"), appointment.get("end")
    msh = "|".join(["MSH", "^~\\&", "SANDBOXEHR", "SANDBOX", "VISITGATE", "VISITGATE", _dtm(now), "",
                    f"SIU^{trigger}^SIU_S12", control, "P", "2.5.1"])
    status = "Cancelled" if appointment.get("status") == "cancelled" else "Booked"
    timing = f"^^{appointment.get('minutesDuration', '')}^{_dtm(start) if start else ''}^{_dtm(end) if end else ''}"
    sch = _segment("SCH", {1: f"{appointment['id']}^SANDBOX", 2: f"{appointment['id']}^SANDBOX",
                           7: "^Video visit", 11: timing, 25: status})
    tq1 = _segment("TQ1", {1: "1", 7: _dtm(start) if start else "", 8: _dtm(end) if end else ""})
    segments = [msh, sch, tq1]
    if patient is not None:
        name = (patient.get("name") or [{}])[0]
        phone = next((t.get("value", "") for t in patient.get("telecom", []) if t.get("system") == "phone"), "")
        mrn = next((i.get("value", "") for i in patient.get("identifier", [])), "")
        segments.append(_segment("PID", {
            1: "1", 3: f"{mrn}^^^SANDBOX^MR~{patient['id']}^^^SANDBOX^FHIR",
            5: f"{name.get('family', '')}^{' '.join(name.get('given', []))}",
            7: str(patient.get("birthDate", "")).replace("-", ""), 13: phone}))
    if encounter_id:
        segments.append(_segment("PV1", {1: "1", 2: "O", 19: f"{encounter_id}^^^SANDBOX^FHIR"}))
    return ("\r".join(segments) + "\r").encode("utf-8")


async def send_siu(host: str, port: int, message: bytes, timeout: float = 10.0) -> str:
    """Send one message over MLLP and answer the ACK's code (MSA-1)."""
    async with asyncio.timeout(timeout):
        reader, writer = await open_hl7_connection(host, port, encoding="utf-8")
        try:
            writer.writeblock(message)
            await writer.drain()
            answer = await reader.readmessage()
        finally:
            writer.close()
            await writer.wait_closed()
    return str(answer.segment("MSA")[1])


def ack_code(answer: hl7.Message) -> str:
    """MSA-1 of an ACK."""
    return str(answer.segment("MSA")[1])
