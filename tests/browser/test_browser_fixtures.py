"""The browser fixtures are what the other browser tests assume: third-party cookies are blocked in
iframes, and the phone context looks like a phone to the page."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Page

pytestmark = pytest.mark.browser

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
OpenContext = Callable[[str], Awaitable[BrowserContext]]

# The frame sets three cookies on 127.0.0.1: one by header and one by script, both unpartitioned
# (SameSite=None; Secure, the only kind a cross-site iframe could ever use), and one partitioned (CHIPS),
# which Chromium allows in a third-party iframe even with third-party cookies blocked. The partitioned one
# is the control: it shows the frame can store cookies at all, so the missing ones were blocked and not
# lost to a broken probe. Then it reports what the server was sent and what the script can read.
FRAME = """<!doctype html><meta charset="utf-8"><title>cookie probe</title>
<pre id="result"></pre>
<script>
const tag = new URLSearchParams(location.search).get("tag");
document.cookie = tag + "_js=1; SameSite=None; Secure; Path=/";
fetch("/echo", {cache: "no-store"}).then(r => r.text()).then(sent => {
  const result = document.getElementById("result");
  result.textContent = JSON.stringify({sent: sent, visible: document.cookie});
  result.dataset.done = "1";
});
</script>"""


def _cookie_probe_app() -> web.Application:
    async def top(request: web.Request) -> web.Response:
        src = f"http://127.0.0.1:{request.url.port}/frame?tag={request.query['tag']}"
        return web.Response(text=f'<!doctype html><title>top</title><iframe id="probe" src="{src}"></iframe>',
                            content_type="text/html")

    async def frame(request: web.Request) -> web.Response:
        tag = request.query["tag"]
        response = web.Response(text=FRAME, content_type="text/html", headers={"Cache-Control": "no-store"})
        response.headers.add("Set-Cookie", f"{tag}_hdr=1; SameSite=None; Secure; Path=/")
        response.headers.add("Set-Cookie", f"{tag}_chips=1; SameSite=None; Secure; Path=/; Partitioned")
        return response

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Cookie", ""), headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/top", top)
    app.router.add_get("/frame", frame)
    app.router.add_get("/echo", echo)
    return app


def _names(cookie_string: str) -> set[str]:
    return {part.split("=", 1)[0].strip() for part in cookie_string.split(";") if part.strip()}


async def _probe(page: Page, url: str, *, framed: bool) -> tuple[set[str], set[str]]:
    """Load the probe (in an iframe of a localhost page, or top-level) and answer the cookie names the
    server was sent and the script could read."""
    await page.goto(url)
    scope: Any = page.frame_locator("#probe") if framed else page
    result = scope.locator("#result[data-done]")
    await result.wait_for(timeout=5_000)
    report = json.loads(await result.text_content() or "{}")
    return _names(report["sent"]), _names(report["visible"])


@pytest.mark.parametrize("profile", ["desktop", "phone"])
async def test_browser_blocks_third_party_cookies_in_iframes(
        open_context: OpenContext, profile: str, aiohttp_server: ServerFactory) -> None:
    ctx = await open_context(profile)
    server = await aiohttp_server(_cookie_probe_app())
    top_site = f"http://localhost:{server.port}"  # a different site from 127.0.0.1, as the EHR is
    frame_site = f"http://127.0.0.1:{server.port}"
    page = await ctx.new_page()

    # In a cross-site iframe, only the partitioned cookie can be set and read back.
    assert await _probe(page, f"{top_site}/top?tag=a", framed=True) == ({"a_chips"}, {"a_chips"})

    # First-party, the same kinds of cookies work: the probe itself is sound.
    first_party = {"b_hdr", "b_js", "b_chips"}
    assert await _probe(page, f"{frame_site}/frame?tag=b", framed=False) == (first_party, first_party)

    # Back in the iframe, the frame site's first-party cookies are neither sent nor readable; only the
    # cookies partitioned under the localhost top site are.
    framed = {"a_chips", "c_chips"}
    assert await _probe(page, f"{top_site}/top?tag=c", framed=True) == (framed, framed)


async def test_phone_context_looks_like_a_phone(phone_context: BrowserContext) -> None:
    page = await phone_context.new_page()
    await page.set_content('<meta name="viewport" content="width=device-width, initial-scale=1"><p>hi</p>')
    seen = await page.evaluate("""() => ({
        width: window.innerWidth, height: window.innerHeight, touch: navigator.maxTouchPoints > 0,
        coarse: matchMedia("(pointer: coarse)").matches, mobile: /Mobile/.test(navigator.userAgent) })""")
    assert seen["width"] == 390 and seen["height"] == 844
    assert seen["touch"] and seen["coarse"]
