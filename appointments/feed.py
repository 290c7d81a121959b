"""The two ways the appointment feed comes in: HL7v2 SIU over MLLP (one listener per configured address, in every
gateway process, sharing the port with SO_REUSEPORT) and FHIR `Appointment` polling (one process per turn).

Each MLLP message gets one ACK: AA when applied (or recognised as a duplicate by its control id, MSH-10), AR
for what is not an SIU message we take, AE for an SIU message whose content we cannot use or that we could not
store now (the interface engine sends it again). Logs name the configuration, the event, the control id and
a reason code: never a field of the message.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import time
import zoneinfo
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from aiohttp import web
from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, start_hl7_server

import sql
from gateway.appkeys import DB, EHR, SEALER, SETTINGS
from gateway.backend_auth import BackendClient, BackendTokens, TokenUnavailable, WritebackDisabled
from gateway.errors import FhirError
from gateway.fhir import FhirSearch, parse_reference

from .schedule import Feed, active_feeds, apply_update, note_control_id
from .sender import SCOPES
from .siu import AppointmentUpdate, SiuRejected, ack, parse_message, read_siu

log = logging.getLogger(__name__)
Q = sql.queries("appointments")

MAX_MESSAGE = 1024 * 1024
"""Bytes one MLLP block may hold; SIU messages are a few KiB."""
POLL_PAGE = 50
CONTROL_ID_DAYS = 31
"""Days a message control id is remembered: interface engines resend within hours, not weeks."""
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_BOOKED = frozenset({"booked", "pending", "arrived", "checked-in"})
_CANCELLED = frozenset({"cancelled", "noshow", "entered-in-error"})


class Intake:
    """Applies SIU messages of one gateway to the schedule and answers their ACKs."""

    def __init__(self, app: web.Application, planned: Callable[[], None]) -> None:
        self._app = app
        self._zone = zoneinfo.ZoneInfo(app[SETTINGS].time_zone)
        self._planned = planned

    async def handle(self, feed: Feed, block: bytes) -> bytes:
        """One MLLP block in, its ACK out; never raises for anything the sender did."""
        try:
            return await self._handle(feed, block)
        except Exception:  # a bug: the engine gets an AE and sends again; the connection lives on
            log.exception("hl7: configuration %s: a message could not be handled", feed.configuration_id)
            return ack("AE", "", "internal_error")

    async def _handle(self, feed: Feed, block: bytes) -> bytes:
        try:
            message = parse_message(block)
        except SiuRejected as refused:
            log.info("hl7: configuration %s: message refused (%s)", feed.configuration_id, refused.reason)
            return ack(refused.code, "", refused.reason)
        try:
            siu = read_siu(message, self._zone)
        except SiuRejected as refused:
            log.info("hl7: configuration %s: message refused (%s)", feed.configuration_id, refused.reason)
            return ack(refused.code, _control_id(message), refused.reason, received=message)
        try:
            async with self._app[DB].acquire() as conn, conn.transaction():
                current, first_time = await note_control_id(conn, feed.configuration_id, siu.control_id)
                if current is None:
                    outcome = "feed_off"
                elif first_time:
                    outcome = await apply_update(conn, self._app[SEALER], current, siu.update)
                else:
                    outcome = "duplicate"
        except _DB_ERRORS as exc:
            log.warning("hl7: configuration %s: %s %s not stored (%s)", feed.configuration_id, siu.trigger,
                        siu.control_id, type(exc).__name__)
            return ack("AE", siu.control_id, "database_unavailable", received=message)
        log.info("hl7: configuration %s: %s %s %s", feed.configuration_id, siu.trigger, siu.control_id, outcome)
        if outcome == "feed_off":
            return ack("AR", siu.control_id, "feed_not_configured", received=message)
        if outcome == "planned":
            self._planned()
        return ack("AA", siu.control_id, received=message)


def _control_id(message: Any) -> str:
    try:
        value = str(message.segment("MSH")[10])
    except (KeyError, IndexError):
        return ""
    return value if value.isprintable() and len(value) < 200 else ""


def _tls(feed: Feed) -> ssl.SSLContext | None:
    if not (feed.mllp_tls_cert and feed.mllp_tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(feed.mllp_tls_cert, feed.mllp_tls_key)
    return context


class Listeners:
    """This process's MLLP servers, one per configured address, kept in step with the configurations."""

    def __init__(self, intake: Intake) -> None:
        self._intake = intake
        self._servers: dict[tuple[Any, ...], asyncio.AbstractServer] = {}
        self._feeds: dict[tuple[Any, ...], Feed] = {}
        self._writers: set[HL7StreamWriter] = set()
        self._failing: set[tuple[Any, ...]] = set()  # addresses we could not listen on (said once, retried)

    @staticmethod
    def _key(feed: Feed) -> tuple[Any, ...]:
        return (feed.configuration_id, feed.mllp_host, feed.mllp_port, feed.mllp_tls_cert, feed.mllp_tls_key)

    async def sync(self, feeds: list[Feed]) -> None:
        """Start listeners for new addresses, stop those no longer configured; a feed's other settings are
        taken up at once (the handler reads the current Feed)."""
        wanted = {self._key(f): f for f in feeds if f.mllp_port is not None}
        for key in [k for k in self._servers if k not in wanted]:
            server = self._servers.pop(key)
            server.close()
            self._feeds.pop(key, None)
        for key, feed in wanted.items():
            self._feeds[key] = feed
            if key in self._servers:
                continue
            try:
                self._servers[key] = await start_hl7_server(
                    lambda r, w, k=key: self._serve(k, r, w), feed.mllp_host, feed.mllp_port,
                    limit=MAX_MESSAGE, ssl=_tls(feed), reuse_port=True)
                self._failing.discard(key)
                log.info("hl7: listening for configuration %s on %s:%s%s", feed.configuration_id, feed.mllp_host,
                         feed.mllp_port, " (TLS)" if feed.mllp_tls_cert else "")
            except (OSError, ssl.SSLError) as exc:
                if key not in self._failing:  # tried again at every refresh; said once
                    self._failing.add(key)
                    log.warning("hl7: cannot listen for configuration %s on %s:%s (%s); trying again",
                                feed.configuration_id, feed.mllp_host, feed.mllp_port, type(exc).__name__)

    async def _serve(self, key: tuple[Any, ...], reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                feed = self._feeds.get(key)
                if feed is None:
                    break
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError:
                    break  # the sender closed the connection
                except InvalidBlockError:
                    answer = ack("AR", "", "invalid_block")
                except ValueError:
                    answer = ack("AR", "", "message_too_large")
                else:
                    answer = await self._intake.handle(feed, block)
                writer.writeblock(answer)
                await writer.drain()
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        """Stop listening and end open connections."""
        for server in self._servers.values():
            server.close()
        for writer in list(self._writers):
            writer.close()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await server.wait_closed()
        self._servers.clear()


def appointment_update(resource: dict[str, Any]) -> AppointmentUpdate | None:
    """What a FHIR Appointment says, in the feed's terms; None for one that neither books nor cancels a visit
    we can place in time (proposed, waitlisted, fulfilled, or without a start)."""
    status = resource.get("status")
    if status in _BOOKED:
        state = "booked"
    elif status in _CANCELLED:
        state = "cancelled"
    else:
        return None
    starts, ends = _instant(resource.get("start")), _instant(resource.get("end"))
    updated = _instant((resource.get("meta") or {}).get("lastUpdated") if isinstance(resource.get("meta"), dict)
                       else None)
    appointment_id = resource.get("id")
    if starts is None or updated is None or not isinstance(appointment_id, str):
        return None
    patient = next((parse_reference((p.get("actor") or {}).get("reference"), "Patient")
                    for p in resource.get("participant") or []
                    if isinstance(p, dict) and isinstance(p.get("actor"), dict)
                    and parse_reference(p["actor"].get("reference"), "Patient")), None)
    return AppointmentUpdate(appointment_id=appointment_id, status=state, event=state, starts_at=starts,
                             ends_at=ends, source_time=updated, patient_id=patient)


def _instant(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


class Poller:
    """FHIR Appointment polling: `_lastUpdated` since the watermark, page by page, in one process per turn."""

    def __init__(self, app: web.Application, tokens: BackendTokens, planned: Callable[[], None]) -> None:
        self._app = app
        self._tokens = tokens
        self._planned = planned

    async def poll_due(self, feeds: list[Feed]) -> None:
        """Poll each feed whose turn it is (claimed in the database, so one process polls it)."""
        for feed in feeds:
            if not feed.fhir_polling:
                continue
            async with self._app[DB].acquire() as conn:
                row = await conn.fetchrow(Q["claim_poll"], feed.configuration_id)
            if row is None:
                continue
            try:
                await self.poll(feed, row["poll_watermark"])
            except (FhirError, TokenUnavailable, WritebackDisabled) as exc:
                log.warning("fhir poll: configuration %s failed (%s)", feed.configuration_id,
                            getattr(exc, "reason", type(exc).__name__))

    async def poll(self, feed: Feed, watermark: dt.datetime | None) -> int:
        """Take in every Appointment updated since the watermark; answers how many were applied."""
        token = await self._tokens.token(BackendClient(feed.configuration_id, feed.fhir_base_url, feed.client_id,
                                                       feed.client_auth, SCOPES))
        search = FhirSearch(self._app[EHR], feed.fhir_base_url, token.access_token)
        params = {"_sort": "_lastUpdated", "_count": str(POLL_PAGE)}
        if watermark is not None:
            # ge, not gt: two changes in one instant must both be seen; applying one twice changes nothing.
            params["_lastUpdated"] = "ge" + watermark.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        url: str | None = search.first_url("Appointment", params)
        applied = 0
        while url is not None:
            resources, url = await search.page(url)
            newest = watermark
            async with self._app[DB].acquire() as conn, conn.transaction():
                for resource in resources:
                    update = appointment_update(resource)
                    if update is None:
                        continue
                    outcome = await apply_update(conn, self._app[SEALER], feed, update)
                    applied += outcome == "planned"
                    newest = update.source_time if newest is None else max(newest, update.source_time)
                if newest is not None:
                    await conn.execute(Q["advance_watermark"], feed.configuration_id, newest)
        if applied:
            self._planned()
            log.info("fhir poll: configuration %s: %d appointments changed", feed.configuration_id, applied)
        return applied


def feed_context(tokens_key: Any, poke: Callable[[web.Application], None], listeners_key: Any) -> Any:
    """A cleanup_ctx running this process's MLLP listeners and FHIR poller, re-reading the feeds as they change."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        intake = Intake(app, lambda: poke(app))
        listeners = Listeners(intake)
        app[listeners_key] = listeners
        poller = Poller(app, app[tokens_key], lambda: poke(app))

        async def loop() -> None:
            forgot = 0.0
            while True:
                try:
                    async with app[DB].acquire() as conn:
                        feeds = await active_feeds(conn)
                        if time.monotonic() - forgot > 3600:  # control ids are kept a month
                            await conn.execute(Q["forget_control_ids"], CONTROL_ID_DAYS)
                            forgot = time.monotonic()
                    await listeners.sync(feeds)
                    await poller.poll_due(feeds)
                except _DB_ERRORS as exc:
                    log.warning("appointment feed: the database is unavailable (%s)", type(exc).__name__)
                await asyncio.sleep(app[SETTINGS].reminder_poll_interval)

        async with app[DB].acquire() as conn:
            await listeners.sync(await active_feeds(conn))  # listening before the app says it is ready
        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await listeners.close()
    return ctx
