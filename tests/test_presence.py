"""Presence over the websocket: authentication, snapshot, live events, resume, refusals, slow consumers."""
from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

import aiohttp
import pytest
from yarl import URL

from gateway import participants
from gateway.appkeys import DB
from presence import eventlog
from presence.announcer import Announcer
from presence.appkeys import ANNOUNCER, BUS, HUB
from tests.conftest import Stack, recv_frame, recv_until

TIMEOUT = 5.0


async def _provider(stack: Stack, encounter: str = "enc-1", patient: str = "pat-1") -> str:
    return await stack.provider_handle(stack.new_launch(patient=patient, encounter=encounter))


async def _connect(stack: Stack, origin: str | None = None) -> aiohttp.ClientWebSocketResponse:
    return await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=origin or stack.gateway_url,
                                          autoping=True)


async def _recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    return await recv_frame(ws, TIMEOUT)


async def _recv_until(ws: aiohttp.ClientWebSocketResponse, want: str, limit: int = 50) -> dict[str, Any]:
    return await recv_until(ws, want, limit, TIMEOUT)


async def _recv_event(ws: aiohttp.ClientWebSocketResponse, kind: str, limit: int = 50) -> dict[str, Any]:
    for _ in range(limit):
        frame = await _recv(ws)
        if frame["type"] == "event" and frame["kind"] == kind:
            return frame
    raise AssertionError(f"no {kind} event")


async def _provider_socket(stack: Stack, handle: str, after: int | None = None) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any], dict[str, Any]]:
    ws = await _connect(stack)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    auth = await _recv(ws)
    assert auth["type"] == "auth_ok", auth
    await ws.send_json({"type": "subscribe", "id": 2, "after": after})
    if after is None:
        first = await _recv_until(ws, "snapshot")
    else:
        first = {}
    return ws, auth, first


async def _visit_id(stack: Stack) -> UUID:
    async with stack.gateway_app[DB].acquire() as conn:
        return await conn.fetchval("SELECT id FROM visits ORDER BY created_at LIMIT 1")


async def _visit_with_patient(stack: Stack) -> tuple[str, aiohttp.ClientWebSocketResponse, dict[str, Any], UUID, UUID]:
    """A provider's live socket on a visit and the visit's patient: (handle, socket, auth, visit, patient)."""
    handle = await _provider(stack)
    ws, auth, _ = await _provider_socket(stack, handle)
    visit_id = UUID(auth["visit"])
    async with stack.gateway_app[DB].acquire() as conn:
        patient = await participants.patient_participant(conn, visit_id)
    return handle, ws, auth, visit_id, patient


async def test_provider_view_socket_gets_a_snapshot_with_its_own_connection(stack: Stack) -> None:
    handle = await _provider(stack)
    ws, auth, snapshot = await _provider_socket(stack, handle)
    assert auth["role"] == "provider"
    kinds = [(e["kind"], e["participant"]) for e in snapshot["events"]]
    if ("connected", auth["participant"]) not in kinds:
        # Written just before the snapshot was read: it may come right after it, live.
        live = await _recv_event(ws, "connected")
        assert live["participant"] == auth["participant"] and live["id"] > snapshot["last_id"]
    assert all(e["id"] <= snapshot["last_id"] for e in snapshot["events"])
    await ws.close()


async def test_patient_events_reach_the_provider_live(stack: Stack) -> None:
    _handle, ws, auth, visit_id, patient = await _visit_with_patient(stack)
    pool = stack.gateway_app[DB]
    await eventlog.record_event(pool, visit_id, patient, "lobby_entered")
    frame = await _recv_event(ws, "lobby_entered")
    assert frame["kind"] == "lobby_entered" and frame["participant"] == str(patient) and frame["role"] == "patient"
    await ws.close()


async def test_resume_after_reconnect_loses_and_repeats_nothing(stack: Stack) -> None:
    handle, ws, auth, visit_id, patient = await _visit_with_patient(stack)
    pool = stack.gateway_app[DB]
    await eventlog.record_event(pool, visit_id, patient, "lobby_entered")
    seen = [(await _recv_event(ws, "lobby_entered"))["id"]]
    last = seen[-1]
    await ws.close()
    # While the provider is away: the disconnect itself, then three patient events.
    missed = [await eventlog.record_event(pool, visit_id, patient, kind)
              for kind in ("device_test_passed", "left", "lobby_entered")]
    ws2 = await _connect(stack)
    await ws2.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    assert (await _recv(ws2))["type"] == "auth_ok"
    await ws2.send_json({"type": "subscribe", "id": 2, "after": last})
    replayed: list[int] = []
    for _ in range(20):
        frame = await _recv(ws2)
        if frame["type"] == "result":
            break
        replayed.append(frame["id"])
    async with pool.acquire() as conn:
        expected = [e.id for e in await eventlog.events_after(conn, visit_id, last, 10**12)]
    assert set(missed) <= set(expected)
    # The new socket's own "connected" may arrive live rather than in the replay; together, each once.
    live_id = await eventlog.record_event(pool, visit_id, patient, "device_test_passed")
    for _ in range(20):
        frame = await _recv(ws2)
        if frame["type"] == "event":
            replayed.append(frame["id"])
            if frame["id"] == live_id:
                break
    assert len(replayed) == len(set(replayed)), "an event was repeated"
    assert replayed == sorted(replayed)
    async with pool.acquire() as conn:
        everything = [e.id for e in await eventlog.events_after(conn, visit_id, last, 10**12)]
    assert replayed == everything, "an event was lost"
    await ws2.close()


async def test_socket_from_a_foreign_origin_is_refused(stack: Stack) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await _connect(stack, origin="https://evil.example")
    assert caught.value.status == 403


async def test_socket_with_a_forged_provider_handle_is_refused(stack: Stack) -> None:
    ws = await _connect(stack)
    await ws.send_json({"type": "auth", "id": 1, "provider": "forged", "where": "view"})
    assert (await _recv(ws))["code"] == "auth_failed"
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401


async def test_socket_that_does_not_authenticate_first_is_closed(stack: Stack) -> None:
    ws = await _connect(stack)
    await ws.send_json({"type": "subscribe", "id": 1, "after": None})
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4400


async def test_a_socket_sees_only_its_own_visit(stack: Stack) -> None:
    handle_a = await _provider(stack, encounter="enc-1", patient="pat-1")
    handle_b = await _provider(stack, encounter="enc-2", patient="pat-2")
    ws_a, auth_a, _ = await _provider_socket(stack, handle_a)
    ws_b, auth_b, _ = await _provider_socket(stack, handle_b)
    assert auth_a["visit"] != auth_b["visit"]
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        patient_b = await participants.patient_participant(conn, UUID(auth_b["visit"]))
        patient_a = await participants.patient_participant(conn, UUID(auth_a["visit"]))
    await eventlog.record_event(pool, UUID(auth_b["visit"]), patient_b, "lobby_entered")
    await eventlog.record_event(pool, UUID(auth_a["visit"]), patient_a, "lobby_entered")
    frame = await _recv_event(ws_a, "lobby_entered")
    assert frame["visit"] == auth_a["visit"] and frame["participant"] == str(patient_a)
    # Provider A may not admit visit B's patient.
    await ws_a.send_json({"type": "admit", "id": 9, "participant": str(patient_b)})
    refusal = await _recv_until(ws_a, "error")
    assert refusal["code"] == "unknown_participant"
    await ws_a.close()
    await ws_b.close()


async def test_provider_admits_a_waiting_patient(stack: Stack) -> None:
    _handle, ws, _auth, _visit, patient = await _visit_with_patient(stack)
    await ws.send_json({"type": "admit", "id": 5, "participant": str(patient)})
    assert (await _recv_until(ws, "result"))["id"] == 5
    event = await _recv_event(ws, "admitted")
    assert event["participant"] == str(patient)
    await ws.close()


async def test_oversized_frame_closes_the_socket(stack: Stack) -> None:
    handle = await _provider(stack)
    ws, _, _ = await _provider_socket(stack, handle)
    await ws.send_str(json.dumps({"type": "hello", "display_name": "x" * 20000}))
    msg = await _recv_close(ws)
    # The close frame's code (the socket's own close_code can read 1006 if the server hangs up first).
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009, msg


async def _recv_close(ws: aiohttp.ClientWebSocketResponse) -> Any:
    for _ in range(50):
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return msg
    raise AssertionError("socket stayed open")


async def test_flooding_client_is_closed(stack: Stack) -> None:
    handle = await _provider(stack)
    ws, _, _ = await _provider_socket(stack, handle)
    for i in range(100):
        await ws.send_json({"type": "nonsense", "id": i})
    msg = await _recv_close(ws)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008, msg


async def test_client_that_cannot_keep_up_is_dropped_not_waited_for(stack: Stack) -> None:
    handle = await _provider(stack)
    slow, auth, _ = await _provider_socket(stack, handle)
    fast, _, _ = await _provider_socket(stack, handle)
    hub = stack.gateway_app[HUB]
    visit_id = UUID(auth["visit"])
    bus = stack.gateway_app[BUS]
    # The slow client stops reading; the hub keeps publishing (large frames, to fill the socket buffers).
    import datetime as dt

    big_kind = "device_test_passed"
    base = bus.position + 1000
    sent = 0
    for i in range(4000):
        event = eventlog.PresenceEvent(id=base + i, visit_id=visit_id, participant_id=None, kind=big_kind,
                                     at=dt.datetime.now(dt.timezone.utc), role="x" * 4000, guest_kind=None)
        await hub.publish(event)
        sent += 1
        if len(list(hub.connections(visit_id))) < 2:
            break
        if i % 50 == 0:
            # Let the fast client read what it was sent.
            for _ in range(50):
                try:
                    await asyncio.wait_for(fast.receive(), 0.05)
                except TimeoutError:
                    break
    remaining = list(hub.connections(visit_id))
    assert len(remaining) == 1, "the slow client should have been dropped"
    assert sent < 4000
    await fast.close()
    await slow.close()


async def test_a_participant_not_yet_admitted_cannot_signal_into_the_room(stack: Stack) -> None:
    from gateway import joinlinks

    _handle, ws, auth, visit_id, patient = await _visit_with_patient(stack)
    async with stack.gateway_app[DB].acquire() as conn:
        session = await joinlinks.create_session(conn, patient, visit_id, joinlinks.default_not_after())
    stack.browser.cookie_jar.update_cookies({joinlinks.PARTICIPANT_COOKIE: session.handle},
                                            response_url=URL(stack.gateway_url))
    lobby = await _connect(stack)
    await lobby.send_json({"type": "auth", "id": 1, "where": "lobby"})
    assert (await _recv(lobby))["type"] == "auth_ok"
    await lobby.send_json({"type": "signal", "id": 2, "to": auth["participant"], "data": {"sdp": "x"}})
    assert (await _recv_until(lobby, "error"))["code"] == "not_admitted"
    await ws.send_json({"type": "admit", "id": 3, "participant": str(patient)})
    await _recv_event(ws, "admitted")
    await lobby.send_json({"type": "signal", "id": 4, "to": auth["participant"], "data": {"sdp": "x"}})
    assert (await _recv_until(lobby, "result"))["id"] == 4
    relayed = await _recv_until(ws, "signal")
    assert relayed["from"] == str(patient) and relayed["data"] == {"sdp": "x"}
    await lobby.close()
    await ws.close()


async def test_per_message_compression_is_refused_even_when_offered(stack: Stack) -> None:
    handle = await _provider(stack)
    ws = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url, compress=15)
    assert ws.compress == 0
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    assert (await _recv(ws))["type"] == "auth_ok"
    await ws.close()


async def test_a_dead_peer_is_dropped_by_heartbeat(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    import presence.ws

    monkeypatch.setattr(presence.ws, "HEARTBEAT", 0.5)
    handle = await _provider(stack)
    # A peer that never answers pings: it neither reads nor pongs.
    ws = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url, autoping=False)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    visit_id = UUID((await _recv(ws))["visit"])
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})
    hub = stack.gateway_app[HUB]
    for _ in range(50):  # bounded: the socket subscribes within 5 s
        await asyncio.sleep(0.1)
        if list(hub.connections(visit_id)):
            break
    assert list(hub.connections(visit_id)), "the socket should have subscribed"
    for _ in range(100):  # bounded: dropped within 10 s (heartbeat 0.5 s here)
        await asyncio.sleep(0.1)
        if not list(hub.connections(visit_id)):
            break
    assert not list(hub.connections(visit_id)), "the dead peer should have been dropped"
    async with stack.gateway_app[DB].acquire() as conn:
        kinds = [e.kind for e in await eventlog.events_after(conn, visit_id, 0, 10**12)]
    assert kinds[-1] == "disconnected"
    await ws.close()


async def test_event_notification_reaches_listeners_and_leaves_the_connection_durable(database_url: str) -> None:
    # The NOTIFY's own transaction skips its WAL flush (SET LOCAL): the listener still gets the id, and the
    # pooled connection that sent it goes back committing durably, outside any transaction.
    import asyncpg

    sender, listener = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        heard: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener(eventlog.CHANNEL, lambda *args: heard.put_nowait(args[3]))
        await eventlog.notify_after_commit(sender, 4242)
        assert await asyncio.wait_for(heard.get(), 5) == "4242"
        assert not sender.is_in_transaction()
        assert await sender.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await sender.close()
        await listener.close()


async def test_an_event_committing_after_a_later_one_was_announced_still_wakes_listeners(database_url: str) -> None:
    # Ids are handed out before commit: event 7 may commit and be announced while event 5 is still in flight.
    # When 5 commits, a listener parked at the gap before it must be woken again, not left to poll.
    import asyncpg

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    listener = await asyncpg.connect(database_url)
    try:
        heard: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener(eventlog.CHANNEL, lambda *args: heard.put_nowait(args[3]))
        announcer = Announcer(pool)
        announcer.announce(7)
        assert await asyncio.wait_for(heard.get(), 5) == "7"
        announcer.announce(5)
        assert await asyncio.wait_for(heard.get(), 5) == "7"  # the highest id: listeners read by id from where they are
        await announcer.close()
        assert announcer.notifications == 2 and heard.empty()
    finally:
        await listener.close()
        await pool.close()


@pytest.mark.parametrize("payload", ["999999999", "-5", "not an id", '{"type":"event","kind":"admitted"}'])
async def test_a_forged_notification_shows_the_provider_nothing(stack: Stack, database_url: str,
                                                                 payload: str) -> None:
    # Any role that can connect to the database may NOTIFY any channel. A notification is only ever a wake-up:
    # what it says is never shown, and a far-ahead id does not make the bus skip the events in between.
    import asyncpg

    _handle, ws, _auth, visit_id, patient = await _visit_with_patient(stack)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_notify($1, $2)", eventlog.CHANNEL, payload)
    finally:
        await conn.close()
    real = await eventlog.record_event(stack.gateway_app[DB], visit_id, patient, "lobby_entered")
    seen = []
    for _ in range(20):
        frame = await _recv(ws)
        seen.append(frame)
        if frame["type"] == "event" and frame["id"] == real:
            break
    async with stack.gateway_app[DB].acquire() as db:
        stored = {e.id: e.kind for e in await eventlog.events_after(db, visit_id, 0, 10**12)}
    shown = [(f["id"], f["kind"]) for f in seen if f["type"] == "event"]
    assert shown and all(stored.get(i) == kind for i, kind in shown), (shown, stored)
    assert "admitted" not in stored.values()
    await ws.close()


@pytest.mark.parametrize("participant, role, guest_kind, kind", [
    (UUID(int=5), "patient", None, "lobby_entered"),
    (UUID(int=6), "guest", "interpreter", "device_test_failed"),
    (None, None, None, "visit_ended"),
    (UUID(int=7), 'odd "role"\\', "<b>\u2028", 'not "a" kind\n'),   # outside the vocabularies: still valid JSON
])
def test_an_event_reaches_subscribers_as_the_json_it_stands_for(participant: UUID | None, role: str | None,
                                                                guest_kind: str | None, kind: str) -> None:
    import datetime as dt

    at = dt.datetime(2026, 11, 22, 10, 30, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    event = eventlog.PresenceEvent(id=42, visit_id=UUID(int=1), participant_id=participant, kind=kind, at=at,
                                 role=role, guest_kind=guest_kind)
    assert json.loads(event.to_json()) == {
        "type": "event", "id": 42, "visit": str(UUID(int=1)), "participant": str(participant) if participant else None,
        "kind": kind, "at": at.isoformat(), "role": role, "guest_kind": guest_kind}


async def _no_event_from(ws: aiohttp.ClientWebSocketResponse, first_id: int, seconds: float) -> None:
    """No event with an id from first_id on arrives for this long (the provider's own earlier ones may)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            return
        frame = json.loads(msg.data)
        assert frame["type"] != "event" or frame["id"] < first_id, f"delivered past an open transaction: {frame}"


async def _held_then_later(stack: Stack, visit_id: UUID, patient: UUID) -> tuple[Any, Any, int, int]:
    """An event whose transaction stays open (id n) and a later one committed (id n+1): (conn, tx, n, n+1)."""
    pool = stack.gateway_app[DB]
    conn = await pool.acquire()
    tx = conn.transaction()
    await tx.start()
    held = await eventlog.append_event(conn, visit_id, patient, "lobby_entered")
    later = await eventlog.record_event(pool, visit_id, patient, "device_test_passed", stack.gateway_app[ANNOUNCER])
    assert later == held + 1
    return conn, tx, held, later


async def test_an_event_whose_commit_takes_seconds_is_delivered_in_order_not_lost(stack: Stack) -> None:
    # A disk stall can hold a commit for seconds. The bus must not take the missing id for a rolled-back
    # insert while its transaction still runs: the provider would never see the patient enter the lobby.
    _handle, ws, _auth, visit_id, patient = await _visit_with_patient(stack)
    conn, tx, held, later = await _held_then_later(stack, visit_id, patient)
    try:
        await _no_event_from(ws, held, 1.5)  # three times the bus's first wait at a gap
        await tx.commit()
        stack.gateway_app[ANNOUNCER].announce(held)
    finally:
        await stack.gateway_app[DB].release(conn)
    first, second = await _recv_event(ws, "lobby_entered"), await _recv_event(ws, "device_test_passed")
    assert (first["id"], second["id"]) == (held, later)
    await ws.close()


async def test_a_rolled_back_insert_does_not_hold_presence_back(stack: Stack) -> None:
    _handle, ws, _auth, visit_id, patient = await _visit_with_patient(stack)
    conn, tx, held, later = await _held_then_later(stack, visit_id, patient)
    try:
        await tx.rollback()
    finally:
        await stack.gateway_app[DB].release(conn)
    seen = []
    for _ in range(20):
        frame = await _recv(ws)
        if frame["type"] == "event" and frame["id"] >= held:
            seen.append((frame["id"], frame["kind"]))
            break
    assert seen == [(later, "device_test_passed")]  # the rolled-back one never shows, the later one does
    await ws.close()


async def test_a_writer_that_never_ends_holds_presence_back_only_so_long(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from presence import bus

    monkeypatch.setattr(bus, "GAP_GIVE_UP", 1.5)
    _handle, ws, _auth, visit_id, patient = await _visit_with_patient(stack)
    conn, tx, held, later = await _held_then_later(stack, visit_id, patient)
    try:
        with caplog.at_level("WARNING", logger="presence.bus"):
            frame = await _recv_event(ws, "device_test_passed")
        assert frame["id"] == later
        assert f"skipping ids from {held} after" in caplog.text
    finally:
        await tx.rollback()
        await stack.gateway_app[DB].release(conn)
    await ws.close()


@pytest.mark.parametrize("notification", ["delivered", "not back yet"])
async def test_a_name_typed_in_the_lobby_reaches_the_clinician_live_and_in_a_later_snapshot(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, notification: str) -> None:
    import datetime as dt

    from gateway import joinlinks

    if notification == "not back yet":
        # The lobby subscribes before the name's own notification comes back through PostgreSQL.
        async def late(*_args: Any) -> None:
            return None

        monkeypatch.setattr(stack.gateway_app[BUS], "share_names", late)
    handle, view, _auth, visit_id, patient = await _visit_with_patient(stack)
    async with stack.gateway_app[DB].acquire() as conn:
        session = await joinlinks.create_session(conn, patient, visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    stack.browser.cookie_jar.update_cookies({joinlinks.PARTICIPANT_COOKIE: session.handle}, URL(stack.gateway_url))
    lobby = await _connect(stack)
    await lobby.send_json({"type": "auth", "id": 1, "where": "lobby"})
    assert (await _recv(lobby))["type"] == "auth_ok"
    # As the lobby page does: the name first, then the subscription.
    await lobby.send_json({"type": "hello", "id": 2, "display_name": "Ada"})
    await lobby.send_json({"type": "subscribe", "id": 3, "after": None})
    live = await _recv_until(view, "display_name")
    assert (live["participant"], live["display_name"]) == (str(patient), "Ada")
    later, _, snapshot = await _provider_socket(stack, handle)
    assert snapshot["display_names"] == {str(patient): "Ada"}
    for ws in (lobby, view, later):
        await ws.close()
