"""Fixtures for the appointment feed: the shared `stack` gateway with a quick reminder sender, email to a real
SMTP server, SMS to the sandbox's phone, an MLLP listener for the sandbox's configuration, and the sandbox EHR
sending its SIU messages there."""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from appointments import schedule
from gateway.appkeys import DB, SEALER
from tests.conftest import Stack, unused_port
from tests.notify.conftest import ORGANISATION, SmtpServer, smtp  # noqa: F401  (the SMTP fixture, reused)

TIME_ZONE = "Europe/Madrid"


@pytest.fixture
def mllp_port() -> int:
    """The port of the sandbox configuration's MLLP listener."""
    return unused_port()


@pytest.fixture
def stack_overrides(smtp: SmtpServer) -> Any:  # noqa: F811
    """Mail to our SMTP server, texts to the sandbox phone, reminders looked for every 50 ms."""

    def overrides(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
        return dict(organisation_name=ORGANISATION, time_zone=TIME_ZONE, smtp_host="127.0.0.1", smtp_port=smtp.port,
                    smtp_from="visits@gateway.test", smtp_timeout=5, sms_provider="sink",
                    sms_sink_url=f"{sandbox_url}/_sms", reminder_poll_interval=0.05, reminder_backoff=0.1,
                    reminder_lease_seconds=5.0)

    return overrides


@dataclass
class Feed:
    """The running stack with its feed set up, and helpers to book and look."""

    stack: Stack
    smtp: SmtpServer
    mllp_port: int

    async def configure(self, **settings: Any) -> None:
        """Set the sandbox configuration's feed (MLLP on our port unless said otherwise) and wait until the
        gateway listens."""
        settings.setdefault("mllp_port", self.mllp_port)
        async with self.stack.gateway_app[DB].acquire() as conn:
            await schedule.set_feed(conn, self.stack.configuration_id, **settings)
        if settings["mllp_port"] is not None:
            await wait_for(lambda: _listening(settings["mllp_port"]), what="the MLLP listener")
        from sandbox.scheduling import SIU_FEED

        port = settings["mllp_port"]
        self.stack.sandbox_app[SIU_FEED].target = ("127.0.0.1", port) if port is not None else None

    async def ehr(self, path: str, **form: str) -> dict[str, Any]:
        """POST to the sandbox EHR's scheduling pages as its user would; answers {appointment, ack}."""
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.stack.sandbox_url}{path}", data=form,
                                 headers={"Accept": "application/json"}) as r:
                assert r.status == 200, await r.text()
                answer: dict[str, Any] = await r.json()
                return answer

    async def book(self, start: dt.datetime, patient: str = "pat-1", minutes: int = 30) -> str:
        """Book a virtual appointment in the sandbox EHR; answers its id (the ACK must be AA)."""
        answer = await self.ehr("/ehr/appointments", patient=patient, start=start.isoformat(), minutes=str(minutes))
        assert answer["ack"] == "AA", answer
        return str(answer["appointment"])

    async def phone(self) -> list[dict[str, Any]]:
        """What the sandbox phone received, oldest first."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.stack.sandbox_url}/phone", headers={"Accept": "application/json"}) as r:
                return list(reversed((await r.json())["messages"]))

    async def schedule(self, appointment_id: str) -> list[schedule.PlannedMessage]:
        """The appointment's schedule as the gateway holds it."""
        async with self.stack.gateway_app[DB].acquire() as conn:
            return await schedule.schedule_of(conn, self.stack.gateway_app[SEALER], self.stack.configuration_id,
                                              self.stack.fhir_base, appointment_id)

    async def settled(self, appointment_id: str) -> list[schedule.PlannedMessage]:
        """The schedule once nothing due is left pending or in flight."""
        now = dt.datetime.now(dt.timezone.utc)

        async def done() -> list[schedule.PlannedMessage] | None:
            rows = await self.schedule(appointment_id)
            busy = [r for r in rows if r.state == "sending" or (r.state == "pending" and r.due_at <= now)]
            return None if busy else rows
        return await wait_for(done, what="the due messages to be sent")

    async def make_due(self, appointment_id: str, kind: str = "reminder") -> None:
        """Bring an appointment's pending messages of a kind due now (instead of waiting a day)."""
        async with self.stack.gateway_app[DB].acquire() as conn:
            found = await conn.fetchval("SELECT id FROM appointments WHERE appointment_key = $1",
                                        self.stack.gateway_app[SEALER].lookup(
                                            "appointment", f"{self.stack.fhir_base}|{appointment_id}"))
            await conn.execute("UPDATE appointment_messages SET due_at = now() WHERE appointment_id = $1 "
                               "AND kind = $2 AND state = 'pending'", found, kind)


async def _listening(port: int) -> bool | None:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    writer.close()
    await writer.wait_closed()
    return True


async def wait_for(probe: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll an async probe until it answers something other than None (or fail, naming what was awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def feed(stack: Stack, smtp: SmtpServer, mllp_port: int) -> AsyncIterator[Feed]:  # noqa: F811
    """The stack with the sandbox configuration's feed on (MLLP, 24 h and 15 min reminders, email and SMS)."""
    running = Feed(stack, smtp, mllp_port)
    await running.configure()
    yield running
