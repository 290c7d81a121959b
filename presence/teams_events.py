"""Live presence from Microsoft Teams: Graph change notifications of a meeting's call events become presence events.

The Teams meeting provider calls `subscribe_meeting` once a visit's meeting exists. It subscribes (Graph beta) to
`/communications/onlineMeetings(joinWebUrl='…')/meetingCallEvents` with rich notifications: the roster comes
encrypted to our key (presence.graph_crypto). The webhook, `/graph/notifications` (and `/graph/lifecycle`),
is called by Graph, not by a browser: it is outside the EHR's frame and exempt from the CSRF check, and proves
each notification by its `clientState`, which only we can make (an HMAC of our subscription's id with the
gateway key, compared in constant time). It answers Graph's validation handshake, refuses notifications for
subscriptions it does not know, and puts what it accepts in a durable queue (one INSERT for every request
waiting at that moment: a group commit) before it answers 202, so it only checks what is cheap; the worker
decrypts, verifies the data signature and writes the presence events.

Roster changes become `connected` and `disconnected` events of our participants: the clinician by the
organiser's Entra object id; patients and guests, who join Teams anonymously, matched to the participants who
came through our own lobby (the first to be handed over first), else as anonymous guests. Each event has an
idempotency key made from the subscription and Teams' own ids, so a notification processed twice writes once.
The events go through the presence event log like the built-in room's, so they reach the provider view and the
FHIR write-back the same way. Lifecycle notifications are handled (reauthorizationRequired: renew;
subscriptionRemoved: subscribe again; missed: read the attendance report), subscriptions are renewed before
they expire, and after the call ends the attendance report (v1.0) fills in what the notifications missed, once.

Nothing from a roster is kept but keyed digests of Teams identities: display names are read in memory and
dropped. The encrypted notification itself is kept only until it is processed.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote
from uuid import UUID

import asyncpg

import sql
from gateway import participants
from gateway.errors import BadRequest, GraphRefused, UpstreamError
from gateway.settings import Settings

from . import eventlog
from .announcer import Announcer
from .graph_crypto import NotificationKey, NotificationRejected

log = logging.getLogger(__name__)

Q = sql.queries("graph_events")
RESOURCE = "/communications/onlineMeetings(joinWebUrl='{url}')/meetingCallEvents"
NOTIFICATION_PATH = "/graph/notifications"
LIFECYCLE_PATH = "/graph/lifecycle"
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})
_KEY_NAMESPACE = uuid.UUID("0b6f5f3e-58a4-4c58-9d7c-3f1f2b7a9e10")  # idempotency keys of Teams events
_MAX_ATTEMPTS = 10
_CACHE_SECONDS = 30.0
_RESUBSCRIBE_AFTER = 60.0  # seconds after a refused subscription before the first new attempt (then doubling)
_FLUSHES = 4  # queue INSERTs in flight at once (see Intake)
_PURGE_AFTER = 24 * 3600  # seconds a processed notification's digest is kept against redelivery
_MAX_PAGES = 50  # pages of one attendance collection read at most (Graph pages records by the hundred or so)
_MAX_TOKENS = 20  # Graph sends one validationToken per application and tenant in a collection


class GraphPort(Protocol):
    """How this module calls Graph: through the gateway's one Graph client, for an organisation's tenant.

    Answers the HTTP status and the JSON body (None when there is none); Graph's faults that the client maps
    (unreachable, throttled past its budget) arrive as gateway.errors.UpstreamError.
    """

    def __call__(self, tenant_key: str, method: str, path: str, *, json: Any = None,
                 beta: bool = False) -> Awaitable[tuple[int, Any]]:
        """Call Graph (v1.0, or beta) as the Teams application of that organisation (tenant_key)."""
        ...


class TokenCheck(Protocol):
    """How the worker checks a validationToken of a rich notification (gateway.graph.GraphClient's
    `validation_token`, as the organisation's Teams application)."""

    def __call__(self, tenant_key: str, token: str, *, at: float) -> Awaitable[tuple[float, bool]]:
        """(the token's expiry, whether it is for this organisation's application and tenant) of an authentic
        token, unexpired at `at`; gateway.errors.GraphRefused when it is not one, UpstreamError when Entra's keys
        cannot be read."""
        ...


@dataclass(frozen=True)
class Subscription:
    """Our row of one meeting's subscription."""

    id: UUID
    graph_id: str | None
    visit_id: UUID
    tenant_key: str
    organizer_id: str
    meeting_id: str
    join_web_url: str
    status: str
    expires_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Subscription:
        """From a row of the graph_events queries."""
        return cls(row["id"], row["graph_id"], row["visit_id"], row["tenant_key"], row["organizer_id"],
                   row["meeting_id"], row["join_web_url"], row["status"], row["expires_at"])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def graph_time(at: dt.datetime) -> str:
    """A time as Graph writes it (ISO 8601, UTC, Z)."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def parse_graph_time(value: Any) -> dt.datetime | None:
    """Graph's ISO 8601 time (7 decimal places, Z), or None when it is not one."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    text = value.strip().replace("Z", "+00:00")
    if "." in text:  # Python reads at most 6 decimal places; Graph writes 7
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def state_key(secret_key: bytes) -> bytes:
    """The key of clientStates, derived from the gateway key (so it is the same in every process)."""
    return hmac.new(secret_key, b"visitgate graph clientState", hashlib.sha256).digest()


def client_state(key: bytes, subscription_id: UUID) -> str:
    """A subscription's clientState: our id of it and an HMAC of that id (at most 80 characters)."""
    mac = hmac.new(key, subscription_id.bytes, hashlib.sha256).digest()
    return f"{subscription_id}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


class Intake:
    """The webhook's durable queue writer: every request waiting is written by one INSERT (a group commit).

    A request is answered only once its notifications are committed, so Graph is never told "accepted" about a
    notification a crash could lose; writing each request alone cost a round trip and a commit apiece.
    """

    def __init__(self, pool: asyncpg.Pool, on_written: Callable[[], None]) -> None:
        self._pool = pool
        self._on_written = on_written
        self._pending: list[tuple[list[tuple[bytes, UUID, str]], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.accepted = 0

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the writer; requests still waiting are answered with the database's absence."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _rows, future in self._pending:
            if not future.done():
                future.set_exception(asyncpg.InterfaceError("the gateway is stopping"))

    async def put(self, rows: list[tuple[bytes, UUID, str]]) -> None:
        """Queue notifications (digest, subscription, body); returns once they are committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        self._wake.set()
        await future

    async def _run(self) -> None:
        # Up to _FLUSHES INSERTs in flight: a commit waits for its WAL flush, and requests arriving meanwhile
        # would otherwise wait for it too before theirs could even start (PostgreSQL flushes concurrent
        # commits together).
        slots = asyncio.Semaphore(_FLUSHES)
        flushing: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wake.wait()
                await slots.acquire()
                self._wake.clear()
                batch, self._pending = self._pending, []
                if not batch:
                    slots.release()
                    continue
                task = asyncio.create_task(self._flush(batch))
                flushing.add(task)

                def finished(done: asyncio.Task[None]) -> None:
                    flushing.discard(done)
                    slots.release()

                task.add_done_callback(finished)
        finally:
            for task in list(flushing):
                task.cancel()
            await asyncio.gather(*flushing, return_exceptions=True)

    async def _flush(self, batch: list[tuple[list[tuple[bytes, UUID, str]], asyncio.Future[None]]]) -> None:
        digests, subscriptions, bodies = [], [], []
        for rows, _future in batch:
            for digest, subscription, body in rows:
                digests.append(digest)
                subscriptions.append(subscription)
                bodies.append(body)
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(Q["enqueue_notifications"], digests, subscriptions, bodies)
        except asyncio.CancelledError:
            for _rows, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the database's fault, answered to each request (503: Graph retries)
            for _rows, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.accepted += len(digests)
        for _rows, future in batch:
            if not future.done():
                future.set_result(None)
        self._on_written()


class TeamsEvents:
    """Subscriptions to Teams meetings, the webhook's checks, and the worker that turns notifications into events."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, announcer: Announcer, port: GraphPort,
                 tokens: TokenCheck) -> None:
        self._pool = pool
        self._settings = settings
        self._announcer = announcer
        self.port = port  # how Graph is called; tests put one of their own here
        self.tokens = tokens  # how validationTokens are checked (the same)
        # Tokens checked already: digest of (organisation, token) -> (expiry, ours). Graph sends the same token
        # with every notification of a subscription for up to an hour; its signature is checked once.
        self._verified: dict[bytes, tuple[float, bool]] = {}
        self.key = (NotificationKey.from_pem(settings.graph_notification_key_pem)
                    if settings.graph_notification_key_pem else None)
        # Keys of their own, derived from the gateway key: one proves clientStates, one digests Teams identities.
        self._state_key = state_key(settings.secret_key)
        self._identity_key = hmac.new(settings.secret_key, b"visitgate teams identity", hashlib.sha256).digest()
        self._work = asyncio.Event()
        self.intake = Intake(pool, self._work.set)
        # Our subscription id -> (Graph's id, status, until when this is believed), so the webhook reads the
        # database once per subscription and half a minute, not per notification.
        self._known: dict[UUID, tuple[str | None, str, float]] = {}
        self.refused = 0
        self.outcomes: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run work in the background (a subscription made after a launch), cancelled when the gateway stops."""
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: logged; the launch it followed is long answered
                log.exception("Teams background work failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel background work and stop the intake (the gateway is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.intake.stop()

    # ----- subscribing -------------------------------------------------------------------------------------

    def client_state(self, subscription_id: UUID) -> str:
        """The clientState of our subscription: its id and an HMAC of it (only this gateway can make one)."""
        return client_state(self._state_key, subscription_id)

    def _subscription_of(self, client_state: Any) -> UUID | None:
        """Our subscription id from a clientState, if it is one we made (constant-time comparison)."""
        if not isinstance(client_state, str) or len(client_state) > 128:
            return None
        head, _, _mac = client_state.partition(".")
        try:
            subscription_id = UUID(head)
        except ValueError:
            return None
        if not hmac.compare_digest(self.client_state(subscription_id).encode(), client_state.encode()):
            return None
        return subscription_id

    def _request_body(self, subscription_id: UUID, join_web_url: str) -> dict[str, Any]:
        assert self.key is not None
        public = self._settings.public_url
        return {"changeType": "updated",
                "notificationUrl": public + NOTIFICATION_PATH,
                "lifecycleNotificationUrl": public + LIFECYCLE_PATH,
                "resource": RESOURCE.format(url=quote(join_web_url, safe="")),
                "includeResourceData": True,
                "encryptionCertificate": self.key.certificate_b64,
                "encryptionCertificateId": self.key.certificate_id,
                "expirationDateTime": graph_time(_now() + dt.timedelta(
                    seconds=self._settings.graph_subscription_lifetime)),
                "clientState": self.client_state(subscription_id)}

    async def subscribe(self, tenant_key: str, visit_id: UUID, join_web_url: str, *, organizer_id: str,
                        meeting_id: str) -> bool:
        """Subscribe to the meeting's call events once per visit; True when a subscription is live."""
        graph = self.port
        if self.key is None:
            log.warning("Teams presence is off: no Graph notification key (VISITGATE_GRAPH_NOTIFICATION_KEY_FILE)")
            return False
        async with self._pool.acquire() as conn:
            await conn.execute(Q["abandon_stale_pending"], visit_id)
            subscription_id = await conn.fetchval(Q["create_subscription"], visit_id, tenant_key, organizer_id,
                                                  meeting_id, join_web_url)
        if subscription_id is None:
            return True  # another launch of this visit subscribed, or is subscribing
        return await self._create(graph, subscription_id, tenant_key, join_web_url)

    async def _create(self, graph: GraphPort, subscription_id: UUID, tenant_key: str, join_web_url: str) -> bool:
        try:
            status, answer = await graph(tenant_key, "POST", "/subscriptions",
                                         json=self._request_body(subscription_id, join_web_url), beta=True)
        except UpstreamError as exc:
            status, answer = None, None
            log.warning("Graph did not create a subscription (%s)", exc.reason)
        expires = parse_graph_time(answer.get("expirationDateTime")) if isinstance(answer, dict) else None
        graph_id = answer.get("id") if isinstance(answer, dict) else None
        async with self._pool.acquire() as conn:
            if status == 201 and isinstance(graph_id, str) and expires is not None:
                await conn.execute(Q["activate_subscription"], subscription_id, graph_id, expires)
                self._known.pop(subscription_id, None)
                return True
            await conn.execute(Q["set_subscription_status"], subscription_id, "failed")
        if status is not None:
            log.warning("Graph refused a meeting subscription (status %s)", status)
        return False

    # ----- the webhook -------------------------------------------------------------------------------------

    async def _subscription_state(self, subscription_id: UUID) -> tuple[str | None, str] | None:
        known = self._known.get(subscription_id)
        loop_time = asyncio.get_running_loop().time()
        if known is not None and known[2] > loop_time:
            return known[0], known[1]
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(Q["subscription"], subscription_id)
        if row is None:
            return None
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[subscription_id] = (row["graph_id"], row["status"], loop_time + _CACHE_SECONDS)
        return row["graph_id"], row["status"]

    async def screen(self, document: Any, *, lifecycle: bool, text: str | None = None) -> list[tuple[bytes, UUID, str]]:
        """The notifications of a webhook call that are ours, as queue rows (cheap checks only).

        `text`, the body as received, is kept as it is when it holds a single notification (as Graph mostly
        sends them): writing the notification out again cost a tenth of the intake.
        """
        items = document.get("value") if isinstance(document, dict) else None
        if not isinstance(items, list) or not items or len(items) > 1000:
            raise BadRequest("A Graph notification collection has a non-empty `value` array.",
                             reason="malformed_notification")
        rows: list[tuple[bytes, UUID, str]] = []
        accepted: list[Any] = []
        for item in items:
            row = await self._screen_item(item, lifecycle=lifecycle)
            if row is None:
                self.refused += 1
            else:
                rows.append(row)
                accepted.append(item)
        if text is not None and len(items) == 1:
            return [(digest, subscription, text) for digest, subscription, _none in rows]
        # Several in one call: each is kept on its own (the worker takes them one by one), as a collection of one
        # with the call's validationTokens, which the worker checks.
        tokens = document.get("validationTokens")
        if tokens is None:
            return [(digest, subscription, json.dumps(item, separators=(",", ":")))
                    for (digest, subscription, _none), item in zip(rows, accepted)]
        return [(digest, subscription, json.dumps({"value": [item], "validationTokens": tokens},
                                                  separators=(",", ":")))
                for (digest, subscription, _none), item in zip(rows, accepted)]

    async def _screen_item(self, item: Any, *, lifecycle: bool) -> tuple[bytes, UUID, str] | None:
        if not isinstance(item, dict):
            return None
        graph_id = item.get("subscriptionId")
        subscription_id = self._subscription_of(item.get("clientState"))
        if subscription_id is None or not isinstance(graph_id, str):
            return None
        state = await self._subscription_state(subscription_id)
        if state is None or state[1] not in ("pending", "active"):
            return None
        if state[0] is not None and not hmac.compare_digest(state[0].encode(), graph_id.encode()):
            return None
        if lifecycle or "lifecycleEvent" in item:
            if item.get("lifecycleEvent") not in LIFECYCLE_EVENTS:
                return None
            # Rare: the whole notification, in a canonical form, is what is not queued twice.
            identity = json.dumps(item, sort_keys=True, separators=(",", ":"))
        else:
            content = item.get("encryptedContent")
            if self.key is None or not isinstance(content, dict) \
                    or content.get("encryptionCertificateId") != self.key.certificate_id \
                    or not isinstance(content.get("data"), str) or not isinstance(content.get("dataSignature"), str):
                return None
            # Graph's key is random per notification, so its ciphertext and signature name it (and are cheap to
            # take: a canonical form of the whole notification cost as much as the rest of the intake).
            identity = f"{content['data']}\n{content['dataSignature']}"
        digest = hashlib.sha256(f"{graph_id}\n{identity}".encode()).digest()
        return digest, subscription_id, ""

    # ----- the worker --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Process queued notifications, renewals and reconciliations until cancelled."""
        last_purge = 0.0
        while True:
            try:
                busy = await self.work_once()
                loop_time = asyncio.get_running_loop().time()
                if loop_time - last_purge > 3600:
                    last_purge = loop_time
                    async with self._pool.acquire() as conn:
                        await conn.execute(Q["purge_notifications"], _PURGE_AFTER)
            except asyncio.CancelledError:
                raise
            except (*eventlog.UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("Teams events worker: database unavailable (%s)", type(exc).__name__)
                busy = False
            except Exception:  # a bug: logged, and the worker lives on
                log.exception("Teams events worker failed")
                busy = False
            if not busy:
                self._work.clear()
                try:
                    await asyncio.wait_for(self._work.wait(), self._settings.graph_poll_interval)
                except TimeoutError:
                    pass

    async def work_once(self) -> bool:
        """One round: queued notifications, then renewals, then reconciliations due. True if there was work."""
        async with self._pool.acquire() as conn:
            claimed = await conn.fetch(Q["claim_notifications"], 50, 30.0)
        for row in claimed:
            await self._process(row)
        ended = await self.end_ended()
        resubscribed = await self.resubscribe_failed()
        renewed = await self.renew_due()
        reconciled = await self.reconcile_due()
        return bool(claimed) or ended > 0 or resubscribed > 0 or renewed > 0 or reconciled > 0

    async def resubscribe_failed(self) -> int:
        """Subscribe again the live visits whose subscription Graph refused or never answered (backing off)."""
        async with self._pool.acquire() as conn:
            due = [Subscription.from_row(r) for r in await conn.fetch(Q["due_resubscriptions"],
                                                                       _RESUBSCRIBE_AFTER)]
        done = 0
        for failed in due:
            done += await self.subscribe(failed.tenant_key, failed.visit_id, failed.join_web_url,
                                         organizer_id=failed.organizer_id, meeting_id=failed.meeting_id)
        return done

    async def end_ended(self) -> int:
        """Let go of the subscriptions of visits that ended (DELETE at Graph); the attendance report follows."""
        async with self._pool.acquire() as conn:
            ended = [Subscription.from_row(r) for r in await conn.fetch(Q["end_subscriptions"],
                                                                         self._settings.graph_reconcile_delay)]
        for subscription in ended:
            self._known.pop(subscription.id, None)
            if subscription.graph_id is None:
                continue
            try:
                # 404: Graph had let it go already. Anything else: it lapses on its own within three days.
                await self.port(subscription.tenant_key, "DELETE",
                                f"/subscriptions/{quote(subscription.graph_id, safe='')}", beta=True)
            except UpstreamError as exc:
                log.info("an ended visit's Graph subscription was not deleted (%s); it expires", exc.reason)
        return len(ended)

    async def _subscription(self, subscription_id: UUID) -> Subscription | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(Q["subscription"], subscription_id)
        return None if row is None else Subscription.from_row(row)

    async def _finish(self, notification_id: int, outcome: str, *, counted: str | None = None) -> None:
        self.outcomes[counted or outcome] = self.outcomes.get(counted or outcome, 0) + 1
        async with self._pool.acquire() as conn:
            await conn.execute(Q["finish_notification"], notification_id, outcome)

    async def _authentic(self, subscription: Subscription, tokens: Any, received_at: dt.datetime) -> str | None:
        """Why the validationTokens of a notification do not prove it came from Graph for us, or None when they
        do: each must be authentic (Entra's signature, issuer, Graph's change tracking, unexpired when the
        notification arrived) and one must be for this organisation's application and tenant."""
        if not isinstance(tokens, list) or not tokens or len(tokens) > _MAX_TOKENS \
                or not all(isinstance(t, str) and 0 < len(t) <= 8192 for t in tokens):
            return "graph_token_missing"
        at = received_at.timestamp()
        ours = False
        for token in tokens:
            digest = hashlib.sha256(f"{subscription.tenant_key}\n{token}".encode()).digest()
            known = self._verified.get(digest)
            if known is None or known[0] + 60 < at:
                try:
                    known = await self.tokens(subscription.tenant_key, token, at=at)
                except GraphRefused as refused:
                    return refused.reason
                if len(self._verified) > 10_000:
                    self._verified = {d: v for d, v in self._verified.items() if v[0] > _now().timestamp()}
                self._verified[digest] = known
            ours = ours or known[1]
        return None if ours else "graph_token_audience"

    async def _process(self, row: asyncpg.Record) -> None:
        subscription = await self._subscription(row["subscription_id"])
        try:
            item = json.loads(row["body"])
        except (TypeError, ValueError):
            item = None
        tokens = item.get("validationTokens") if isinstance(item, dict) else None
        if isinstance(item, dict) and isinstance(item.get("value"), list) and len(item["value"]) == 1:
            item = item["value"][0]  # a collection of one, kept as Graph sent it (with its validationTokens)
        if subscription is None or not isinstance(item, dict):
            await self._finish(row["id"], "malformed")
            return
        if "encryptedContent" in item or tokens is not None:
            # Graph's word that the collection is its own, for us: required with resource data, checked whenever
            # given. Until it is, nothing of the notification is used.
            try:
                why = await self._authentic(subscription, tokens, row["received_at"])
            except UpstreamError as exc:  # Entra's keys unreadable: tried again later
                log.warning("a Graph notification's validation tokens could not be checked (%s)", exc.reason)
                if row["attempts"] >= _MAX_ATTEMPTS:
                    await self._finish(row["id"], "gave_up")
                return
            if why is not None:
                log.warning("a Graph notification was refused by the worker: its validation tokens (%s)", why)
                # The queue's record says bad_signature (the collection's signatures failed); the count names it.
                await self._finish(row["id"], "bad_signature", counted="bad_token")
                return
        if "lifecycleEvent" in item:
            try:
                await self._lifecycle(subscription, str(item["lifecycleEvent"]))
            except UpstreamError as exc:
                log.warning("Graph failed a lifecycle step (%s); retried later", exc.reason)
                if row["attempts"] >= _MAX_ATTEMPTS:
                    await self._finish(row["id"], "gave_up")
                return
            await self._finish(row["id"], "applied")
            return
        assert self.key is not None  # the webhook accepts no encrypted content without a key
        try:
            # Off the event loop: unwrapping the key (RSA-OAEP, ~0.5 ms) held the loop, and with it the webhook's
            # intake, for as long; OpenSSL lets go of the GIL meanwhile, so it runs beside the loop.
            resource = await asyncio.to_thread(self.key.decrypt, item.get("encryptedContent"))
        except NotificationRejected as rejected:
            log.info("a Graph notification was refused by the worker: %s", rejected.outcome)
            await self._finish(row["id"], rejected.outcome)
            return
        written = await self._apply(subscription, resource, row["id"])
        if written:
            self._announcer.announce(written)

    async def _apply(self, subscription: Subscription, resource: dict[str, Any], notification_id: int) -> int:
        """Write the presence events of one call event and finish its notification, in one transaction."""
        kind = str(resource.get("eventType") or resource.get("callEventType") or "")
        at = min(parse_graph_time(resource.get("eventDateTime")) or _now(), _now())
        outcome, last = "ignored", 0
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(subscription.visit_id))
            if kind.endswith("CallRosterUpdate") or kind == "rosterUpdated":
                outcome = "applied"
                for change, event_kind in (("joined", "connected"), ("exited", "disconnected")):
                    entries = resource.get(f"activeParticipants@{change}") or []
                    for entry in entries if isinstance(entries, list) else []:
                        written = await self._roster_entry(conn, subscription, entry, change, event_kind, at)
                        last = max(last, written or 0)
            elif kind.endswith("CallEnded") or kind == "callEnded":
                outcome = "applied"
                due = _now() + dt.timedelta(seconds=self._settings.graph_reconcile_delay)
                await conn.execute(Q["schedule_reconcile"], subscription.id, due)
            elif kind.endswith("CallStarted") or kind == "callStarted":
                outcome = "applied"
            await conn.execute(Q["finish_notification"], notification_id, outcome)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return last

    async def _roster_entry(self, conn: asyncpg.Connection, subscription: Subscription, entry: Any, change: str,
                            event_kind: str, at: dt.datetime) -> int | None:
        if not isinstance(entry, dict):
            return None
        leg = entry.get("Id") or entry.get("id")
        identity = _identity(entry.get("Identity") or entry.get("identity"))
        if not isinstance(leg, str) or identity is None:
            return None
        participant_id = await self._participant(conn, subscription, *identity)
        key = uuid.uuid5(_KEY_NAMESPACE, f"{subscription.visit_id}|leg|{leg}|{change}")
        return await eventlog.append_keyed_event(conn, subscription.visit_id, participant_id, event_kind, key, at)

    def _identity_digest(self, identity_id: str) -> bytes:
        return hmac.new(self._identity_key, identity_id.encode(), hashlib.sha256).digest()

    async def _participant(self, conn: asyncpg.Connection, subscription: Subscription, is_user: bool,
                           identity_id: str) -> UUID:
        """Our participant for a Teams identity, matched once and remembered (as a digest)."""
        visit_id, digest = subscription.visit_id, self._identity_digest(identity_id)
        found: UUID | None = await conn.fetchval(Q["teams_participant"], visit_id, digest)
        if found is not None:
            return found
        if is_user and identity_id == subscription.organizer_id:
            candidate = await conn.fetchval(Q["first_provider"], visit_id) \
                or await participants.provider_participant(conn, visit_id, None)
        elif is_user:
            candidate = await participants.add_guest(conn, visit_id, "other")  # someone else of the organisation
        else:
            waiting = await conn.fetch(Q["unmatched_lobby_participants"], visit_id)
            candidate = waiting[0]["id"] if waiting else await participants.add_guest(conn, visit_id, "other")
        mapped: UUID | None = await conn.fetchval(Q["map_teams_participant"], visit_id, digest, candidate)
        if mapped is None:
            mapped = await conn.fetchval(Q["teams_participant"], visit_id, digest)
        assert mapped is not None
        return mapped

    # ----- lifecycle, renewal, reconciliation --------------------------------------------------------------

    async def _lifecycle(self, subscription: Subscription, event: str) -> None:
        if event == "reauthorizationRequired":
            await self.renew(subscription)
        elif event == "subscriptionRemoved":
            await self._resubscribe(subscription)
        elif event == "missed":
            async with self._pool.acquire() as conn:
                await conn.execute(Q["schedule_reconcile"], subscription.id, _now())

    async def _resubscribe(self, subscription: Subscription) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(Q["set_subscription_status"], subscription.id, "removed")
            ended = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM visit_ends WHERE visit_id = $1)",
                                        subscription.visit_id)
            # Whatever the gap missed is read from the attendance report once the call ends.
            await conn.execute(Q["schedule_reconcile"], subscription.id,
                               _now() + dt.timedelta(seconds=self._settings.graph_reconcile_delay))
        self._known.pop(subscription.id, None)
        if not ended:
            await self.subscribe(subscription.tenant_key, subscription.visit_id, subscription.join_web_url,
                                 organizer_id=subscription.organizer_id, meeting_id=subscription.meeting_id)

    async def renew(self, subscription: Subscription) -> bool:
        """Move the subscription's expiry a full lifetime on (also what reauthorizes it); True if Graph did."""
        graph = self.port
        if subscription.graph_id is None:
            return False
        expires = _now() + dt.timedelta(seconds=self._settings.graph_subscription_lifetime)
        status, answer = await graph(subscription.tenant_key, "PATCH",
                                     f"/subscriptions/{quote(subscription.graph_id, safe='')}",
                                     json={"expirationDateTime": graph_time(expires)}, beta=True)
        if status == 200:
            granted = parse_graph_time(answer.get("expirationDateTime")) if isinstance(answer, dict) else None
            async with self._pool.acquire() as conn:
                await conn.execute(Q["renewed"], subscription.id, granted or expires)
            return True
        if status == 404:  # Graph no longer has it: subscribe again
            await self._resubscribe(subscription)
            return False
        raise UpstreamError(f"Graph answered {status} to a renewal", reason="graph_error", upstream_status=status)

    async def renew_due(self) -> int:
        """Renew the subscriptions close to expiry (claimed, so one process renews each); how many were renewed."""
        async with self._pool.acquire() as conn:
            due = [Subscription.from_row(r) for r in await conn.fetch(Q["due_renewals"],
                                                                      self._settings.graph_renew_before)]
        done = 0
        for subscription in due:
            try:
                done += await self.renew(subscription)
            except UpstreamError as exc:  # tried again once the claim lapses
                log.warning("a Graph subscription was not renewed (%s)", exc.reason)
        return done

    async def reconcile_due(self) -> int:
        """Read the attendance reports that are due; how many were read."""
        async with self._pool.acquire() as conn:
            due = [Subscription.from_row(r) for r in await conn.fetch(Q["due_reconciliations"])]
        done = 0
        for subscription in due:
            try:
                await self.reconcile(subscription)
                done += 1
            except UpstreamError as exc:
                log.warning("an attendance report was not read (%s); tried again later", exc.reason)
        return done

    async def reconcile_visit(self, visit_id: UUID) -> int:
        """Reconcile a visit's presence from its meeting's attendance report now; the events written."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(Q["latest_subscription_for_visit"], visit_id)
        return 0 if row is None else await self.reconcile(Subscription.from_row(row))

    async def reconcile(self, subscription: Subscription) -> int:
        """Add what the attendance report shows and the event log lacks, once: each stretch a participant
        attended gets a `connected` (and a `disconnected` when it ended) unless one is there already.

        Graph produces the report some time after the call: while it answers 404 or has no report or record, the
        report is read again later (graph_report_backoff, doubling, graph_report_retries reads in all); what was
        written meanwhile is not written twice (idempotency keys and the events-near check)."""
        base = (f"/users/{quote(subscription.organizer_id, safe='')}"
                f"/onlineMeetings/{quote(subscription.meeting_id, safe='')}/attendanceReports")
        written: list[int] = []
        try:
            ready = await self._read_report(subscription, base, written)
        finally:
            if written:
                self._announcer.announce(max(written))
        async with self._pool.acquire() as conn:
            if ready:
                await conn.execute(Q["reconciled"], subscription.id)
            elif await conn.fetchval(Q["report_not_ready"], subscription.id, self._settings.graph_report_backoff,
                                     self._settings.graph_report_retries):
                log.info("an attendance report is not ready yet; read again later")
            else:
                log.warning("an attendance report was not produced in time; given up")
        return len(written)

    async def _read_report(self, subscription: Subscription, base: str, written: list[int]) -> bool:
        """Reconcile from each attendance report of the meeting; False when Graph has not produced it yet."""
        reports = await self._read_all(subscription.tenant_key, base)
        if not reports:
            return False
        records_seen = 0
        for report in reports:
            report_id = report.get("id") if isinstance(report, dict) else None
            if not isinstance(report_id, str):
                continue
            records = await self._read_all(subscription.tenant_key,
                                           f"{base}/{quote(report_id, safe='')}/attendanceRecords")
            if records is None:
                return False
            records_seen += len(records)
            for record in records:
                written.extend(await self._reconcile_record(subscription, record))
        return records_seen > 0

    def _graph_path(self, link: Any) -> str | None:
        """The path under /v1.0 of an @odata.nextLink, when it is on Graph's own base URL (else None)."""
        prefix = self._settings.graph_url.rstrip("/") + "/v1.0/"
        if not isinstance(link, str) or len(link) > 4096 or not link.startswith(prefix):
            return None
        return "/" + link[len(prefix):]

    async def _read_all(self, tenant_key: str, path: str) -> list[Any] | None:
        """Every item of a Graph collection (v1.0), following its @odata.nextLink pages while they stay on Graph's
        base URL, _MAX_PAGES pages at most; None when Graph answers 404 (not there yet)."""
        items: list[Any] = []
        for _page in range(_MAX_PAGES):
            status, answer = await self.port(tenant_key, "GET", path)
            if status == 404:
                return None
            if status != 200 or not isinstance(answer, dict):
                raise UpstreamError(f"Graph answered {status} for an attendance collection", reason="graph_error",
                                    upstream_status=status)
            value = answer.get("value")
            items.extend(value if isinstance(value, list) else [])
            link = answer.get("@odata.nextLink")
            if link is None:
                return items
            next_path = self._graph_path(link)
            if next_path is None:  # never followed off Graph: what was read is used (reconciling is idempotent)
                log.warning("an attendance collection's next page is not on Graph's base URL; not followed")
                return items
            path = next_path
        log.warning("an attendance collection has more than %d pages; the rest is not read", _MAX_PAGES)
        return items

    async def _reconcile_record(self, subscription: Subscription, record: Any) -> list[int]:
        identity = record.get("identity") if isinstance(record, dict) else None
        identity_id = identity.get("id") if isinstance(identity, dict) else None
        intervals = record.get("attendanceIntervals") if isinstance(record, dict) else None
        if not isinstance(identity, dict) or not isinstance(identity_id, str) or not identity_id \
                or not isinstance(intervals, list):
            return []
        # A member of the organisation has a tenant; people who joined anonymously have none.
        is_user = identity_id == subscription.organizer_id or bool(identity.get("tenantId"))
        slack = dt.timedelta(minutes=2)
        written: list[int] = []
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(subscription.visit_id))
            participant_id = await self._participant(conn, subscription, is_user, identity_id)
            for interval in intervals:
                joined = parse_graph_time(interval.get("joinDateTime")) if isinstance(interval, dict) else None
                if joined is None:
                    continue
                left = parse_graph_time(interval.get("leaveDateTime"))
                stamp = f"{subscription.visit_id}|attendance|{identity_id}|{joined.isoformat()}"
                seen = await conn.fetchval(Q["events_near"], subscription.visit_id, participant_id, "connected",
                                           joined - slack, left or _now())
                if not seen:
                    event = await eventlog.append_keyed_event(
                        conn, subscription.visit_id, participant_id, "connected",
                        uuid.uuid5(_KEY_NAMESPACE, stamp + "|joined"), joined)
                    written.extend([event] if event else [])
                if left is not None:
                    seen = await conn.fetchval(Q["events_near"], subscription.visit_id, participant_id,
                                               "disconnected", joined, left + slack)
                    if not seen:
                        event = await eventlog.append_keyed_event(
                            conn, subscription.visit_id, participant_id, "disconnected",
                            uuid.uuid5(_KEY_NAMESPACE, stamp + "|left"), left)
                        written.extend([event] if event else [])
        return written


def _identity(identity: Any) -> tuple[bool, str] | None:
    """(is a member of an Entra tenant, the identity's id) from a roster entry's identity set."""
    if not isinstance(identity, dict):
        return None
    for name, value in identity.items():
        if isinstance(value, dict):
            found = value.get("Id") or value.get("id")
            if isinstance(found, str) and 0 < len(found) <= 256:
                return name.lower() == "user", found
    return None
