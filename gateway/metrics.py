"""Prometheus metrics: one registry per application (no process-wide globals), served at /metrics.

Parts register their counters on `registry(app)` while the application is being built. Metrics carry
counts and bounded reason codes only, never identifiers or patient data.
"""
from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

METRICS = web.AppKey("metrics_registry", CollectorRegistry)


def registry(app: web.Application) -> CollectorRegistry:
    """The application's registry, created on first use (call while building the application)."""
    if METRICS not in app:
        app[METRICS] = CollectorRegistry()
    return app[METRICS]


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the registry in Prometheus' text format."""
    found = request.app.get(METRICS)
    body = generate_latest(found) if found is not None else b""
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
