"""Webhooks: an organisation's visit events reach its endpoint signed per Standard Webhooks (checked with the
library's own verifier), retried, disabled after the retry window, once each across workers, identifiers and
times only, and never sent to an address nobody should reach."""
from __future__ import annotations

import asyncio
import base64
import json
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from gateway.appkeys import DB, SEALER
from gateway.participants import patient_participant, provider_participant
from gateway.settings import Settings
from presence import webhooks
from presence.eventlog import record_event
from presence.visit_end import end_visit
from tests.conftest import Overrides, Stack

TYPES = ["visit.started", "visit.ended", "participant.joined", "participant.left", "lobby.entered",
         "participant.admitted"]


@pytest.fixture
def stack_overrides() -> Overrides:
    """Loopback allowed (the receiver is on 127.0.0.1); the workers are driven by the tests themselves."""
    return lambda _gw, _sb: {"webhook_allow_http_loopback": True, "webhooks_enabled": False,
                             "webhook_retry_window": 30.0, "webhook_timeout": 3.0}


@dataclass
class Receiver:
    """A customer's endpoint on 127.0.0.1: answers each request with the next status, records what came."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        """Record the request; answer with the next planned status (200 once the plan is used up)."""
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A running receiver."""
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    found.url = f"http://127.0.0.1:{server.port}/hook"
    try:
        yield found
    finally:
        await server.close()


async def _organisation(stack: Stack) -> str:
    slug = f"org-{secrets.token_hex(4)}"
    async with stack.gateway_app[DB].acquire() as conn:
        org_id = await conn.fetchval(
            "INSERT INTO organisations (slug, name, idp_kind, issuer, client_id, client_secret)"
            " VALUES ($1, 'North Clinic', 'oidc', 'https://idp.example', 'portal', '\\x00') RETURNING id", slug)
        await conn.execute("UPDATE configurations SET organisation_id = $1 WHERE id = $2", org_id,
                           stack.configuration_id)
    return slug


async def _endpoint(stack: Stack, slug: str, url: str, types: list[str] = TYPES,
                    settings: Settings | None = None) -> webhooks.NewEndpoint:
    async with stack.gateway_app[DB].acquire() as conn:
        return await webhooks.add_endpoint(conn, stack.gateway_app[SEALER], settings or stack.settings, slug, url,
                                           types)


def _worker(stack: Stack, http: aiohttp.ClientSession, settings: Settings | None = None) -> webhooks.WebhookWorker:
    return webhooks.WebhookWorker(stack.gateway_app[DB], http, stack.gateway_app[SEALER], settings or stack.settings)


async def _rounds(stack: Stack, worker: webhooks.WebhookWorker, done: Any, limit: int = 200,
                  seconds: float = 15.0) -> None:
    """Follow and deliver until done() holds; bounded in rounds and in time."""
    deadline = time.monotonic() + seconds
    for _ in range(limit):
        async with stack.gateway_app[DB].acquire() as conn:
            await webhooks.follow_once(conn)
        await worker.deliver_once()
        if await done():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    raise AssertionError("webhooks not delivered in time")


async def _a_whole_visit(stack: Stack) -> UUID:
    """A launched visit in which the patient waits, is admitted, both are connected, and the clinician ends it."""
    await stack.provider_handle()
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        visit: UUID = await conn.fetchval("SELECT id FROM visits ORDER BY created_at DESC LIMIT 1")
        patient = await patient_participant(conn, visit)
        provider = await provider_participant(conn, visit, "http://ehr.example/fhir/Practitioner/prac-1")
    for who, kind in ((patient, "lobby_entered"), (provider, "connected"), (patient, "admitted"),
                      (patient, "connected"), (patient, "disconnected")):
        await record_event(pool, visit, who, kind)
    async with pool.acquire() as conn:
        await end_visit(conn, visit, "clinician", provider)
    return visit


async def test_a_visits_events_reach_the_endpoint_signed_and_carry_no_patient_data(stack: Stack,
                                                                                   receiver: Receiver) -> None:
    endpoint = await _endpoint(stack, await _organisation(stack), receiver.url)
    assert endpoint.secret.startswith("whsec_") and len(endpoint.secret) >= 6 + 32
    visit = await _a_whole_visit(stack)
    async with aiohttp.ClientSession() as http:
        worker = _worker(stack, http)

        async def ended() -> bool:
            return any(b"visit.ended" in body for _h, body in receiver.received)

        await _rounds(stack, worker, ended)
    hook = Webhook(endpoint.secret)
    payloads = [hook.verify(body, headers) for headers, body in receiver.received]  # raises when a signature is off
    types = [p["type"] for p in payloads]
    assert sorted(types) == sorted(["lobby.entered", "participant.joined", "participant.admitted",
                                    "participant.joined", "visit.started", "participant.left", "visit.ended"])
    assert len({h["webhook-id"] for h, _b in receiver.received}) == len(receiver.received)
    assert all(p["data"]["visit_id"] == str(visit) for p in payloads)
    end = next(p for p in payloads if p["type"] == "visit.ended")
    assert end["data"]["reason"] == "clinician" and end["data"]["no_show"] is False
    # Identifiers and times only: none of the EHR's ids or the patient's or clinician's names.
    text = "\n".join(body.decode() for _h, body in receiver.received)
    for canary in ("pat-1", "enc-1", "prac-1", "Alex", "Testpatient", "Practitioner", "fhir"):
        assert canary not in text
    # The log keeps status codes and times, never a body.
    async with stack.gateway_app[DB].acquire() as conn:
        log = await webhooks.delivery_log(conn, endpoint.id)
    assert len(log) == len(receiver.received) and {e["status_code"] for e in log} == {200}
    assert not any("payload" in e or "body" in e for e in log)


async def test_a_failing_endpoint_is_retried_and_the_message_delivered_once(stack: Stack, receiver: Receiver) -> None:
    endpoint = await _endpoint(stack, await _organisation(stack), receiver.url, ["lobby.entered"])
    receiver.statuses = [500, 500, 200]
    await stack.provider_handle()
    async with stack.gateway_app[DB].acquire() as conn:
        visit: UUID = await conn.fetchval("SELECT id FROM visits LIMIT 1")
        patient = await patient_participant(conn, visit)
    await record_event(stack.gateway_app[DB], visit, patient, "lobby_entered")
    async with aiohttp.ClientSession() as http:
        worker = _worker(stack, http)

        async def delivered() -> bool:
            async with stack.gateway_app[DB].acquire() as conn:
                return await conn.fetchval("SELECT count(*) FROM webhook_outbox WHERE state = 'delivered'") == 1

        await _rounds(stack, worker, delivered)
    assert len(receiver.received) == 3
    assert len({h["webhook-id"] for h, _b in receiver.received}) == 1  # one message, tried three times
    async with stack.gateway_app[DB].acquire() as conn:
        log = await webhooks.delivery_log(conn, endpoint.id)
    assert [e["status_code"] for e in reversed(log)] == [500, 500, 200]


async def test_an_endpoint_failing_for_the_whole_retry_window_is_disabled_with_a_notice(
        stack: Stack, receiver: Receiver) -> None:
    slug = await _organisation(stack)
    endpoint = await _endpoint(stack, slug, receiver.url)
    receiver.statuses = [503] * 1000
    async with stack.gateway_app[DB].acquire() as conn:
        await webhooks.enqueue_test(conn, endpoint.id)
    short = dataclasses.replace(stack.settings, webhook_retry_window=0.5)
    async with aiohttp.ClientSession() as http:
        worker = _worker(stack, http, short)

        async def disabled() -> bool:
            async with stack.gateway_app[DB].acquire() as conn:
                return bool((await webhooks.list_endpoints(conn, slug))[0]["disabled_reason"])

        await _rounds(stack, worker, disabled)
    async with stack.gateway_app[DB].acquire() as conn:
        listed = (await webhooks.list_endpoints(conn, slug))[0]
        state = await conn.fetchval("SELECT state FROM webhook_outbox")
        tried = len(receiver.received)
        # Nothing more goes to a disabled endpoint.
        await webhooks.enqueue_test(conn, endpoint.id)
    assert "503" in listed["disabled_reason"] and listed["disabled_at"] is not None
    assert state == "failed" and tried >= 2
    async with aiohttp.ClientSession() as http:
        assert await _worker(stack, http, short).deliver_once() == 0
    assert len(receiver.received) == tried
    # Turned back on, what waited goes out.
    receiver.statuses = []
    async with stack.gateway_app[DB].acquire() as conn:
        assert await webhooks.enable_endpoint(conn, endpoint.id, "admin@north")
    async with aiohttp.ClientSession() as http:
        assert await _worker(stack, http).deliver_once() == 1
    assert len(receiver.received) == tried + 1


async def test_a_test_send_reaches_the_endpoint(stack: Stack, receiver: Receiver) -> None:
    endpoint = await _endpoint(stack, await _organisation(stack), receiver.url, ["visit.ended"])
    async with stack.gateway_app[DB].acquire() as conn:
        await webhooks.enqueue_test(conn, endpoint.id)
    async with aiohttp.ClientSession() as http:
        assert await _worker(stack, http).deliver_once() == 1
    headers, body = receiver.received[0]
    assert Webhook(endpoint.secret).verify(body, headers)["type"] == "test"


async def test_two_workers_deliver_each_message_exactly_once(stack: Stack, receiver: Receiver) -> None:
    await _endpoint(stack, await _organisation(stack), receiver.url, ["lobby.entered", "participant.left"])
    await stack.provider_handle()
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        visit: UUID = await conn.fetchval("SELECT id FROM visits LIMIT 1")
        patient = await patient_participant(conn, visit)
    for _ in range(15):
        await record_event(pool, visit, patient, "lobby_entered")
        await record_event(pool, visit, patient, "left")
    async with aiohttp.ClientSession() as one, aiohttp.ClientSession() as two:
        workers = [_worker(stack, one), _worker(stack, two)]
        for _ in range(100):
            async def follow() -> None:
                async with pool.acquire() as conn:
                    await webhooks.follow_once(conn, batch=7)

            await asyncio.gather(follow(), follow(), *(w.deliver_once() for w in workers))
            if len(receiver.received) >= 30:
                break
            await asyncio.sleep(0.02)
    ids = [h["webhook-id"] for h, _b in receiver.received]
    assert len(ids) == 30 and len(set(ids)) == 30
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_outbox") == 30


def test_private_and_link_local_addresses_are_refused() -> None:
    settings = Settings(public_url="https://visits.example.org", secret_key=secrets.token_bytes(32),
                        signing_key_pem=b"unused")
    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254", "::1", "fd00::1",
                    "fe80::1", "0.0.0.0", "100.64.0.1", "::ffff:10.0.0.1", "224.0.0.1"):
        assert not webhooks.address_allowed(address, settings), address
    assert webhooks.address_allowed("93.184.215.14", settings)
    loopback = dataclasses.replace(settings, webhook_allow_http_loopback=True)
    assert webhooks.address_allowed("127.0.0.1", loopback) and not webhooks.address_allowed("10.0.0.1", loopback)
    for url in ("http://example.org/hook", "http://127.0.0.1/hook", "https://user:pw@example.org/",
                "ftp://example.org/", "https:///nohost"):
        with pytest.raises(webhooks.WebhookRefused):
            webhooks.check_url(url, settings)


async def test_an_endpoint_whose_host_resolves_to_a_private_address_gets_nothing(stack: Stack,
                                                                                receiver: Receiver) -> None:
    strict = dataclasses.replace(stack.settings, webhook_allow_http_loopback=False)
    port = receiver.url.split(":")[2].split("/")[0]
    async with webhooks.webhook_session(strict) as http:
        for url in (f"https://localhost:{port}/hook", f"https://127.0.0.1:{port}/hook"):
            attempt = await webhooks.post(http, strict, url, webhooks.new_secret(), "msg_1", "{}")
            assert attempt.error == "refused_address" and attempt.status is None
        # The client's own resolver refuses too, whatever asked it.
        with pytest.raises(aiohttp.ClientError):
            await http.post(f"http://localhost:{port}/hook")
    assert receiver.received == []


async def test_an_operator_adds_tests_lists_and_removes_an_endpoint_audited(
        database_url: str, monkeypatch: pytest.MonkeyPatch, signing_key_pem: bytes, receiver: Receiver,
        capsys: pytest.CaptureFixture[str]) -> None:
    import asyncpg

    from gateway.cli import main

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("VISITGATE_PUBLIC_URL", "https://visits.example.org")
    monkeypatch.setenv("VISITGATE_SECRET_KEY", base64.b64encode(b"x" * 32).decode())
    monkeypatch.setenv("VISITGATE_SIGNING_KEY", signing_key_pem.decode())
    monkeypatch.setenv("VISITGATE_WEBHOOK_ALLOW_HTTP_LOOPBACK", "on")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO organisations (slug, name, idp_kind, issuer, client_id, client_secret)"
                           " VALUES ('north', 'North Clinic', 'oidc', 'https://idp.example', 'portal', '\\x00')")
        code = await asyncio.to_thread(main, ["webhook", "add", "--org", "north", "--url", receiver.url,
                                              "--events", "visit.ended,lobby.entered", "--by", "ops@north"])
        out = capsys.readouterr().out
        assert code == 0, out
        secret = out.split("secret (shown this once; verify deliveries with it): ")[1].split()[0]
        endpoint_id = await conn.fetchval("SELECT id FROM webhook_endpoints")
        stored = bytes(await conn.fetchval("SELECT secret FROM webhook_endpoints"))
        assert secret.encode() not in stored and secret.split("_", 1)[1].encode() not in stored
        assert await asyncio.to_thread(main, ["webhook", "test", str(endpoint_id)]) == 0
        headers, body = receiver.received[0]
        assert Webhook(secret).verify(body, headers)["type"] == "test"
        assert await asyncio.to_thread(main, ["webhook", "list", "--org", "north"]) == 0
        assert receiver.url in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["webhook", "log", str(endpoint_id)]) == 0
        assert "\t200\t" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["webhook", "remove", str(endpoint_id), "--by", "ops@north"]) == 0
        assert await asyncio.to_thread(main, ["webhook", "add", "--org", "north", "--url", "http://example.org/",
                                              "--events", "visit.ended"]) != 0
        audit = [(r["actor"], r["action"]) for r in await conn.fetch("SELECT * FROM audit_log ORDER BY id")]
        assert ("ops@north", "webhook.add") in audit and ("ops@north", "webhook.remove") in audit
    finally:
        await conn.close()


async def test_an_event_committed_after_a_later_one_is_still_sent(stack: Stack, receiver: Receiver) -> None:
    await _endpoint(stack, await _organisation(stack), receiver.url, ["lobby.entered", "participant.left"])
    await stack.provider_handle()
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        visit: UUID = await conn.fetchval("SELECT id FROM visits LIMIT 1")
        patient = await patient_participant(conn, visit)
    slow = await pool.acquire()
    try:
        writing = slow.transaction()
        await writing.start()
        from presence.eventlog import append_event

        held = await append_event(slow, visit, patient, "lobby_entered")  # an id taken, not yet committed
        later = await record_event(pool, visit, patient, "left")
        assert later > held
        async with pool.acquire() as conn:
            await webhooks.follow_once(conn)
            assert await conn.fetchval("SELECT count(*) FROM webhook_outbox") == 0  # waits at the gap
        await writing.commit()
    finally:
        await pool.release(slow)
    async with aiohttp.ClientSession() as http:
        worker = _worker(stack, http)

        async def both() -> bool:
            return len(receiver.received) == 2

        await _rounds(stack, worker, both)
    types = sorted(json.loads(body)["type"] for _h, body in receiver.received)
    assert types == ["lobby.entered", "participant.left"]


async def test_a_launch_that_fails_after_its_configuration_is_known_is_told_to_the_organisation(
        stack: Stack, receiver: Receiver, sandbox_faults: Any) -> None:
    endpoint = await _endpoint(stack, await _organisation(stack), receiver.url, ["launch.failed"])
    sandbox_faults.token_error = "invalid_grant"
    response, _ = await stack.launch()
    assert response.status == 502
    async with aiohttp.ClientSession() as http:
        assert await _worker(stack, http).deliver_once() == 1
    headers, body = receiver.received[0]
    message = Webhook(endpoint.secret).verify(body, headers)
    assert message["type"] == "launch.failed"
    assert message["data"]["reason"] == "token_error"
    assert message["data"]["configuration_id"] == stack.configuration_id
