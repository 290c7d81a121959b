"""The organisation's Microsoft Teams settings in the portal: checked live with the Graph and Entra double when
saved, the credential never shown again, an access policy gap explained to the admin, clinicians' links listed
and removed; all audited."""
from __future__ import annotations

import re
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import unused_port

from gateway import teams
from gateway.appkeys import DB, SEALER
from gateway.graph import load_certificate

from .conftest import ADMIN, ORG, Portal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from teams.graph_helpers import (CLIENT_ID, CLINICIAN_OID, OTHER_OID, SECRET, TENANT_ID,  # noqa: E402
                                 GraphStack, app_certificate_pem, graph_double)

GRAPH_PORT = unused_port()


@pytest.fixture
def portal_settings() -> dict[str, Any]:
    """Graph and Entra at the double (started by `double` on this port, with the portal's own test CA)."""
    origin = f"https://127.0.0.1:{GRAPH_PORT}"
    return {"graph_url": origin, "entra_authority_host": origin}


@pytest.fixture
async def double(portal: Portal, tmp_path: Path) -> AsyncIterator[GraphStack]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server-key.pem")
    async with graph_double(tmp_path, port=GRAPH_PORT, server_context=context) as running:
        yield running


async def _org_id(portal: Portal) -> int:
    rows = await portal.sql("SELECT id FROM organisations WHERE slug = $1", ORG)
    return int(rows[0]["id"])


async def _save(portal: Portal, **form: str) -> tuple[int, str]:
    async with portal.browser.post(f"{portal.gateway_url}/portal/{ORG}/teams", data=form, allow_redirects=False,
                                   headers={"Origin": portal.gateway_url}) as r:
        return r.status, r.headers.get("Location", "") + await r.text()


async def test_certificate_settings_are_checked_saved_sealed_and_audited(portal: Portal, double: GraphStack) -> None:
    double.entra.tenants[TENANT_ID].apps[CLIENT_ID].roles.add("OnlineMeetingArtifact.Read.All")
    assert (await portal.sign_in(ADMIN)).status == 303
    status, body = await _save(portal, tenant_id=TENANT_ID, client_id=CLIENT_ID, credential_kind="certificate",
                               certificate=app_certificate_pem())
    assert status == 303 and body.endswith("done=saved"), body
    page = await (await portal.get(f"/portal/{ORG}/teams?done=saved")).text()
    thumbprint = load_certificate(app_certificate_pem()).thumbprint
    assert thumbprint in page and "PRIVATE KEY" not in page and "checked with Microsoft and saved" in page
    rows = await portal.sql("SELECT credential FROM teams_tenants")
    assert b"PRIVATE KEY" not in bytes(rows[0]["credential"])
    audit = await portal.sql("SELECT actor, details::text FROM audit_log WHERE action = 'teams.settings'")
    assert len(audit) == 1 and "PRIVATE KEY" not in audit[0]["details"] and ADMIN.oid in audit[0]["actor"]
    assert double.entra.tokens_issued == 1


async def test_a_wrong_secret_is_refused_and_nothing_saved(portal: Portal, double: GraphStack) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    status, body = await _save(portal, tenant_id=TENANT_ID, client_id=CLIENT_ID, credential_kind="secret",
                               secret="not-the-secret")
    assert status == 422 and "invalid_client" in body, body
    assert not await portal.sql("SELECT 1 FROM teams_tenants")
    status, body = await _save(portal, tenant_id=TENANT_ID, client_id=CLIENT_ID, credential_kind="secret",
                               secret=SECRET)
    assert status == 303, body


async def test_malformed_ids_and_credentials_are_refused_without_calling_microsoft(portal: Portal,
                                                                                  double: GraphStack) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    assert (await _save(portal, tenant_id="contoso", client_id=CLIENT_ID, credential_kind="secret",
                        secret=SECRET))[0] == 400
    status, body = await _save(portal, tenant_id=TENANT_ID, client_id=CLIENT_ID, credential_kind="certificate",
                               certificate="-----BEGIN NOTHING-----")
    assert status == 400 and "private key" in body
    assert double.entra.tokens_issued == 0


async def test_a_linked_clinician_outside_the_access_policy_gets_the_admin_the_commands(portal: Portal,
                                                                                       double: GraphStack) -> None:
    async with portal.gateway_app[DB].acquire() as conn:
        await teams.save_link(conn, portal.gateway_app[SEALER], await _org_id(portal), "Practitioner/prac-9",
                              OTHER_OID, TENANT_ID)
    assert (await portal.sign_in(ADMIN)).status == 303
    status, body = await _save(portal, tenant_id=TENANT_ID, client_id=CLIENT_ID, credential_kind="secret",
                               secret=SECRET)
    assert status == 422, body
    assert "Grant-CsApplicationAccessPolicy" in body and OTHER_OID in body and "New-CsApplicationAccessPolicy" in body
    double.graph.grant_policy(TENANT_ID, CLIENT_ID, OTHER_OID)
    status, body = await _save(portal, tenant_id=TENANT_ID, client_id=CLIENT_ID, credential_kind="secret",
                               secret=SECRET)
    assert status == 303, re.findall(r'id="error"[^>]*>([^<]*)', body)


async def test_an_application_without_the_meetings_role_is_explained(portal: Portal, double: GraphStack) -> None:
    double.entra.tenants[TENANT_ID].apps[CLIENT_ID].roles.clear()
    assert (await portal.sign_in(ADMIN)).status == 303
    status, body = await _save(portal, tenant_id=TENANT_ID, client_id=CLIENT_ID, credential_kind="secret",
                               secret=SECRET)
    assert status == 422 and "OnlineMeetings.ReadWrite.All" in body and "admin consent" in body


async def test_an_application_without_the_attendance_reports_role_is_saved_with_a_warning(
        portal: Portal, double: GraphStack) -> None:
    roles = double.entra.tenants[TENANT_ID].apps[CLIENT_ID].roles
    assert "OnlineMeetingArtifact.Read.All" not in roles  # the meetings role only
    assert (await portal.sign_in(ADMIN)).status == 303
    status, body = await _save(portal, tenant_id=TENANT_ID, client_id=CLIENT_ID, credential_kind="secret",
                               secret=SECRET)
    assert status == 303 and body.endswith("done=saved-no-reports"), body
    assert await portal.sql("SELECT 1 FROM teams_tenants")  # saved: live presence works without the role
    page = await (await portal.get(f"/portal/{ORG}/teams?done=saved-no-reports")).text()
    warning = re.search(r'<p id="warning" class="error" role="alert">([^<]*)</p>', page)
    assert warning and "checked with Microsoft and saved" in page
    assert "OnlineMeetingArtifact.Read.All" in warning.group(1) and CLIENT_ID in warning.group(1)
    assert "admin consent" in warning.group(1) and "attendance report" in warning.group(1)
    # With the role consented, saving again is a plain success.
    roles.add("OnlineMeetingArtifact.Read.All")
    status, body = await _save(portal, tenant_id=TENANT_ID, client_id=CLIENT_ID, credential_kind="secret",
                               secret=SECRET)
    assert status == 303 and body.endswith("done=saved"), body
    assert 'id="warning"' not in await (await portal.get(f"/portal/{ORG}/teams?done=saved")).text()


async def test_links_are_listed_and_removed_with_an_audit_row(portal: Portal, double: GraphStack) -> None:
    async with portal.gateway_app[DB].acquire() as conn:
        link_id = await teams.save_link(conn, portal.gateway_app[SEALER], await _org_id(portal),
                                        "https://ehr.example/fhir/Practitioner/prac-1", CLINICIAN_OID, TENANT_ID)
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await (await portal.get(f"/portal/{ORG}/teams")).text()
    assert "https://ehr.example/fhir/Practitioner/prac-1" in page and CLINICIAN_OID in page
    async with portal.browser.post(f"{portal.gateway_url}/portal/{ORG}/teams/links/remove", data={"link": str(link_id)},
                                   allow_redirects=False, headers={"Origin": portal.gateway_url}) as r:
        assert r.status == 303 and r.headers["Location"].endswith("done=removed"), await r.text()
    assert not await portal.sql("SELECT 1 FROM teams_links")
    audit = await portal.sql("SELECT details::text FROM audit_log WHERE action = 'teams.unlink'")
    assert len(audit) == 1 and CLINICIAN_OID in audit[0]["details"]
    page = await (await portal.get(f"/portal/{ORG}/teams")).text()
    assert re.search(r'id="teams-no-links"', page)
