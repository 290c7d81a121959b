"""The appointment feed end to end: the sandbox EHR books, moves and cancels over HL7 SIU (MLLP), the gateway
plans confirmations and reminders and sends them by email (real SMTP, with an .ics) and SMS (the sandbox phone)."""
from __future__ import annotations

import datetime as dt
import re

from sandbox.siu import send_siu, siu_message
from tests.appointments.conftest import Feed, wait_for

SOON = dt.timedelta(days=2)


def _start(after: dt.timedelta = SOON) -> dt.datetime:
    return (dt.datetime.now(dt.timezone.utc) + after).replace(second=0, microsecond=0)


async def _mail(feed: Feed, count: int) -> list[object]:
    return await wait_for(lambda: _at_least(feed.smtp.received, count), what=f"{count} email(s)")


async def _at_least(items: list[object], count: int) -> list[object] | None:
    return items if len(items) >= count else None


async def _texts(feed: Feed, count: int) -> list[dict[str, object]]:
    async def probe() -> list[dict[str, object]] | None:
        found = await feed.phone()
        return found if len(found) >= count else None
    return await wait_for(probe, what=f"{count} SMS")


async def test_booking_in_the_ehr_sends_a_confirmation_email_with_an_invitation_and_an_sms(feed: Feed) -> None:
    start = _start()
    appointment = await feed.book(start)
    mails = await _mail(feed, 1)
    texts = await _texts(feed, 1)
    mail = mails[0]
    assert mail.rcpt_tos == ["amy.rivera@example.org"] or len(mail.rcpt_tos) == 1  # type: ignore[attr-defined]
    assert "is booked for" in mail.text and "(Europe/Madrid)" in mail.text  # type: ignore[attr-defined]
    link = re.search(r"(http://127\.0\.0\.1:\d+/j/[0-9A-Za-z]{22})", mail.text)  # type: ignore[attr-defined]
    assert link, mail.text  # type: ignore[attr-defined]
    invite = [p for p in mail.message.iter_attachments()  # type: ignore[attr-defined]
              if p.get_content_type() == "text/calendar"]
    assert len(invite) == 1
    ics = invite[0].get_content()
    assert "METHOD:REQUEST" in ics and start.strftime("DTSTART:%Y%m%dT%H%M%SZ") in ics
    assert texts[0]["to"] == "+12065550101" and "is booked for" in str(texts[0]["body"])
    assert re.search(r"/j/[0-9A-Za-z]{22}", str(texts[0]["body"]))
    rows = await feed.settled(appointment)
    sent = sorted((r.kind, r.channel) for r in rows if r.state == "sent")
    assert sent == [("booked", "email"), ("booked", "sms")]
    reminders = sorted((r.offset_minutes, r.channel, r.due_at) for r in rows if r.kind == "reminder")
    assert reminders == [(15, "email", start - dt.timedelta(minutes=15)), (15, "sms", start - dt.timedelta(minutes=15)),
                         (1440, "email", start - dt.timedelta(days=1)), (1440, "sms", start - dt.timedelta(days=1))]


async def test_the_join_link_of_a_confirmation_opens_the_visit(feed: Feed) -> None:
    await feed.book(_start())
    texts = await _texts(feed, 1)
    link = re.search(r"(http://\S+/j/[0-9A-Za-z]{22})", str(texts[0]["body"]))
    assert link
    async with feed.stack.browser.get(link.group(1), allow_redirects=False) as r:
        assert r.status == 200, await r.text()
    code = link.group(1).rsplit("/", 1)[1]
    async with feed.stack.browser.post(f"{feed.stack.gateway_url}/join", data={"t": code},
                                       headers={"Origin": feed.stack.gateway_url}, allow_redirects=False) as r:
        assert r.status in (302, 303), await r.text()
        lobby = r.headers["Location"]
    async with feed.stack.browser.get(f"{feed.stack.gateway_url}{lobby}" if lobby.startswith("/") else lobby) as r:
        assert r.status == 200, await r.text()  # the lobby, before any clinician launched the visit


async def test_rescheduling_sends_a_new_confirmation_and_moves_the_reminders(feed: Feed) -> None:
    start = _start()
    appointment = await feed.book(start)
    await feed.settled(appointment)
    later = start + dt.timedelta(hours=3)
    answer = await feed.ehr(f"/ehr/appointments/{appointment}/reschedule", start=later.isoformat())
    assert answer["ack"] == "AA"
    await _mail(feed, 2)
    texts = await _texts(feed, 2)
    assert "has changed: it is now on" in str(texts[1]["body"])
    rows = await feed.settled(appointment)
    assert sorted((r.kind, r.channel) for r in rows if r.state == "sent") == [
        ("booked", "email"), ("booked", "sms"), ("changed", "email"), ("changed", "sms")]
    pending = {(r.offset_minutes, r.channel, r.due_at) for r in rows if r.kind == "reminder" and r.state == "pending"}
    assert pending == {(o, c, later - dt.timedelta(minutes=o)) for o in (15, 1440) for c in ("email", "sms")}
    withdrawn = [r for r in rows if r.kind == "reminder" and r.state == "withdrawn"]
    assert len(withdrawn) == 4 and all(r.starts_at == start for r in withdrawn)
    ics = [p for p in feed.smtp.received[1].message.iter_attachments()][0].get_content()
    assert "SEQUENCE:2" in ics and later.strftime("DTSTART:%Y%m%dT%H%M%SZ") in ics


async def test_cancelling_withdraws_the_reminders_and_says_so(feed: Feed) -> None:
    appointment = await feed.book(_start())
    await feed.settled(appointment)
    answer = await feed.ehr(f"/ehr/appointments/{appointment}/cancel")
    assert answer["ack"] == "AA"
    mails = await _mail(feed, 2)
    texts = await _texts(feed, 2)
    assert "is cancelled" in str(texts[1]["body"]) and "/j/" not in str(texts[1]["body"])
    ics = [p for p in mails[1].message.iter_attachments()][0].get_content()  # type: ignore[attr-defined]
    assert "METHOD:CANCEL" in ics and "STATUS:CANCELLED" in ics
    rows = await feed.settled(appointment)
    assert {r.state for r in rows if r.kind == "reminder"} == {"withdrawn"}
    assert sorted(r.channel for r in rows if r.kind == "cancelled" and r.state == "sent") == ["email", "sms"]


async def test_a_due_reminder_is_sent_once_with_a_join_link(feed: Feed) -> None:
    appointment = await feed.book(_start())
    await feed.settled(appointment)
    await feed.make_due(appointment)
    rows = await feed.settled(appointment)
    assert sorted((r.offset_minutes, r.channel) for r in rows if r.kind == "reminder" and r.state == "sent") == [
        (15, "email"), (15, "sms"), (1440, "email"), (1440, "sms")]
    texts = await feed.phone()
    reminders = [t for t in texts if str(t["body"]).startswith("Reminder:")]
    assert len(reminders) == 2 and all(re.search(r"/j/[0-9A-Za-z]{22}", str(t["body"])) for t in reminders)


async def test_a_repeated_control_id_is_acknowledged_and_not_applied_again(feed: Feed) -> None:
    from sandbox.appkeys import STORE

    appointment = await feed.book(_start())
    await feed.settled(appointment)
    resource = feed.stack.sandbox_app[STORE].get("Appointment", appointment)
    message = siu_message("S13", {**resource, "start": _start(dt.timedelta(days=3)).isoformat(),
                                  "end": _start(dt.timedelta(days=3, minutes=30)).isoformat()},
                          control_id="REPEAT-1")
    assert await send_siu("127.0.0.1", feed.mllp_port, message) == "AA"
    await _texts(feed, 2)
    assert await send_siu("127.0.0.1", feed.mllp_port, message) == "AA"
    rows = await feed.settled(appointment)
    assert len([r for r in rows if r.kind == "changed"]) == 2  # email and SMS, once
    assert len(await feed.phone()) == 2


async def test_malformed_messages_are_refused_and_the_listener_lives_on(feed: Feed) -> None:
    import asyncio

    from hl7.mllp import open_hl7_connection

    reader, writer = await open_hl7_connection("127.0.0.1", feed.mllp_port, encoding="utf-8")
    try:
        for block, code, reason in [
            (b"this is not HL7", "AR", "not_hl7"),
            (b"MSH|^~\\&|EHR|H|VG|VG|20261203||ADT^A01|C1|P|2.5.1\r", "AR", "unsupported_message_type"),
            (b"MSH|^~\\&|EHR|H|VG|VG|20261203||SIU^S99|C2|P|2.5.1\r", "AR", "unsupported_event"),
            (b"MSH|^~\\&|EHR|H|VG|VG|20261203||SIU^S12|C3|P|2.5.1\rSCH|||\r", "AE", "no_appointment_id"),
            (b"MSH|^~\\&|EHR|H|VG|VG|20261203||SIU^S12|C4|P|2.5.1\rSCH|a1|a1\r", "AE", "no_start_time"),
            (b"MSH|^~\\&|EHR|H|VG|VG|20261203||SIU^S12|C5|P|2.5.1\rSCH|a1|a1\rTQ1|1||||||2026130199\r", "AE",
             "bad_start_time"),
            (b"MSH|^~\\&|EHR|H|VG|VG|20261203||SIU^S12|\r", "AR", "no_control_id"),
            (b"\xff\xfe\x00garbage\x00", "AR", "not_hl7"),
        ]:
            writer.writeblock(block)
            await writer.drain()
            answer = await asyncio.wait_for(reader.readmessage(), 5)
            msa = answer.segment("MSA")
            assert (str(msa[1]), str(msa[3])) == (code, reason), str(answer)
        # A block without the start character, then a good message on the same connection.
        writer.write(b"no start block\x1c\r")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readmessage(), 5)
        assert str(answer.segment("MSA")[1]) == "AR"
    finally:
        writer.close()
        await writer.wait_closed()
    await feed.book(_start())
    await _texts(feed, 1)


async def test_nothing_is_sent_for_an_appointment_in_the_past(feed: Feed) -> None:
    answer = await feed.ehr("/ehr/appointments", patient="pat-1",
                            start=(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat(), minutes="30")
    assert answer["ack"] == "AA"
    assert await feed.schedule(str(answer["appointment"])) == []
    appointment = await feed.book(_start(dt.timedelta(minutes=10)))  # the 15-minute reminder's time has passed
    rows = await feed.settled(appointment)
    assert {r.kind for r in rows} == {"booked"}


async def test_the_messages_and_channels_chosen_per_configuration_are_the_only_ones_sent(feed: Feed) -> None:
    await feed.configure(messages=("reminder",), channels=("sms",), reminder_offsets=(60,))
    appointment = await feed.book(_start())
    rows = await feed.settled(appointment)
    assert [(r.kind, r.offset_minutes, r.channel) for r in rows] == [("reminder", 60, "sms")]
    assert feed.smtp.received == [] and await feed.phone() == []


async def test_a_patient_without_contact_details_gets_nothing_and_the_schedule_says_why(feed: Feed) -> None:
    from sandbox.appkeys import STORE

    feed.stack.sandbox_app[STORE].put({"resourceType": "Patient", "id": "pat-silent",
                                       "name": [{"family": "Silent", "given": ["Sam"]}],
                                       "telecom": [{"system": "email", "value": "old@example.org", "use": "old"}]})
    appointment = await feed.book(_start(), patient="pat-silent")
    rows = await feed.settled(appointment)
    assert sorted((r.channel, r.state, r.outcome) for r in rows if r.kind == "booked") == [
        ("email", "skipped", "no_email_on_file"), ("sms", "skipped", "no_phone_on_file")]
    assert feed.smtp.received == [] and await feed.phone() == []


async def test_a_search_page_link_that_leaves_the_fhir_base_is_not_followed() -> None:
    import pytest

    from gateway.errors import FhirError
    from gateway.fhir import FhirSearch

    search = FhirSearch(None, "https://ehr.example.org/fhir", "token")  # type: ignore[arg-type]
    with pytest.raises(FhirError) as refused:
        await search.page("https://elsewhere.example.net/fhir/Appointment?page=2")
    assert refused.value.reason == "fhir_bad_reference"
    with pytest.raises(FhirError):
        await search.page("https://ehr.example.org/fhirish/Appointment")


async def test_the_visit_the_link_names_is_the_one_the_clinician_launches_into(feed: Feed) -> None:
    from gateway.appkeys import DB

    appointment = await feed.book(_start())
    await _texts(feed, 1)
    async with feed.stack.gateway_app[DB].acquire() as conn:
        before = await conn.fetch("SELECT id FROM visits")
    assert len(before) == 1
    response, _visited = await feed.stack.launch(feed.stack.new_launch(patient="pat-1",
                                                                       encounter=f"enc-{appointment[5:]}"))
    assert response.status == 200, await response.text()
    async with feed.stack.gateway_app[DB].acquire() as conn:
        after = await conn.fetch("SELECT id FROM visits")
    assert after == before
