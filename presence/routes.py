"""Routes and resources of the presence part, mounted in one place."""
from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.appkeys import DB, DSN, SEALER

from . import writeback
from .appkeys import BUS, HUB
from .bus import PresenceBus
from .hub import Hub
from .ws import presence_socket


def setup(app: web.Application) -> None:
    """Add the websocket endpoint, the hub, the bus and the write-back worker."""
    app[HUB] = Hub()
    app.cleanup_ctx.append(_bus)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/ws", presence_socket, name="presence_socket")
    writeback.setup(app)  # the outbox to FHIR Encounter worker, in a cleanup_ctx


async def _bus(app: web.Application) -> AsyncIterator[None]:
    bus = PresenceBus(app[DB], app[DSN], app[HUB], app[SEALER])
    app[BUS] = bus
    await bus.start()
    yield
    await bus.stop()


async def _close_sockets(app: web.Application) -> None:
    # Before the cleanup contexts run, so each socket's last event is written while the pool is open.
    await app[HUB].close_all()
