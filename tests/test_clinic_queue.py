"""The clinician's clinic queue: only their own visits of today (and their department's where the organisation
allows it), live over the presence socket, with Admit; patient names read from FHIR and never kept; a handle
from another browser or a forged one refused."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from config_portal.organisations import department_queue
from gateway import clinic_queue, participants
from gateway.appkeys import DB
from gateway.cli import main
from gateway.configurations import set_organisation_zone
from presence import eventlog
from presence import queue as queue_socket
from tests.conftest import Stack, browser_session, database_text, recv_frame
from tests.test_privacy import CANARIES, _seed_canary_patient

TIMEOUT = 5.0


async def _launch(stack: Stack, client: aiohttp.ClientSession, *, practitioner: str = "prac-1",
                  patient: str = "pat-1", encounter: str = "enc-1", department: str | None = None) -> tuple[str, UUID]:
    """A clinician's launch in the browser `client`: (the provider view's handle, the visit)."""
    launch = stack.new_launch(practitioner=practitioner, patient=patient, encounter=encounter)
    url = f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={launch}"
    if department is not None:
        url += f"&department={quote(department)}"
    for _ in range(6):
        response = await client.get(url, allow_redirects=False)
        await response.read()
        if response.status not in (302, 303):
            break
        url = urljoin(url, response.headers["Location"])
    assert response.status == 200, await response.text()
    handle = urlsplit(url).path.rsplit("/", 1)[1]
    async with stack.gateway_app[DB].acquire() as conn:
        visit = await conn.fetchval("SELECT visit_id FROM provider_sessions ORDER BY created_at DESC LIMIT 1")
    return handle, visit


async def _queue(stack: Stack, client: aiohttp.ClientSession, handle: str,
                 scope: str | None = "own") -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """A queue socket, authenticated and subscribed: (the socket, its snapshot or error frame)."""
    ws = await client.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "queue"})
    auth = await recv_frame(ws, TIMEOUT)
    assert auth["type"] == "auth_ok", auth
    await ws.send_json({"type": "subscribe_queue", "id": 2, "scope": scope})
    return ws, await recv_frame(ws, TIMEOUT)


async def _recv_event(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    for _ in range(50):
        frame = await recv_frame(ws, TIMEOUT)
        if frame["type"] == "event" and frame["kind"] == kind:
            return frame
    raise AssertionError(f"no {kind} event")


def _visits(snapshot: dict[str, Any]) -> set[str]:
    assert snapshot["type"] == "snapshot", snapshot
    return {v["visit"] for v in snapshot["visits"]}


async def _organisation(stack: Stack, allow_department: bool) -> int:
    """An organisation owning the sandbox's configuration, its department queues on or off."""
    async with stack.gateway_app[DB].acquire() as conn:
        org = await conn.fetchval(
            "INSERT INTO organisations (slug, name, idp_kind, issuer, client_id, client_secret, group_claim) "
            "VALUES ('queue-health', 'Queue Health', 'oidc', 'https://idp.example/', 'c', '\\x00', 'groups') "
            "RETURNING id")
        await conn.execute("UPDATE configurations SET organisation_id = $1 WHERE id = $2", org,
                           stack.configuration_id)
        if allow_department:
            assert await department_queue(conn, "queue-health", True, "operator@example.org")
    return org


async def test_the_queue_lists_only_the_clinicians_own_visits(stack: Stack) -> None:
    h1, v1 = await _launch(stack, stack.browser, encounter="enc-1", patient="pat-1")
    _h2, v2 = await _launch(stack, stack.browser, encounter="enc-2", patient="pat-2")
    async with browser_session(stack.gateway_url) as other:
        _h4, v4 = await _launch(stack, other, practitioner="prac-2", encounter="enc-4", patient="pat-4")
        ws, snapshot = await _queue(stack, stack.browser, h1)
        assert _visits(snapshot) == {str(v1), str(v2)}
        response = await stack.browser.get(f"{stack.gateway_url}/provider/{h1}/queue/patients?scope=own")
        body = await response.json()
        assert response.status == 200, body
        assert {v["visit"]: v["patient"] for v in body["visits"]} == {str(v1): "Alex Testpatient",
                                                                      str(v2): "Bea Example"}
        assert response.headers["Cache-Control"] == "no-store"
        # Naming another clinician's visit gets nothing about it.
        response = await stack.browser.get(f"{stack.gateway_url}/provider/{h1}/queue/patients?visit={v4}")
        assert (await response.json())["visits"] == []
        await ws.close()
    async with stack.gateway_app[DB].acquire() as conn:
        # Opening the queue is not joining a visit: it wrote no presence event.
        assert await conn.fetchval("SELECT count(*) FROM presence_events") == 0


async def test_a_patient_waiting_reaches_the_queue_live_and_admit_works(stack: Stack) -> None:
    handle, _v1 = await _launch(stack, stack.browser, encounter="enc-1")
    _h2, v2 = await _launch(stack, stack.browser, encounter="enc-2", patient="pat-2")
    ws, snapshot = await _queue(stack, stack.browser, handle)
    assert str(v2) in _visits(snapshot)
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        patient = await participants.patient_participant(conn, v2)
    await eventlog.record_event(pool, v2, patient, "lobby_entered")
    waiting = await _recv_event(ws, "lobby_entered")
    assert waiting["visit"] == str(v2) and waiting["participant"] == str(patient)
    await ws.send_json({"type": "admit", "id": 3, "participant": str(patient)})
    admitted = await _recv_event(ws, "admitted")
    assert admitted["visit"] == str(v2) and admitted["participant"] == str(patient)
    async with pool.acquire() as conn:
        assert await participants.admission_state(conn, patient) == "admitted"
    await ws.close()


async def test_the_queue_cannot_admit_into_another_clinicians_visit(stack: Stack) -> None:
    handle, _v1 = await _launch(stack, stack.browser)
    async with browser_session(stack.gateway_url) as other:
        _h, theirs = await _launch(stack, other, practitioner="prac-2", encounter="enc-4", patient="pat-4")
    async with stack.gateway_app[DB].acquire() as conn:
        patient = await participants.patient_participant(conn, theirs)
    ws, _snapshot = await _queue(stack, stack.browser, handle)
    await ws.send_json({"type": "admit", "id": 3, "participant": str(patient)})
    frame = await recv_frame(ws, TIMEOUT)
    assert frame == {"type": "error", "id": 3, "code": "unknown_participant"}
    async with stack.gateway_app[DB].acquire() as conn:
        assert await participants.admission_state(conn, patient) is None
    await ws.close()


async def test_a_queue_socket_takes_no_visit_messages_and_a_view_socket_no_queue(stack: Stack) -> None:
    handle, _v = await _launch(stack, stack.browser)
    ws, _snapshot = await _queue(stack, stack.browser, handle)
    for n, frame in enumerate([{"type": "subscribe"}, {"type": "end_visit"}, {"type": "subscribe_queue"},
                               {"type": "chat", "to": None, "text": "hi"}], start=10):
        await ws.send_json({**frame, "id": n})
        answer = await recv_frame(ws, TIMEOUT)
        assert answer["code"] in ("not_allowed", "already_subscribed"), answer
    await ws.close()
    view = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await view.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    assert (await recv_frame(view, TIMEOUT))["type"] == "auth_ok"
    await view.send_json({"type": "subscribe_queue", "id": 2, "scope": "own"})
    assert (await recv_frame(view, TIMEOUT))["code"] == "not_allowed"
    await view.close()


@pytest.mark.parametrize("scope", ["everyone", 7, ["own"]])
async def test_a_queue_of_an_unknown_scope_is_refused(stack: Stack, scope: Any) -> None:
    handle, _v = await _launch(stack, stack.browser)
    ws, answer = await _queue(stack, stack.browser, handle, scope)
    assert answer == {"type": "error", "id": 2, "code": "bad_scope"}
    await ws.close()
    response = await stack.browser.get(f"{stack.gateway_url}/provider/{handle}/queue/patients?scope={scope}")
    assert response.status == 400 and (await response.json())["error"] == "invalid_scope"


async def test_the_department_queue_is_refused_unless_the_organisation_allows_it(stack: Stack) -> None:
    handle, _v = await _launch(stack, stack.browser, department="cardiology")
    await _organisation(stack, allow_department=False)
    ws, answer = await _queue(stack, stack.browser, handle, "department")
    assert answer == {"type": "error", "id": 2, "code": "department_queue_off"}
    await ws.close()
    response = await stack.browser.get(f"{stack.gateway_url}/provider/{handle}/queue/patients?scope=department")
    assert response.status == 403 and (await response.json())["error"] == "department_queue_off"
    page = await stack.browser.get(f"{stack.gateway_url}/provider/{handle}/queue")
    assert 'value="department"' not in await page.text()


async def test_the_department_queue_shows_only_the_clinicians_own_department(stack: Stack) -> None:
    await _organisation(stack, allow_department=True)
    handle, mine = await _launch(stack, stack.browser, encounter="enc-1", department="cardiology")
    async with browser_session(stack.gateway_url) as other:
        _h, colleague = await _launch(stack, other, practitioner="prac-2", encounter="enc-4", patient="pat-4",
                                      department="cardiology")
        _h, elsewhere = await _launch(stack, other, practitioner="prac-2", encounter="enc-5", patient="pat-5",
                                      department="oncology")
    ws, snapshot = await _queue(stack, stack.browser, handle, "department")
    assert _visits(snapshot) == {str(mine), str(colleague)}
    await ws.close()
    ws, snapshot = await _queue(stack, stack.browser, handle, "own")
    assert _visits(snapshot) == {str(mine)}
    await ws.close()
    response = await stack.browser.get(f"{stack.gateway_url}/provider/{handle}/queue/patients?scope=department")
    body = await response.json()
    assert {v["visit"]: v["patient"] for v in body["visits"]} == {str(mine): "Alex Testpatient",
                                                                  str(colleague): "Dee Mockwell"}
    page = await stack.browser.get(f"{stack.gateway_url}/provider/{handle}/queue")
    assert 'value="department"' in await page.text()
    async with stack.gateway_app[DB].acquire() as conn:
        audited = await conn.fetch("SELECT actor, details FROM audit_log WHERE action = 'organisation.department_queue'")
    assert [(r["actor"], json.loads(r["details"])) for r in audited] == [
        ("operator@example.org", {"before": {"department_queue": False}, "after": {"department_queue": True}})]
    assert elsewhere not in {mine, colleague}


async def test_a_launch_without_a_department_has_no_department_queue(stack: Stack) -> None:
    await _organisation(stack, allow_department=True)
    handle, _v = await _launch(stack, stack.browser)
    ws, answer = await _queue(stack, stack.browser, handle, "department")
    assert answer == {"type": "error", "id": 2, "code": "no_department"}
    await ws.close()


async def test_the_queue_holds_today_in_the_organisations_time_zone(stack: Stack) -> None:
    org = await _organisation(stack, allow_department=False)
    zone = "Pacific/Kiritimati"  # UTC+14: its day starts long before UTC's
    async with stack.gateway_app[DB].acquire() as conn:
        await set_organisation_zone(conn, org, zone, "operator@example.org")
    handle, today = await _launch(stack, stack.browser, encounter="enc-1")
    _h, yesterday = await _launch(stack, stack.browser, encounter="enc-2", patient="pat-2")
    start, _end = clinic_queue.day_bounds(zone, dt.datetime.now(dt.UTC))
    async with stack.gateway_app[DB].acquire() as conn:
        await conn.execute("UPDATE visits SET created_at = $2 WHERE id = $1", today, start)
        await conn.execute("UPDATE visits SET created_at = $2 WHERE id = $1", yesterday,
                           start - dt.timedelta(seconds=1))
    ws, snapshot = await _queue(stack, stack.browser, handle)
    assert _visits(snapshot) == {str(today)}
    await ws.close()


def test_a_day_is_the_organisations_calendar_day_even_across_a_clock_change() -> None:
    start, end = clinic_queue.day_bounds("America/New_York", dt.datetime(2026, 3, 8, 12, tzinfo=dt.UTC))
    assert start.astimezone(dt.UTC) == dt.datetime(2026, 3, 8, 5, tzinfo=dt.UTC)
    assert end - start == dt.timedelta(hours=23)  # the spring-forward day
    start, _ = clinic_queue.day_bounds("Europe/Paris", dt.datetime(2026, 7, 1, 22, 30, tzinfo=dt.UTC))
    assert start == dt.datetime(2026, 7, 1, 22, tzinfo=dt.UTC)  # already the 2nd in Paris


async def test_a_visit_opened_later_joins_an_open_queue(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_socket, "QUEUE_REFRESH", 0.2)
    handle, first = await _launch(stack, stack.browser)
    ws, snapshot = await _queue(stack, stack.browser, handle)
    assert _visits(snapshot) == {str(first)}
    _h, later = await _launch(stack, stack.browser, encounter="enc-2", patient="pat-2")
    await ws.send_json({"type": "ping-me", "id": 5})  # the socket is woken by frames as well as by time
    for _ in range(20):
        frame = await recv_frame(ws, TIMEOUT)
        if frame["type"] == "queue_visits":
            break
    assert [v["visit"] for v in frame["visits"]] == [str(later)]
    async with stack.gateway_app[DB].acquire() as conn:
        patient = await participants.patient_participant(conn, later)
    await eventlog.record_event(stack.gateway_app[DB], later, patient, "lobby_entered")
    assert (await _recv_event(ws, "lobby_entered"))["visit"] == str(later)
    await ws.close()


async def test_a_handle_from_another_browser_or_forged_opens_no_queue(stack: Stack) -> None:
    handle, _v = await _launch(stack, stack.browser)
    async with browser_session(stack.gateway_url) as thief:
        for forged in (handle, "A" * 43, "not a handle!", "x" * 500):
            ws = await thief.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
            await ws.send_json({"type": "auth", "id": 1, "provider": forged, "where": "queue"})
            assert (await recv_frame(ws, TIMEOUT))["code"] == "auth_failed"
            await ws.receive(timeout=TIMEOUT)
            assert ws.close_code == 4401
        page = await thief.get(f"{stack.gateway_url}/provider/{handle}/queue")
        assert page.status == 401
        names = await thief.get(f"{stack.gateway_url}/provider/{handle}/queue/patients")
        assert names.status == 401 and (await names.json())["error"] == "session_expired"
    # The same browser with a forged handle fares no better.
    ws = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await ws.send_json({"type": "auth", "id": 1, "provider": "B" * 43, "where": "queue"})
    assert (await recv_frame(ws, TIMEOUT))["code"] == "auth_failed"
    await ws.close()
    # A patient's session is no way into a queue either.
    ws = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await ws.send_json({"type": "auth", "id": 1, "where": "queue"})
    assert (await recv_frame(ws, TIMEOUT))["code"] == "auth_failed"
    await ws.close()


async def test_the_queue_keeps_no_patient_name_in_database_or_logs(stack: Stack,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _seed_canary_patient(stack)
    handle, visit = await _launch(stack, stack.browser, patient=CANARIES["patient_id"],
                                  encounter=CANARIES["encounter_id"])
    ws, snapshot = await _queue(stack, stack.browser, handle)
    assert _visits(snapshot) == {str(visit)}
    page = await stack.browser.get(f"{stack.gateway_url}/provider/{handle}/queue")
    assert page.status == 200, await page.text()
    response = await stack.browser.get(f"{stack.gateway_url}/provider/{handle}/queue/patients")
    text = await response.text()
    assert CANARIES["family"] in text  # read live, for this page only
    await ws.close()
    async with stack.gateway_app[DB].acquire() as conn:
        _tables, dump = await database_text(conn)
    ours = [r for r in caplog.records if not r.name.startswith("sandbox")]
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours).lower()
    for name, value in CANARIES.items():
        assert value.lower() not in dump.lower(), f"{name} landed in the database"
        assert value.lower() not in logs, f"{name} landed in the logs"


async def test_an_operator_turns_department_queues_on_and_off_from_the_command_line(
        database_url: str, monkeypatch: pytest.MonkeyPatch, signing_key_pem: bytes, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("VISITGATE_PUBLIC_URL", "https://visits.example.org")
    monkeypatch.setenv("VISITGATE_SECRET_KEY", base64.b64encode(b"x" * 32).decode())
    monkeypatch.setenv("VISITGATE_SIGNING_KEY", signing_key_pem.decode())
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    assert await asyncio.to_thread(main, [
        "org", "add", "--slug", "contoso", "--name", "Contoso Health", "--idp", "oidc", "--issuer",
        "https://idp.example.org", "--client-id", "app-1", "--client-secret-file", str(secret)]) == 0
    for state in ("on", "on", "off"):
        assert await asyncio.to_thread(main, ["org", "department-queue", "--org", "contoso", state,
                                              "--by", "ops@contoso.example"]) == 0
    assert "department queues are off in contoso" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["org", "department-queue", "--org", "nobody", "on"]) != 0
    assert "nobody" in capsys.readouterr().err
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT department_queue FROM organisations") is False
        audited = await conn.fetch("SELECT actor, details FROM audit_log "
                                   "WHERE action = 'organisation.department_queue' ORDER BY id")
        # Turning it on twice changed (and audited) it once.
        assert [(r["actor"], json.loads(r["details"])["after"]) for r in audited] == [
            ("ops@contoso.example", {"department_queue": True}), ("ops@contoso.example", {"department_queue": False})]
    finally:
        await conn.close()
