"""Prometheus metrics: one registry per application (no process-wide globals), served at /metrics.

Parts register their counters on `registry(app)` while the application is being built. Metrics carry
counts and bounded reason codes only, never identifiers or patient data.
"""
from __future__ import annotations

import hmac

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .appkeys import SETTINGS

METRICS = web.AppKey("metrics_registry", CollectorRegistry)


def registry(app: web.Application) -> CollectorRegistry:
    """The application's registry, created on first use (call while building the application)."""
    if METRICS not in app:
        app[METRICS] = CollectorRegistry()
    return app[METRICS]


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the registry in Prometheus' text format, for the holder of the metrics token only."""
    token = request.app[SETTINGS].metrics_token
    if token is None:
        # Not configured: as if there were no such page, rather than counts open to the internet.
        raise web.HTTPNotFound()
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), token.encode()):
        return web.json_response({"error": "metrics_token_required"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="visitgate-metrics"'})
    found = request.app.get(METRICS)
    body = generate_latest(found) if found is not None else b""
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
