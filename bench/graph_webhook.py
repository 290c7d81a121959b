#!/usr/bin/env python
"""Benchmark: Graph change notifications accepted by the gateway's webhook against a bare aiohttp handler.

    .venv/bin/python bench/graph_webhook.py              # three runs, about a minute and a half
    .venv/bin/python bench/graph_webhook.py --runs 1 --seconds 3     # a smoke test
    .venv/bin/python bench/graph_webhook.py --profile    # also sample the gateway with py-spy

Every process runs on 127.0.0.1 and is started and ended by this script: PostgreSQL (pgserver) in a fresh /tmp
directory, `visitgate serve` (uvloop, as shipped) with a Graph notification key, a bare aiohttp server (uvloop)
whose handler reads the body and answers 202, and one load process: a lean asyncio HTTP/1.1 client on keep-alive
connections (64 of them, one request in flight on each) that posts prebuilt notification collections and counts
the 202s. The subscription is seeded straight into the schema as subscribe_meeting leaves it; from the request
on, everything is the gateway's real code: the middlewares, the clientState HMAC, the subscription check (cached),
the digest, the group-committed INSERT into the durable queue, and the worker checking the validationToken
(Entra's keys from a small https server here; one token for all, as Graph reuses it) and decrypting (RSA-OAEP, HMAC,
AES-CBC) and applying each notification in the same process while the intake runs.

Figure
- intake_ratio: notifications the gateway accepted (202) per second ÷ 202s per second from the bare handler,
  same client, same bodies (each a different rich notification, one per request, as Graph sends them), blocks
  alternated. The median of the runs is the figure; every run is printed, with the CPU the host stole.
At the end the queue is checked: every accepted notification is one row (none lost, none twice).
Each run also prints the CPU per notification of the gateway (the worker's share included), of the bare server
and of PostgreSQL, and how busy the machine was (it is shared: a bare rate that moves between runs is the host).

What the profile said (cProfile, `--profile`, and switching parts off): the gateway's shell alone (its four
middlewares, the JSON parse and a 202 from the handler) costs ~74 us a request against the bare handler's ~30 us,
a ceiling near 0.35-0.4 on this machine before any of the webhook's own work; the webhook adds ~30 us (clientState
HMAC, digest, group commit). Cut after profiling: the second JSON parse, the per-string walk of the input check
over long base64 strings (~25% of the request), a canonical re-serialisation of each notification for its digest.
Then the shell itself (a trivial 202 route behind create_app vs bare, server CPU per request): ~79 us -> ~66 us
against ~37 us bare, by one middleware layer instead of four, header values built once, one look at all
headers, no cookie or query parsing when there is none, and a translate rather than a regex over an ASCII
JSON body; here the gateway's CPU per notification went from ~121 us to ~110 us (medians of 15 and 18 runs
on a shared, busy machine; intake_ratio medians 0.307 -> 0.395 over five invocations each).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path
                             if p and Path(p).resolve() not in (ROOT, Path(__file__).parent.resolve())]

from bench.procs import HOST, cpu_seconds, free_port, new_run, start_gateway  # noqa: E402
from bench.stats import CpuSteal  # noqa: E402
from tests.harness import gateway_env  # noqa: E402

CONNECTIONS = 64
ORGANIZER = "7c8d9e0f-1a2b-4c3d-8e5f-6a7b8c9d0e1f"
TENANT = "5b1f4c9e-1d2a-4c55-9a1e-0f5d8e3c2b10"
APP_ID = "9a0c1c0e-2f44-4bb0-8e43-6b1f2a3d4e5f"
ENTRA_KID = "bench-kid"

KEYS_SERVER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import json
import uvloop
from aiohttp import web
from sandbox.demo import make_idp_tls

jwk = json.loads(sys.argv[4])

async def keys(request):
    return web.json_response({"keys": [jwk]})

app = web.Application()
app.router.add_get("/{tenant}/discovery/v2.0/keys", keys)
tls, _ca = make_idp_tls(Path(sys.argv[2]))
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), ssl_context=tls, access_log=None, print=None)
"""

BARE_SERVER = """
import sys
import uvloop
from aiohttp import web

async def notifications(request):
    await request.read()
    return web.Response(status=202)

app = web.Application()
app.router.add_post("/graph/notifications", notifications)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def postgres_cpu(data_dir: Path) -> float:
    """CPU seconds so far of this run's PostgreSQL: its postmaster (started on data_dir) and its children."""
    procs: dict[int, tuple[int, str]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                procs[int(proc.name)] = (int(stat[1]), (proc / "cmdline").read_bytes().decode(errors="replace"))
            except (OSError, ValueError, IndexError):
                continue
    roots = {pid for pid, (_ppid, cmd) in procs.items() if "postgres" in cmd and str(data_dir) in cmd}
    total = 0.0
    for pid, (ppid, _cmd) in procs.items():
        if pid in roots or ppid in roots:
            try:
                total += cpu_seconds(pid)
            except (OSError, ValueError):
                continue
    return total


def say(text: str) -> None:
    print(text, flush=True)


# ----- the load process -------------------------------------------------------------------------------------

async def _client(port: int, requests: list[bytes], seconds: float, counts: list[int], start: int,
                  step: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = start
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            writer.write(requests[i % len(requests)])
            i += step  # connection c sends start+c, start+c+step, ...: no body twice in a block
            counts[2 + start % step] += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            counts[0 if status == 202 else 1] += 1
    finally:
        writer.close()


def _load(port: int, bodies: list[bytes], seconds: float, offset: int, connections: int, out: Any) -> None:
    import uvloop

    requests = [(f"POST /graph/notifications HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    counts = [0, 0] + [0] * connections  # 202s, others, then requests per connection

    async def main() -> None:
        await asyncio.gather(*(_client(port, requests, seconds, counts, offset + c, connections)
                               for c in range(connections)))

    uvloop.run(main())
    out.put((counts[0], counts[1], max(counts[2:])))


def load(port: int, bodies: list[bytes], seconds: float, offset: int = 0,
         connections: int = CONNECTIONS) -> tuple[int, int, int]:
    """(202s, anything else, most requests of one connection) from one load process posting for `seconds`;
    the bodies used are offset + c + k * connections for connection c."""
    queue: Any = multiprocessing.get_context("fork").Queue()
    process = multiprocessing.get_context("fork").Process(
        target=_load, args=(port, bodies, seconds, offset, connections, queue))
    process.start()
    result: tuple[int, int, int] = queue.get(timeout=seconds + 60)
    process.join(10)
    return result


# ----- seeding ----------------------------------------------------------------------------------------------

async def seed(dsn: str, secret: bytes, key_pem: bytes, count: int, validation_token: str) -> list[bytes]:
    """An approved configuration, an organisation with Teams settings, a Teams visit with a live subscription,
    and `count` distinct notification collections for it, encrypted to the gateway's notification key and
    carrying `validation_token` (Graph reuses one per application and tenant for a while)."""
    import asyncpg
    from cryptography import x509

    from config_portal.organisations import NewOrganisation, add_organisation
    from gateway import teams
    from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
    from gateway.graph import SecretCredential, TeamsTenant
    from gateway.security import Sealer
    from presence.graph_crypto import NotificationKey
    from presence.teams_events import client_state, state_key
    from sandbox.graph_events import encrypt_for

    conn = await asyncpg.connect(dsn)
    try:
        from gateway.db import migrate

        await migrate(conn)
        config_id = await add_approved(conn, Sealer(secret), NewConfiguration(
            fhir_base_url="http://localhost:1/fhir", environment="test", client_id="bench",
            client_auth="private_key_jwt", scopes=DEFAULT_SCOPES), approved_by="bench")
        org_id = await add_organisation(conn, Sealer(secret), NewOrganisation(
            slug="bench-teams", name="Bench Teams", idp_kind="entra", tenant_id=TENANT, client_id="bench-portal",
            client_secret="bench-portal-secret"), "bench")
        await teams.save_tenant(conn, Sealer(secret), org_id, TeamsTenant(TENANT, APP_ID, SecretCredential("-")),
                                "bench", None)
        visit_id = await conn.fetchval(
            "INSERT INTO visits (configuration_id, encounter_key, encounter_ref, meeting_provider)"
            " VALUES ($1, $2, $3, 'teams') RETURNING id", config_id, os.urandom(32), os.urandom(48))
        graph_id = str(uuid.uuid4())
        subscription_id = await conn.fetchval(
            "INSERT INTO graph_subscriptions (graph_id, visit_id, tenant_key, organizer_id, meeting_id, join_web_url,"
            " status, expires_at) VALUES ($1, $2, $3, $4, 'meeting', 'https://teams.example/j', 'active',"
            " now() + interval '2 days') RETURNING id", graph_id, visit_id, str(org_id), ORGANIZER)
    finally:
        await conn.close()
    key = NotificationKey.from_pem(key_pem)
    public = x509.load_der_x509_certificate(base64.b64decode(key.certificate_b64)).public_key()
    state = client_state(state_key(secret), subscription_id)
    resource_path = "communications/onlineMeetings(joinWebUrl='https%3A%2F%2Fteams.example%2Fj')/meetingCallEvents"
    bodies = []
    for i in range(count):
        # A roster change of one call leg each: the worker writes a presence event for most of them.
        resource = {"eventType": "Microsoft.Communication.CallRosterUpdate", "eventDateTime": "2026-01-01T10:00:00Z",
                    "activeParticipants@joined": [{"Id": f"leg-{i}", "Identity": {"User": {
                        "Id": ORGANIZER, "DisplayName": "Dr Bench", "TenantId": TENANT}}}]}
        item = {"subscriptionId": graph_id, "changeType": "updated", "clientState": state, "tenantId": TENANT,
                "subscriptionExpirationDateTime": "2026-01-03T10:00:00.0000000Z",
                "resource": resource_path,
                "resourceData": {"@odata.type": "#Microsoft.Graph.meetingCallEvent", "id": str(uuid.uuid4())},
                "encryptedContent": encrypt_for(public, key.certificate_id, "AB" * 20,  # type: ignore[arg-type]
                                                resource)}
        bodies.append(json.dumps({"value": [item], "validationTokens": [validation_token]}).encode())
    return bodies


async def queued(dsn: str) -> int:
    """Rows in the notification queue."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval("SELECT count(*) FROM graph_notifications")
        return value
    finally:
        await conn.close()


async def outcomes(dsn: str) -> dict[str, int]:
    """The queue's rows by outcome: the worker checked the tokens, decrypted and applied them (or not yet)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT outcome, count(*) AS n FROM graph_notifications GROUP BY outcome")
        return {str(r["outcome"]): int(r["n"]) for r in rows}
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each timed block")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="keep-alive connections of the load")
    parser.add_argument("--no-worker", action="store_true", help="the worker runs elsewhere (not in the gateway)")
    args = parser.parse_args()

    from sandbox.graph_events import private_key_pem
    from gateway.security import generate_signing_key_pem

    with new_run("vg-graph-webhook-") as run:
        dsn = run.postgres()
        secret = secrets.token_bytes(32)
        key_pem = private_key_pem()
        key_file = run.dir / "graph-notifications.pem"
        key_file.write_bytes(key_pem)
        # Each gateway block takes a fresh stretch of bodies: none is sent twice (enough for ~10,000/s; a block
        # reserves its busiest connection's count for every connection, and the gateway peaks near 9,000/s).
        total = int(10_000 * (args.seconds * args.runs + 2))
        say(f"seeding {total} notifications ...")
        # Entra's signing key (served over https to the gateway) and the validationToken Graph would send.
        import jwt
        from cryptography.hazmat.primitives.asymmetric import rsa

        from gateway.graph import CHANGE_TRACKING_APP
        entra_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        token = jwt.encode({"iss": f"https://sts.windows.net/{TENANT}/", "aud": APP_ID, "tid": TENANT,
                            "azp": CHANGE_TRACKING_APP, "appid": CHANGE_TRACKING_APP, "iat": now, "nbf": now,
                            "exp": now + 3600}, entra_key, algorithm="RS256", headers={"kid": ENTRA_KID})
        jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(entra_key.public_key(), as_dict=True), "kid": ENTRA_KID}
        bodies = asyncio.run(seed(dsn, secret, key_pem, total, token))
        say(f"body size {len(bodies[0])} bytes")
        gw_port, bare_port, keys_port = free_port(), free_port(), free_port()
        keys_tls = run.dir / "entra-tls"
        keys = run.spawn("entra-keys", [sys.executable, "-c", KEYS_SERVER, str(keys_port), str(keys_tls), str(ROOT),
                                        json.dumps(jwk)], ready_url=None)
        env = gateway_env(public_url=f"http://{HOST}:{gw_port}", secret=secret,
                          signing_key_pem=generate_signing_key_pem(), database_url=dsn, data_dir=run.dir / "data",
                          log_level="WARNING", graph_notification_key_file=str(key_file),
                          writeback_enabled=False, webhooks_enabled=False,
                          graph_worker_enabled=not args.no_worker)
        # The worker reads Entra's keys there to check the validationTokens (the TLS files appear within a second).
        env.update({"VISITGATE_ENTRA_AUTHORITY_HOST": f"https://{HOST}:{keys_port}",
                    "VISITGATE_IDP_CA_FILE": str(keys_tls / "demo-ca.pem")})
        for _ in range(200):
            if (keys_tls / "demo-ca.pem").exists():
                break
            time.sleep(0.05)
        if args.profile:
            # cProfile over the whole served process (no py-spy here): shares, not absolute times.
            profile_out = run.dir / "gateway.prof"
            code = ("import cProfile, sys; from gateway import cli; "
                    f"cProfile.run(\"cli.main(['serve'])\", {str(profile_out)!r})")
            gateway = run.gateway("gateway", env, argv=[sys.executable, "-c", code])
            gateway.wait_ready()
        else:
            gateway = start_gateway(run, "gateway", env)
        bare = run.spawn("bare", [sys.executable, "-c", BARE_SERVER, str(bare_port)],
                         ready_url=None)
        time.sleep(1.5)
        offset = 0
        # Warm-up: both servers, a second each (connections, caches, the first INSERTs).
        accepted_total = 0
        for port in (bare_port, gw_port):
            got = load(port, bodies, 1.0, offset if port == gw_port else 0, args.connections)
            if port == gw_port:
                offset += (got[2] + 1) * args.connections
                accepted_total += got[0]
        ratios = []
        for n in range(args.runs):
            steal = CpuSteal()
            bare_before = cpu_seconds(bare.pid)
            with steal:
                bare_ok, bare_bad, _ = load(bare_port, bodies, args.seconds, 0, args.connections)
            steal_gw = CpuSteal()
            cpu_before, pg_before = cpu_seconds(gateway.pid), postgres_cpu(run.dir)
            with steal_gw:
                gw_ok, gw_bad, most = load(gw_port, bodies, args.seconds, offset, args.connections)
            gw_cpu = (cpu_seconds(gateway.pid) - cpu_before) / args.seconds
            pg_cpu = (postgres_cpu(run.dir) - pg_before) / args.seconds
            offset += (most + 1) * args.connections
            if offset > len(bodies):
                say(f"  (the bodies ran out: {offset - len(bodies)} were sent again and count once)")
            accepted_total += gw_ok
            bare_rate, gw_rate = bare_ok / args.seconds, gw_ok / args.seconds
            bare_cpu = (cpu_seconds(bare.pid) - bare_before) / args.seconds
            ratios.append(gw_rate / bare_rate if bare_rate else 0.0)
            say(f"run {n + 1}: bare {bare_rate:,.0f}/s ({bare_bad} not 202), gateway {gw_rate:,.0f}/s "
                f"({gw_bad} not 202), ratio {ratios[-1]:.3f}; steal bare {steal.steal_pct:.1f}% "
                f"gateway {steal_gw.steal_pct:.1f}%; gateway CPU {gw_cpu * 100:.0f}% of a core, "
                f"{gw_cpu / max(gw_rate, 1) * 1e6:.0f} us per notification "
                f"(bare {bare_cpu / max(bare_rate, 1) * 1e6:.0f} us, "
                f"PostgreSQL {pg_cpu / max(gw_rate, 1) * 1e6:.0f} us); "
                f"machine busy bare {steal.busy_pct:.0f}% "
                f"gateway {steal_gw.busy_pct:.0f}%")
        rows = asyncio.run(queued(dsn))
        say(f"queue rows {rows}; notifications the gateway answered 202 {accepted_total} "
            f"({'none lost, none twice' if rows == accepted_total else 'MISMATCH'})")
        say(f"queue rows by the worker's outcome (None: not processed yet): {asyncio.run(outcomes(dsn))}")
        ratio = statistics.median(ratios)
        say(f"RESULT graph_webhook intake_ratio={ratio:.3f} runs={','.join(f'{r:.3f}' for r in ratios)}")
        bare.stop()
        gateway.stop()
        keys.stop()
        if args.profile:
            import pstats

            pstats.Stats(str(profile_out)).sort_stats("tottime").print_stats(25)
            pstats.Stats(str(profile_out)).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
