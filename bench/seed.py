"""Seeding and writing for the presence benchmarks: visits and provider sessions straight into the schema (the
launch is not what those measure), and events written with the gateway's own write path."""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any


async def seed(dsn: str, secret: bytes, visits: int, handles_per_visit: int) -> list[tuple[uuid.UUID, list[str]]]:
    """An approved configuration, `visits` visits, and live provider sessions with known handles.

    The rows are what a provider launch leaves behind (provider_sessions and provider_handles, by the SHA-256
    of the handle), so a socket authenticating with one of these handles runs the gateway's real code from
    there on.
    """
    import asyncpg

    from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
    from gateway.security import Sealer, new_token, token_hash

    conn = await asyncpg.connect(dsn)
    try:
        config_id = await conn.fetchval("SELECT id FROM configurations WHERE fhir_base_url = $1",
                                        "http://localhost:1/fhir")
        if config_id is None:
            config_id = await add_approved(conn, Sealer(secret), NewConfiguration(
                fhir_base_url="http://localhost:1/fhir", environment="test", client_id="bench",
                client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="bench")
        out: list[tuple[uuid.UUID, list[str]]] = []
        visit_rows, session_rows = [], []
        for _ in range(visits):
            visit_id = uuid.uuid4()
            visit_rows.append((visit_id, config_id, os.urandom(32), os.urandom(48), "builtin"))
            handles = [new_token() for _ in range(handles_per_visit)]
            for j, handle in enumerate(handles):
                session_rows.append((token_hash(handle), visit_id, f"Practitioner/bench-{j}", os.urandom(40),
                                     "launch openid fhirUser", False))
            out.append((visit_id, handles))
        async with conn.transaction():
            await conn.copy_records_to_table(
                "visits", records=visit_rows,
                columns=["id", "configuration_id", "encounter_key", "encounter_ref", "meeting_provider"])
            await conn.executemany(
                "INSERT INTO provider_sessions (handle_hash, visit_id, fhir_user, access_token, token_expires_at,"
                " scopes, need_patient_banner, expires_at)"
                " VALUES ($1, $2, $3, $4, now() + interval '2 hours', $5, $6, now() + interval '2 hours')",
                session_rows)
            # The handle a page's URL carries (sql/migrations/0006); here the session's own, for the whole run.
            await conn.executemany("INSERT INTO provider_handles (handle_hash, session_hash, expires_at)"
                                   " VALUES ($1, $1, now() + interval '2 hours')", [(r[0],) for r in session_rows])
        return out
    finally:
        await conn.close()


async def write_event(pool: Any, visit_id: uuid.UUID, participant_id: uuid.UUID | None, kind: str,
                      notify: bool = True) -> tuple[int, float]:
    """presence.eventlog.record_event, step for step (append, one statement, then announce through the
    process's coalescing Announcer), with the moment the commit returned (the event became visible) noted."""
    from presence.announcer import Announcer
    from presence.eventlog import append_event

    async with pool.acquire() as conn:
        event_id = await append_event(conn, visit_id, participant_id, kind)
        committed = time.monotonic()
    if notify:
        announcer = _ANNOUNCERS.get(id(pool))
        if announcer is None:
            announcer = _ANNOUNCERS[id(pool)] = Announcer(pool)
        announcer.announce(event_id)
    return event_id, committed


# One announcer per writer pool, as each gateway process has one (presence.announcer.Announcer).
_ANNOUNCERS: dict[int, Any] = {}


async def write_closed_loop(pool: Any, visits: list[uuid.UUID], patients: list[uuid.UUID], writers: int,
                            seconds: float, notify: bool = True) -> int:
    """`writers` tasks each writing events round robin over the visits for `seconds`; returns how many."""
    stop_at = time.monotonic() + seconds
    done = 0

    async def writer(k: int) -> None:
        nonlocal done
        i = k
        while time.monotonic() < stop_at:
            v = i % len(visits)
            await write_event(pool, visits[v], patients[v], "device_test_passed", notify=notify)
            done += 1
            i += writers

    await asyncio.gather(*(writer(k) for k in range(writers)))
    return done


async def write_open_loop(pool: Any, visits: list[uuid.UUID], participants: list[uuid.UUID], rate: float,
                          duration: float, max_in_flight: int = 400) -> tuple[dict[int, tuple[float, float, float]], int]:
    """Paced arrivals at `rate`/s over the visits, round robin. Returns {event id: (scheduled, committed,
    notified)} and how many arrivals were skipped because max_in_flight writes were already waiting."""
    written: dict[int, tuple[float, float, float]] = {}
    in_flight: set[asyncio.Task[None]] = set()
    overruns = 0
    start = time.monotonic() + 0.05
    total = int(rate * duration)

    async def one(i: int, due: float) -> None:
        v = i % len(visits)
        event_id, committed = await write_event(pool, visits[v], participants[v], "device_test_passed")
        written[event_id] = (due, committed, time.monotonic())

    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            overruns += 1
            continue
        task = asyncio.create_task(one(i, due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=30)
    return written, overruns


