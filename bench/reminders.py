#!/usr/bin/env python
"""Benchmark: HL7 SIU intake over MLLP, ACKs per second, against a bare asyncio MLLP echo server.

Run from the repository root with the project's environment:

    .venv/bin/python bench/reminders.py            # about a minute
    .venv/bin/python bench/reminders.py --quick    # a smoke test

What runs, all on 127.0.0.1 and all started and ended here (the processes through tests.harness):
PostgreSQL (pgserver, fresh directory under /tmp); one gateway, `visitgate serve` as shipped (uvloop), with the
configuration's MLLP listener on; and, in its own process on uvloop too, a bare asyncio MLLP server that
reads each block and answers a fixed ACK (no parsing, no database): the ceiling of MLLP on this machine.

The load generator (this process) keeps `--connections` MLLP connections, each with one message in flight at a
time, as interface engines send (the next message waits for the ACK of the one before). Every message is a
distinct SIU S12 (its own control id and appointment, a patient in PID as real feeds carry) for a visit ten
days ahead, so the gateway parses it, checks the control id, records the appointment and plans its reminders
(two rows) in one transaction before it ACKs AA. Each side is measured three times for `--seconds`, alternating;
`mllp_ratio` = median gateway ACKs/s ÷ median bare ACKs/s (goal >= 0.5, BENCHMARKS.md).

Then, once (`--reminders`, 10,000 by default; `--skip-send` leaves it out): that many SMS reminders due at the
same moment across two gateway processes (`visitgate serve`, uvloop), against a carrier double in this process
that takes `--rate` messages a second (each request waits for its slot, as a carrier's API paces a sender) and
delivers a repeated idempotency id once, with the sandbox EHR (its own process) answering the FHIR Patient
reads. One process is killed (kill -9) a third of the way through. `send_ratio` = distinct messages delivered
÷ (rate × elapsed), elapsed from the first delivery to the last; it also prints how many were lost (never
delivered) and how many the carrier saw twice (sent again after the kill, delivered once).

Each timed phase prints the CPU stolen by the hypervisor meanwhile (bench.stats.CpuSteal). The last line is
`RESULT reminders mllp_ratio=... send_ratio=... lost=... twice=... gateway_acks_per_s=... bare_acks_per_s=...`.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The working tree's packages first, and never this folder.
sys.path[:] = [str(ROOT)] + [p for p in sys.path
                             if p and Path(p).resolve() not in (ROOT, Path(__file__).parent.resolve())]

from bench.stats import CpuSteal  # noqa: E402
from tests.harness import HOST, Processes, free_port, gateway_env  # noqa: E402

CLIENT_ID = "bench-reminders"

# The ceiling: asyncio streams, one block in, one fixed ACK out, on uvloop as the gateway runs.
BARE_SERVER = r"""
import asyncio, sys, uvloop
ACK = b"\x0bMSH|^~\\&|BARE||||20260101000000||ACK^S12^ACK|1|P|2.5.1\rMSA|AA|1\r\x1c\r"
async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\x1c\r")
            writer.write(ACK)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), limit=1 << 20)
    async with server:
        await server.serve_forever()
uvloop.run(main())
"""


def messages(count: int, start: dt.datetime) -> list[bytes]:
    """Distinct SIU S12 messages, framed for MLLP."""
    from sandbox.siu import siu_message

    patient = {"id": "pat-1", "name": [{"family": "Bench", "given": ["Pat"]}], "birthDate": "1970-01-01",
               "identifier": [{"value": "MRN-1"}], "telecom": [{"system": "phone", "value": "+1-206-555-0100"}]}
    out = []
    for n in range(count):
        begin = start + dt.timedelta(minutes=n % 5000)
        appointment = {"id": f"appt-b{n}", "status": "booked", "start": begin.isoformat(),
                       "end": (begin + dt.timedelta(minutes=30)).isoformat(), "minutesDuration": 30}
        out.append(b"\x0b" + siu_message("S12", appointment, patient=patient, encounter_id=f"enc-b{n}",
                                         control_id=f"B{n}-{secrets.token_hex(4)}") + b"\x1c\r")
    return out


async def load(port: int, blocks: list[bytes], connections: int, seconds: float,
               cycle: bool = False) -> tuple[int, int, float]:
    """Send blocks over `connections` connections, one in flight each, for `seconds`; (ACKs, AAs, elapsed).
    cycle: go round the blocks again (the bare server reads none of them, so repeats cost it nothing)."""
    acks = aas = 0
    stop = time.monotonic() + seconds
    cursor = itertools.cycle(blocks) if cycle else iter(blocks)

    async def one() -> None:
        nonlocal acks, aas
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        try:
            while time.monotonic() < stop:
                block = next(cursor, None)
                if block is None:
                    return
                writer.write(block)
                answer = await reader.readuntil(b"\x1c\r")
                acks += 1
                aas += b"MSA|AA|" in answer
        finally:
            writer.close()
    began = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    return acks, aas, time.monotonic() - began


async def run(args: argparse.Namespace) -> str:
    import asyncpg

    from appointments import schedule
    from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
    from gateway.db import migrate
    from gateway.security import Sealer, generate_signing_key_pem

    with Processes(prefix="vg-bench-rem-") as procs:
        admin = await asyncpg.connect(procs.postgres())
        await admin.execute("CREATE DATABASE bench")
        await admin.close()
        dsn = procs.pg.get_uri("bench")
        secret = secrets.token_bytes(32)
        gw_port, mllp_port, bare_port = free_port(), free_port(), free_port()
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            config_id = await add_approved(conn, Sealer(secret), NewConfiguration(
                fhir_base_url=f"http://{HOST}:9/fhir", environment="test", client_id=CLIENT_ID,
                client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="bench")
            await schedule.set_feed(conn, config_id, mllp_port=mllp_port, messages=("reminder",),
                                    channels=("email",), reminder_offsets=(1440, 15))
        finally:
            await conn.close()
        procs.spawn("bare", [sys.executable, "-c", BARE_SERVER, str(bare_port)])
        env = gateway_env(public_url=f"http://{HOST}:{gw_port}", secret=secret,
                          signing_key_pem=generate_signing_key_pem(), database_url=dsn,
                          data_dir=procs.dir / "data", log_level="WARNING", writeback_enabled=False,
                          webhooks_enabled=False, db_pool_max=20)
        gateway = procs.gateway("gateway", env)
        gateway.wait_ready()
        for _ in range(100):  # the bare server and the listener up
            try:
                for port in (bare_port, mllp_port):
                    _r, w = await asyncio.open_connection(HOST, port)
                    w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)

        start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=10)
        # Distinct messages enough for the gateway's runs (a few hundred to a few thousand a second here); the
        # bare server goes round one run's worth.
        per_run = int(args.seconds * 5000)
        pool = messages(per_run * 5, start)
        print(f"{len(pool)} distinct SIU messages built; {args.connections} connections, one in flight each",
              flush=True)
        used = 0

        def take() -> list[bytes]:
            nonlocal used
            chunk = pool[used:used + per_run]
            used += per_run
            return chunk

        await load(mllp_port, take(), args.connections, 1.0)  # warm-up: pool, caches, JIT of nothing
        bare_rates, gateway_rates = [], []
        for round_ in range(3):
            with CpuSteal() as steal:
                acks, _aas, elapsed = await load(bare_port, pool[:per_run], args.connections, args.seconds,
                                                 cycle=True)
            bare_rates.append(acks / elapsed)
            print(f"bare    #{round_ + 1}: {acks / elapsed:8.0f} ACKs/s  ({steal.describe()})", flush=True)
            with CpuSteal() as steal:
                acks, aas, elapsed = await load(mllp_port, take(), args.connections, args.seconds)
            if aas != acks:
                raise RuntimeError(f"the gateway answered {acks - aas} of {acks} messages with other than AA")
            gateway_rates.append(acks / elapsed)
            print(f"gateway #{round_ + 1}: {acks / elapsed:8.0f} ACKs/s  ({steal.describe()})", flush=True)
        conn = await asyncpg.connect(dsn)
        try:
            planned = await conn.fetchval("SELECT count(*) FROM appointment_messages")
            stored = await conn.fetchval("SELECT count(*) FROM appointments")
        finally:
            await conn.close()
        print(f"the gateway stored {stored} appointments and planned {planned} reminders", flush=True)
        bare, gw = statistics.median(bare_rates), statistics.median(gateway_rates)
        mllp = f"mllp_ratio={gw / bare:.3f}"
        gateway.stop()
    if args.skip_send:
        return f"RESULT reminders {mllp} gateway_acks_per_s={gw:.0f} bare_acks_per_s={bare:.0f}"
    send = await send_phase(args)
    return f"RESULT reminders {mllp} {send} gateway_acks_per_s={gw:.0f} bare_acks_per_s={bare:.0f}"


class Carrier:
    """A carrier double taking `rate` messages a second: each request waits for its slot; a repeated id is
    accepted and not delivered again (ACS's repeatabilityRequestId)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0
        self.delivered: dict[str, float] = {}
        self.twice = 0

    async def handle(self, request: "web.Request") -> "web.Response":
        from aiohttp import web

        body = await request.json()
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + 1 / self.rate
        await asyncio.sleep(slot - now)
        key = body.get("id")
        if key in self.delivered:
            self.twice += 1
        else:
            self.delivered[key] = time.monotonic()
        return web.json_response({"ok": True}, status=201)


async def send_phase(args: argparse.Namespace) -> str:
    """The send half: reminders due at once across two processes, one killed; 'send_ratio=... lost=... twice=...'."""
    import asyncpg
    from aiohttp import web

    from appointments import schedule
    from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
    from gateway.db import migrate
    from gateway.security import Sealer, generate_signing_key_pem

    total = args.reminders
    with Processes(prefix="vg-bench-send-") as procs:
        admin = await asyncpg.connect(procs.postgres())
        await admin.execute("CREATE DATABASE bench")
        await admin.close()
        dsn = procs.pg.get_uri("bench")
        secret, pem = secrets.token_bytes(32), generate_signing_key_pem()
        sealer = Sealer(secret)
        port_a, port_b, sb_port, carrier_port = free_port(), free_port(), free_port(), free_port()
        sandbox_url = f"http://{HOST}:{sb_port}"
        fhir_base = f"{sandbox_url}/fhir"
        # B stays up: the EHR fetches the gateway's keys from it.
        client = {"client_id": CLIENT_ID, "redirect_uris": [f"http://{HOST}:{port_b}/launch/callback"],
                  "auth_method": "private_key_jwt", "jwks_url": f"http://{HOST}:{port_b}/.well-known/jwks.json"}
        sandbox = procs.sandbox("sandbox", port=sb_port, base_url=sandbox_url,
                                app_launch_url=f"http://{HOST}:{port_b}/launch", clients=[client])
        carrier = Carrier(args.rate)
        carrier_app = web.Application()
        carrier_app.router.add_post("/_sms", carrier.handle)
        runner = web.AppRunner(carrier_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, carrier_port).start()
        try:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
                config_id = await add_approved(conn, sealer, NewConfiguration(
                    fhir_base_url=fhir_base, environment="test", client_id=CLIENT_ID, client_auth="private_key_jwt",
                    scopes=DEFAULT_SCOPES), approved_by="bench")
                await schedule.set_feed(conn, config_id, messages=("reminder",), channels=("sms",),
                                        reminder_offsets=(15,))
                start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
                ids = [f"appt-s{n}" for n in range(total)]
                await conn.execute(
                    "INSERT INTO appointments (configuration_id, appointment_key, appointment_ref, patient_ref, "
                    "encounter_ref, starts_at, ends_at, status, source_time) "
                    "SELECT $1, k, a, p, e, $6, $7, 'booked', now() FROM unnest($2::bytea[], $3::bytea[], "
                    "$4::bytea[], $5::bytea[]) AS t(k, a, p, e)", config_id,
                    [sealer.lookup("appointment", f"{fhir_base}|{i}") for i in ids],
                    [sealer.seal(i, "appointments.appointment_ref") for i in ids],
                    [sealer.seal(f"pat-{n % 5 + 1}", "appointments.patient_ref") for n in range(total)],
                    [sealer.seal(f"enc-s{n}", "appointments.encounter_ref") for n in range(total)],
                    start, start + dt.timedelta(minutes=30))
                await conn.execute(
                    "INSERT INTO appointment_messages (appointment_id, kind, offset_minutes, channel, revision, "
                    "starts_at, due_at) SELECT id, 'reminder', 15, 'sms', 0, starts_at, starts_at - interval '15 min' "
                    "FROM appointments")
            finally:
                await conn.close()
            await sandbox.wait_ready_async()
            gateways = []
            for name, port in (("a", port_a), ("b", port_b)):
                env = gateway_env(public_url=f"http://{HOST}:{port}", secret=secret, signing_key_pem=pem,
                                  database_url=f"{dsn}&application_name=vg-{name}", data_dir=procs.dir / f"data-{name}",
                                  log_level="WARNING", writeback_enabled=False, webhooks_enabled=False,
                                  sms_provider="sink", sms_sink_url=f"http://{HOST}:{carrier_port}/_sms",
                                  reminder_lease_seconds=args.lease, reminder_poll_interval=0.1,
                                  reminder_concurrency=args.concurrency, reminder_backoff=1.0, db_pool_max=20)
                gateways.append(procs.gateway(f"gateway-{name}", env))
            await asyncio.gather(*(g.wait_ready_async(30) for g in gateways))
            conn = await asyncpg.connect(dsn)
            try:
                with CpuSteal() as steal:
                    await conn.execute("UPDATE appointment_messages SET due_at = now()")  # all due at once
                    killed = False
                    deadline = time.monotonic() + total / args.rate * 3 + 60
                    while len(carrier.delivered) < total:
                        if not killed and len(carrier.delivered) >= total // 3:
                            gateways[0].kill()  # kill -9, mid-run
                            killed = True
                            print(f"killed gateway a after {len(carrier.delivered)} deliveries", flush=True)
                        if time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.05)
                    while await conn.fetchval("SELECT count(*) FROM appointment_messages WHERE state = 'sending'") \
                            and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                states = dict(await conn.fetch("SELECT state, count(*) FROM appointment_messages GROUP BY state"))
            finally:
                await conn.close()
        finally:
            await runner.cleanup()
    times = sorted(carrier.delivered.values())
    elapsed = times[-1] - times[0] if len(times) > 1 else float("nan")
    ratio = len(times) / (args.rate * elapsed)
    lost = total - len(times)
    print(f"send: {len(times)} of {total} delivered in {elapsed:.1f} s at a carrier rate of {args.rate:.0f}/s; "
          f"{carrier.twice} sent again after the kill and delivered once; rows by state {states} "
          f"({steal.describe()})", flush=True)
    return f"send_ratio={ratio:.3f} lost={lost} twice={carrier.twice}"


def main() -> int:
    """Run the benchmark and print its RESULT line last."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--reminders", type=int, default=None, help="reminders due at once (10,000; quick 600)")
    parser.add_argument("--rate", type=float, default=100.0, help="messages a second the carrier double takes")
    parser.add_argument("--concurrency", type=int, default=16, help="sends in flight per gateway process")
    parser.add_argument("--lease", type=float, default=5.0, help="seconds a claim lasts (60 as shipped)")
    parser.add_argument("--skip-send", action="store_true", help="measure MLLP intake only")
    args = parser.parse_args()
    args.seconds = 2.0 if args.quick else 5.0
    if args.reminders is None:
        args.reminders = 600 if args.quick else 10000
    try:
        line = asyncio.run(run(args))
    except Exception as exc:  # still end with a RESULT line
        print(f"bench failed: {type(exc).__name__}: {exc}", flush=True)
        print("RESULT reminders mllp_ratio=nan")
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
