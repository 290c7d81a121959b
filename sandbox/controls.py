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

from .appkeys import FAULTS, OIDC, STORE
from .carriers import wiring
from .config import OidcClient
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


async def post_oidc_client(request: web.Request) -> web.Response:
    """POST /_sandbox/oidc/clients: register (or replace) an application with the OpenID provider."""
    body = await _json_object(request)
    try:
        client = OidcClient.from_json(body)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    request.app[OIDC].register(client)
    return web.json_response({"client_id": client.client_id})


async def post_oidc_tenant(request: web.Request) -> web.Response:
    """POST /_sandbox/oidc/tenants/{tenant}: switch what a tenant's discovery announces; answers the switches."""
    switches = request.app[OIDC].tenants.get(request.match_info["tenant"])
    if switches is None:
        raise web.HTTPNotFound(text="unknown tenant")
    body = await _json_object(request)
    for name in body:
        if name not in ("lists_s256", "iss_parameter") or not isinstance(body[name], bool):
            raise web.HTTPBadRequest(text="only lists_s256 and iss_parameter, as booleans")
    for name, value in body.items():
        setattr(switches, name, value)
    return web.json_response({"lists_s256": switches.lists_s256, "iss_parameter": switches.iss_parameter})


async def post_oidc_rotate(request: web.Request) -> web.Response:
    """POST /_sandbox/oidc/keys/rotate: sign id_tokens with the other published key (optionally replacing
    the retired one with a new key); answers the signing kid and the published kids."""
    body = await _json_object(request)
    replace = body.get("replace_retired", False)
    if not isinstance(replace, bool):
        raise web.HTTPBadRequest(text="replace_retired must be a boolean")
    keys = request.app[OIDC].keys
    keys.rotate(replace_retired=replace)
    return web.json_response({"signing_kid": keys.signing.kid, "kids": [k.kid for k in keys.keys]})


async def post_oidc_age_sessions(request: web.Request) -> web.Response:
    """POST /_sandbox/oidc/sessions/age: make every sign-in at the OpenID provider that many seconds older."""
    body = await _json_object(request)
    seconds = body.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 86400 * 7:
        raise web.HTTPBadRequest(text="seconds must be a number from 0 to a week")
    request.app[OIDC].age_sessions(float(seconds))
    return web.json_response({"aged": seconds})


async def post_oidc_faults(request: web.Request) -> web.Response:
    """POST /_sandbox/oidc/faults: spoil the OpenID provider's id_tokens or its `iss` parameter; answers them."""
    body = await _json_object(request)
    faults = request.app[OIDC].faults
    try:
        faults.update(body)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    return web.json_response({"id_token": faults.id_token, "callback_iss": faults.callback_iss})


def setup_routes(app: web.Application) -> None:
    """Add the control routes."""
    app.router.add_post("/_sandbox/launches", post_launch)
    app.router.add_post("/_sandbox/faults", post_faults)
    app.router.add_post("/_sandbox/carriers", wiring.post_carriers)
    app.router.add_post("/_sandbox/resources", post_resource)
    app.router.add_post("/_sandbox/oidc/clients", post_oidc_client)
    app.router.add_post("/_sandbox/oidc/tenants/{tenant}", post_oidc_tenant)
    app.router.add_post("/_sandbox/oidc/keys/rotate", post_oidc_rotate)
    app.router.add_post("/_sandbox/oidc/sessions/age", post_oidc_age_sessions)
    app.router.add_post("/_sandbox/oidc/faults", post_oidc_faults)
