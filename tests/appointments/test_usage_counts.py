"""Every message sent about a visit counts on its usage row (the usage report's "SMS sent" and "Emails sent"):
the provider view's invitation and its re-send, and the appointment feed's confirmations, reminders and cancellation, whether
sent before the visit's first presence event or after its last; a withdrawn or failed message does not count.
The expected figures are what the carriers received (the sandbox phone, the SMTP server), not the schedule."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from gateway.appkeys import DB, SEALER
from presence import usage
from presence.visit_end import end_visit
from tests.appointments.conftest import Feed, wait_for
from tests.conftest import database_text
from tests.notify.helpers import invite, launch_handle

PATIENT_PHONE = "+12065550101"  # pat-1's mobile in the sandbox EHR
PATIENT_EMAIL = "alex.testpatient@example.org"


def _start() -> dt.datetime:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).replace(second=0, microsecond=0)


async def _carried(feed: Feed) -> tuple[int, int]:
    """Texts the patient's phone got and emails the patient's mailbox got, as the carriers saw them."""
    texts = [t for t in await feed.phone() if t["to"] == PATIENT_PHONE]
    mails = [m for m in feed.smtp.received if PATIENT_EMAIL in m.rcpt_tos]
    return len(texts), len(mails)


async def _row(feed: Feed, visit_id: uuid.UUID) -> Any:
    async with feed.stack.gateway_app[DB].acquire() as conn:
        return await conn.fetchrow("SELECT sms_sent, email_sent, status, last_event_id FROM visit_usage"
                                   " WHERE visit_id = $1", visit_id)


async def _due(feed: Feed, appointment_row: uuid.UUID, offset: int, channel: str) -> None:
    async with feed.stack.gateway_app[DB].acquire() as conn:
        changed = await conn.execute(
            "UPDATE appointment_messages SET due_at = now() WHERE appointment_id = $1 AND kind = 'reminder'"
            " AND offset_minutes = $2 AND channel = $3 AND state = 'pending'", appointment_row, offset, channel)
    assert changed == "UPDATE 1"


async def _refuse_mail(*_args: Any) -> str:
    return "554 5.7.1 not now"  # a refusal of the message itself: retried, then failed


async def test_each_message_sent_about_a_visit_counts_before_its_first_event_and_after_its_last(
        feed: Feed) -> None:
    stack = feed.stack
    pool = stack.gateway_app[DB]
    appointment = await feed.book(_start())
    await feed.settled(appointment)
    async with pool.acquire() as conn:
        [link] = await conn.fetch("SELECT DISTINCT appointment_id, visit_id FROM appointment_messages"
                                  " WHERE state = 'sent'")
        appointment_row, visit_id = link["appointment_id"], link["visit_id"]
        assert visit_id is not None
        assert await conn.fetchval("SELECT count(*) FROM presence_events WHERE visit_id = $1", visit_id) == 0
    # The booking's email and text: counted though the visit has no presence event yet.
    assert await _carried(feed) == (1, 1)
    row = await _row(feed, visit_id)
    assert (row["sms_sent"], row["email_sent"], row["status"]) == (1, 1, "open")

    # The day-before reminders, by both channels, still before any event.
    await _due(feed, appointment_row, 1440, "sms")
    await _due(feed, appointment_row, 1440, "email")
    await feed.settled(appointment)
    assert await _carried(feed) == (2, 2)

    # The clinician opens the visit (the same one: the appointment's encounter) and texts the patient the link.
    async with pool.acquire() as conn:
        sealed = await conn.fetchval("SELECT encounter_ref FROM visits WHERE id = $1", visit_id)
    encounter = stack.gateway_app[SEALER].unseal(sealed, "visits.encounter_ref")
    handle = await launch_handle(stack, encounter=encounter)
    response = await invite(stack, handle, channel="sms", role="patient")
    assert response.status == 200, await response.text()
    assert await _carried(feed) == (3, 2)
    # ... and sends it again by email: the invitation list keeps its last channel, the count both sends.
    participant = (await response.json())["participant"]
    again = await stack.browser.post(f"{stack.gateway_url}/provider/{handle}/invite/{participant}/resend",
                                     data={"channel": "email"}, allow_redirects=False,
                                     headers={"Accept": "application/json", "Origin": stack.gateway_url})
    assert again.status == 200, await again.text()
    assert await _carried(feed) == (3, 3)

    # The visit ends (nobody came): its last event is counted.
    async with pool.acquire() as conn:
        assert await end_visit(conn, visit_id, "clinician") is not None
    await usage.catch_up(pool)
    ended = await _row(feed, visit_id)
    assert ended["last_event_id"] > 0 and ended["status"] != "open"

    # After its last event: the 15-minute text reminder goes and counts; the email's is still pending.
    await _due(feed, appointment_row, 15, "sms")
    await feed.settled(appointment)
    # The cancellation withdraws the pending email reminder; its email fails at the mail server, its text goes.
    feed.smtp.handle_DATA = _refuse_mail  # type: ignore[method-assign]
    answer = await feed.ehr(f"/ehr/appointments/{appointment}/cancel")
    assert answer["ack"] == "AA"

    async def given_up() -> list[Any] | None:
        rows = await feed.schedule(appointment)
        cancelled = [r for r in rows if r.kind == "cancelled"]
        return rows if len(cancelled) == 2 and all(r.state in ("sent", "failed") for r in cancelled) else None
    rows = await wait_for(given_up, what="the cancellation's email to fail after its retries")
    states = sorted((r.kind, r.offset_minutes if r.kind == "reminder" else 0, r.channel, r.state) for r in rows)
    assert ("reminder", 15, "email", "withdrawn") in states and ("cancelled", 0, "email", "failed") in states
    assert ("cancelled", 0, "sms", "sent") in states

    texts, mails = await _carried(feed)
    # By SMS: booked, 1440, the invitation, 15, cancelled; by email: booked, 1440, the invitation's re-send.
    assert (texts, mails) == (5, 3)
    row = await _row(feed, visit_id)
    assert (row["sms_sent"], row["email_sent"]) == (texts, mails)
    assert row["last_event_id"] == ended["last_event_id"]  # the late messages came with no event
    # The follower going over the log again changes none of it.
    await usage.catch_up(pool)
    assert await _row(feed, visit_id) == row
    async with pool.acquire() as conn:
        # Each message sent names the visit it was about (the cancellation: that of its encounter).
        assert await conn.fetchval("SELECT count(*) FROM appointment_messages WHERE state = 'sent' AND"
                                   " visit_id IS DISTINCT FROM $1", visit_id) == 0
        _tables, dump = await database_text(conn)
    for value in (PATIENT_PHONE, PATIENT_EMAIL, "206-555-0101", "1980-04-12"):
        assert value.lower() not in dump.lower()
