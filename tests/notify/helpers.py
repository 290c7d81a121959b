"""Helpers for the invite tests: launch as a clinician, post an invite from the provider view."""
from __future__ import annotations

import re
from typing import Any

import aiohttp

from tests.conftest import Stack

LINK = re.compile(r"https?://[^\s/]+/j/[0-9A-Za-z]{22}(?:\?[^\s]*)?")


async def launch_handle(stack: Stack, **launch: Any) -> str:
    """Launch as a clinician; answers the provider view's handle (the last URL's last segment)."""
    response, visited = await stack.launch(stack.new_launch(**launch) if launch else None)
    assert response.status == 200, await response.text()
    return visited[-1].rstrip("/").rsplit("/", 1)[-1]


async def invite(stack: Stack, handle: str, origin: str | None = "gateway", json: bool = True,
                 **fields: str) -> aiohttp.ClientResponse:
    """POST /provider/{handle}/invite as the provider view's script does (same origin unless told)."""
    headers = {"Accept": "application/json"} if json else {}
    if origin == "gateway":
        headers["Origin"] = stack.gateway_url
    elif origin is not None:
        headers["Origin"] = origin
    response = await stack.browser.post(f"{stack.gateway_url}/provider/{handle}/invite", data=fields,
                                        headers=headers, allow_redirects=False)
    await response.read()
    return response


def link_in(text: str) -> str:
    """The one join link in a message."""
    found = LINK.findall(text)
    assert len(found) == 1, text
    return found[0]


async def link_works(stack: Stack, link: str) -> None:
    """The link opens the join page with its button, and the button gets the browser into the lobby."""
    assert link.startswith(f"{stack.gateway_url}/j/"), link
    page = await stack.get(link)
    body = await page.text()
    assert page.status == 200, body
    assert 'id="join"' in body
    token = link.split("/j/", 1)[1].split("?", 1)[0]
    exchanged = await stack.browser.post(f"{stack.gateway_url}/join", data={"t": token},
                                         headers={"Origin": stack.gateway_url}, allow_redirects=False)
    assert exchanged.status == 303, await exchanged.text()
    assert exchanged.headers["Location"] == "/lobby"
