"""Builds the sandbox EHR application: one factory, all state on the app under typed keys."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiohttp_jinja2
import jinja2
from aiohttp import web

from . import controls, fhir, oauth, oidc, pages, phone, scheduling
from .appkeys import CLIENT_KEYS, FAULTS, HTTP_SESSION, KEYS, LAUNCHES, OAUTH, SETTINGS, STORE
from .carriers import wiring
from .config import Faults, SandboxSettings
from .grants import LaunchRegistry, OAuthState
from .keys import ClientKeyCache, KeyRing, SigningKey
from .seed import seed
from .store import FhirStore

# Fetching a client's JWKS must not hold a token request for long.
JWKS_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    """The one outbound session (for clients' JWK sets), closed on shutdown."""
    session = aiohttp.ClientSession(timeout=JWKS_FETCH_TIMEOUT)
    app[HTTP_SESSION] = session
    app[CLIENT_KEYS].session = session
    try:
        yield
    finally:
        app[CLIENT_KEYS].session = None
        await session.close()


def create_sandbox_app(settings: SandboxSettings) -> web.Application:
    """Build the sandbox EHR: authorization server, FHIR API, pages, and test controls when enabled."""
    # Outermost first: the EHR's latency counts from arrival, the FHIR faults' own work included.
    app = web.Application(middlewares=[controls.answer_after_middleware, fhir.fhir_middleware])
    app[SETTINGS] = settings
    app[FAULTS] = Faults()
    app[STORE] = FhirStore()
    seed(app[STORE])
    app[LAUNCHES] = LaunchRegistry()
    app[OAUTH] = OAuthState()
    app[KEYS] = KeyRing(SigningKey.generate())
    app[CLIENT_KEYS] = ClientKeyCache()
    app.cleanup_ctx.append(_http_session)

    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
    )
    # Discovery goes first: the generic /fhir/{type}/{id} route would otherwise capture it.
    oauth.setup_routes(app)
    fhir.setup_routes(app)
    pages.setup_routes(app)
    phone.setup_routes(app)  # /phone and /mailbox: where the demo's SMS and email land
    wiring.setup(app)  # the SMS carriers' doubles (/acs, /twilio), delivering to the phone
    scheduling.setup_routes(app)  # /ehr/appointments: book, move, cancel; SIU over MLLP to the gateway
    oidc.setup(app)  # /idp/{tenant}/...: the OpenID provider the portal signs in with (Entra ID's shape)
    if settings.test_controls:
        controls.setup_routes(app)
    return app
