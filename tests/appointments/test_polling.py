"""FHIR Appointment polling with backend services: `_lastUpdated` since a watermark, page after page."""
from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.appkeys import DB
from sandbox.appkeys import STORE
from tests.appointments.conftest import Feed, wait_for


def _appointment(n: int, start: dt.datetime, status: str = "booked") -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": f"appt-poll-{n}", "status": status,
            "start": start.isoformat(), "end": (start + dt.timedelta(minutes=30)).isoformat(), "minutesDuration": 30,
            "participant": [{"actor": {"reference": "Patient/pat-2"}, "status": "accepted"}]}


async def test_polling_takes_in_every_page_and_then_only_what_changed(feed: Feed) -> None:
    store = feed.stack.sandbox_app[STORE]
    start = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=10)).replace(second=0, microsecond=0)
    for n in range(120):  # more than two pages of 50
        store.put(_appointment(n, start + dt.timedelta(minutes=n)))
    await feed.configure(mllp_port=None, fhir_polling=True, poll_interval=1, messages=("reminder",),
                         reminder_offsets=(60,), channels=("email",))

    async def all_planned() -> bool:
        for n in (0, 49, 50, 99, 119):
            if not await feed.schedule(f"appt-poll-{n}"):
                return False
        return True
    await wait_for(all_planned, what="every page to be taken in")
    first = await feed.schedule("appt-poll-7")
    assert [(r.kind, r.offset_minutes, r.state, r.due_at) for r in first] == [
        ("reminder", 60, "pending", start + dt.timedelta(minutes=7) - dt.timedelta(minutes=60))]
    async with feed.stack.gateway_app[DB].acquire() as conn:
        watermark = await conn.fetchval("SELECT poll_watermark FROM appointment_feeds WHERE configuration_id = $1",
                                        feed.stack.configuration_id)
    assert watermark is not None

    moved = start + dt.timedelta(days=1)
    store.put(_appointment(7, moved))
    store.put(_appointment(8, start + dt.timedelta(minutes=8), status="cancelled"))

    async def changed() -> bool:
        seven, eight = await feed.schedule("appt-poll-7"), await feed.schedule("appt-poll-8")
        return any(r.state == "pending" and r.starts_at == moved for r in seven) and \
            all(r.state == "withdrawn" for r in eight)
    await wait_for(changed, what="the change and the cancellation to be polled")
    seven = await feed.schedule("appt-poll-7")
    assert sorted((r.state, r.starts_at) for r in seven) == [("pending", moved), ("withdrawn", start + dt.timedelta(minutes=7))]
    # Untouched appointments were not planned again.
    assert len(await feed.schedule("appt-poll-9")) == 1
