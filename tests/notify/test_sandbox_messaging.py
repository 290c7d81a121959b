"""The sandbox's phone and mailbox, and the demo wiring that points the gateway at them."""
from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from gateway import Settings
from gateway.notify import build_notifier


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[web.Application, str]]:
    from sandbox import SandboxSettings, create_sandbox_app

    port = unused_port()
    url = f"http://localhost:{port}"
    app = create_sandbox_app(SandboxSettings(base_url=url, app_launch_url="http://127.0.0.1:1/launch"))
    yield app, url

async def test_demo_wiring_delivers_email_to_the_mailbox_and_sms_to_the_phone(
        sandbox: tuple[web.Application, str], signing_key_pem: bytes) -> None:
    from sandbox.phone import with_demo_messaging

    app, url = sandbox
    smtp_port = unused_port()
    settings = with_demo_messaging(app, Settings(public_url="http://127.0.0.1:1", secret_key=b"k" * 32,
                                                 signing_key_pem=signing_key_pem), url, smtp_port=smtp_port)
    assert (settings.sms_provider, settings.sms_sink_url, settings.smtp_port) == ("sink", f"{url}/_sms", smtp_port)
    server = TestServer(app, host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            notifier = build_notifier(settings, http)
            await notifier.email_link("alex.testpatient@example.org", "http://127.0.0.1:1/join?t=abc")
            await notifier.sms_link("+1-206-555-0101", "http://127.0.0.1:1/join?t=def")
            mail = await (await http.get(f"{url}/mailbox", headers={"Accept": "application/json"})).json()
            [message] = mail["messages"]
            assert message["to"] == "alex.testpatient@example.org"
            assert "http://127.0.0.1:1/join?t=abc" in message["body"]
            page = await (await http.get(f"{url}/mailbox")).text()
            assert '<a href="http://127.0.0.1:1/join?t=abc">' in page
            texts = await (await http.get(f"{url}/phone", headers={"Accept": "application/json"})).json()
            assert [(t["to"], t["body"].rsplit(" ", 1)[1]) for t in texts["messages"]] == [
                ("+12065550101", "http://127.0.0.1:1/join?t=def")]
    finally:
        await server.close()


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"to": "+15550101"}', b'{"to": "", "body": "x"}'])
async def test_phone_sink_refuses_malformed_messages(sandbox: tuple[web.Application, str], body: bytes) -> None:
    app, url = sandbox
    server = TestServer(app, host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/_sms", data=body, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400
            page = await (await http.get(f"{url}/phone")).text()
            assert 'id="no-messages"' in page
    finally:
        await server.close()
