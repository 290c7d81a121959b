"""Routes and resources of the presence part, mounted in one place."""
from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add the websocket endpoint, the hub, the bus and the write-back worker."""
