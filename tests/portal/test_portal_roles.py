"""How roles are read from an id_token's claims: subject, email (verified or not said) and group claim."""
from __future__ import annotations

from config_portal.access import auth_time_of, fresh_enough, groups_left_out, resolve_roles
from config_portal.store import Membership, Organisation

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
    from config_portal.routes import ACCESS

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
