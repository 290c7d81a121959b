"""Live presence from Teams: Graph subscriptions with the validation handshake, the webhook's refusals, the queue,
roster changes as presence events (event log, provider view, write-back), renewal, lifecycle notifications and
the attendance report's reconciliation, against the Graph double's notifications part (sandbox/graph_events.py)."""
from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.appkeys import DB, SEALER, SETTINGS
from gateway.graph import CHANGE_TRACKING_APP, GraphClient, SecretCredential, TeamsTenant
from presence.appkeys import TEAMS
from presence.eventlog import record_event
from presence.teams_events import TeamsEvents
from sandbox import graph_events
from sandbox.graph_events import Caller
from tests.conftest import Stack, database_text, recv_frame, running_stack
from tests.writeback.conftest import make_visit

TENANT = "5b1f4c9e-1d2a-4c55-9a1e-0f5d8e3c2b10"
APP_ID = "9a0c1c0e-2f44-4bb0-8e43-6b1f2a3d4e5f"
ORGANIZER = "7c8d9e0f-1a2b-4c3d-8e5f-6a7b8c9d0e1f"
CANARY_NAME = "Zebulon Canaryperson"


@pytest.fixture(scope="session")
def notification_key_pem() -> bytes:
    """Our key for Graph's notifications (RSA generation is slow: once per session)."""
    return graph_events.private_key_pem()


@pytest.fixture(scope="session")
def entra_key() -> rsa.RSAPrivateKey:
    """The key Entra signs validationTokens with, in these tests (once per session: RSA is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


ENTRA_KID = "entra-test-kid"


@dataclass
class Teams:
    """The gateway, the sandbox EHR and the Graph double's notifications part."""

    stack: Stack
    double_url: str
    double: graph_events.GraphEvents
    double_app: web.Application
    token: str
    http: aiohttp.ClientSession
    entra_key: rsa.RSAPrivateKey
    keys_read: list[str]

    def validation_token(self, *, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        """A validationToken as Graph sends them (Entra's key, our app, Graph's change tracking), with claims
        changed or removed (None)."""
        now = int(time.time())
        body: dict[str, Any] = {"iss": f"https://sts.windows.net/{TENANT}/", "aud": APP_ID, "tid": TENANT,
                                "azp": CHANGE_TRACKING_APP, "appid": CHANGE_TRACKING_APP, "iat": now, "nbf": now,
                                "exp": now + 3600}
        body.update(claims)
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key or self.entra_key,
                          algorithm="RS256", headers={"kid": ENTRA_KID})

    @property
    def events(self) -> TeamsEvents:
        """The gateway's Teams events part."""
        return self.stack.gateway_app[TEAMS]

    async def graph(self, method: str, path: str, body: Any = None, *, beta: bool = True,
                    token: str | None = None) -> tuple[int, Any]:
        """Call the double as the gateway's Graph client would (a bearer token of the tenant's application)."""
        url = f"{self.double_url}/{'beta' if beta else 'v1.0'}{path}"
        async with self.http.request(method, url, json=body,
                                     headers={"Authorization": f"Bearer {token or self.token}"}) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    async def meeting(self, visit_id: UUID) -> tuple[str, str]:
        """A meeting in the double for the visit, and the gateway subscribed to it: (meeting id, join URL)."""
        meeting_id = f"MSo{uuid.uuid4().hex}"
        join = f"https://teams.example/l/meetup-join/19%3ameeting_{meeting_id}%40thread.v2/0?context=%7b%7d"
        graph_events.register_meeting(self.double_app, meeting_id, join, ORGANIZER, TENANT)
        assert await self.events.subscribe(TENANT, visit_id, join, organizer_id=ORGANIZER, meeting_id=meeting_id)
        return meeting_id, join

    async def roster(self, meeting_id: str, people: list[dict[str, Any]], notify: bool = True) -> None:
        """Set the meeting's call roster in the double (who is in the call now)."""
        async with self.http.post(f"{self.double_url}/_controls/meetings/{meeting_id}/roster",
                                  json={"participants": people, "notify": notify}) as r:
            assert r.status == 200, await r.text()

    async def lifecycle(self, graph_id: str, event: str) -> dict[str, Any]:
        """Have the double send a lifecycle notification."""
        async with self.http.post(f"{self.double_url}/_controls/subscriptions/{graph_id}/lifecycle",
                                  json={"event": event}) as r:
            assert r.status == 200, await r.text()
            answer: dict[str, Any] = await r.json()
            return answer

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """Rows from the gateway's database."""
        async with self.stack.gateway_app[DB].acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def visit(self, encounter: str = "enc-1") -> UUID:
        """A Teams visit on one of the sandbox's Encounters."""
        return await make_visit(self.stack.gateway_app[DB], self.stack.gateway_app[SEALER],
                                self.stack.configuration_id, self.stack.fhir_base, encounter, "teams")


def clinician() -> dict[str, Any]:
    """The organising clinician's call leg."""
    return {"id": f"leg-{uuid.uuid4().hex[:8]}",
            "identity": {"user": {"id": ORGANIZER, "displayName": "Dr Example", "tenantId": TENANT}}}


def anonymous(name: str = CANARY_NAME) -> dict[str, Any]:
    """An anonymous participant's call leg (a patient or guest from our hand-off)."""
    return {"id": f"leg-{uuid.uuid4().hex[:8]}", "identity": {"guest": {"id": f"anon-{uuid.uuid4().hex}",
                                                                        "displayName": name}}}


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll until the predicate holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def teams(database_url: str, signing_key_pem: bytes, notification_key_pem: bytes,
                entra_key: rsa.RSAPrivateKey) -> AsyncIterator[Teams]:
    """A gateway subscribed through the Graph double, with quick polling and write-back."""
    token = graph_events.new_token()
    roles = frozenset({"OnlineMeetings.ReadWrite.All", "OnlineMeetingArtifact.Read.All"})
    double_app = web.Application()
    double = graph_events.setup(double_app, graph_events.bearer_tokens({token: Caller(TENANT, APP_ID, roles)}))
    server = TestServer(double_app, host="127.0.0.1")
    await server.start_server()
    double_url = str(server.make_url("")).rstrip("/")
    settings = dict(graph_notification_key_pem=notification_key_pem, graph_poll_interval=0.05,
                    graph_reconcile_delay=0.0, graph_report_backoff=0.05, writeback_poll_interval=0.05,
                    writeback_backoff_base=0.05)
    try:
        async with running_stack(database_url, signing_key_pem, lambda _g, _s: settings) as stack, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            teams = Teams(stack, double_url, double, double_app, token, http, entra_key, [])
            # The double signs its validationTokens as Entra would, and the worker checks them with the gateway's
            # Graph client, whose read of Entra's keys (https, elsewhere: tests/teams) gives this key.
            double.sign = lambda claims: jwt.encode(claims, entra_key, algorithm="RS256",
                                                    headers={"kid": ENTRA_KID})
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(entra_key.public_key(), as_dict=True)
            checker = GraphClient(http, graph_url="https://graph.invalid", authority_host="https://login.invalid")

            async def read_keys(tenant_id: str) -> dict[str, jwt.PyJWK]:
                teams.keys_read.append(tenant_id)
                return {ENTRA_KID: jwt.PyJWK({**jwk, "kid": ENTRA_KID}, algorithm="RS256")}

            checker._read_keys = read_keys  # type: ignore[method-assign]
            tenant = TeamsTenant(TENANT, APP_ID, SecretCredential("unused"))

            async def tokens(tenant_key: str, token: str, *, at: float) -> tuple[float, bool]:
                assert tenant_key == TENANT
                return await checker.validation_token(tenant, token, at=at)

            stack.gateway_app[TEAMS].tokens = tokens

            async def port(tenant_id: str, method: str, path: str, *, json: Any = None,
                           beta: bool = False) -> tuple[int, Any]:
                assert tenant_id == TENANT
                return await teams.graph(method, path, json, beta=beta)

            stack.gateway_app[TEAMS].port = port
            yield teams
    finally:
        await server.close()


# ----- subscribing ---------------------------------------------------------------------------------------

async def test_a_teams_visit_is_subscribed_once_with_rich_notifications(teams: Teams) -> None:
    visit = await teams.visit()
    meeting_id, join = await teams.meeting(visit)
    # Ten launches at once: still one subscription.
    assert all(await asyncio.gather(*(teams.events.subscribe(TENANT, visit, join, organizer_id=ORGANIZER,
                                                             meeting_id=meeting_id) for _ in range(10))))
    assert len(teams.double.subscriptions) == 1
    sub = next(iter(teams.double.subscriptions.values()))
    assert sub.public_key is not None and sub.lifecycle_url is not None
    assert sub.notification_url == teams.stack.gateway_url + "/graph/notifications"
    rows = await teams.fetch("SELECT graph_id, status FROM graph_subscriptions")
    assert [(r["graph_id"], r["status"]) for r in rows] == [(sub.id, "active")]
    assert [d["ok"] for d in teams.double.deliveries if d["kind"] == "validation"] == [True, True]


async def test_the_double_refuses_a_subscription_whose_endpoint_does_not_echo_the_token(teams: Teams) -> None:
    visit = await teams.visit()
    meeting_id, join = await teams.meeting(visit)

    async def wrong_echo(request: web.Request) -> web.Response:
        return web.Response(text="not the token", content_type="text/plain")

    async def no_answer(request: web.Request) -> web.Response:
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/wrong", wrong_echo)
    app.router.add_post("/none", no_answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        body = teams.events._request_body(uuid.uuid4(), join)
        for path in ("/wrong", "/none"):
            status, answer = await teams.graph("POST", "/subscriptions", {**body, "notificationUrl": str(
                server.make_url(path))})
            assert status == 400 and answer["error"]["code"] == "ValidationError", answer
    finally:
        await server.close()
    assert len(teams.double.subscriptions) == 1  # the gateway's own, from teams.meeting


async def test_the_double_refuses_what_graph_refuses(teams: Teams) -> None:
    visit = await teams.visit()
    _meeting_id, join = await teams.meeting(visit)
    body = teams.events._request_body(uuid.uuid4(), join)
    too_late = "2999-01-01T00:00:00.0000000Z"
    cases = [({**body, "expirationDateTime": too_late}, True, 400),
             ({k: v for k, v in body.items() if k != "lifecycleNotificationUrl"}, True, 400),
             ({k: v for k, v in body.items() if k != "encryptionCertificate"}, True, 400),
             ({**body, "changeType": "created"}, True, 400),
             ({**body, "resource": "/communications/onlineMeetings(joinWebUrl='x')/meetingCallEvents"}, True, 404),
             (body, False, 400)]  # meetingCallEvents is a beta resource
    for case, beta, want in cases:
        status, answer = await teams.graph("POST", "/subscriptions", case, beta=beta)
        assert status == want, (case, answer)
    status, _ = await teams.graph("POST", "/subscriptions", body, token="forged")
    assert status == 401


async def test_without_a_notification_key_nothing_is_subscribed(teams: Teams) -> None:
    visit = await teams.visit()
    events = teams.events
    saved, events.key = events.key, None
    try:
        assert not await events.subscribe(TENANT, visit, "https://teams.example/x", organizer_id=ORGANIZER,
                                          meeting_id="m")
    finally:
        events.key = saved
    assert not teams.double.subscriptions


# ----- the webhook's refusals ----------------------------------------------------------------------------

async def _post(teams: Teams, body: Any, path: str = "/graph/notifications", *,
                tokens: bool = True) -> aiohttp.ClientResponse:
    """POST to the webhook; a collection gets a valid validationToken unless it has its own or `tokens` is off."""
    if tokens and isinstance(body, dict) and "validationTokens" not in body:
        body = {**body, "validationTokens": [teams.validation_token()]}
    async with teams.http.post(teams.stack.gateway_url + path, json=body) as r:
        await r.read()
        return r


async def _rich_item(teams: Teams, graph_id: str, client_state: str, resource: dict[str, Any]) -> dict[str, Any]:
    key = teams.events.key
    assert key is not None
    certificate = x509.load_der_x509_certificate(base64.b64decode(key.certificate_b64))
    public_key = certificate.public_key()
    content = graph_events.encrypt_for(public_key, key.certificate_id, "00", resource)  # type: ignore[arg-type]
    return {"subscriptionId": graph_id, "clientState": client_state, "changeType": "updated",
            "resource": "communications/onlineMeetings(joinWebUrl='x')/meetingCallEvents",
            "encryptedContent": content}


async def test_the_validation_handshake_echoes_the_token_as_text(teams: Teams) -> None:
    token = "Validation: Testing client application reachability <&> 123"
    async with teams.http.post(teams.stack.gateway_url + "/graph/notifications",
                               params={"validationToken": token}) as r:
        assert r.status == 200 and r.content_type == "text/plain"
        assert await r.text() == token


async def test_a_wrong_client_state_is_refused_and_nothing_is_queued(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    graph_id, our_id = (await teams.fetch("SELECT graph_id, id FROM graph_subscriptions"))[0]
    item = await _rich_item(teams, graph_id, f"{our_id}.forged", {"eventType": "x"})
    r = await _post(teams, {"value": [item]})
    assert r.status == 403
    assert not await teams.fetch("SELECT 1 FROM graph_notifications")


async def test_an_unknown_subscription_is_refused(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    graph_id, our_id = (await teams.fetch("SELECT graph_id, id FROM graph_subscriptions"))[0]
    # A clientState of ours naming a subscription we never made; and ours with another Graph subscription id.
    stranger = uuid.uuid4()
    for sub, client_state in ((graph_id, teams.events.client_state(stranger)),
                              ("another-subscription", teams.events.client_state(our_id))):
        r = await _post(teams, {"value": [await _rich_item(teams, sub, client_state, {"eventType": "x"})]})
        assert r.status == 403
    r = await _post(teams, {"value": "nope"})
    assert r.status == 400
    assert not await teams.fetch("SELECT 1 FROM graph_notifications")


async def test_a_bad_signature_or_an_undecryptable_key_is_dropped_by_the_worker(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    graph_id, our_id = (await teams.fetch("SELECT graph_id, id FROM graph_subscriptions"))[0]
    state = teams.events.client_state(our_id)
    roster = {"eventType": "Microsoft.Communication.CallRosterUpdate",
              "activeParticipants@joined": [{"Id": "leg-1", "Identity": {"User": {"Id": ORGANIZER}}}]}
    tampered = await _rich_item(teams, graph_id, state, roster)
    data = bytearray(base64.b64decode(tampered["encryptedContent"]["data"]))
    data[0] ^= 1
    tampered["encryptedContent"]["data"] = base64.b64encode(bytes(data)).decode()
    foreign = await _rich_item(teams, graph_id, state, roster)
    other_key = graph_events.encrypt_for(
        serialization.load_pem_private_key(graph_events.private_key_pem(), None).public_key(),  # type: ignore[arg-type]
        teams.events.key.certificate_id, "00", roster)  # type: ignore[union-attr]
    foreign["encryptedContent"] = other_key
    for item in (tampered, foreign):
        assert (await _post(teams, {"value": [item]})).status == 202

    async def done() -> bool:
        rows = await teams.fetch("SELECT outcome FROM graph_notifications WHERE processed_at IS NOT NULL")
        return len(rows) == 2

    await wait_for(done)
    outcomes = sorted(r["outcome"] for r in await teams.fetch("SELECT outcome FROM graph_notifications"))
    assert outcomes == ["bad_signature", "undecryptable"]
    assert not await teams.fetch("SELECT 1 FROM presence_events WHERE visit_id = $1", visit)
    assert not await teams.fetch("SELECT 1 FROM graph_notifications WHERE body IS NOT NULL")


async def _roster_item(teams: Teams, leg: str) -> dict[str, Any]:
    """A rich notification of the organiser joining on `leg`, for the one subscription."""
    graph_id, our_id = (await teams.fetch("SELECT graph_id, id FROM graph_subscriptions"))[0]
    roster = {"eventType": "Microsoft.Communication.CallRosterUpdate",
              "activeParticipants@joined": [{"Id": leg, "Identity": {"User": {"Id": ORGANIZER}}}]}
    return await _rich_item(teams, graph_id, teams.events.client_state(our_id), roster)


async def _processed(teams: Teams, count: int) -> None:
    async def done() -> bool:
        return len(await teams.fetch("SELECT 1 FROM graph_notifications WHERE processed_at IS NOT NULL")) == count

    await wait_for(done)


async def test_notifications_whose_validation_tokens_do_not_check_out_are_not_processed(
        teams: Teams, caplog: pytest.LogCaptureFixture) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    now = int(time.time())
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {"forged": [teams.validation_token(key=forger)],
           "wrong_aud": [teams.validation_token(aud="0f0e0d0c-0b0a-4000-8000-000000000000")],
           "wrong_azp": [teams.validation_token(azp="11111111-2222-4333-8444-555555555555")],
           "wrong_appid": [teams.validation_token(azp=None, appid="11111111-2222-4333-8444-555555555555")],
           "wrong_issuer": [teams.validation_token(iss=f"https://login.example/{TENANT}/")],
           "expired": [teams.validation_token(iat=now - 7200, nbf=now - 7200, exp=now - 3600)],
           "one_of_two_forged": [teams.validation_token(), teams.validation_token(key=forger)],
           "not_a_jwt": ["not.a.jwt"],
           "empty": []}
    for case, tokens in bad.items():
        item = await _roster_item(teams, f"leg-{case}")
        assert (await _post(teams, {"value": [item], "validationTokens": tokens})).status == 202, case
    # A rich notification without any: Graph always sends them with resource data.
    assert (await _post(teams, {"value": [await _roster_item(teams, "leg-none")]}, tokens=False)).status == 202
    await _processed(teams, len(bad) + 1)
    rows = await teams.fetch("SELECT outcome, body FROM graph_notifications")
    assert {r["outcome"] for r in rows} == {"bad_signature"} and all(r["body"] is None for r in rows)
    assert teams.events.outcomes.get("bad_token") == len(bad) + 1
    assert not await teams.fetch("SELECT 1 FROM presence_events WHERE visit_id = $1", visit)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "validation tokens (graph_token_" in logged
    assert not any(token in logged for tokens in bad.values() for token in tokens)  # reasons only, no data


async def test_valid_validation_tokens_let_the_notification_through_and_are_checked_once(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    events = teams.events
    checked: list[str] = []
    check = events.tokens

    async def counting(tenant_key: str, token: str, *, at: float) -> tuple[float, bool]:
        checked.append(token)
        return await check(tenant_key, token, at=at)

    events.tokens = counting
    ours = teams.validation_token()
    v1 = teams.validation_token(azp=None)  # v1 tokens name the party in appid only
    # Another organisation's application subscribed at the same URL: its token is authentic, just not ours.
    other = teams.validation_token(aud="0f0e0d0c-0b0a-4000-8000-000000000000")
    collections = [{"value": [await _roster_item(teams, "leg-a")], "validationTokens": [ours]},
                   {"value": [await _roster_item(teams, "leg-b")], "validationTokens": [ours]},
                   {"value": [await _roster_item(teams, "leg-c"), await _roster_item(teams, "leg-d")],
                    "validationTokens": [other, v1]}]
    for body in collections:
        assert (await _post(teams, body)).status == 202
    await _processed(teams, 4)
    rows = await teams.fetch("SELECT outcome FROM graph_notifications")
    assert [r["outcome"] for r in rows] == ["applied"] * 4
    assert len(await teams.fetch("SELECT 1 FROM presence_events WHERE visit_id = $1 AND kind = 'connected'",
                                 visit)) == 4
    assert sorted(checked) == sorted([ours, other, v1])  # each token's signature checked once
    assert teams.keys_read == [TENANT]  # Entra's keys read once


async def test_a_notification_sent_twice_is_queued_once(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    graph_id, our_id = (await teams.fetch("SELECT graph_id, id FROM graph_subscriptions"))[0]
    item = await _rich_item(teams, graph_id, teams.events.client_state(our_id),
                            {"eventType": "Microsoft.Communication.CallStarted"})
    for _ in range(3):
        assert (await _post(teams, {"value": [item]})).status == 202
    assert len(await teams.fetch("SELECT 1 FROM graph_notifications")) == 1


# ----- roster to presence --------------------------------------------------------------------------------

async def _kinds(teams: Teams, visit: UUID) -> list[tuple[str, str]]:
    rows = await teams.fetch(
        "SELECT e.kind, p.role FROM presence_events e JOIN participants p ON p.id = e.participant_id "
        "WHERE e.visit_id = $1 ORDER BY e.id", visit)
    return [(r["role"], r["kind"]) for r in rows]


async def test_roster_changes_reach_the_event_log_the_provider_view_and_the_write_back(teams: Teams) -> None:
    from presence.writeback import set_strategy

    async with teams.stack.gateway_app[DB].acquire() as conn:
        await set_strategy(conn, teams.stack.configuration_id, "fhir-r4-put")
    handle = await teams.stack.provider_handle()
    ws = await teams.stack.browser.ws_connect(f"{teams.stack.gateway_url}/ws", origin=teams.stack.gateway_url)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    auth = await recv_frame(ws)
    assert auth["type"] == "auth_ok", auth
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})
    visit = UUID(auth["visit"])
    async with teams.stack.gateway_app[DB].acquire() as conn:
        from gateway.participants import patient_participant

        patient = await patient_participant(conn, visit)
    # The patient came through our lobby and was handed over to Teams.
    for kind in ("lobby_entered", "left"):
        await record_event(teams.stack.gateway_app[DB], visit, patient, kind)
    meeting_id, _join = await teams.meeting(visit)
    doctor, person = clinician(), anonymous()
    await teams.roster(meeting_id, [doctor, person])

    seen: dict[str, str] = {}
    for _ in range(60):
        frame = await recv_frame(ws)
        if frame["type"] == "event" and frame["kind"] == "connected" and frame["role"] in ("provider", "patient"):
            seen[frame["role"]] = frame["participant"]
        if len(seen) == 2 and seen.get("patient") == str(patient):
            break
    assert seen.get("patient") == str(patient) and "provider" in seen, seen
    await teams.roster(meeting_id, [doctor])

    async def patient_left() -> bool:
        return ("patient", "disconnected") in await _kinds(teams, visit)

    await wait_for(patient_left)
    await ws.close()

    from sandbox.appkeys import STORE

    async def written_back() -> bool:
        found = teams.stack.sandbox_app[STORE].get("Encounter", "enc-1")
        return any(p.get("period", {}).get("start") for p in (found or {}).get("participant", []))

    await wait_for(written_back, timeout=20)


async def test_a_missed_notification_is_reconciled_from_the_attendance_report_once(teams: Teams) -> None:
    visit = await teams.visit()
    meeting_id, _join = await teams.meeting(visit)
    graph_id = (await teams.fetch("SELECT graph_id FROM graph_subscriptions"))[0]["graph_id"]
    doctor, person = clinician(), anonymous()
    await teams.roster(meeting_id, [doctor])  # notified

    async def doctor_in() -> bool:
        return ("provider", "connected") in await _kinds(teams, visit)

    await wait_for(doctor_in)
    await teams.roster(meeting_id, [doctor, person], notify=False)  # Graph never told us
    await teams.roster(meeting_id, [doctor], notify=False)
    assert await _kinds(teams, visit) == [("provider", "connected")]
    await teams.lifecycle(graph_id, "missed")

    async def reconciled() -> bool:
        return len(await _kinds(teams, visit)) == 3

    await wait_for(reconciled)
    assert sorted(await _kinds(teams, visit)) == [("guest", "connected"), ("guest", "disconnected"),
                                                   ("provider", "connected")]
    # Running it again adds nothing.
    assert await teams.events.reconcile_visit(visit) == 0
    assert await teams.events.reconcile_visit(visit) == 0
    assert len(await _kinds(teams, visit)) == 3


async def _attendance(teams: Teams, **control: Any) -> None:
    async with teams.http.post(f"{teams.double_url}/_controls/attendance", json=control) as r:
        assert r.status == 200, await r.text()


async def test_the_attendance_report_is_read_page_by_page_on_graph_only(teams: Teams) -> None:
    visit = await teams.visit()
    meeting_id, _join = await teams.meeting(visit)
    people = [clinician()] + [anonymous(f"Guest {n}") for n in range(4)]
    await teams.roster(meeting_id, people, notify=False)
    await teams.roster(meeting_id, [], notify=False)
    await _attendance(teams, pageSize=2)
    # The double names the origin the gateway knows as Graph's in its links (it is called on 127.0.0.1 here).
    teams.double.link_base = teams.stack.gateway_app[SETTINGS].graph_url
    assert await teams.events.reconcile_visit(visit) == 10  # five people, each joined and left
    pages = [path for path in teams.double.reads if path.endswith(("attendanceRecords", "=2", "=4"))]
    assert [p.rsplit("/", 1)[1] for p in pages] == ["attendanceRecords", "attendanceRecords?$skiptoken=2",
                                                    "attendanceRecords?$skiptoken=4"]
    assert await teams.events.reconcile_visit(visit) == 0  # read again: nothing twice

    # A next page off Graph's base URL is not followed: the first page is used.
    other = await teams.visit("enc-2")
    meeting_id, _join = await teams.meeting(other)
    await teams.roster(meeting_id, people[:3], notify=False)
    await teams.roster(meeting_id, [], notify=False)
    teams.double.link_base = "https://graph.example.net"
    teams.double.reads.clear()
    assert await teams.events.reconcile_visit(other) == 4
    assert not [path for path in teams.double.reads if "skiptoken" in path]


async def test_an_attendance_report_not_produced_yet_is_read_again_later(teams: Teams) -> None:
    visit = await teams.visit()
    meeting_id, _join = await teams.meeting(visit)
    graph_id, subscription_id = (await teams.fetch("SELECT graph_id, id FROM graph_subscriptions"))[0]
    await teams.roster(meeting_id, [clinician()], notify=False)
    await teams.roster(meeting_id, [], notify=False)
    await _attendance(teams, notReadyReads=2)  # Graph answers 404 twice, then has the report
    await teams.lifecycle(graph_id, "missed")

    async def reconciled() -> bool:
        rows = await teams.fetch("SELECT reconciled_at FROM graph_subscriptions WHERE id = $1", subscription_id)
        return rows[0]["reconciled_at"] is not None

    await wait_for(reconciled)
    assert sorted(await _kinds(teams, visit)) == [("provider", "connected"), ("provider", "disconnected")]
    reports = [p for p in teams.double.reads if p.endswith("/attendanceReports")]
    assert len(reports) == 3
    row = (await teams.fetch("SELECT reconcile_due, reconciled_at, reconcile_attempts FROM graph_subscriptions "
                             "WHERE id = $1", subscription_id))[0]
    assert row["reconcile_due"] is None and row["reconciled_at"] is not None and row["reconcile_attempts"] == 0


async def test_an_attendance_report_that_never_comes_is_given_up_after_a_bounded_number_of_reads(
        teams: Teams) -> None:
    visit = await teams.visit()
    _meeting_id, _join = await teams.meeting(visit)
    graph_id, subscription_id = (await teams.fetch("SELECT graph_id, id FROM graph_subscriptions"))[0]
    await teams.lifecycle(graph_id, "missed")  # nobody joined: Graph's list of reports stays empty

    async def given_up() -> bool:
        rows = await teams.fetch("SELECT reconciled_at FROM graph_subscriptions WHERE id = $1", subscription_id)
        return rows[0]["reconciled_at"] is not None

    await wait_for(given_up)
    retries = teams.stack.gateway_app[SETTINGS].graph_report_retries
    assert len([p for p in teams.double.reads if p.endswith("/attendanceReports")]) == retries
    row = (await teams.fetch("SELECT reconcile_due, reconcile_attempts FROM graph_subscriptions WHERE id = $1",
                             subscription_id))[0]
    assert row["reconcile_due"] is None and row["reconcile_attempts"] == 0
    await asyncio.sleep(0.3)  # several poll intervals: no further read
    assert len([p for p in teams.double.reads if p.endswith("/attendanceReports")]) == retries


# ----- renewal and lifecycle -----------------------------------------------------------------------------

async def test_a_subscription_is_renewed_before_it_expires(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    sub = next(iter(teams.double.subscriptions.values()))
    first = sub.expires
    await teams.fetch("UPDATE graph_subscriptions SET expires_at = now() + interval '1 minute'")
    assert await teams.events.renew_due() == 1
    assert sub.expires >= first
    expires = (await teams.fetch("SELECT expires_at FROM graph_subscriptions"))[0]["expires_at"]
    assert abs((expires - sub.expires).total_seconds()) < 1
    assert await teams.events.renew_due() == 0  # not due any more


async def test_reauthorization_required_renews_the_subscription(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    sub = next(iter(teams.double.subscriptions.values()))
    await teams.fetch("UPDATE graph_subscriptions SET expires_at = now() + interval '1 minute'")
    answer = await teams.lifecycle(sub.id, "reauthorizationRequired")
    assert answer["status"] == 202

    async def renewed() -> bool:
        rows = await teams.fetch("SELECT expires_at > now() + interval '1 hour' AS later FROM graph_subscriptions")
        return bool(rows[0]["later"])

    await wait_for(renewed)


async def test_a_removed_subscription_is_made_again(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    old = next(iter(teams.double.subscriptions.values()))
    assert (await teams.lifecycle(old.id, "subscriptionRemoved"))["status"] == 202

    async def again() -> bool:
        rows = await teams.fetch("SELECT status FROM graph_subscriptions ORDER BY created_at")
        return [r["status"] for r in rows] == ["removed", "active"]

    await wait_for(again)
    assert list(teams.double.subscriptions) != [old.id] and len(teams.double.subscriptions) == 1


# ----- privacy -------------------------------------------------------------------------------------------

async def test_no_patient_data_is_sent_to_graph_or_kept(teams: Teams) -> None:
    visit = await teams.visit()
    meeting_id, _join = await teams.meeting(visit)
    await teams.roster(meeting_id, [clinician(), anonymous(CANARY_NAME)])

    async def connected() -> bool:
        return len(await _kinds(teams, visit)) == 2

    await wait_for(connected)
    sub = next(iter(teams.double.subscriptions.values()))
    sent = json.dumps([sub.resource, sub.notification_url, sub.lifecycle_url, sub.client_state])
    assert str(visit) not in sent and "enc-1" not in sent
    async with teams.stack.gateway_app[DB].acquire() as conn:
        _tables, text = await database_text(conn)
    assert CANARY_NAME not in text and "anon-" not in text


async def test_hostile_webhook_calls_get_a_refusal_never_a_500(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    graph_id, our_id = (await teams.fetch("SELECT graph_id, id FROM graph_subscriptions"))[0]
    good = teams.events.client_state(our_id)
    bodies: list[Any] = [[], {}, {"value": []}, {"value": [1, "x", None]}, {"value": [{"clientState": 5}]},
                         {"value": [{"subscriptionId": graph_id, "clientState": good}]},  # no encrypted content
                         {"value": [{"subscriptionId": graph_id, "clientState": good, "lifecycleEvent": "nonsense"}]},
                         {"value": [{"subscriptionId": 7, "clientState": good, "lifecycleEvent": "missed"}]},
                         {"value": [{"subscriptionId": graph_id, "clientState": "x" * 5000}]},
                         {"value": [{}] * 1001}]
    for body in bodies:
        for path in ("/graph/notifications", "/graph/lifecycle"):
            r = await _post(teams, body, path)
            assert r.status in (400, 403), (body, r.status)
    async with teams.http.post(teams.stack.gateway_url + "/graph/notifications", data=b"not json",
                               headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 400
    async with teams.http.post(teams.stack.gateway_url + "/graph/notifications",
                               params={"validationToken": "x" * 3000}) as r:
        assert r.status == 400
    assert not await teams.fetch("SELECT 1 FROM graph_notifications")


async def test_a_collection_keeps_its_good_notifications_and_drops_the_others(teams: Teams) -> None:
    visit = await teams.visit()
    await teams.meeting(visit)
    graph_id, our_id = (await teams.fetch("SELECT graph_id, id FROM graph_subscriptions"))[0]
    state = teams.events.client_state(our_id)
    roster = {"eventType": "Microsoft.Communication.CallRosterUpdate",
              "activeParticipants@joined": [{"Id": "leg-9", "Identity": {"User": {"Id": ORGANIZER}}}]}
    good = await _rich_item(teams, graph_id, state, roster)
    forged = await _rich_item(teams, graph_id, f"{our_id}.forged", roster)
    r = await _post(teams, {"value": [forged, good]})
    assert r.status == 202

    async def applied() -> bool:
        return ("provider", "connected") in await _kinds(teams, visit)

    await wait_for(applied)
    assert len(await teams.fetch("SELECT 1 FROM graph_notifications")) == 1


async def test_an_ended_visit_lets_its_subscription_go_and_reads_the_report_once(teams: Teams) -> None:
    from presence.visit_end import end_visit

    visit = await teams.visit()
    meeting_id, _join = await teams.meeting(visit)
    await teams.roster(meeting_id, [clinician(), anonymous()], notify=False)  # nothing reached us live
    await teams.roster(meeting_id, [], notify=False)
    async with teams.stack.gateway_app[DB].acquire() as conn:
        await end_visit(conn, visit, "clinician")

    async def let_go() -> bool:
        rows = await teams.fetch("SELECT status, reconciled_at FROM graph_subscriptions")
        return rows[0]["status"] == "ended" and rows[0]["reconciled_at"] is not None

    await wait_for(let_go)
    assert not teams.double.subscriptions  # deleted at Graph
    assert sorted(await _kinds(teams, visit)) == [("guest", "connected"), ("guest", "disconnected"),
                                                   ("provider", "connected"), ("provider", "disconnected")]
    assert await teams.events.reconcile_visit(visit) == 0


async def test_a_subscription_graph_refused_is_tried_again_later(teams: Teams) -> None:
    visit = await teams.visit()
    meeting_id = f"MSo{uuid.uuid4().hex}"
    join = f"https://teams.example/l/meetup-join/19%3ameeting_{meeting_id}%40thread.v2/0"
    graph_events.register_meeting(teams.double_app, meeting_id, join, ORGANIZER, TENANT)
    port = teams.events.port

    async def down(*args: Any, **kwargs: Any) -> tuple[int, Any]:
        return 503, None

    teams.events.port = down
    try:
        assert not await teams.events.subscribe(TENANT, visit, join, organizer_id=ORGANIZER, meeting_id=meeting_id)
    finally:
        teams.events.port = port
    assert [r["status"] for r in await teams.fetch("SELECT status FROM graph_subscriptions")] == ["failed"]
    await teams.fetch("UPDATE graph_subscriptions SET created_at = now() - interval '2 minutes'")

    async def again() -> bool:
        rows = await teams.fetch("SELECT status FROM graph_subscriptions ORDER BY created_at")
        return [r["status"] for r in rows] == ["failed", "active"]

    await wait_for(again)
    assert len(teams.double.subscriptions) == 1
