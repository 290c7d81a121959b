"""The application factory: the shell every part plugs into, and the whole URL map in one place.

Parts (`launch`, `presence`, `config_portal` and `appointments`) sit above the shell: they import `gateway`, and
the shell names them only here, by module name, so no import ever points up.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiohttp_jinja2
import jinja2
from aiohttp import web

from . import configurations, db, notify
from .appkeys import DB, DSN, EHR, GRAPH, HTTP, MEETINGS, NOTIFIER, SEALER, SETTINGS, SIGNING_KEY
from .ehr import EhrClient
from .errors import ConfigError
from .graph import GraphClient
from .teams import TeamsMeetings
from .meetings import default_providers
from .notify import inbound
from .notify.optout import OptOutSms
from .security import Sealer, SigningKey
from .settings import Settings
from .web import edge_middleware

log = logging.getLogger(__name__)

# Each part's setup(app) adds its routes; read them in <part>/routes.py.
PARTS = ("launch", "presence", "config_portal", "appointments")


def create_app(settings: Settings) -> web.Application:
    """Build the whole gateway from its settings."""
    # One layer, outermost first: headers on every answer; errors translated; CSRF before the body is even read.
    app = web.Application(middlewares=[edge_middleware(settings)], client_max_size=256 * 1024)
    app[SETTINGS] = settings
    app[SEALER] = Sealer(settings.secret_key)
    app[SIGNING_KEY] = SigningKey.from_pem(settings.signing_key_pem)
    app[MEETINGS] = default_providers()
    aiohttp_jinja2.setup(app, loader=jinja2.ChoiceLoader([jinja2.PackageLoader("gateway")]),
                         autoescape=True, extensions=["jinja2.ext.i18n"])
    # `_()` works in every template; a part with a catalog (launch) installs its translations over this.
    aiohttp_jinja2.get_env(app).install_null_translations(newstyle=True)  # type: ignore[attr-defined]
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_http_client)
    app.cleanup_ctx.append(_ehr_client)
    app.cleanup_ctx.append(_graph_client)  # after the HTTP session it sends on
    app.cleanup_ctx.append(_notifier)  # after the HTTP session, which the SMS provider uses
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", importlib.import_module("gateway.metrics").metrics)  # counters, no ids
    app.router.add_get("/.well-known/jwks.json", jwks)
    inbound.add_routes(app)  # the SMS carriers' webhooks: STOP, START, HELP
    app.router.add_static("/static/", Path(__file__).parent / "static", append_version=False)
    for name in PARTS:
        importlib.import_module(name).setup(app)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    embedded = None
    dsn = settings.database_url
    if dsn is None:
        embedded, dsn = await db.start_embedded_async(settings.data_dir)
    pool = await db.create_pool(dsn, settings.db_pool_max)
    async with pool.acquire() as conn:
        await db.migrate(conn)
        # Counters compute days in the gateway's zone inside SQL: a zone only Python's tz data knows would fail
        # every one of them later, so it stops start-up now, naming the setting.
        if not await configurations.zone_known(conn, settings.time_zone):
            raise ConfigError(f"VISITGATE_TIME_ZONE {settings.time_zone!r} is unknown to the database; choose "
                              "another name or update PostgreSQL's time zone data")
        # A new signing key (a rotation) is audited once, whichever process starts first with it.
        key = app[SIGNING_KEY]
        if await configurations.note_signing_key(conn, key.kid, key.alg):
            log.info("signing key %s is in use (audited)", key.kid)
    app[DB] = pool
    app[DSN] = dsn
    try:
        yield
    finally:
        await pool.close()
        if embedded is not None:
            # Stops the embedded server unless another process still holds it.
            await asyncio.to_thread(embedded.cleanup)


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=app[SETTINGS].http_timeout, connect=5)
    async with aiohttp.ClientSession(timeout=timeout, raise_for_status=False,
                                     headers={"User-Agent": "visitgate"}) as session:
        app[HTTP] = session
        yield


async def _ehr_client(app: web.Application) -> AsyncIterator[None]:
    # Its own session: one per upstream family, and the EHR client sets its own time limits per call.
    async with aiohttp.ClientSession(raise_for_status=False, headers={"User-Agent": "visitgate"}) as session:
        app[EHR] = EhrClient(session, timeout=app[SETTINGS].http_timeout)
        yield
        await app[EHR].close()


async def _graph_client(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    graph = GraphClient(app[HTTP], graph_url=settings.graph_url, authority_host=settings.entra_authority_host,
                        ca_file=settings.idp_ca_file, timeout=settings.http_timeout, budget=settings.graph_budget)
    app[GRAPH] = graph
    app[MEETINGS][TeamsMeetings.name] = TeamsMeetings(graph)  # a Teams meeting needs Graph, so it comes with it
    try:
        yield
    finally:
        graph.close()


async def _notifier(app: web.Application) -> AsyncIterator[None]:
    # A misconfigured SMS provider stops start-up here, by name (ConfigError).
    notifier = notify.build_notifier(app[SETTINGS], app[HTTP])
    if notifier.sms is not None:
        # Every text goes through the opt-out list, whoever sends it (join links, reminders).
        notifier.sms = OptOutSms(notifier.sms, app[DB], app[SEALER], app[SETTINGS].phone_region)
    app[NOTIFIER] = notifier
    yield


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers too."""
    try:
        async with request.app[DB].acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # any failure means "not ready", and the reason is worth logging
        log.warning("not ready: %s", type(exc).__name__)
        return web.json_response({"status": "unavailable", "database": "down"}, status=503)
    return web.json_response({"status": "ok", "database": "ok"})


async def jwks(request: web.Request) -> web.Response:
    """Our public keys, for EHRs verifying private_key_jwt assertions."""
    return web.json_response(request.app[SIGNING_KEY].jwks(), headers={"Cache-Control": "public, max-age=3600"})
