"""The device test's result and the call quality summary over the presence socket: a checked structure the
clinician sees on the event (buckets, no numbers a page chose, no text), and per visit and role aggregates
that stay one small row however many samples arrive."""
from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import aiohttp
import pytest

from gateway.appkeys import DB
from presence import quality
from tests.conftest import Stack, recv_frame, recv_until
from tests.test_presence_ws_edges import _connect, _patient_socket, _provider_socket, _still_alive

TIMEOUT = 5.0
RESULT = {"camera": True, "microphone": True, "speaker": True, "candidates": ["relay", "host", "srflx"],
          "relay": "ok", "rtt_ms": 43}


async def _event(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    for _ in range(20):  # bounded: the event is among the next few frames
        frame = await recv_frame(ws, TIMEOUT)
        if frame["type"] == "event" and frame["kind"] == kind:
            return frame
    raise AssertionError(f"no {kind} event")


async def _provider_room(stack: Stack) -> tuple[aiohttp.ClientWebSocketResponse, UUID]:
    handle = await stack.provider_handle()
    ws = await _connect(stack)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "room"})
    auth = await recv_frame(ws, TIMEOUT)
    assert auth["type"] == "auth_ok", auth
    return ws, UUID(auth["visit"])


async def test_a_device_test_result_reaches_the_clinician_with_the_round_trip_as_a_bucket(stack: Stack) -> None:
    view, visit_id, patient = await _provider_socket(stack)
    lobby = await _patient_socket(stack, visit_id, patient)
    await lobby.send_json({"type": "device_test", "id": 5, "passed": True, "result": RESULT})
    assert (await recv_until(lobby, "result", timeout=TIMEOUT))["id"] == 5
    event = await _event(view, "device_test_passed")
    assert event["participant"] == str(patient)
    assert event["detail"] == {"camera": True, "microphone": True, "speaker": True,
                               "candidates": ["host", "srflx", "relay"], "relay": "ok", "rtt": "under_50ms"}
    # The same result again stores nothing; a different one (the relay failed) is a new event.
    await lobby.send_json({"type": "device_test", "id": 6, "passed": True, "result": RESULT})
    assert (await recv_until(lobby, "result", timeout=TIMEOUT))["id"] == 6
    failed = {**RESULT, "relay": "failed", "rtt_ms": None, "candidates": ["host"]}
    await lobby.send_json({"type": "device_test", "id": 7, "passed": True, "result": failed})
    assert (await recv_until(lobby, "result", timeout=TIMEOUT))["id"] == 7
    assert (await _event(view, "device_test_passed"))["detail"]["relay"] == "failed"
    async with stack.gateway_app[DB].acquire() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM presence_events WHERE participant_id = $1 "
                                     "AND kind LIKE 'device_test_%'", patient)
    assert stored == 2
    await lobby.close()
    await view.close()


@pytest.mark.parametrize("result", [
    {**RESULT, "camera": "yes"},
    {**RESULT, "candidates": ["host", "Mrs Smith"]},
    {**RESULT, "candidates": "host"},
    {**RESULT, "relay": "maybe"},
    {**RESULT, "rtt_ms": -1},
    {**RESULT, "rtt_ms": "40"},
    {**RESULT, "rtt_ms": 10**12},
    {**RESULT, "note": "x", "a": 1, "b": 2, "c": 3},
    ["camera"],
])
async def test_a_device_test_result_outside_its_schema_is_refused_and_nothing_stored(
        stack: Stack, result: Any) -> None:
    view, visit_id, patient = await _provider_socket(stack)
    lobby = await _patient_socket(stack, visit_id, patient)
    await lobby.send_str(json.dumps({"type": "device_test", "id": 5, "passed": True, "result": result}))
    assert await recv_until(lobby, "error", timeout=TIMEOUT) == {"type": "error", "id": 5, "code": "bad_device_test"}
    await _still_alive(lobby)
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM presence_events WHERE detail IS NOT NULL") == 0
    await lobby.close()
    await view.close()


async def test_the_lobby_gets_ice_servers_for_its_connection_check(stack: Stack) -> None:
    view, visit_id, patient = await _provider_socket(stack)
    lobby = await _patient_socket(stack, visit_id, patient)
    await lobby.send_json({"type": "ice", "id": 9})
    answer = await recv_until(lobby, "ice", timeout=TIMEOUT)
    assert answer["id"] == 9 and isinstance(answer["servers"], list), answer
    await lobby.close()
    await view.close()


async def test_quality_samples_are_counted_in_one_row_per_visit_and_role_with_worst_and_median(
        stack: Stack) -> None:
    room, visit_id = await _provider_room(stack)
    for n, (rtt, loss) in enumerate([(30, 0), (45, 0.5), (120, 2), (500, 12), (60, None)]):
        await room.send_json({"type": "quality", "id": 10 + n, "rtt_ms": rtt, "loss_pct": loss})
        assert (await recv_until(room, "result", timeout=TIMEOUT))["id"] == 10 + n
    async with stack.gateway_app[DB].acquire() as conn:
        rows = await conn.fetch("SELECT * FROM call_quality")
        (summary,) = await quality.visit_quality(conn, visit_id)
        columns = {r["column_name"] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'call_quality'")}
    assert len(rows) == 1 and rows[0]["visit_id"] == visit_id and rows[0]["role"] == "provider"
    assert summary == quality.QualitySummary("provider", 5, "over_400ms", "50_100ms", "over_10pct", "under_1pct")
    # Nothing but the visit, the role, counts and when: no participant, no exact numbers.
    assert columns == {"visit_id", "role", "samples", "rtt_counts", "loss_counts", "updated_at"}
    await room.close()


async def test_quality_samples_stay_bounded_however_many_arrive(stack: Stack,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "MAX_SAMPLES", 3)
    room, visit_id = await _provider_room(stack)
    answers = []
    for n in range(12):  # more than the store budget allows in a minute, and than the row counts
        await room.send_json({"type": "quality", "id": 10 + n, "rtt_ms": 30, "loss_pct": 0})
        answers.append(await recv_frame(room, TIMEOUT))
    codes = [a.get("code") for a in answers if a["type"] == "error"]
    assert codes and set(codes) == {"rate_limited"}, answers
    async with stack.gateway_app[DB].acquire() as conn:
        (summary,) = await quality.visit_quality(conn, visit_id)
        rows = await conn.fetchval("SELECT count(*) FROM call_quality")
    assert summary.samples == 3 and rows == 1
    await _still_alive(room)
    await room.close()


@pytest.mark.parametrize("frame, code", [
    ({"type": "quality", "rtt_ms": "fast", "loss_pct": 0}, "bad_quality"),
    ({"type": "quality", "rtt_ms": 10, "loss_pct": 101}, "bad_quality"),
    ({"type": "quality", "rtt_ms": True, "loss_pct": 0}, "bad_quality"),
])
async def test_a_quality_sample_outside_its_schema_is_refused(stack: Stack, frame: dict[str, Any],
                                                               code: str) -> None:
    room, _visit = await _provider_room(stack)
    await room.send_str(json.dumps({**frame, "id": 7}))
    assert await recv_until(room, "error", timeout=TIMEOUT) == {"type": "error", "id": 7, "code": code}
    await _still_alive(room)
    await room.close()


async def test_a_quality_sample_from_the_lobby_is_refused(stack: Stack) -> None:
    view, visit_id, patient = await _provider_socket(stack)
    lobby = await _patient_socket(stack, visit_id, patient)
    await lobby.send_json({"type": "quality", "id": 3, "rtt_ms": 20, "loss_pct": 0})
    assert await recv_until(lobby, "error", timeout=TIMEOUT) == {"type": "error", "id": 3, "code": "not_in_room"}
    await lobby.close()
    await view.close()


def _env(**extra: str) -> dict[str, str]:
    import base64
    import secrets

    return {"VISITGATE_PUBLIC_URL": "https://visits.example.org",
            "VISITGATE_SECRET_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "VISITGATE_SIGNING_KEY": "unused", **extra}


def test_the_ice_transport_policy_is_all_unless_relay_is_asked_for_with_a_turn_server() -> None:
    from gateway.settings import Settings

    assert Settings.from_env(_env()).ice_transport_policy == "all"
    relayed = Settings.from_env(_env(VISITGATE_ICE_TRANSPORT_POLICY="relay", VISITGATE_TURN_URLS="turn:t.example.org",
                                     VISITGATE_TURN_SECRET="north-clinic-turn-secret"))
    assert relayed.ice_transport_policy == "relay"


@pytest.mark.parametrize("env, named", [
    ({"VISITGATE_ICE_TRANSPORT_POLICY": "sometimes"}, "`all` or `relay`"),
    ({"VISITGATE_ICE_TRANSPORT_POLICY": "relay"}, "VISITGATE_TURN_URLS"),
])
def test_an_ice_transport_policy_that_cannot_work_stops_start_up(env: dict[str, str], named: str) -> None:
    from gateway.settings import ConfigError, Settings

    with pytest.raises(ConfigError, match=named):
        Settings.from_env(_env(**env))
