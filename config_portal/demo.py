"""The demo's organisation: the sandbox's "Sandbox Health" tenant as an Entra organisation of the portal, its
test users granted their roles, and the demo's sandbox configuration belonging to it (as an Epic one, so that
its integration records show). Used by `visitgate demo` only."""
from __future__ import annotations

import asyncpg

import sql
from gateway.configurations import append_audit
from gateway.graph import TeamsTenant
from gateway.security import Sealer

from . import store
from .idp import SECRET_CONTEXT
from .organisations import NewOrganisation, add_organisation, grant

Q = sql.queries("portal")
DEMO_SLUG = "sandbox-health"
DEMO_ACTOR = "visitgate demo"


async def ensure_demo_organisation(conn: asyncpg.Connection, sealer: Sealer, *, entra_host: str, tenant_id: str,
                                   client_id: str, client_secret: str, grants: list[tuple[str, str, str]],
                                   configuration_id: int | None) -> None:
    """Add (or, after a restart on other ports, re-point) the demo organisation, grant (role, matched_by, value)
    each, and give it the demo's configuration."""
    new = NewOrganisation(slug=DEMO_SLUG, name="Sandbox Health (demo)", idp_kind="entra", tenant_id=tenant_id,
                          entra_host=entra_host, client_id=client_id, client_secret=client_secret)
    found = await store.organisation_by_slug(conn, DEMO_SLUG)
    if found is None:
        org_id = await add_organisation(conn, sealer, new, DEMO_ACTOR)
    else:
        org_id = found.id
        # The provider's address follows the demo's port, and its secret is the one registered this time.
        if found.issuer != new.expected_issuer or sealer.unseal(found.client_secret, SECRET_CONTEXT) != client_secret:
            async with conn.transaction():
                await conn.execute(Q["update_organisation_sign_in"], org_id, new.expected_issuer, client_id,
                                   sealer.seal(client_secret, SECRET_CONTEXT))
                await append_audit(conn, DEMO_ACTOR, "organisation.sign_in_change", f"organisation:{org_id}",
                                   {"before": {"issuer": found.issuer}, "after": {"issuer": new.expected_issuer}},
                                   organisation_id=org_id)
    for role, matched_by, value in grants:
        await grant(conn, DEMO_SLUG, role, matched_by, value, DEMO_ACTOR)
    if configuration_id is not None:
        await conn.execute(Q["assign_configuration"], configuration_id, org_id, "epic")


async def ensure_demo_teams(conn: asyncpg.Connection, sealer: Sealer, configuration_id: int,
                            tenant: TeamsTenant) -> None:
    """`visitgate demo --teams`: the demo organisation's Teams settings point at the Graph double, and its
    configuration makes Teams meetings (audited, as an operator's change)."""
    from gateway import teams

    found = await store.organisation_by_slug(conn, DEMO_SLUG)
    assert found is not None
    before = await teams.tenant_settings(conn, found.id)
    await teams.save_tenant(conn, sealer, found.id, tenant, DEMO_ACTOR, before)
    async with conn.transaction():
        previous = await conn.fetchval("SELECT meeting_provider FROM configurations WHERE id = $1", configuration_id)
        if previous != "teams":
            await conn.execute("UPDATE configurations SET meeting_provider = 'teams' WHERE id = $1",
                               configuration_id)
            await append_audit(conn, DEMO_ACTOR, "configuration.meeting_provider", f"configuration:{configuration_id}",
                               {"before": previous, "after": "teams"}, organisation_id=found.id)
