"""The durable schedule: appointments as the feed last described them, and one row per message to send.

`apply_update` takes what the feed said (an SIU message or a FHIR Appointment, both read into an
`AppointmentUpdate`) and, in the caller's transaction, records the appointment and plans its messages:

- booked: a `booked` confirmation now, and a reminder at each offset before the start that is still ahead;
- changed (rescheduled or modified): a `changed` confirmation, pending confirmations of earlier revisions
  withdrawn, pending reminders for another start withdrawn and new ones planned for the new start (a
  modification that keeps the start keeps its reminders: planning one again is a no-op);
- cancelled: every pending message withdrawn, and a `cancelled` confirmation.

Each message row is unique on (appointment, kind, offset, channel, revision, start): whatever number of
processes apply the same news, at most one row exists, so at most one message. A change older than the
one last applied (out-of-order delivery, or a FHIR poll behind an SIU message) is ignored. Nothing is
planned for an appointment whose start has passed; reminders whose time has passed are not planned.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

import asyncpg

import sql
from gateway.security import Sealer

from .siu import AppointmentUpdate

Q = sql.queries("appointments")

KINDS = ("booked", "changed", "cancelled", "reminder")
CHANNELS = ("email", "sms")


@dataclass(frozen=True)
class Feed:
    """A configuration's feed settings: where HL7 comes in, whether FHIR is polled, what goes out."""

    configuration_id: int
    fhir_base_url: str
    mllp_host: str = "127.0.0.1"
    mllp_port: int | None = None
    mllp_tls_cert: str | None = None
    mllp_tls_key: str | None = None
    fhir_polling: bool = False
    poll_interval: int = 60
    reminder_offsets: tuple[int, ...] = (1440, 15)
    messages: tuple[str, ...] = KINDS
    channels: tuple[str, ...] = CHANNELS
    client_id: str = ""
    client_auth: str = ""
    meeting_provider: str = "builtin"


def feed_from_row(row: asyncpg.Record) -> Feed:
    """A Feed from a row of active_feeds."""
    return Feed(configuration_id=row["configuration_id"], fhir_base_url=row["fhir_base_url"],
                mllp_host=row["mllp_host"], mllp_port=row["mllp_port"], mllp_tls_cert=row["mllp_tls_cert"],
                mllp_tls_key=row["mllp_tls_key"], fhir_polling=row["fhir_polling"],
                poll_interval=row["poll_interval"], reminder_offsets=tuple(row["reminder_offsets"]),
                messages=tuple(row["messages"]), channels=tuple(row["channels"]), client_id=row["client_id"],
                client_auth=row["client_auth"], meeting_provider=row["meeting_provider"])


async def active_feeds(conn: asyncpg.Connection) -> list[Feed]:
    """The feeds of approved configurations."""
    return [feed_from_row(r) for r in await conn.fetch(Q["active_feeds"])]


async def feed_settings(conn: asyncpg.Connection, configuration_id: int) -> asyncpg.Record | None:
    """A configuration's feed settings as stored, or None when it has none."""
    row: asyncpg.Record | None = await conn.fetchrow(Q["get_feed"], configuration_id)
    return row


async def set_feed(conn: asyncpg.Connection, configuration_id: int, *, mllp_host: str = "127.0.0.1",
                   mllp_port: int | None = None, mllp_tls_cert: str | None = None, mllp_tls_key: str | None = None,
                   fhir_polling: bool = False, poll_interval: int = 60,
                   reminder_offsets: tuple[int, ...] = (1440, 15), messages: tuple[str, ...] = KINDS,
                   channels: tuple[str, ...] = CHANNELS) -> None:
    """Set a configuration's feed; ValueError names what is wrong."""
    if any(k not in KINDS for k in messages):
        raise ValueError(f"messages must be among {', '.join(KINDS)}")
    if any(c not in CHANNELS for c in channels):
        raise ValueError(f"channels must be among {', '.join(CHANNELS)}")
    if any(o <= 0 or o > 60 * 24 * 30 for o in reminder_offsets) or len(reminder_offsets) > 10:
        raise ValueError("reminder offsets are minutes before the start, between 1 and 43200 (30 days), "
                         "at most 10")
    if mllp_port is not None and not 1 <= mllp_port <= 65535:
        raise ValueError("the MLLP port must be between 1 and 65535")
    if (mllp_tls_cert is None) != (mllp_tls_key is None):
        raise ValueError("TLS needs both a certificate file and its key file")
    if poll_interval < 1:
        raise ValueError("the poll interval is at least 1 second")
    await conn.execute(Q["set_feed"], configuration_id, mllp_host, mllp_port, mllp_tls_cert, mllp_tls_key,
                       fhir_polling, poll_interval, sorted(set(reminder_offsets), reverse=True),
                       list(dict.fromkeys(messages)), list(dict.fromkeys(channels)))


async def note_control_id(conn: asyncpg.Connection, configuration_id: int,
                          control_id: str) -> tuple[Feed | None, bool]:
    """The feed as it is now, and whether this HL7 message control id is new (False: a duplicate); (None, False)
    when the feed is gone or its configuration is not approved (the id is then not kept)."""
    row = await conn.fetchrow(Q["note_control_id"], configuration_id, control_id)
    if row is None:
        return None, False
    return feed_from_row(row), bool(row["first_time"])


async def apply_update(conn: asyncpg.Connection, sealer: Sealer, feed: Feed, update: AppointmentUpdate,
                       now: dt.datetime | None = None) -> str:
    """Record what the feed says about an appointment and plan its messages, in the caller's transaction.

    Answers what happened: "planned", "unchanged" (nothing new), "stale" (older than what we have) or "past".
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    key = sealer.lookup("appointment", f"{feed.fhir_base_url}|{update.appointment_id}")
    patient_ref = sealer.seal(update.patient_id, "appointments.patient_ref") if update.patient_id else None
    encounter_ref = sealer.seal(update.encounter_id, "appointments.encounter_ref") if update.encounter_id else None
    row = await conn.fetchrow(
        Q["upsert_appointment"], feed.configuration_id, key,
        sealer.seal(update.appointment_id, "appointments.appointment_ref"), patient_ref, encounter_ref,
        update.starts_at, update.ends_at, update.status, update.source_time)
    assert row is not None
    appointment_id: UUID = row["id"]
    if row["inserted"]:
        revision = row["revision"]
        if update.status == "cancelled":
            return "unchanged"  # cancelled before we ever heard of it: nothing to withdraw or say
        kind = "booked"
    else:
        if update.source_time < row["source_time"]:
            return "stale"
        moved = row["starts_at"] != update.starts_at or row["ends_at"] != update.ends_at
        if row["status"] == update.status and not moved and update.event != "changed":
            return "unchanged"  # the same news again (a FHIR poll after the SIU message, a repeated S12)
        revision = await conn.fetchval(Q["update_appointment"], appointment_id, update.starts_at, update.ends_at,
                                       update.status, update.source_time, patient_ref, encounter_ref)
        if update.status == "cancelled":
            if row["status"] == "cancelled":
                return "unchanged"
            await conn.execute(Q["withdraw_all"], appointment_id, "appointment_cancelled")
            kind = "cancelled"
        else:
            await conn.execute(Q["withdraw_moved"], appointment_id, update.starts_at, "appointment_changed")
            kind = "booked" if row["status"] == "cancelled" else "changed"
    if update.starts_at <= now:
        return "past"
    kinds: list[str] = []
    offsets: list[int] = []
    channels: list[str] = []
    revisions: list[int] = []
    due: list[dt.datetime] = []

    def plan(kind: str, offset: int, channel: str, revision: int, at: dt.datetime) -> None:
        kinds.append(kind)
        offsets.append(offset)
        channels.append(channel)
        revisions.append(revision)
        due.append(at)

    for channel in feed.channels:
        if kind in feed.messages:
            plan(kind, 0, channel, revision, now)
        if kind != "cancelled" and "reminder" in feed.messages:
            for offset in feed.reminder_offsets:
                at = update.starts_at - dt.timedelta(minutes=offset)
                if at > now:
                    plan("reminder", offset, channel, 0, at)
    if kinds:
        await conn.execute(Q["plan_messages"], appointment_id, update.starts_at, kinds, offsets, channels,
                           revisions, due)
    return "planned"


@dataclass(frozen=True)
class PlannedMessage:
    """One row of an appointment's schedule, as tests and the CLI show it (nothing about the patient)."""

    kind: str
    offset_minutes: int
    channel: str
    revision: int
    starts_at: dt.datetime
    due_at: dt.datetime
    state: str
    outcome: str | None
    attempts: int


async def schedule_of(conn: asyncpg.Connection, sealer: Sealer, configuration_id: int, fhir_base_url: str,
                      appointment_id: str) -> list[PlannedMessage]:
    """The schedule of one appointment (by its FHIR id), oldest first."""
    key = sealer.lookup("appointment", f"{fhir_base_url}|{appointment_id}")
    found = await conn.fetchval(Q["find_appointment"], configuration_id, key)
    if found is None:
        return []
    return [PlannedMessage(r["kind"], r["offset_minutes"], r["channel"], r["revision"], r["starts_at"], r["due_at"],
                           r["state"], r["outcome"], r["attempts"]) for r in await conn.fetch(Q["schedule_of"], found)]
