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

`send_ratio` (10,000 reminders across two processes against a rate-limited carrier with a kill -9) is not
measured here yet; tests/appointments/test_reminders_kill.py checks the exactly-once part of it.

Each timed phase prints the CPU stolen by the hypervisor meanwhile (bench.stats.CpuSteal). The last line is
`RESULT reminders mllp_ratio=... gateway_acks_per_s=... bare_acks_per_s=...`.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
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
               "identifier": [{"value": "MRN-1"}], "telecom": [{"system": "phone", "value": "+1-555-0100"}]}
    out = []
    for n in range(count):
        begin = start + dt.timedelta(minutes=n % 5000)
        appointment = {"id": f"appt-b{n}", "status": "booked", "start": begin.isoformat(),
                       "end": (begin + dt.timedelta(minutes=30)).isoformat(), "minutesDuration": 30}
        out.append(b"\x0b" + siu_message("S12", appointment, patient=patient, encounter_id=f"enc-b{n}",
                                         control_id=f"B{n}-{secrets.token_hex(4)}") + b"\x1c\r")
    return out


async def load(port: int, blocks: list[bytes], connections: int, seconds: float) -> tuple[int, int, float]:
    """Send blocks over `connections` connections, one in flight each, for `seconds`; (ACKs, AAs, elapsed)."""
    acks = aas = 0
    stop = time.monotonic() + seconds
    cursor = iter(blocks)

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
        per_run = int(args.seconds * 20000)
        pool = messages(per_run * 7, start)
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
                acks, _aas, elapsed = await load(bare_port, take(), args.connections, args.seconds)
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
        return (f"RESULT reminders mllp_ratio={gw / bare:.3f} gateway_acks_per_s={gw:.0f} "
                f"bare_acks_per_s={bare:.0f}")


def main() -> int:
    """Run the benchmark and print its RESULT line last."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    args.seconds = 2.0 if args.quick else 5.0
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
