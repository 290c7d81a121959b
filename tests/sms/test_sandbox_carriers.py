"""The demo's wiring: the gateway texts through the sandbox's ACS double, the sandbox phone shows it, and the
phone's STOP comes back through the carrier's webhook."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.notify.optout import STOP_REPLY
from sandbox.carriers.wiring import ACS, DEMO_ACS_KEY, DEMO_ACS_NUMBER, DEMO_WEBHOOK_SECRET, INBOUND
from tests.conftest import Stack, running_stack
from tests.notify.helpers import invite, launch_handle

PAT1_PHONE = "+12065550101"  # sandbox/seed.py


@pytest.fixture
async def demo_stack(database_url: str, signing_key_pem: bytes) -> AsyncIterator[Stack]:
    """The gateway and sandbox, wired as the demo wires them (ACS through the sandbox's double)."""
    def overrides(_gateway_url: str, sandbox_url: str) -> dict[str, object]:
        return dict(sms_provider="acs", acs_endpoint=f"{sandbox_url}/acs", acs_access_key=DEMO_ACS_KEY,
                    sms_from=DEMO_ACS_NUMBER, sms_webhook_secret=DEMO_WEBHOOK_SECRET, phone_region="US")

    async with running_stack(database_url, signing_key_pem, overrides) as stack:
        stack.sandbox_app[INBOUND]["acs"] = f"{stack.gateway_url}/sms/inbound/acs?code={DEMO_WEBHOOK_SECRET}"
        yield stack


async def _phone(stack: Stack) -> list[dict[str, str]]:
    r = await stack.browser.get(f"{stack.sandbox_url}/phone", headers={"Accept": "application/json"})
    messages: list[dict[str, str]] = (await r.json())["messages"]
    return messages


async def test_the_sandbox_phone_gets_texts_through_the_acs_double_and_its_stop_is_honoured(demo_stack: Stack) -> None:
    stack = demo_stack
    handle = await launch_handle(stack)
    response = await invite(stack, handle, channel="sms", role="patient")
    assert response.status == 200, await response.text()
    [text] = await _phone(stack)
    assert (text["to"], text["from"]) == (PAT1_PHONE, DEMO_ACS_NUMBER)

    page = await stack.browser.get(f"{stack.sandbox_url}/phone")
    assert 'action="/phone/reply"' in await page.text()
    async with stack.browser.post(f"{stack.sandbox_url}/phone/reply", allow_redirects=False,
                                  data={"from": PAT1_PHONE, "to": DEMO_ACS_NUMBER, "body": "STOP"}) as r:
        assert r.status == 303, await r.text()
    newest = (await _phone(stack))[0]
    assert (newest["to"], newest["body"]) == (PAT1_PHONE, STOP_REPLY)

    response = await invite(stack, handle, channel="sms", role="patient")
    assert response.status == 409, await response.text()
    assert len(await _phone(stack)) == 2
    assert len(stack.sandbox_app[ACS].sent) == 2
