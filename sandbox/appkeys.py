"""Typed keys for everything the sandbox application holds; there is no module-level state."""
from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .config import Faults, SandboxSettings
from .grants import LaunchRegistry, OAuthState
from .keys import ClientKeyCache, KeyRing
from .oidc_state import OidcProvider
from .standalone_state import StandaloneSignIns
from .store import FhirStore

if TYPE_CHECKING:
    from .entra import EntraDouble
    from .graph import GraphDouble, RosterListener

SETTINGS = web.AppKey("sandbox_settings", SandboxSettings)
FAULTS = web.AppKey("sandbox_faults", Faults)
STORE = web.AppKey("sandbox_store", FhirStore)
LAUNCHES = web.AppKey("sandbox_launches", LaunchRegistry)
OAUTH = web.AppKey("sandbox_oauth", OAuthState)
KEYS = web.AppKey("sandbox_keys", KeyRing)
CLIENT_KEYS = web.AppKey("sandbox_client_keys", ClientKeyCache)
HTTP_SESSION = web.AppKey("sandbox_http_session", aiohttp.ClientSession)
OIDC = web.AppKey("sandbox_oidc", OidcProvider)
STANDALONE = web.AppKey("sandbox_standalone", StandaloneSignIns)

# The Graph and Entra double (sandbox/graph.py, sandbox/entra.py): a separate https application. Their state
# classes are named for the type checker only: those modules use these keys, and importing them here at run
# time would make each module import the other.
ENTRA: web.AppKey[EntraDouble] = web.AppKey("sandbox_entra")
GRAPH: web.AppKey[GraphDouble] = web.AppKey("sandbox_graph")
ROSTER_LISTENERS: web.AppKey[list[RosterListener]] = web.AppKey("sandbox_graph_roster_listeners")
