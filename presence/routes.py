"""Routes and resources of the presence part, mounted in one place."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import metrics
from gateway.appkeys import DB, DSN, EHR, SEALER, SETTINGS, SIGNING_KEY
from gateway.backend_auth import BackendTokens

from . import teams_webhook
from .announcer import Announcer
from .appkeys import ANNOUNCER, BUS, CHAT_BUDGET, HUB, LEASE, STORE_BUDGET, SWEEPER, TEAMS, USAGE, WEBHOOKS, WRITEBACK
from .bus import PresenceBus
from .hub import Hub
from .lease import ProcessLease
from .usage import UsageFollower
from .visit_end import VisitSweeper
from .webhooks import WebhookWorker, webhook_session
from .limits import CHAT_PER_MINUTE, StoreBudget
from .writeback import WritebackMetrics, WritebackWorker
from .ws import presence_socket


def setup(app: web.Application) -> None:
    """Add the websocket endpoint, the hub, the bus and the write-back worker."""
    app[HUB] = Hub()
    app[STORE_BUDGET] = StoreBudget()
    app[CHAT_BUDGET] = StoreBudget(CHAT_PER_MINUTE)
    metrics.registry(app).register(_PresenceCollector(app))
    app.cleanup_ctx.append(_announcer)
    app.cleanup_ctx.append(_bus)
    app.cleanup_ctx.append(_lease)  # ended before the bus stops: its last closing events are announced
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/ws", presence_socket, name="presence_socket")
    app.cleanup_ctx.append(_writeback(WritebackMetrics(app)))  # the outbox to FHIR Encounter worker
    app.cleanup_ctx.append(_sweeper)  # ends visits left idle or past their window
    app.cleanup_ctx.append(_webhooks)  # the customers' webhook endpoints, from their own outbox
    teams_webhook.setup(app)  # Graph's notifications of Teams meetings, and their worker
    app.cleanup_ctx.append(_usage)  # the usage report's per-visit figures, kept as events arrive


async def _announcer(app: web.Application) -> AsyncIterator[None]:
    app[ANNOUNCER] = Announcer(app[DB])
    yield
    await app[ANNOUNCER].close()  # the last notification goes out before the pool closes


async def _bus(app: web.Application) -> AsyncIterator[None]:
    bus = PresenceBus(app[DB], app[DSN], app[HUB], app[SEALER])
    app[BUS] = bus
    await bus.start()
    yield
    await bus.stop()


async def _lease(app: web.Application) -> AsyncIterator[None]:
    lease = ProcessLease(app[DB], app[ANNOUNCER], app[SETTINGS].presence_lease)
    app[LEASE] = lease
    await lease.start()
    yield
    await lease.stop()


class _PresenceCollector(Collector):
    """Counts of the bus and the announcer, read when /metrics is scraped (nothing counted per event here)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        """The current counts (none before the database and the bus have started)."""
        announcer, bus, hub = self._app.get(ANNOUNCER), self._app.get(BUS), self._app.get(HUB)
        if announcer is not None:
            yield CounterMetricFamily("visitgate_presence_notifications_sent",
                                      "Event notifications this process sent (each covers every write before it)",
                                      value=announcer.notifications)
        if bus is not None:
            yield CounterMetricFamily("visitgate_presence_bus_notices", "Event notifications received",
                                      value=bus.notices)
            yield CounterMetricFamily("visitgate_presence_bus_reads", "Reads of the event log by the bus",
                                      value=bus.reads)
            yield CounterMetricFamily("visitgate_presence_bus_events", "Events read by the bus",
                                      value=bus.events_read)
        if hub is not None:
            yield GaugeMetricFamily("visitgate_presence_sockets", "Subscribed presence sockets", value=hub.count())
        lease = self._app.get(LEASE)
        if lease is not None:
            yield GaugeMetricFamily("visitgate_presence_held_sockets",
                                    "Presence sockets open under this process's lease", value=lease.count())
            yield CounterMetricFamily("visitgate_presence_lapsed_processes",
                                      "Other gateway processes whose lapsed lease this process ended",
                                      value=lease.swept_processes)
            yield CounterMetricFamily("visitgate_presence_lapsed_sockets",
                                      "Closing events this process wrote for the sockets of lapsed processes",
                                      value=lease.swept_sockets)
            yield CounterMetricFamily("visitgate_presence_lease_lost",
                                      "Times this process found its own lease lapsed and reconnected its sockets",
                                      value=lease.written_off)
            yield GaugeMetricFamily("visitgate_presence_events_kept",
                                    "Socket events waiting in memory for the database to come back", value=lease.kept())
            yield CounterMetricFamily("visitgate_presence_events_written_late",
                                      "Socket events written after the database came back", value=lease.written_late)
            yield CounterMetricFamily("visitgate_presence_events_dropped",
                                      "Socket events dropped while the database was away (memory full, or a stop)",
                                      value=lease.lost)
        events = self._app.get(TEAMS)
        if events is not None:
            yield CounterMetricFamily("visitgate_graph_notifications_accepted",
                                      "Graph notifications the webhook queued (answered 202)",
                                      value=events.intake.accepted)
            yield CounterMetricFamily("visitgate_graph_notifications_refused",
                                      "Graph notifications the webhook refused (clientState, subscription, content)",
                                      value=events.refused)
            outcomes = CounterMetricFamily("visitgate_graph_notifications_processed",
                                           "Queued Graph notifications the worker finished, by outcome",
                                           labels=["outcome"])
            for outcome, count in sorted(events.outcomes.items()):
                outcomes.add_metric([outcome], count)
            yield outcomes
        budget = self._app.get(STORE_BUDGET)
        if budget is not None:
            yield CounterMetricFamily("visitgate_presence_rate_limited",
                                      "Requests refused because their participant stored its budget of events",
                                      value=budget.refused)


async def _close_sockets(app: web.Application) -> None:
    # Before the cleanup contexts run, so each socket's last event is written while the pool is open.
    await app[HUB].close_all()


def _writeback(counters: WritebackMetrics) -> Callable[[web.Application], AsyncIterator[None]]:
    # The counters are registered while the application is built; the worker starts with it.
    async def worker(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        tokens = BackendTokens(app[EHR], app[SIGNING_KEY], settings.writeback_request_timeout)
        app[WRITEBACK] = WritebackWorker(app[DB], app[EHR], app[SEALER], tokens, settings, counters)
        task = asyncio.create_task(app[WRITEBACK].run()) if settings.writeback_enabled else None
        yield
        if task is not None:
            task.cancel()
            # Bounded: the worker hands its visits back within seconds; shutdown never waits longer.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 15)

    return worker


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    app[SWEEPER] = VisitSweeper(app[DB], app[ANNOUNCER], app[SETTINGS])
    task = asyncio.create_task(app[SWEEPER].run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _usage(app: web.Application) -> AsyncIterator[None]:
    app[USAGE] = UsageFollower(app[DB])
    task = asyncio.create_task(app[USAGE].run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with webhook_session(settings) as http:
        app[WEBHOOKS] = WebhookWorker(app[DB], http, app[SEALER], settings)
        task = asyncio.create_task(app[WEBHOOKS].run()) if settings.webhooks_enabled else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
