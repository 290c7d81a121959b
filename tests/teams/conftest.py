"""Fixtures of the Teams tests: the gateway and sandbox EHR (tests/conftest.py's stack) with the Graph and Entra
double over TLS, an organisation with Teams settings, and the sandbox's configuration switched to Teams."""
from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
import pytest

from config_portal.organisations import NewOrganisation, add_organisation
from gateway import teams
from gateway.appkeys import DB, SEALER

from ..conftest import Stack, running_stack
from .graph_helpers import GraphStack, graph_double

ORG = "teams-health"


@dataclass
class TeamsVisit:
    """The running stack, the double, and a client that trusts the double's CA (the clinician's pop-up)."""

    stack: Stack
    double: GraphStack
    organisation_id: int
    popup: aiohttp.ClientSession

    async def provider_page(self, launch: str | None = None) -> tuple[str, str]:
        """Launch as the clinician: (the provider view's URL, its HTML)."""
        response, visited = await self.stack.launch(launch)
        body = await response.text()
        assert response.status == 200, body
        return visited[-1], body

    async def sign_in(self, page: str, oid: str) -> aiohttp.ClientResponse:
        """Do the pop-up's sign-in from a provider page that offers it, as the user `oid`; answers the callback."""
        found = re.search(r'id="teams-sign-in" href="([^"]+)"', page)
        assert found, page
        authorize = found.group(1).replace("&amp;", "&")
        async with self.popup.get(authorize) as r:
            form = await r.text()
            assert r.status == 200, form
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
        fields = {k: v.replace("&amp;", "&") for k, v in fields.items()}
        tenant = authorize.split("/")[3]
        async with self.popup.post(f"{self.double.origin}/{tenant}/oauth2/v2.0/authorize/login",
                                   data={**fields, "oid": oid}, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
            callback = r.headers["Location"]
        response = await self.stack.browser.get(urljoin(self.stack.gateway_url, callback), allow_redirects=False)
        await response.read()
        return response


@pytest.fixture
async def teams_visit(database_url: str, signing_key_pem: bytes, tmp_path: Path) -> AsyncIterator[TeamsVisit]:
    """A gateway whose sandbox configuration makes Teams meetings through the double."""
    async with graph_double(tmp_path) as double:
        overrides = {"graph_url": double.origin, "entra_authority_host": double.origin, "idp_ca_file": double.ca_path,
                     "graph_budget": 3.0}
        async with running_stack(database_url, signing_key_pem, lambda gw, sb: overrides) as stack:
            double.entra.tenants[double.tenant().tenant_id].apps[double.tenant().client_id].redirect_uris.add(
                f"{stack.gateway_url}/teams/callback")
            app = stack.gateway_app
            async with app[DB].acquire() as conn:
                org_id = await add_organisation(conn, app[SEALER], NewOrganisation(
                    slug=ORG, name="Teams Health", idp_kind="entra", tenant_id=double.tenant().tenant_id,
                    client_id="portal-client", client_secret="portal-secret"), "test-operator")
                await conn.execute("UPDATE configurations SET meeting_provider = 'teams', organisation_id = $1 "
                                   "WHERE id = $2", org_id, stack.configuration_id)
                await teams.save_tenant(conn, app[SEALER], org_id, double.tenant(), "test-operator", None)
            ssl_context = ssl.create_default_context(cafile=str(double.ca_path))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context)) as popup:
                yield TeamsVisit(stack, double, org_id, popup)
