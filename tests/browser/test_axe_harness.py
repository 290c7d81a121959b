"""The accessibility check itself: axe runs in a page under a strict CSP and finds what it should."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.browser.axe import axe_violations
from tests.browser.conftest import OpenContext

pytestmark = pytest.mark.browser

CSP = "default-src 'self'; object-src 'none'; base-uri 'none'"
PAGES = {
    "/clean": '<!doctype html><html lang="en"><head><title>Clean</title></head><body><main><h1>Clean</h1>'
              '<label for="n">Name</label><input id="n"></main></body></html>',
    "/broken": '<!doctype html><html lang="en"><head><title>Broken</title></head><body><main><h1>Broken</h1>'
               '<img src="/x.png"><input id="n"></main></body></html>',
}


@pytest.fixture
async def pages() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGES[request.path], content_type="text/html",
                            headers={"Content-Security-Policy": CSP})

    app = web.Application()
    for path in PAGES:
        app.router.add_get(path, page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url(""))
    finally:
        await server.close()


async def test_axe_names_the_missing_alt_and_label_and_passes_a_clean_page(pages: str,
                                                                           open_context: OpenContext) -> None:
    page = await (await open_context("desktop")).new_page()
    await page.goto(f"{pages}/broken")
    found = {v["id"] for v in await axe_violations(page)}
    assert {"image-alt", "label"} <= found, found
    await page.goto(f"{pages}/clean")
    assert await axe_violations(page) == []
