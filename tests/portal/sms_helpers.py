"""The ACS double for the portal's SMS set-up tests, and a gateway configured to use it."""
from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sandbox.carriers import AcsDouble

from .conftest import ORG, Portal

ACS_KEY = base64.b64encode(b"p" * 64).decode()
ACS_SENDER = "+18005550100"


@pytest.fixture
def lro_delay() -> float:
    """Seconds each phone number operation of the double runs (a test overrides this fixture)."""
    return 0.0


@pytest.fixture
async def acs(lro_delay: float) -> AsyncIterator[tuple[AcsDouble, str]]:
    """The ACS double on 127.0.0.1 (at /acs) and its endpoint."""
    double = AcsDouble(access_key=base64.b64decode(ACS_KEY), owned_number=ACS_SENDER, lro_delay=lro_delay)
    app = web.Application()
    double.add_routes(app.router, "/acs")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield double, str(server.make_url("/acs"))
    finally:
        await server.close()


def acs_settings(endpoint: str) -> dict[str, Any]:
    """Gateway settings that send SMS and buy numbers through the double, polling operations often."""
    return dict(sms_provider="acs", acs_endpoint=endpoint, acs_access_key=ACS_KEY, sms_from=ACS_SENDER,
                sms_operation_poll_interval=0.1)


async def post_form(portal: Portal, path: str, form: dict[str, Any] | list[tuple[str, str]]) -> tuple[int, str]:
    """POST a portal form as the page would (same origin); answers status and body."""
    async with portal.browser.post(portal.gateway_url + path, data=form, allow_redirects=False,
                                   headers={"Origin": portal.gateway_url}) as r:
        return r.status, await r.text()


async def operations(portal: Portal) -> list[dict[str, Any]]:
    """The progress the page polls."""
    r = await portal.get(f"/portal/{ORG}/sms/operations.json", headers={"Accept": "application/json"})
    assert r.status == 200, await r.text()
    found: list[dict[str, Any]] = (await r.json())["operations"]
    return found


async def until_finished(portal: Portal, limit: float = 20.0) -> dict[str, Any]:
    """The latest operation once it has finished (polled as the page does, bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        latest = (await operations(portal))[0]
        if latest["finished"]:
            return latest
        assert loop.time() < deadline, latest
        await asyncio.sleep(0.05)
