"""Routes and resources of the presence part, mounted in one place."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.appkeys import DB, DSN, HTTP, SEALER, SETTINGS, SIGNING_KEY

from .appkeys import BUS, HUB, WRITEBACK
from .backend_auth import BackendTokens
from .bus import PresenceBus
from .hub import Hub
from .writeback import WritebackMetrics, WritebackWorker
from .ws import presence_socket


def setup(app: web.Application) -> None:
    """Add the websocket endpoint, the hub, the bus and the write-back worker."""
    app[HUB] = Hub()
    app.cleanup_ctx.append(_bus)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/ws", presence_socket, name="presence_socket")
    app.cleanup_ctx.append(_writeback(WritebackMetrics(app)))  # the outbox to FHIR Encounter worker


async def _bus(app: web.Application) -> AsyncIterator[None]:
    bus = PresenceBus(app[DB], app[DSN], app[HUB], app[SEALER])
    app[BUS] = bus
    await bus.start()
    yield
    await bus.stop()


async def _close_sockets(app: web.Application) -> None:
    # Before the cleanup contexts run, so each socket's last event is written while the pool is open.
    await app[HUB].close_all()


def _writeback(counters: WritebackMetrics) -> Callable[[web.Application], AsyncIterator[None]]:
    # The counters are registered while the application is built; the worker starts with it.
    async def worker(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        tokens = BackendTokens(app[HTTP], app[SIGNING_KEY], settings.writeback_request_timeout)
        app[WRITEBACK] = WritebackWorker(app[DB], app[HTTP], app[SEALER], tokens, settings, counters)
        task = asyncio.create_task(app[WRITEBACK].run()) if settings.writeback_enabled else None
        yield
        if task is not None:
            task.cancel()
            # Bounded: the worker hands its visits back within seconds; shutdown never waits longer.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 15)

    return worker
