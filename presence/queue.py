"""A clinic queue's socket: one clinician watching the presence of many visits at once.

The socket authenticates like a provider view (its handle, in the browser the session is bound to) but
writes no presence event of its own: opening the queue is not joining a visit. `subscribe_queue` lists the
clinician's visits of today (gateway.clinic_queue) and subscribes the socket to each in the hub, as one
Connection per visit sharing the socket, so the hub's fan-out, ordering and slow-consumer rules apply per
visit as they do everywhere. The answer is a snapshot of all those visits' events up to the bus position;
every later event comes live. Events of different visits may arrive out of id order (the hub writes visit
by visit), so a queue page orders by id within each visit; after a reconnect it asks for a new snapshot.
Every QUEUE_REFRESH seconds the list is read again and visits opened since join the watch.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from uuid import UUID

from aiohttp import web

from gateway import clinic_queue
from gateway.appkeys import DB

from . import eventlog
from .appkeys import BUS, HUB
from .hub import Connection

QUEUE_REFRESH = 30.0  # seconds between reads of the queue's visit list (new launches join it)
SNAPSHOT_LIMIT = 20000  # events in one queue snapshot at most (a day's visits: a few dozen events each)


@dataclass
class QueueWatch:
    """What a queue socket watches: whose queue, its scope once subscribed, and one subscription per visit."""

    owner: clinic_queue.QueueOwner
    scope: str | None = None
    subscriptions: dict[UUID, Connection] = field(default_factory=dict)


def _visit_json(visit: clinic_queue.QueueVisit) -> dict[str, str | None]:
    return {"visit": str(visit.id), "created_at": visit.created_at.isoformat(), "department": visit.department}


async def subscribe(app: web.Application, conn: Connection, scope: str, req_id: int | None) -> None:
    """Answer subscribe_queue: today's visits of scope and a snapshot of their events, then live events.

    Raises clinic_queue's QueueRefused for a scope the clinician may not see.
    """
    watch: QueueWatch = conn.queue
    async with app[DB].acquire() as db:
        visits = await clinic_queue.queue_visits(db, watch.owner, scope)
    watch.scope = scope
    await _watch(app, conn, visits, req_id, first=True)


async def refresh(app: web.Application, conn: Connection) -> None:
    """Read the queue's list again and watch the visits that joined it (sent as a queue_visits frame)."""
    watch: QueueWatch = conn.queue
    if watch.scope is None:
        return
    async with app[DB].acquire() as db:
        visits = await clinic_queue.queue_visits(db, watch.owner, watch.scope)
    fresh = [v for v in visits if v.id not in watch.subscriptions]
    if fresh:
        await _watch(app, conn, fresh, None, first=False)


def watches(conn: Connection, visit_id: UUID) -> bool:
    """Whether a queue socket watches this visit (so its clinician may admit into it)."""
    watch: QueueWatch | None = conn.queue
    return watch is not None and visit_id in watch.subscriptions


def stop(app: web.Application, conn: Connection) -> None:
    """Remove every subscription of a queue socket from the hub (in the socket's `finally`)."""
    watch: QueueWatch | None = conn.queue
    if watch is None:
        return
    hub = app[HUB]
    for sub in watch.subscriptions.values():
        hub.remove(sub)
    watch.subscriptions.clear()


async def _watch(app: web.Application, conn: Connection, visits: list[clinic_queue.QueueVisit],
                 req_id: int | None, *, first: bool) -> None:
    watch: QueueWatch = conn.queue
    hub, bus = app[HUB], app[BUS]
    added = []
    for visit in visits:
        if visit.id in watch.subscriptions:
            continue
        sub = Connection(conn.ws, conn.transport, visit.id, conn.participant_id, conn.role, "queue")
        sub.queue = watch
        hub.add(sub)  # live events wait in its pending list until the snapshot is out
        watch.subscriptions[visit.id] = sub
        added.append(sub)
    try:
        up_to = bus.position
        async with app[DB].acquire() as db:
            found = await eventlog.events_of_visits(db, [s.visit_id for s in added], up_to, SNAPSHOT_LIMIT) \
                if added else []
    except BaseException:
        for sub in added:  # not watched after all: a retry (or the next refresh) subscribes them again
            hub.remove(sub)
            watch.subscriptions.pop(sub.visit_id, None)
        raise
    frame = {"type": "snapshot" if first else "queue_visits", "id": req_id, "last_id": up_to,
             "scope": watch.scope, "now": dt.datetime.now(dt.UTC).isoformat(),
             "visits": [_visit_json(v) for v in visits],
             "events": [json.loads(e.to_json()) for e in found]}
    await conn.ws.send_str(json.dumps(frame))
    for sub in added:
        await hub.mark_ready(sub, up_to)
