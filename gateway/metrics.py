"""Prometheus metrics: one registry per application (no process-wide globals), served at /metrics.

Parts register their counters on `registry(app)` while the application is being built. Metrics carry
counts and bounded reason codes only, never identifiers or patient data.
"""
from __future__ import annotations

import gc
import hmac
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .appkeys import SETTINGS

METRICS = web.AppKey("metrics_registry", CollectorRegistry)


def registry(app: web.Application) -> CollectorRegistry:
    """The application's registry, created on first use (call while building the application)."""
    if METRICS not in app:
        reg = CollectorRegistry()
        # The process's CPU, memory and file descriptors, and its garbage collector: what an operator looks
        # at first when latency climbs.
        ProcessCollector(registry=reg)
        GCCollector(registry=reg)
        reg.register(_FrozenHeap())
        app[METRICS] = reg
    return app[METRICS]


class _FrozenHeap(Collector):
    """How many objects start-up left out of the collector's sight (gateway.web.freeze_startup_heap)."""

    def collect(self) -> Iterator[Metric]:
        """The current count."""
        yield GaugeMetricFamily("visitgate_gc_frozen_objects", "Objects frozen after start-up (never scanned "
                                "by the cycle collector)", value=gc.get_freeze_count())


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
