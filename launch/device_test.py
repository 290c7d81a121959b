"""The standalone device test (GET /device-test): camera, microphone, speaker and connection, for a patient
who opens it from MyChart (Epic's device-test record) before any visit, with no link and no account.

Nothing about the visitor reaches the server: the page reads no cookie of a session, writes no event and no
row, and its connection check uses only the configured STUN servers, never TURN credentials (a relay handed to
anonymous visitors would be a relay open to anyone); the lobby checks the relay when the patient joins."""
from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from gateway.appkeys import SETTINGS

from .join import _organisation, _patient_page
from .page_strings import for_page


async def device_test_page(request: web.Request) -> web.Response:
    """GET /device-test: the device test page, in the request's language, for anyone."""
    context = {"stun_urls": list(request.app[SETTINGS].stun_urls), **_organisation(request, None),
               **for_page(request, "device_test")}
    return _patient_page(aiohttp_jinja2.render_template("device_test.html", request, context))
