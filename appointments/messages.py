"""The words of confirmations and reminders, and the calendar invitation that goes with the email.

Messages name the organisation, the time (in the organisation's time zone, with the zone's name) and carry the
join link; nothing clinical, and nothing about the patient. English for now (the feed does not yet read the
patient's language).
"""
from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from uuid import UUID

import icalendar


@dataclass(frozen=True)
class Written:
    """One message: the SMS text, and the email's subject and body."""

    sms: str
    subject: str
    body: str


def when(moment: dt.datetime, time_zone: str) -> str:
    """A time as patients read it: "Fri 4 Dec 2026 10:00 CET (Europe/Madrid)"."""
    local = moment.astimezone(zoneinfo.ZoneInfo(time_zone))
    return f"{local:%a} {local.day} {local:%b %Y %H:%M %Z} ({time_zone})"


def write(kind: str, organisation: str, starts_at: dt.datetime, time_zone: str, link: str | None,
          link_until: dt.datetime | None) -> Written:
    """The message of a kind (booked, changed, cancelled, reminder) for a visit starting at starts_at."""
    at = when(starts_at, time_zone)
    if kind == "cancelled":
        line = f"Your video visit with {organisation} on {at} is cancelled."
        return Written(sms=line, subject=f"Cancelled: video visit with {organisation}",
                       body=f"{line}\n\nIf you did not expect this message, contact {organisation}.\n")
    lead = {"booked": f"Your video visit with {organisation} is booked for {at}.",
            "changed": f"Your video visit with {organisation} has changed: it is now on {at}.",
            "reminder": f"Reminder: your video visit with {organisation} is on {at}."}[kind]
    subject = {"booked": f"Video visit with {organisation}: {at}",
               "changed": f"Changed: video visit with {organisation}, now {at}",
               "reminder": f"Reminder: video visit with {organisation}, {at}"}[kind]
    if link is None:
        later = "We will send you the link to join before the visit."
        return Written(sms=f"{lead} {later}", subject=subject, body=f"{lead}\n\n{later}\n")
    until = f"\n\nThe link works until {when(link_until, time_zone)}." if link_until else ""
    body = (f"{lead}\n\nJoin here: {link}\n\nOpen the link on a phone or computer with a camera and microphone "
            f"a few minutes before the visit.{until}\n")
    return Written(sms=f"{lead} Join: {link}", subject=subject, body=body)


def invitation(appointment_id: UUID, revision: int, kind: str, organisation: str, organiser: str, attendee: str,
               starts_at: dt.datetime, ends_at: dt.datetime | None, link: str | None, host: str) -> bytes:
    """An iCalendar (RFC 5545/5546) REQUEST for a booked or changed visit, CANCEL for a cancelled one. The UID
    is the appointment's, so a change updates the same calendar entry (SEQUENCE counts revisions)."""
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//Visitgate//appointment feed//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "CANCEL" if kind == "cancelled" else "REQUEST")
    event = icalendar.Event()
    event.add("uid", f"{appointment_id}@{host}")
    event.add("sequence", revision)
    event.add("dtstamp", dt.datetime.now(dt.timezone.utc))
    event.add("dtstart", starts_at.astimezone(dt.timezone.utc))
    event.add("dtend", (ends_at or starts_at + dt.timedelta(minutes=30)).astimezone(dt.timezone.utc))
    event.add("summary", f"Video visit with {organisation}")
    event.add("status", "CANCELLED" if kind == "cancelled" else "CONFIRMED")
    if link is not None and kind != "cancelled":
        event.add("location", link)
        event.add("url", link)
        event.add("description", f"Join the video visit: {link}")
    organizer = icalendar.vCalAddress(f"mailto:{organiser}")
    organizer.params["cn"] = icalendar.vText(organisation)
    event.add("organizer", organizer)
    event.add("attendee", icalendar.vCalAddress(f"mailto:{attendee}"))
    calendar.add_component(event)
    return calendar.to_ical()  # type: ignore[no-any-return]
