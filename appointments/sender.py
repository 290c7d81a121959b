"""The sender: every gateway process claims due messages from the schedule and sends them, each exactly once.

How a message is sent once across several processes, restarts and a kill -9:

1. **Claim** (one short transaction): due rows (`pending` and due, or `sending` whose claim lapsed) are taken
   with `FOR UPDATE SKIP LOCKED`, set to `sending` with this process's id and a lease, and committed. Two
   processes never hold one row at once, and a row exists once per (appointment, kind, offset, channel,
   occasion) by its unique key, so no two sends of one message can start together.
2. **Send**: the patient's address is read from FHIR (backend services) and the message handed to the carrier
   with the row's id as its idempotency key (SMTP: the Message-ID; SMS: the carrier's repeatability id).
3. **Record** (one statement, only while the claim is still ours): `sent`, or `skipped`/`failed` with a reason,
   or back to `pending` with a back-off for a failure worth retrying.

A kill -9 before 2 costs only time: the lease lapses and another process sends it. A kill -9 between 2 and 3
means the carrier may have the message while the row still says `sending`: the next claimant sends it again
with the same idempotency key, so a carrier that honours the key (ACS, the sandbox's phone) delivers it once;
over SMTP the same Message-ID reaches the mailbox, which many mail stores fold into one, but a duplicate there
is possible for the messages that were in flight at the kill (at most `reminder_concurrency` per process).
Nothing is lost: a row leaves `sending` only by 3. A lease shorter than a send could let a second process
overtake a slow first one; the lease (60 s by default) is kept above the SMTP and HTTP time limits.

Each message marked sent is counted, in the same transaction, on the usage figures of the visit it was about
(gateway.sent_counts), and that visit is kept on the message (`appointment_messages.visit_id`): the visit of its
join link, or for a message without one (a cancellation, a confirmation too far ahead for a link) the visit of
its encounter if one was made. A message about an appointment with no visit is counted nowhere.

Nothing is sent for an appointment that has started, been cancelled (except the cancellation) or moved
since the message was planned. Contact details are read at send time and forgotten; no address, number, link
or message text is logged or stored.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

import sql
from gateway import joinlinks, participants
from gateway.appkeys import DB, EHR, NOTIFIER, SEALER, SETTINGS, SIGNING_KEY
from gateway.backend_auth import BackendClient, BackendTokens, TokenUnavailable, WritebackDisabled, allows_reads
from gateway.errors import FhirError, UpstreamError
from gateway.fhir import FhirClient, FhirSearch, parse_reference
from gateway.notify import Notifier, NotifyError
from gateway.notify.contacts import pick_contact
from gateway.notify.optout import SmsOptedOut
from gateway.notify.routing import sms_route
from gateway.sent_counts import count_sent

from . import messages

log = logging.getLogger(__name__)
Q = sql.queries("appointments")

SCOPES = "system/Appointment.rs system/Patient.rs system/Encounter.rs"
"""What the feed asks of the EHR's backend services: read appointments, patients' contact points, encounters."""
# Failures no retry cures: the address on file is refused or missing, the number is not a number.
_FINAL = frozenset({"email_refused", "sms_bad_number", "sms_refused", "sms_unauthorized"})
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Skip(Exception):
    """A message that will not be sent, with the reason kept in the schedule."""

    def __init__(self, outcome: str, final: bool = True) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.final = final


def new_tokens(app: web.Application) -> BackendTokens:
    """The feed's own backend-services token cache (it asks for other scopes than write-back)."""
    return BackendTokens(app[EHR], app[SIGNING_KEY], timeout=app[SETTINGS].http_timeout,
                         grants_enough=allows_reads("Appointment", "Patient", "Encounter"),
                         needs="system/Appointment, Patient and Encounter read")


async def sms_sender(conn: asyncpg.Connection, fhir_base_url: str, kind: str) -> str | None:
    """The number a text of this schedule kind goes from for the configuration of fhir_base_url (None: the
    carrier's configured number), as its organisation's SMS set-up says; Skip with the set-up's reason when it
    does not let such texts go (no consents yet, or the kind turned off). Reminders are the set-up's
    "reminder" kind; bookings, changes and cancellations are its "confirmation" kind."""
    route = await sms_route(conn, fhir_base_url, "reminder" if kind == "reminder" else "confirmation")
    if not route.allowed:
        raise Skip(route.reason or "sms_not_enabled")
    return route.sender


async def deliver_sms(notifier: Notifier, to: str, body: str, key: str, sender: str | None) -> str:
    """The one place the feed hands an SMS to the carrier: through the opt-out check (a number that replied
    STOP is skipped for good, and counted by the check), from sender, with the row's id as idempotency key."""
    if notifier.sms is None:
        raise Skip("channel_not_configured")
    try:
        return await notifier.sms.send(to, body, sender=sender, idempotency_key=key)
    except SmsOptedOut:
        raise Skip("sms_opted_out") from None


class Sender:
    """Claims due messages and sends them; one per gateway process."""

    def __init__(self, app: web.Application, tokens: BackendTokens) -> None:
        self._app = app
        self._settings = app[SETTINGS]
        self._tokens = tokens
        self.worker_id = f"reminders-{uuid.uuid4()}"
        self._inflight: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self.sent = 0

    def poke(self) -> None:
        """Look for due messages now (the feed just planned some)."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and send until cancelled."""
        while True:
            try:
                await self._round()
            except _DB_ERRORS as exc:
                log.warning("reminders: the database is unavailable (%s)", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.reminder_poll_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def _round(self) -> None:
        free = self._settings.reminder_concurrency - len(self._inflight)
        if free <= 0:
            return
        async with self._app[DB].acquire() as conn:
            rows = await conn.fetch(Q["claim_due"], free, self.worker_id, self._settings.reminder_lease_seconds)
        for row in rows:
            task = asyncio.create_task(self._deliver(row))
            self._inflight[row["id"]] = task
            task.add_done_callback(self._done_callback(row["id"]))

    def _done_callback(self, key: uuid.UUID) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._inflight.pop(key, None)
            self._wake.set()  # a slot is free
        return done

    async def stop(self) -> None:
        """Wait briefly for sends under way; one cut short stays claimed until its lease lapses, then is sent
        again with the same idempotency key (every claim is in flight at once, so none waits unstarted)."""
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish(self, message_id: uuid.UUID, state: str, outcome: str | None) -> None:
        async with self._app[DB].acquire() as conn:
            await conn.fetchval(Q["finish_message"], message_id, self.worker_id, state, outcome)

    async def _deliver(self, row: asyncpg.Record) -> None:
        message_id: uuid.UUID = row["id"]
        try:
            await self._send(row)
        except Skip as skip:
            if skip.final or row["attempts"] >= self._settings.reminder_max_attempts:
                await self._finish(message_id, "skipped" if skip.final else "failed", skip.outcome)
                log.info("reminders: message %s %s (%s)", message_id, "skipped" if skip.final else "failed",
                         skip.outcome)
            else:
                backoff = self._settings.reminder_backoff * 2 ** (row["attempts"] - 1)
                async with self._app[DB].acquire() as conn:
                    await conn.fetchval(Q["retry_message"], message_id, self.worker_id, backoff, skip.outcome)
                log.info("reminders: message %s will be tried again (%s)", message_id, skip.outcome)
        except _DB_ERRORS as exc:
            # The claim stays ours until its lease lapses; the next claimant sends with the same key.
            log.warning("reminders: message %s could not be recorded (%s)", message_id, type(exc).__name__)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reminders: message %s failed unexpectedly", message_id)
            with contextlib.suppress(*_DB_ERRORS):
                await self._finish(message_id, "failed", "internal_error")
        else:
            self.sent += 1

    async def _send(self, row: asyncpg.Record) -> None:
        app = self._app
        sealer = app[SEALER]
        async with app[DB].acquire() as conn:
            ctx = await conn.fetchrow(Q["message_context"], row["appointment_id"])
            assert ctx is not None
            kind, channel = row["kind"], row["channel"]
            now = dt.datetime.now(dt.timezone.utc)
            if kind != "cancelled" and ctx["status"] == "cancelled":
                raise Skip("appointment_cancelled")
            if kind == "reminder" and ctx["starts_at"] != row["starts_at"]:
                raise Skip("appointment_moved")
            if ctx["starts_at"] <= now:
                raise Skip("appointment_past")
            fhir_base = ctx["fhir_base_url"]
            # Before anything is read from the EHR: a text the organisation's SMS set-up does not allow is
            # skipped with its reason.
            sender = await sms_sender(conn, fhir_base, kind) if channel == "sms" else None
        try:
            token = await self._tokens.token(BackendClient(ctx["configuration_id"], fhir_base, ctx["client_id"],
                                                           ctx["client_auth"], SCOPES))
        except WritebackDisabled as exc:
            raise Skip(f"backend_refused: {exc.reason}"[:120]) from None
        except TokenUnavailable as exc:
            raise Skip(exc.reason[:120], final=False) from None
        fhir = FhirClient(app[EHR], fhir_base, token.access_token)
        appointment_id = sealer.unseal(ctx["appointment_ref"], "appointments.appointment_ref")
        try:
            patient_id, encounter_id = await self._refs(ctx, fhir, FhirSearch(app[EHR], fhir_base, token.access_token),
                                                        appointment_id)
            patient = await fhir.read("Patient", patient_id)
        except FhirError as exc:
            final = exc.upstream_status in (403, 404, 410)
            raise Skip(exc.reason, final=final) from None
        address = pick_contact(patient.get("telecom"), channel, now)
        del patient  # read for this one send; nothing of it outlives it
        if address is None:
            raise Skip("no_email_on_file" if channel == "email" else "no_phone_on_file")
        link, link_until, visit_id = (None, None, None) if kind == "cancelled" else \
            await self._link(ctx, encounter_id, patient_id)
        if visit_id is None and encounter_id is not None:
            visit_id = await self._visit_of(ctx, encounter_id)
        settings = self._settings
        words = messages.write(kind, settings.organisation_name, ctx["starts_at"], settings.time_zone, link, link_until)
        try:
            if channel == "email":
                host = urlsplit(settings.public_url).hostname or "visitgate"
                calendar = messages.invitation(ctx["id"], ctx["revision"], kind, settings.organisation_name,
                                               settings.smtp_from, address, ctx["starts_at"], ctx["ends_at"], link,
                                               host)
                await app[NOTIFIER].email.send(address, words.subject, words.body, message_id=f"<{row['id']}@{host}>",
                                               calendar=calendar,
                                               calendar_method="CANCEL" if kind == "cancelled" else "REQUEST")
            else:
                await deliver_sms(app[NOTIFIER], address, words.sms, str(row["id"]), sender)
        except NotifyError as exc:
            raise Skip(exc.reason, final=exc.reason in _FINAL) from None
        async with app[DB].acquire() as conn, conn.transaction():
            recorded = await conn.fetchval(Q["finish_sent"], row["id"], self.worker_id, visit_id)
            # Counted only by the claimant that marks it sent: a claim that lapsed is recorded (and counted)
            # by the process that sends it again, under the same idempotency key.
            if recorded is not None and visit_id is not None:
                await count_sent(conn, visit_id, channel)
        if recorded is None:
            log.warning("reminders: message %s was sent after its claim lapsed", row["id"])
        log.info("reminders: sent %s %s by %s for appointment %s", kind,
                 f"{row['offset_minutes']} min" if kind == "reminder" else f"revision {row['revision']}",
                 channel, ctx["id"])

    async def _refs(self, ctx: asyncpg.Record, fhir: FhirClient, search: FhirSearch,
                    appointment_id: str) -> tuple[str, str | None]:
        """The patient's and the encounter's FHIR ids: from the feed when it named them, else from the EHR
        (the Appointment's patient participant; the Encounter that points at the Appointment)."""
        sealer = self._app[SEALER]
        patient_id = sealer.unseal(ctx["patient_ref"], "appointments.patient_ref") if ctx["patient_ref"] else None
        encounter_id = sealer.unseal(ctx["encounter_ref"], "appointments.encounter_ref") \
            if ctx["encounter_ref"] else None
        if patient_id is None:
            appointment = await fhir.read("Appointment", appointment_id)
            patient_id = next((parse_reference((p.get("actor") or {}).get("reference"), "Patient")
                               for p in appointment.get("participant") or []
                               if isinstance(p, dict) and isinstance(p.get("actor"), dict)
                               and parse_reference(p["actor"].get("reference"), "Patient")), None)
            if patient_id is None:
                raise Skip("no_patient")
        if encounter_id is None:
            found, _next = await search.page(search.first_url(
                "Encounter", {"appointment": f"Appointment/{appointment_id}", "_count": "1"}))
            encounter_id = next((e.get("id") for e in found if isinstance(e.get("id"), str)), None)
        if not ctx["patient_ref"] or (encounter_id and not ctx["encounter_ref"]):
            async with self._app[DB].acquire() as conn:
                await conn.execute(Q["remember_refs"], ctx["id"],
                                   sealer.seal(patient_id, "appointments.patient_ref"),
                                   sealer.seal(encounter_id, "appointments.encounter_ref") if encounter_id else None)
        return patient_id, encounter_id

    async def _visit_of(self, ctx: asyncpg.Record, encounter_id: str) -> uuid.UUID | None:
        """The visit of the appointment's encounter, if one was made (none is made for a message without a link)."""
        async with self._app[DB].acquire() as conn:
            found: uuid.UUID | None = await conn.fetchval(
                Q["visit_of_encounter"], ctx["configuration_id"],
                self._app[SEALER].lookup("encounter", f"{ctx['fhir_base_url']}|{encounter_id}"))
        return found

    async def _link(self, ctx: asyncpg.Record, encounter_id: str | None,
                    patient_id: str) -> tuple[str | None, dt.datetime | None, uuid.UUID | None]:
        """A join link for the patient of the visit of this appointment's encounter, when one can cover the
        visit's start (links live at most a week: a confirmation further ahead says the link comes later), with
        the link's expiry and the visit."""
        if encounter_id is None:
            return None, None, None
        app = self._app
        sealer = app[SEALER]
        starts, ends = ctx["starts_at"], ctx["ends_at"] or ctx["starts_at"] + dt.timedelta(hours=1)
        until = joinlinks.link_expiry(ends)
        if until <= starts:
            return None, None, None
        fhir_base = ctx["fhir_base_url"]
        async with app[DB].acquire() as conn, conn.transaction():
            visit_id = await conn.fetchval(
                Q["find_or_create_visit"], ctx["configuration_id"],
                sealer.lookup("encounter", f"{fhir_base}|{encounter_id}"),
                sealer.seal(encounter_id, "visits.encounter_ref"), sealer.seal(patient_id, "visits.patient_ref"),
                ctx["meeting_provider"])
            participant_id = await participants.patient_participant(conn, visit_id)
            code = await joinlinks.issue_link(conn, app, participant_id, visit_id, ends, appointment_at=starts)
        return joinlinks.keys_of(app).link_url(code), until, visit_id


def sender_context(tokens_key: Any, sender_key: Any) -> Any:
    """A cleanup_ctx that runs this process's sender (kept under sender_key) for as long as the app lives."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        sender = Sender(app, app[tokens_key])
        app[sender_key] = sender
        task = asyncio.create_task(sender.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await sender.stop()
    return ctx
