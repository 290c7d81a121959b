"""The admin's pages of the portal: integration records by EHR (copy, print, JSON), the audit log (filters,
paging, CSV, scoped to the organisation, still append-only) and the members (grant, revoke, last admin)."""
from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import asyncpg
import pytest

from config_portal.records import BACKEND_SCOPES
from gateway.appkeys import DB, SEALER
from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved, append_audit
from gateway.configurations import PATIENT_SCOPES
from tests.conftest import reason_code

from .conftest import ADMIN, APPROVER, GENERIC_ORG, ORG, OUTSIDER, READER, Portal

SECRET = "a-client-secret-never-shown-" + "z" * 10


async def approved(portal: Portal, ehr: str, *, org: str = ORG, base: str = "https://ehr.example.org/fhir/R4",
                   client_auth: str = "private_key_jwt", secret: str | None = None,
                   writeback: str = "fhir-r4-put") -> int:
    """An approved configuration of the organisation, of this EHR (set directly until the portal adds them)."""
    async with portal.gateway_app[DB].acquire() as conn:
        config_id = await add_approved(conn, portal.gateway_app[SEALER], NewConfiguration(
            fhir_base_url=base, environment="test", client_id=f"client-{ehr}", client_auth=client_auth,
            client_secret=secret, scopes=DEFAULT_SCOPES, writeback_strategy=writeback), approved_by="test-operator")
        await conn.execute("UPDATE configurations SET ehr = $2, organisation_id = "
                           "(SELECT id FROM organisations WHERE slug = $3) WHERE id = $1", config_id, ehr, org)
    return config_id


async def org_id(portal: Portal, slug: str = ORG) -> int:
    """The id of an organisation."""
    return int((await portal.sql("SELECT id FROM organisations WHERE slug = $1", slug))[0]["id"])


def values(page: str) -> dict[str, str]:
    """The records' values on a records page, by their element id."""
    return {m.group(1): m.group(2) for m in re.finditer(r'<code class="value" id="([^"]+)"[^>]*>([^<]*)</code>', page)}


# --- integration records --------------------------------------------------------------------------------------


async def test_an_epic_configuration_has_the_four_records_with_their_values(portal: Portal) -> None:
    config_id = await approved(portal, "epic")
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await portal.get(f"/portal/{ORG}/records")
    page = await r.text()
    assert r.status == 200, page
    found = values(page)
    gw = portal.gateway_url
    c = f"c{config_id}"
    assert found[f"{c}-provider_launch-launch_url"] == f"{gw}/launch"
    assert found[f"{c}-patient_launch-launch_url"] == f"{gw}/launch/patient"
    assert found[f"{c}-direct_link-launch_url"] == f"{gw}/join"
    assert found[f"{c}-device_test-launch_url"] == f"{gw}/device-test"
    assert found[f"{c}-provider_launch-redirect_uri"] == f"{gw}/launch/callback"
    assert found[f"{c}-provider_launch-jwks_url"] == f"{gw}/.well-known/jwks.json"
    assert found[f"{c}-provider_launch-client_id"] == "client-epic"
    assert found[f"{c}-provider_launch-scopes"] == DEFAULT_SCOPES
    assert found[f"{c}-patient_launch-scopes"] == PATIENT_SCOPES
    assert found[f"{c}-provider_launch-backend_scopes"] == BACKEND_SCOPES
    assert "department" in found[f"{c}-provider_launch-context_parameters"]
    assert {"iss", "launch"} <= set(found[f"{c}-provider_launch-context_parameters"].replace(",", " ").split())


async def test_oracle_health_gets_the_smart_app_registration_fields(portal: Portal) -> None:
    config_id = await approved(portal, "oracle", writeback="none")
    assert (await portal.sign_in(APPROVER)).status == 303  # approvers read the records too
    page = await (await portal.get(f"/portal/{ORG}/records")).text()
    found = values(page)
    c = f"c{config_id}-smart_app_registration"
    assert found[f"{c}-smart_launch_uri"] == f"{portal.gateway_url}/launch"
    assert found[f"{c}-redirect_uri"] == f"{portal.gateway_url}/launch/callback"
    assert found[f"{c}-app_types"] == "User (provider), Patient"
    assert found[f"{c}-user_scopes"] == DEFAULT_SCOPES and found[f"{c}-patient_scopes"] == PATIENT_SCOPES
    assert f"{c}-backend_scopes" not in found  # no write-back, no system scopes
    assert "provider_launch" not in page


async def test_another_smart_ehr_gets_the_generic_registration_and_no_secret_is_shown(portal: Portal) -> None:
    config_id = await approved(portal, "smart", client_auth="client_secret_basic", secret=SECRET)
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await (await portal.get(f"/portal/{ORG}/records")).text()
    found = values(page)
    assert found[f"c{config_id}-smart_registration-launch_url"] == f"{portal.gateway_url}/launch"
    assert found[f"c{config_id}-smart_registration-client_authentication"] == "client_secret_basic"
    assert "the secret is not shown again" in page
    download = await (await portal.get(f"/portal/{ORG}/records.json")).text()
    printed = await (await portal.get(f"/portal/{ORG}/records/print")).text()
    for body in (page, download, printed):
        assert SECRET not in body


async def test_only_approved_configurations_of_ones_own_organisation_have_records(portal: Portal) -> None:
    mine = await approved(portal, "epic")
    theirs = await approved(portal, "epic", org=GENERIC_ORG, base="https://other.example.org/fhir/R4")
    pending = await approved(portal, "epic", base="https://pending.example.org/fhir/R4")
    await portal.sql("UPDATE configurations SET status = 'pending' WHERE id = $1", pending)
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await (await portal.get(f"/portal/{ORG}/records")).text()
    assert f'id="configuration-{mine}"' in page
    assert f'id="configuration-{theirs}"' not in page and f'id="configuration-{pending}"' not in page


async def test_each_value_has_a_labelled_copy_button_and_a_polite_status(portal: Portal) -> None:
    config_id = await approved(portal, "epic")
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await (await portal.get(f"/portal/{ORG}/records")).text()
    buttons = re.findall(r'<button type="button" class="copy[^"]*" data-copy-target="([^"]+)" hidden>Copy'
                         r'<span class="visually-hidden"> ([^<]+)</span>', page)
    assert len(buttons) == len(values(page)) > 10
    assert (f"c{config_id}-provider_launch-launch_url", "Launch URL, Provider launch") in buttons
    assert 'role="status" aria-live="polite"' in page
    assert '<script type="module" src="/static/portal/copy.js">' in page
    script = await portal.get("/static/portal/copy.js")
    assert script.status == 200 and "navigator.clipboard.writeText" in await script.text()


async def test_the_printable_page_has_every_record_and_no_navigation_or_buttons(portal: Portal) -> None:
    await approved(portal, "epic")
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await (await portal.get(f"/portal/{ORG}/records")).text()
    r = await portal.get(f"/portal/{ORG}/records/print")
    printed = await r.text()
    assert r.status == 200, printed
    assert values(printed) == values(page)
    assert "<nav" not in printed and "<button" not in printed and "copy.js" not in printed
    css = await (await portal.get("/static/portal/portal.css")).text()
    assert "@media print" in css


async def test_the_json_download_is_an_attachment_with_stable_keys(portal: Portal) -> None:
    config_id = await approved(portal, "epic")
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await portal.get(f"/portal/{ORG}/records.json")
    assert r.status == 200, await r.text()
    assert r.headers["Content-Disposition"].startswith("attachment;")
    doc = json.loads(await r.text())
    assert set(doc) == {"organisation", "gateway", "configurations"}
    [configuration] = doc["configurations"]
    assert configuration["id"] == config_id and configuration["ehr"] == "epic"
    assert list(configuration["records"]) == ["device_test", "direct_link", "patient_launch", "provider_launch"]
    provider = configuration["records"]["provider_launch"]
    assert {"launch_url", "context_parameters", "client_id", "redirect_uri", "jwks_url", "scopes",
            "backend_scopes"} <= set(provider)
    assert provider["launch_url"] == f"{portal.gateway_url}/launch"


# --- audit log ------------------------------------------------------------------------------------------------


async def audit_rows(portal: Portal, rows: list[tuple[str, str, str, dict[str, Any]]], *,
                     org: str = ORG) -> None:
    """Append (actor, action, subject, details) rows for an organisation."""
    oid = await org_id(portal, org)
    async with portal.gateway_app[DB].acquire() as conn:
        for actor, action, subject, details in rows:
            await append_audit(conn, actor, action, subject, details, organisation_id=oid)


def audit_ids(page: str) -> list[int]:
    """The audit rows on a page, in order."""
    return [int(i) for i in re.findall(r'<tr data-audit="(\d+)"', page)]


async def test_sign_ins_and_refusals_are_in_the_organisations_audit_log(portal: Portal) -> None:
    assert (await portal.sign_in(READER)).status == 303  # a sign-in, a refusal, and then the admin's
    portal.browser.cookie_jar.clear()  # another person, no single sign-on at the provider
    assert (await portal.sign_in(OUTSIDER)).status == 403
    portal.browser.cookie_jar.clear()
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await (await portal.get(f"/portal/{ORG}/audit")).text()
    assert page.count("<td>portal.sign_in</td>") == 2 and "<td>portal.sign_in_refused</td>" in page
    assert "no_role" in page


async def test_a_refused_sign_in_is_audited_with_its_reason(portal: Portal) -> None:
    started = await portal.start()
    callback = await portal.at_idp(started.headers["Location"], ADMIN)
    portal.browser.cookie_jar.clear(lambda c: c.key == "__Host-vg_portal_sign_in")  # another browser
    r = await portal.get(callback)
    assert r.status == 400 and reason_code(await r.text()) == "other_browser", await r.text()
    rows = await portal.sql("SELECT details, organisation_id FROM audit_log WHERE action = 'portal.sign_in_refused'")
    assert [json.loads(r["details"])["reason"] for r in rows] == ["other_browser"]
    assert rows[0]["organisation_id"] == await org_id(portal)


async def test_the_audit_log_shows_only_the_admins_organisation(portal: Portal) -> None:
    await audit_rows(portal, [("x", "configuration.add", "configuration:1", {"fhir_base_url": "https://mine"})])
    await audit_rows(portal, [("y", "configuration.add", "configuration:2", {"fhir_base_url": "https://theirs"})],
                     org=GENERIC_ORG)
    await portal.sql("INSERT INTO audit_log (actor, action, subject) VALUES ('op', 'configuration.add', 'old')")
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await (await portal.get(f"/portal/{ORG}/audit")).text()
    assert "https://mine" in page and "https://theirs" not in page and "<td>old</td>" not in page
    csv_text = await (await portal.get(f"/portal/{ORG}/audit.csv")).text()
    assert "https://mine" in csv_text and "https://theirs" not in csv_text


async def test_the_audit_log_filters_by_action_actor_configuration_and_date(portal: Portal) -> None:
    await audit_rows(portal, [("ana", "configuration.approve", "configuration:7", {}),
                              ("ana", "configuration.reject", "configuration:8", {"reason": "wrong URL"}),
                              ("ben", "configuration.approve", "configuration:8", {})])
    assert (await portal.sign_in(ADMIN)).status == 303
    ids = {r["subject"] + r["actor"]: r["id"] for r in await portal.sql("SELECT id, subject, actor FROM audit_log")}

    async def shown(query: str) -> list[int]:
        r = await portal.get(f"/portal/{ORG}/audit?{query}")
        assert r.status == 200, await r.text()
        return audit_ids(await r.text())

    assert await shown("action=configuration.approve") == [ids["configuration:8ben"], ids["configuration:7ana"]]
    assert await shown("actor=ana") == [ids["configuration:8ana"], ids["configuration:7ana"]]
    assert await shown("configuration=8") == [ids["configuration:8ben"], ids["configuration:8ana"]]
    assert await shown("from=2000-01-01&to=2000-01-02&actor=ana") == []
    today = (await portal.sql("SELECT (now() AT TIME ZONE 'UTC')::date AS d"))[0]["d"].isoformat()
    assert len(await shown(f"from={today}&to={today}&actor=ana")) == 2
    for bad in ("from=yesterday", "configuration=x", "size=100000", "action=DROP%20TABLE", "from=2026-02-30",
                "from=2026-02-02&to=2026-02-01"):
        r = await portal.get(f"/portal/{ORG}/audit?{bad}")
        assert r.status == 400 and reason_code(await r.text()) == "bad_audit_filter", (bad, await r.text())


async def test_the_audit_log_pages_by_id_newest_first(portal: Portal) -> None:
    await audit_rows(portal, [("op", "configuration.change", f"configuration:{n}", {}) for n in range(1, 8)])
    assert (await portal.sign_in(ADMIN)).status == 303
    first = await (await portal.get(f"/portal/{ORG}/audit?action=configuration.change&size=3")).text()
    ids = audit_ids(first)
    assert len(ids) == 3 and ids == sorted(ids, reverse=True)
    seen = list(ids)
    link = re.search(r'id="older" href="([^"]+)"', first)
    for _ in range(5):  # bounded
        if link is None:
            break
        page = await (await portal.get(link.group(1).replace("&amp;", "&"))).text()
        seen += audit_ids(page)
        link = re.search(r'id="older" href="([^"]+)"', page)
    assert len(seen) == 7 and seen == sorted(seen, reverse=True) and len(set(seen)) == 7


async def test_the_audit_log_shows_before_and_after_as_a_table(portal: Portal) -> None:
    await audit_rows(portal, [("op", "configuration.change", "configuration:3",
                               {"before": {"scopes": "launch openid"}, "after": {"scopes": "launch openid fhirUser"}})])
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await (await portal.get(f"/portal/{ORG}/audit?action=configuration.change")).text()
    assert re.search(r"<th scope=\"row\">scopes</th><td>launch openid</td><td>launch openid fhirUser</td>", page), page


async def test_the_csv_export_is_streamed_text_csv_with_formula_cells_neutralised(portal: Portal) -> None:
    await audit_rows(portal, [("=HYPERLINK(\"http://evil\")", "role.grant", "organisation:1",
                               {"after": {"value": "@SUM(1)"}}),
                              ("+cmd", "role.grant", "-2+3", {})])
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await portal.get(f"/portal/{ORG}/audit.csv?action=role.grant")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv"), await r.text()
    assert r.headers["Content-Disposition"].startswith("attachment;")
    rows = list(csv.reader(io.StringIO(await r.text())))
    assert rows[0] == ["id", "at", "actor", "action", "subject", "details"]
    cells = [cell for row in rows[1:] for cell in row]
    assert "'=HYPERLINK(\"http://evil\")" in cells and "'+cmd" in cells and "'-2+3" in cells
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)


async def test_the_audit_log_stays_append_only(portal: Portal) -> None:
    await audit_rows(portal, [("op", "role.grant", "organisation:1", {})])
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await portal.sql(statement)


# --- members --------------------------------------------------------------------------------------------------


async def post(portal: Portal, path: str, data: dict[str, str]) -> Any:
    """A form POST from the portal's own page."""
    r = await portal.browser.post(f"{portal.gateway_url}{path}", data=data, allow_redirects=False,
                                  headers={"Origin": portal.gateway_url})
    await r.read()
    return r


async def test_an_admin_grants_a_role_audited_with_before_and_after(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await post(portal, f"/portal/{ORG}/members/grant",
                   {"role": "approver", "matched_by": "email", "value": " New.Approver@Example.org "})
    assert r.status == 303 and r.headers["Location"].endswith("/members?done=granted"), await r.text()
    page = await (await portal.get(r.headers["Location"])).text()
    assert "new.approver@example.org" in page and "next sign-in" in page
    [row] = await portal.sql("SELECT actor, details, organisation_id FROM audit_log WHERE action = 'role.grant' "
                             "AND actor = $1", f"{ORG}:{ADMIN.oid}")
    assert row["organisation_id"] == await org_id(portal)
    assert json.loads(row["details"]) == {"before": None, "after": {"role": "approver", "matched_by": "email",
                                                                    "value": "new.approver@example.org"}}
    again = await post(portal, f"/portal/{ORG}/members/grant",
                       {"role": "approver", "matched_by": "email", "value": "new.approver@example.org"})
    assert again.headers["Location"].endswith("done=exists")


async def test_a_bad_grant_is_refused_with_a_message(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    for data in ({"role": "owner", "matched_by": "email", "value": "a@b.example"},
                 {"role": "admin", "matched_by": "email", "value": "not-an-address"},
                 {"role": "admin", "matched_by": "subject", "value": " "},
                 {"role": "admin", "matched_by": "group", "value": "x" * 400}, {}):
        r = await post(portal, f"/portal/{ORG}/members/grant", data)
        assert r.status == 400 and 'id="error"' in await r.text(), (data, await r.text())


async def test_a_revoked_role_is_gone_at_the_next_sign_in_and_audited(portal: Portal) -> None:
    [reader] = await portal.sql("SELECT id FROM memberships WHERE role = 'report_reader'")
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await post(portal, f"/portal/{ORG}/members/revoke", {"membership": str(reader["id"])})
    assert r.status == 303 and r.headers["Location"].endswith("done=revoked"), await r.text()
    [row] = await portal.sql("SELECT details FROM audit_log WHERE action = 'role.revoke'")
    assert json.loads(row["details"]) == {"before": {"role": "report_reader", "matched_by": "email",
                                                     "value": READER.email}, "after": None}
    again = await post(portal, f"/portal/{ORG}/members/revoke", {"membership": str(reader["id"])})
    assert again.headers["Location"].endswith("done=gone")
    portal.browser.cookie_jar.clear()
    assert (await portal.sign_in(READER)).status == 403


async def test_the_last_admin_grant_cannot_be_revoked(portal: Portal) -> None:
    admins = await portal.sql("SELECT id, matched_by FROM memberships WHERE role = 'admin' AND organisation_id = $1",
                              await org_id(portal))
    by = {r["matched_by"]: r["id"] for r in admins}
    assert (await portal.sign_in(ADMIN)).status == 303
    assert (await post(portal, f"/portal/{ORG}/members/revoke", {"membership": str(by["group"])})).status == 303
    r = await post(portal, f"/portal/{ORG}/members/revoke", {"membership": str(by["subject"])})
    text = await r.text()
    assert r.status == 409 and "last admin" in text, text
    assert len(await portal.sql("SELECT 1 FROM memberships WHERE role = 'admin' AND organisation_id = $1",
                                await org_id(portal))) == 1


async def test_an_admin_cannot_revoke_another_organisations_grant(portal: Portal) -> None:
    [theirs] = await portal.sql("SELECT m.id FROM memberships m JOIN organisations o ON o.id = m.organisation_id "
                                "WHERE o.slug = $1", GENERIC_ORG)
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await post(portal, f"/portal/{ORG}/members/revoke", {"membership": str(theirs["id"])})
    assert r.headers["Location"].endswith("done=gone")
    assert len(await portal.sql("SELECT 1 FROM memberships WHERE id = $1", theirs["id"])) == 1
    r = await post(portal, f"/portal/{GENERIC_ORG}/members/revoke", {"membership": str(theirs["id"])})
    assert r.status == 403


async def test_a_configurations_audit_rows_belong_to_its_organisation_without_being_told(portal: Portal) -> None:
    config_id = await approved(portal, "epic")
    async with portal.gateway_app[DB].acquire() as conn:
        await append_audit(conn, "someone", "configuration.retire", f"configuration:{config_id}", {"reason": "x"})
        await append_audit(conn, "someone", "configuration.retire", "configuration:99999", {})
    rows = await portal.sql("SELECT subject, organisation_id FROM audit_log WHERE action = 'configuration.retire' "
                            "ORDER BY id")
    assert [r["organisation_id"] for r in rows] == [await org_id(portal), None]


async def test_every_organisations_admins_see_the_gateways_signing_key_rotations(portal: Portal) -> None:
    # The gateway audited its signing key when it started (no organisation: it concerns every EHR build).
    [row] = await portal.sql("SELECT organisation_id FROM audit_log WHERE action = 'key.rotate'")
    assert row["organisation_id"] is None
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await (await portal.get(f"/portal/{ORG}/audit?action=key.rotate")).text()
    assert "key.rotate" in page and "signing_key" in page
    csv_text = await (await portal.get(f"/portal/{ORG}/audit.csv")).text()
    assert "key.rotate" in csv_text
