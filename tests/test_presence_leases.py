"""A gateway process that dies leaves no participant "connected" for ever: its lease lapses and another
process writes the closing events of its sockets, exactly once (presence/lease.py)."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg

from gateway import participants
from gateway.appkeys import DB
from presence import eventlog
from presence import lease as leases
from presence.announcer import Announcer
from presence.appkeys import ANNOUNCER, LEASE
from tests.conftest import Stack, recv_frame

TIMEOUT = 5.0


async def _provider_view(stack: Stack) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any], int]:
    handle = await stack.provider_handle(stack.new_launch())
    ws = await stack.browser.ws_connect(f"{stack.gateway_url}/ws", origin=stack.gateway_url)
    await ws.send_json({"type": "auth", "id": 1, "provider": handle, "where": "view"})
    auth = await recv_frame(ws, TIMEOUT)
    assert auth["type"] == "auth_ok", auth
    await ws.send_json({"type": "subscribe", "id": 2, "after": None})
    for _ in range(20):
        frame = await recv_frame(ws, TIMEOUT)
        if frame["type"] == "snapshot":
            return ws, auth, frame["last_id"]
    raise AssertionError("no snapshot")


async def _watched_visit(stack: Stack) -> tuple[aiohttp.ClientWebSocketResponse, UUID, UUID]:
    """A clinician's live view of a visit, the visit and its patient."""
    view, auth, _ = await _provider_view(stack)
    visit_id = UUID(auth["visit"])
    async with stack.gateway_app[DB].acquire() as conn:
        return view, visit_id, await participants.patient_participant(conn, visit_id)


async def _events(pool: asyncpg.Pool, visit_id: UUID) -> list[eventlog.PresenceEvent]:
    async with pool.acquire() as conn:
        return await eventlog.events_after(conn, visit_id, 0, 2**62)


async def _another_process(pool: asyncpg.Pool, visit_id: UUID, patient: UUID, announcer: Announcer,
                           kinds: list[str]) -> UUID:
    """A second gateway process, as the database sees it: a lease, and its sockets' events under it."""
    process = uuid.uuid4()
    async with pool.acquire() as conn:
        await leases.take_lease(conn, process)
    for kind in kinds:
        assert await eventlog.record_held_event(pool, process, visit_id, patient, kind, announcer) is not None
    return process


async def _lapse(pool: asyncpg.Pool, process: UUID) -> None:
    """That process stops renewing: its last renewal is an hour old."""
    async with pool.acquire() as conn:
        await conn.execute("UPDATE presence_processes SET renewed_at = now() - interval '1 hour' WHERE id = $1",
                           process)


async def _live_kinds(ws: aiohttp.ClientWebSocketResponse, participant: UUID, want: int) -> list[str]:
    kinds: list[str] = []
    for _ in range(50):
        frame = await recv_frame(ws, TIMEOUT)
        if frame["type"] == "event" and frame["participant"] == str(participant):
            kinds.append(frame["kind"])
            if len(kinds) == want:
                return kinds
    raise AssertionError(f"only {kinds} arrived")


async def test_the_sockets_of_a_process_that_died_are_closed_for_it_once(stack: Stack) -> None:
    pool, announcer, lease = stack.gateway_app[DB], stack.gateway_app[ANNOUNCER], stack.gateway_app[LEASE]
    view, visit_id, patient = await _watched_visit(stack)
    # The patient's lobby socket and two room sockets (a reload) on the other process; one room socket closed.
    dead = await _another_process(pool, visit_id, patient, announcer,
                                  ["lobby_entered", "connected", "connected", "disconnected"])
    assert await _live_kinds(view, patient, 4) == ["lobby_entered", "connected", "connected", "disconnected"]
    assert await lease.sweep() == 0  # its lease still runs: nothing is closed for it

    await _lapse(pool, dead)
    assert await lease.sweep() == 2
    # The clinician sees the patient go, as if the sockets had closed.
    assert sorted(await _live_kinds(view, patient, 2)) == ["disconnected", "left"]
    log = [e for e in await _events(pool, visit_id) if e.participant_id == patient]
    assert sorted(e.kind for e in log) == ["connected", "connected", "disconnected", "disconnected", "left",
                                           "lobby_entered"]
    # Dated when the patient was last known to be there, not when the sweep noticed.
    assert log[-1].at == log[-2].at == max(e.at for e in log[:4])

    assert await lease.sweep() == 0  # once
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM presence_processes WHERE id = $1", dead) == 0
    assert lease.swept_processes == 1 and lease.swept_sockets == 2
    await view.close()


async def test_a_late_close_from_a_process_that_was_written_off_is_not_written_twice(stack: Stack) -> None:
    pool, announcer, lease = stack.gateway_app[DB], stack.gateway_app[ANNOUNCER], stack.gateway_app[LEASE]
    view, visit_id, patient = await _watched_visit(stack)
    stalled = await _another_process(pool, visit_id, patient, announcer, ["connected"])
    await _lapse(pool, stalled)
    assert await lease.sweep() == 1
    # The stalled process wakes up and closes its socket: the sweep has written that already.
    assert await eventlog.record_held_event(pool, stalled, visit_id, patient, "disconnected", announcer) is None
    kinds = [e.kind for e in await _events(pool, visit_id) if e.participant_id == patient]
    assert kinds == ["connected", "disconnected"]
    await view.close()


async def test_a_process_that_finds_its_lease_gone_reconnects_its_sockets(stack: Stack) -> None:
    pool, announcer, lease = stack.gateway_app[DB], stack.gateway_app[ANNOUNCER], stack.gateway_app[LEASE]
    view, auth, _ = await _provider_view(stack)
    visit_id, me = UUID(auth["visit"]), UUID(auth["participant"])
    first_lease = lease.id
    # This process stalled past its lease and another one wrote it off (closing its sockets in the log).
    assert await leases.close_lapsed(pool, 0, announcer) == [(first_lease, 1)]

    await lease.sweep()  # the renewal finds the lease gone
    for _ in range(20):  # events written before the close may come first
        msg = await view.receive(TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1012, msg  # "service restart": come back
    assert lease.id != first_lease and lease.written_off == 1

    # The page reconnects, under the new lease; its old socket's close was not written a second time.
    again, _, _ = await _provider_view(stack)
    await again.close()
    for _ in range(50):
        kinds = [e.kind for e in await _events(pool, visit_id) if e.participant_id == me]
        if kinds.count("disconnected") == 2 and len(kinds) >= 4:
            break
        await asyncio.sleep(0.05)
    kinds = [e.kind for e in await _events(pool, visit_id) if e.participant_id == me]
    assert kinds.count("connected") == 2 and kinds.count("disconnected") == 2, kinds


async def test_a_clean_stop_writes_what_its_sockets_left_open_and_ends_its_lease(stack: Stack) -> None:
    pool, announcer = stack.gateway_app[DB], stack.gateway_app[ANNOUNCER]
    view, visit_id, patient = await _watched_visit(stack)
    stopping = await _another_process(pool, visit_id, patient, announcer, ["lobby_entered", "left", "connected"])
    assert await leases.end_lease(pool, stopping, announcer) == 1
    kinds = [e.kind for e in await _events(pool, visit_id) if e.participant_id == patient]
    assert kinds == ["lobby_entered", "left", "connected", "disconnected"]
    assert await eventlog.record_held_event(pool, stopping, visit_id, patient, "connected", announcer) is None
    await view.close()


async def test_a_sweep_waits_for_a_socket_event_being_written_and_then_counts_it(stack: Stack) -> None:
    pool, announcer = stack.gateway_app[DB], stack.gateway_app[ANNOUNCER]
    view, visit_id, patient = await _watched_visit(stack)
    dying = await _another_process(pool, visit_id, patient, announcer, ["connected"])
    await _lapse(pool, dying)
    # The process's last socket event is mid-write (its transaction open) when another process sweeps.
    conn = await pool.acquire()
    try:
        tx = conn.transaction()
        await tx.start()
        await eventlog.append_held_event(conn, dying, visit_id, patient, "connected", uuid.uuid4())
        assert await leases.close_lapsed(pool, 1, announcer) == []  # skipped for now, not raced
        await tx.commit()
    finally:
        await pool.release(conn)
    assert await leases.close_lapsed(pool, 1, announcer) == [(dying, 2)]  # both sockets, the late one too
    kinds = [e.kind for e in await _events(pool, visit_id) if e.participant_id == patient]
    assert kinds == ["connected", "connected", "disconnected", "disconnected"]
    await view.close()
