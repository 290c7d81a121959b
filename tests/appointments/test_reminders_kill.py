"""Reminders due at once across two real gateway processes, one of them killed (kill -9) while sending: each
reminder reaches the phone exactly once, and none is lost.

Both `visitgate serve` processes (tests.harness) share one database and listen on the same MLLP port
(SO_REUSEPORT); the sandbox EHR runs in this process, its FHIR answering after 100 ms and its phone's SMS sink
after 200 ms, so that messages are in flight, some already on the phone but not yet recorded as sent, when
process A dies. B takes A's claims over once their lease lapses and sends them again with the same
idempotency key, which the phone (like ACS) delivers once.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestServer, unused_port

from appointments import schedule
from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
from gateway.security import Sealer
from sandbox.siu import send_siu, siu_message
from tests.harness import Processes, gateway_env

CLIENT_ID = "visitgate-test"
APPOINTMENTS = 24
LEASE = 3


async def test_a_gateway_killed_while_reminders_are_due_leaves_each_sent_once(
        database_url: str, signing_key_pem: bytes, tmp_path: Path) -> None:
    from sandbox import SandboxClient, SandboxSettings, create_sandbox_app
    from sandbox.appkeys import FAULTS, STORE
    from sandbox.phone import PHONE

    port_a, port_b, sb_port, mllp = unused_port(), unused_port(), unused_port(), unused_port()
    url_a, url_b, sandbox_url = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}", f"http://localhost:{sb_port}"
    secret = secrets.token_bytes(32)
    sandbox_app = create_sandbox_app(SandboxSettings(
        base_url=sandbox_url, app_launch_url=f"{url_a}/launch",
        clients=(SandboxClient(client_id=CLIENT_ID, redirect_uris=(f"{url_a}/launch/callback",),
                               auth_method="private_key_jwt", jwks_url=f"{url_a}/.well-known/jwks.json"),)))
    sandbox = TestServer(sandbox_app, host="127.0.0.1", port=sb_port)
    await sandbox.start_server(access_log=logging.getLogger("sandbox.access"))
    try:
        conn = await asyncpg.connect(database_url)
        try:
            config_id = await add_approved(conn, Sealer(secret), NewConfiguration(
                fhir_base_url=f"{sandbox_url}/fhir", environment="test", client_id=CLIENT_ID,
                client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="test-operator")
            await schedule.set_feed(conn, config_id, mllp_port=mllp, messages=("reminder",), channels=("sms",),
                                    reminder_offsets=(1440, 15))
        finally:
            await conn.close()
        async with Processes(tmp_path) as procs:
            gateways = {}
            for name, port in (("a", port_a), ("b", port_b)):
                env = gateway_env(public_url=f"http://127.0.0.1:{port}", secret=secret, signing_key_pem=signing_key_pem,
                                  database_url=f"{database_url}&application_name=vg-{name}",
                                  data_dir=procs.dir / f"data-{name}", http_timeout=5, writeback_enabled=False,
                                  webhooks_enabled=False, sms_provider="sink", sms_sink_url=f"{sandbox_url}/_sms",
                                  reminder_lease_seconds=LEASE, reminder_poll_interval=0.1, reminder_concurrency=4)
                gateways[name] = procs.gateway(f"gateway-{name}", env)
            await asyncio.gather(*(g.wait_ready_async(30) for g in gateways.values()))

            # Book through the shared MLLP port (the kernel spreads connections over both processes).
            store = sandbox_app[STORE]
            start = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).replace(second=0, microsecond=0)
            for n in range(APPOINTMENTS):
                patient = f"pat-{n % 5 + 1}"
                appointment = store.put({
                    "resourceType": "Appointment", "id": f"appt-kill-{n}", "status": "booked",
                    "start": (start + dt.timedelta(minutes=n)).isoformat(),
                    "end": (start + dt.timedelta(minutes=n + 30)).isoformat(), "minutesDuration": 30,
                    "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}]})
                store.put({"resourceType": "Encounter", "id": f"enc-kill-{n}", "status": "planned",
                           "class": {"code": "VR"}, "subject": {"reference": f"Patient/{patient}"},
                           "appointment": [{"reference": f"Appointment/appt-kill-{n}"}]})
                assert await send_siu("127.0.0.1", mllp, siu_message(
                    "S12", appointment, patient=store.get("Patient", patient), encounter_id=f"enc-kill-{n}")) == "AA"
            sandbox_app[FAULTS].update({"fhir_answer_after": 0.1, "sms_answer_after": 0.2})
            due = APPOINTMENTS * 2
            conn = await asyncpg.connect(database_url)
            try:
                planned = await conn.fetchval("SELECT count(*) FROM appointment_messages WHERE state = 'pending'")
                assert planned == due
                await conn.execute("UPDATE appointment_messages SET due_at = now() WHERE state = 'pending'")
                phone = sandbox_app[PHONE]
                deadline = time.monotonic() + 30
                while len(phone.newest_first()) < due // 4:
                    assert time.monotonic() < deadline, "reminders did not start going out\n" + procs.tails()
                    await asyncio.sleep(0.02)
                in_flight = await conn.fetch("SELECT claimed_by FROM appointment_messages WHERE state = 'sending'")
                gateways["a"].kill()  # kill -9, mid-run
                deadline = time.monotonic() + 60
                while await conn.fetchval("SELECT count(*) FROM appointment_messages WHERE state <> 'sent'"):
                    assert time.monotonic() < deadline, "reminders were lost\n" + procs.tails()
                    await asyncio.sleep(0.1)
                retaken = await conn.fetchval("SELECT count(*) FROM appointment_messages WHERE attempts > 1")
            finally:
                await conn.close()
            received = phone.newest_first()
            assert len(received) == due, f"{len(received)} messages for {due} reminders"
            assert len({(m.to, m.body) for m in received}) == due  # each its own link: none twice
            assert in_flight, "the kill should come while messages are in flight"
            # Claims A held at the kill were taken over after their lease; the ones it had already handed to
            # the phone came again with their idempotency key and were not delivered twice.
            assert retaken >= 1
            assert phone.repeats <= retaken
    finally:
        await sandbox.close()
