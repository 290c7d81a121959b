"""Canary names, phone numbers, email addresses, MRNs and birth dates in the HL7 messages and in FHIR appear
in neither the gateway's database nor its logs, after confirmations and reminders went out."""
from __future__ import annotations

import datetime as dt
import logging

import pytest

from gateway.appkeys import DB
from sandbox.appkeys import STORE
from tests.appointments.conftest import Feed, wait_for
from tests.conftest import database_text

CANARIES = {
    "given": "Quillonetta",
    "family": "Zarvenbrook",
    "phone": "+12065550177",
    "phone_as_written": "+1 (206) 555-0177",
    "email": "q.zarvenbrook.canary@example.net",
    "mrn": "MRN-CANARY-88213",
    "birth_date": "1957-03-29",
    "birth_date_hl7": "19570329",
}


def _seed_canary(feed: Feed) -> None:
    feed.stack.sandbox_app[STORE].put({
        "resourceType": "Patient", "id": "pat-canary",
        "identifier": [{"system": "urn:sandbox:mrn", "value": CANARIES["mrn"]}],
        "name": [{"family": CANARIES["family"], "given": [CANARIES["given"]]}],
        "birthDate": CANARIES["birth_date"],
        "telecom": [{"system": "phone", "value": CANARIES["phone_as_written"], "use": "mobile"},
                    {"system": "email", "value": CANARIES["email"], "use": "home"}]})


async def test_canaries_in_hl7_and_fhir_land_in_neither_the_database_nor_the_logs(
        feed: Feed, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _seed_canary(feed)
    start = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).replace(second=0, microsecond=0)
    appointment = await feed.book(start, patient="pat-canary")
    await feed.settled(appointment)
    await feed.make_due(appointment)
    rows = await feed.settled(appointment)
    assert len([r for r in rows if r.state == "sent"]) == 6  # booked and two reminders, by email and SMS
    answer = await feed.ehr(f"/ehr/appointments/{appointment}/reschedule",
                            start=(start + dt.timedelta(hours=1)).isoformat())
    assert answer["ack"] == "AA"
    await feed.ehr(f"/ehr/appointments/{appointment}/cancel")
    await wait_for(lambda: _sent_count(feed, appointment, 10), what="the change and cancellation messages")
    # They did reach the patient: the canaries are live in FHIR and the messages went to them.
    assert CANARIES["email"] in feed.smtp.received[0].rcpt_tos
    assert any(t["to"] == CANARIES["phone"] for t in await feed.phone())
    async with feed.stack.gateway_app[DB].acquire() as conn:
        tables, dump = await database_text(conn)
    assert {"appointments", "appointment_messages", "hl7_control_ids", "appointment_feeds"} <= tables
    stored = dump.lower()
    # The sandbox is the EHR, and mail.log is the test's SMTP server: both may log their own. The rest is ours.
    ours = [r for r in caplog.records if not r.name.startswith(("sandbox", "mail.log"))]
    assert any(r.name.startswith("appointments") for r in ours), "the feed's log should be captured"
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args} {r.exc_text or ''}" for r in ours).lower()
    for name, value in CANARIES.items():
        assert value.lower() not in stored, f"{name} landed in the database"
        assert value.lower() not in logs, f"{name} landed in the logs"


async def _sent_count(feed: Feed, appointment: str, count: int) -> bool:
    rows = await feed.schedule(appointment)
    return len([r for r in rows if r.state == "sent"]) >= count
