"""The portal's SMS set-up: consents, getting a number from ACS (search and purchase, long-running operations
followed by the worker), linking it to FHIR base URLs, messages chosen, releasing it; every step audited."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.appkeys import DB
from sandbox.carriers import AcsDouble

from .conftest import ADMIN, ORG, READER, Portal
from .sms_helpers import acs, acs_settings, lro_delay, operations, post_form, until_finished  # noqa: F401
from .test_portal_admin import approved


@pytest.fixture
def portal_settings(acs: tuple[AcsDouble, str]) -> dict[str, Any]:  # noqa: F811
    """The gateway sends SMS and buys numbers through the ACS double."""
    return acs_settings(acs[1])


async def _actions(portal: Portal) -> list[str]:
    rows = await portal.sql("SELECT action FROM audit_log WHERE action LIKE 'sms.%' ORDER BY id")
    return [r["action"] for r in rows]


async def test_a_number_is_bought_only_after_both_consents(portal: Portal, acs: tuple[AcsDouble, str]) -> None:  # noqa: F811
    assert (await portal.sign_in(ADMIN)).status == 303
    page = await portal.get(f"/portal/{ORG}/sms")
    assert page.status == 200, await page.text()
    assert 'id="consent-first"' in await page.text()
    status, body = await post_form(portal, f"/portal/{ORG}/sms/numbers", {"country": "US", "number_type": "tollFree"})
    assert status == 409 and "consent" in body
    status, _ = await post_form(portal, f"/portal/{ORG}/sms/consents", {"terms": "on"})
    assert status == 303
    status, _ = await post_form(portal, f"/portal/{ORG}/sms/numbers", {"country": "US", "number_type": "tollFree"})
    assert status == 409
    assert acs[0].operations == {}


async def test_getting_a_number_searches_then_purchases_and_each_step_is_audited(
        portal: Portal, acs: tuple[AcsDouble, str]) -> None:  # noqa: F811
    double = acs[0]
    assert (await portal.sign_in(ADMIN)).status == 303
    assert (await post_form(portal, f"/portal/{ORG}/sms/consents", {"terms": "on", "consent": "on"}))[0] == 303
    for form in ({"country": "FR", "number_type": "tollFree"}, {"country": "US", "number_type": "vanity"}):
        assert (await post_form(portal, f"/portal/{ORG}/sms/numbers", form))[0] == 400
    status, _ = await post_form(portal, f"/portal/{ORG}/sms/numbers", {"country": "US", "number_type": "tollFree"})
    assert status == 303
    done = await until_finished(portal)
    assert done["step"] == "succeeded", done
    number = done["number"]
    assert number in double.numbers  # the double holds it as bought
    assert [op.kind for op in double.operations.values()] == ["search", "purchase"]
    page = await (await portal.get(f"/portal/{ORG}/sms")).text()
    assert f'data-number="{number}"' in page
    assert await _actions(portal) == ["sms.consents", "sms.number_requested", "sms.number_search_started",
                                      "sms.number_found", "sms.number_purchased"]


async def test_one_number_serves_several_fhir_base_urls_and_is_released(
        portal: Portal, acs: tuple[AcsDouble, str]) -> None:  # noqa: F811
    double = acs[0]
    first = await approved(portal, "epic", base="https://ehr.example.org/fhir/R4")
    second = await approved(portal, "oracle", base="https://ehr.example.org/oracle/r4")
    assert (await portal.sign_in(ADMIN)).status == 303
    assert (await post_form(portal, f"/portal/{ORG}/sms/consents", {"terms": "on", "consent": "on"}))[0] == 303
    await post_form(portal, f"/portal/{ORG}/sms/numbers", {"country": "US", "number_type": "geographic"})
    number = (await until_finished(portal))["number"]
    [row] = await portal.sql("SELECT id FROM sms_numbers WHERE number = $1", number)
    path = f"/portal/{ORG}/sms/numbers/{row['id']}"

    status, _ = await post_form(portal, f"{path}/links", [("configuration", str(first)),
                                                          ("configuration", str(second))])
    assert status == 303
    links = await portal.sql("SELECT configuration_id FROM sms_number_links WHERE number_id = $1 ORDER BY 1", row["id"])
    assert [r["configuration_id"] for r in links] == sorted([first, second])
    # Another organisation's configuration (or none at all) cannot be linked.
    assert (await post_form(portal, f"{path}/links", [("configuration", "999999")]))[0] == 404

    status, _ = await post_form(portal, f"{path}/links", [("configuration", str(second))])
    assert status == 303
    links = await portal.sql("SELECT configuration_id FROM sms_number_links WHERE number_id = $1", row["id"])
    assert [r["configuration_id"] for r in links] == [second]

    status, _ = await post_form(portal, f"{path}/release", {})
    assert status == 303
    done = await until_finished(portal)
    assert (done["kind"], done["step"]) == ("release", "succeeded")
    assert number not in double.numbers
    assert await portal.sql("SELECT 1 FROM sms_number_links") == []
    [state] = await portal.sql("SELECT state FROM sms_numbers WHERE id = $1", row["id"])
    assert state["state"] == "released"
    assert (await post_form(portal, f"{path}/release", {}))[0] == 404  # gone
    actions = await _actions(portal)
    assert actions[-5:] == ["sms.number_links", "sms.number_links", "sms.number_release_requested",
                            "sms.number_release_started", "sms.number_released"]


async def test_which_messages_go_out_is_saved_and_audited(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    status, _ = await post_form(portal, f"/portal/{ORG}/sms/messages", {"send_reminder": "on"})
    assert status == 303
    [row] = await portal.sql("SELECT send_confirmation, send_reminder, send_join_link FROM sms_setups")
    assert (row["send_confirmation"], row["send_reminder"], row["send_join_link"]) == (False, True, False)
    [audit] = await portal.sql("SELECT details FROM audit_log WHERE action = 'sms.messages'")
    assert '"send_reminder": true' in audit["details"]


async def test_a_failed_operation_says_so(portal: Portal, acs: tuple[AcsDouble, str]) -> None:  # noqa: F811
    acs[0].fail_operations = True
    assert (await portal.sign_in(ADMIN)).status == 303
    await post_form(portal, f"/portal/{ORG}/sms/consents", {"terms": "on", "consent": "on"})
    await post_form(portal, f"/portal/{ORG}/sms/numbers", {"country": "US", "number_type": "tollFree"})
    done = await until_finished(portal)
    assert done["step"] == "failed" and "failed" in done["error"]
    assert await portal.sql("SELECT 1 FROM sms_numbers") == []
    assert (await _actions(portal))[-1] == "sms.operation_failed"


async def test_the_sms_set_up_is_for_admins_only(portal: Portal) -> None:
    assert (await portal.sign_in(READER)).status == 303
    assert (await portal.get(f"/portal/{ORG}/sms")).status == 403
    assert (await post_form(portal, f"/portal/{ORG}/sms/consents", {"terms": "on", "consent": "on"}))[0] == 403
    assert await portal.sql("SELECT 1 FROM sms_setups") == []
