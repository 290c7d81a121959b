"""Control endpoints for tests and benchmarks running the sandbox in another process.

They exist only when `SandboxSettings.test_controls` is true; a demo or a shared sandbox never has them.
The latency switch (`ehr_answer_after`) is honoured by `answer_after_middleware`, always installed, since
tests running the sandbox in their own process set the switches directly.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .appkeys import FAULTS, STORE
from .launches import create_launch
from .store import StoreError


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text="body must be JSON") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"{name} must be a string or null")
    return value


async def post_launch(request: web.Request) -> web.Response:
    """POST /_sandbox/launches: create a launch context and answer its id."""
    body = await _json_object(request)
    banner = body.get("need_patient_banner", True)
    if not isinstance(banner, bool):
        raise web.HTTPBadRequest(text="need_patient_banner must be a boolean")
    launch = create_launch(
        request.app,
        practitioner_id=_optional_str(body, "practitioner_id"),
        patient_id=_optional_str(body, "patient_id"),
        encounter_id=_optional_str(body, "encounter_id"),
        appointment_id=_optional_str(body, "appointment_id"),
        need_patient_banner=banner,
    )
    return web.json_response({"launch": launch})


async def post_faults(request: web.Request) -> web.Response:
    """POST /_sandbox/faults: set fault switches; answers all of them."""
    body = await _json_object(request)
    try:
        request.app[FAULTS].update(body)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    return web.json_response(request.app[FAULTS].as_dict())


async def post_resource(request: web.Request) -> web.Response:
    """POST /_sandbox/resources: store a resource as-is (new version) and answer what was stored."""
    body = await _json_object(request)
    try:
        stored = request.app[STORE].put(body)
    except StoreError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    return web.json_response(stored)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What an EHR serves to clients and browsers; the sandbox's own controls and the phone, mailbox and carrier
# doubles answer at once whatever the EHR's latency.
EHR_PATHS = ("/fhir/", "/oauth/", "/ehr", "/portal")


@web.middleware
async def answer_after_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hold each EHR answer (errors and redirects too) until `ehr_answer_after` seconds after it arrived."""
    delay = request.app[FAULTS].ehr_answer_after
    if delay <= 0 or not request.path.startswith(EHR_PATHS):
        return await handler(request)
    arrived = time.monotonic()
    try:
        return await handler(request)
    finally:
        await asyncio.sleep(max(0.0, arrived + delay - time.monotonic()))


def setup_routes(app: web.Application) -> None:
    """Add the control routes."""
    app.router.add_post("/_sandbox/launches", post_launch)
    app.router.add_post("/_sandbox/faults", post_faults)
    app.router.add_post("/_sandbox/resources", post_resource)
