"""How roles are read from an id_token's claims: subject, email (verified or not said) and group claim; and
who may read the error report and the usage report."""
from __future__ import annotations

import pytest

from config_portal.access import auth_time_of, fresh_enough, groups_left_out, resolve_roles
from config_portal.store import Membership, Organisation
from gateway.appkeys import DB, SEALER
from gateway.configurations import NewConfiguration, add_approved, organisation_id
from gateway.near_miss import NearMiss
from launch import store as launch_store
from tests.conftest import reason_code

from .conftest import ADMIN, APPROVER, EHR_CLIENT_ID, GENERIC_ADMIN, GENERIC_ORG, MEMBERS, ORG, READER, Ehr, Portal

ENTRA = Organisation(1, "org", "Org", "entra", "https://login.example/t/v2.0", "t", "client", b"", "groups")
OIDC = Organisation(2, "gen", "Gen", "oidc", "https://idp.example", None, "client", b"", "roles_groups")
GRANTS = [Membership("admin", "subject", "oid-1"), Membership("approver", "email", "ana@example.org"),
          Membership("report_reader", "group", "g-readers")]


def test_entra_members_are_matched_by_object_id_not_by_sub() -> None:
    assert resolve_roles(ENTRA, GRANTS, {"oid": "oid-1", "sub": "x"}) == ("admin",)
    assert resolve_roles(ENTRA, GRANTS, {"oid": "y", "sub": "oid-1"}) == ()


def test_the_teams_settings_and_links_are_for_admins_only() -> None:
    # The route matrix (test_portal_sessions.py) visits every portal route as each role; these are admin-only.
    from config_portal import teams
    from config_portal.access import ACCESS

    for handler in (teams.teams_page, teams.teams_save, teams.link_remove):
        assert ACCESS[handler] == ("admin",), handler


def test_an_email_is_matched_whatever_its_case_unless_the_provider_says_it_is_unverified() -> None:
    assert resolve_roles(OIDC, GRANTS, {"sub": "s", "email": "Ana@Example.org"}) == ("approver",)
    assert resolve_roles(OIDC, GRANTS, {"sub": "s", "email": "ana@example.org", "email_verified": False}) == ()


def test_groups_are_read_from_the_organisations_own_claim() -> None:
    assert resolve_roles(OIDC, GRANTS, {"sub": "s", "roles_groups": ["g-readers"]}) == ("report_reader",)
    assert resolve_roles(OIDC, GRANTS, {"sub": "s", "groups": ["g-readers"]}) == ()
    assert resolve_roles(OIDC, GRANTS, {"sub": "s", "roles_groups": "g-readers"}) == ()


def test_entras_group_overage_is_recognised() -> None:
    claims = {"oid": "o", "_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {}}}
    assert groups_left_out(ENTRA, claims) and resolve_roles(ENTRA, GRANTS, claims) == ()
    assert not groups_left_out(ENTRA, {"oid": "o", "groups": []})


def test_a_fresh_sign_in_needs_an_auth_time_within_max_age() -> None:
    now = 1_800_000_000.0
    assert fresh_enough(auth_time_of({"auth_time": int(now) - 200}), 300, now)
    assert not fresh_enough(auth_time_of({"auth_time": int(now) - 600}), 300, now)
    assert not fresh_enough(auth_time_of({}), 300, now)
    assert not fresh_enough(auth_time_of({"auth_time": "1800000000"}), 300, now)
    assert not fresh_enough(auth_time_of({"auth_time": True}), 300, now)


# --- the error report (issue 16 line 3): admins of that organisation only ---------------------------------


async def test_the_error_report_is_for_the_organisations_admins_only(portal: Portal, ehr: Ehr) -> None:
    async with portal.gateway_app[DB].acquire() as conn:
        config_id = await add_approved(conn, portal.gateway_app[SEALER], NewConfiguration(
            fhir_base_url=ehr.fhir_base, environment="test", client_id=EHR_CLIENT_ID, client_auth="private_key_jwt"),
            "test-operator", organisation_id=await organisation_id(conn, ORG))
        await launch_store.count_launch_refusal(conn, config_id, "token_error", "UTC")
        await launch_store.note_near_miss(conn, NearMiss(config_id, "suffix", f"{ehr.fhir_base}/R4"), "UTC")
    url = f"/portal/{ORG}/errors"
    r = await portal.get(url)
    assert r.status == 401, await r.text()
    for who in (APPROVER, READER):
        portal.browser.cookie_jar.clear()
        assert (await portal.sign_in(who)).status == 303
        r = await portal.get(url)
        assert r.status == 403 and reason_code(await r.text()) == "role_required", await r.text()
        assert ehr.fhir_base not in await r.text()
    portal.browser.cookie_jar.clear()
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await portal.get(url)
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store", await r.text()
    for hostile in ("9" * 5000, "-7", "\u0667", "7.0", "", "365"):  # any other period is the default one
        odd = await portal.get(url, params={"days": hostile})
        assert odd.status == 200 and 'aria-current="page">Last 30 days' in await odd.text(), await odd.text()
    assert 'data-reason="token_error" data-count="1"' in await r.text() and f"{ehr.fhir_base}/R4" in await r.text()
    # An admin of another organisation: refused here, and their own report holds nothing of this one's.
    portal.browser.cookie_jar.clear()
    assert (await portal.sign_in(GENERIC_ADMIN, GENERIC_ORG)).status == 303
    r = await portal.get(url)
    assert r.status == 403, await r.text()
    own = await portal.get(f"/portal/{GENERIC_ORG}/errors")
    assert own.status == 200, await own.text()
    assert ehr.fhir_base not in await own.text() and 'id="no-launch-failures"' in await own.text()
    assert 'id="no-near-misses"' in await own.text() and 'id="no-writeback-failures"' in await own.text()


# --- the usage report: admins and report readers of that organisation only (issue 16 line 2) -----------------

REPORT_PATHS = (f"/portal/{ORG}/reports/usage", f"/portal/{ORG}/reports/usage.csv?period=90")


@pytest.mark.parametrize("who", ["admin", "report_reader"])
async def test_the_usage_report_is_open_to_its_organisations_admins_and_report_readers(portal: Portal,
                                                                                       who: str) -> None:
    assert (await portal.sign_in(MEMBERS[who])).status == 303
    for path in REPORT_PATHS:
        r = await portal.get(path)
        assert r.status == 200, await r.text()
    home = await (await portal.get(f"/portal/{ORG}")).text()
    assert f'href="/portal/{ORG}/reports/usage"' in home  # in the navigation


async def test_the_usage_report_is_refused_to_an_approver(portal: Portal) -> None:
    assert (await portal.sign_in(APPROVER)).status == 303
    for path in REPORT_PATHS:
        r = await portal.get(path)
        assert r.status == 403 and reason_code(await r.text()) == "role_required", await r.text()
    home = await (await portal.get(f"/portal/{ORG}")).text()
    assert "/reports/usage" not in home


async def test_the_usage_report_is_refused_to_another_organisations_admin_and_to_nobody(portal: Portal) -> None:
    for path in REPORT_PATHS:
        r = await portal.get(path)
        assert r.status == 401, await r.text()
    assert (await portal.sign_in(GENERIC_ADMIN, org=GENERIC_ORG)).status == 303
    for path in REPORT_PATHS:
        r = await portal.get(path)
        assert r.status == 403 and reason_code(await r.text()) == "other_organisation", await r.text()
    r = await portal.get(f"/portal/{GENERIC_ORG}/reports/usage")
    assert r.status == 200, await r.text()  # their own organisation's
