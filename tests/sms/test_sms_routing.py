"""An organisation's SMS set-up governs its texts: both consents first, only the kinds it chose, and from the
number it linked to the configuration."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from config_portal.organisations import NewOrganisation, add_organisation
from gateway.appkeys import DB, SEALER
from gateway.notify.routing import SmsRoute, sms_route
from tests.conftest import Stack, running_stack
from tests.notify.helpers import invite, launch_handle

from .conftest import ACS_NUMBER, Carrier, carrier_settings

LINKED = "+18335550142"  # a number the organisation bought and linked to the sandbox's FHIR base URL


@pytest.fixture
async def org_stack(database_url: str, signing_key_pem: bytes, carrier: Carrier) -> AsyncIterator[Stack]:
    """The gateway (SMS through the ACS double) and sandbox, the configuration belonging to an organisation."""
    async with running_stack(database_url, signing_key_pem,
                             lambda _gw, _sb: dict(carrier_settings("acs", carrier), phone_region="US")) as stack:
        async with stack.gateway_app[DB].acquire() as conn:
            org_id = await add_organisation(conn, stack.gateway_app[SEALER], NewOrganisation(
                slug="riverside", name="Riverside", idp_kind="oidc", issuer="https://idp.example/riverside",
                client_id="c", client_secret="s" * 20), "test-operator")
            await conn.execute("UPDATE configurations SET organisation_id = $1 WHERE id = $2", org_id, stack.configuration_id)
        carrier.acs.numbers.add(LINKED)
        yield stack


async def _set_up(stack: Stack, *, consents: bool, join_link: bool, linked: bool) -> None:
    async with stack.gateway_app[DB].acquire() as conn:
        org_id = await conn.fetchval("SELECT organisation_id FROM configurations WHERE id = $1", stack.configuration_id)
        await conn.execute("INSERT INTO sms_setups (organisation_id, terms_accepted_by, terms_accepted_at, consent_by, "
                           "consent_at, send_join_link) VALUES ($1, $2, now(), $2, now(), $3)",
                           org_id, "riverside:admin" if consents else None, join_link)
        if not consents:
            await conn.execute("UPDATE sms_setups SET terms_accepted_at = NULL, consent_at = NULL")
        if linked:
            number_id = await conn.fetchval("INSERT INTO sms_numbers (organisation_id, number) VALUES ($1, $2) "
                                            "RETURNING id", org_id, LINKED)
            await conn.execute("INSERT INTO sms_number_links (configuration_id, number_id) VALUES ($1, $2)",
                               stack.configuration_id, number_id)


async def test_no_text_goes_out_before_both_consents(org_stack: Stack, carrier: Carrier) -> None:
    handle = await launch_handle(org_stack)
    response = await invite(org_stack, handle, channel="sms", role="patient")
    answer = await response.json()
    assert (response.status, answer["reason"]) == (409, "sms_not_consented"), answer
    await _set_up(org_stack, consents=False, join_link=True, linked=False)
    response = await invite(org_stack, handle, channel="sms", role="patient")
    assert response.status == 409
    assert carrier.acs.sent == []


async def test_join_links_turned_off_are_not_texted(org_stack: Stack, carrier: Carrier) -> None:
    await _set_up(org_stack, consents=True, join_link=False, linked=False)
    handle = await launch_handle(org_stack)
    response = await invite(org_stack, handle, channel="sms", role="patient")
    answer = await response.json()
    assert (response.status, answer["reason"]) == (409, "sms_kind_off"), answer
    assert carrier.acs.sent == []
    async with org_stack.gateway_app[DB].acquire() as conn:
        assert await sms_route(conn, f"{org_stack.sandbox_url}/fhir", "reminder") == SmsRoute(True)


async def test_texts_go_from_the_number_linked_to_the_configuration(org_stack: Stack, carrier: Carrier) -> None:
    await _set_up(org_stack, consents=True, join_link=True, linked=True)
    handle = await launch_handle(org_stack)
    response = await invite(org_stack, handle, channel="sms", role="patient")
    assert response.status == 200, await response.text()
    assert [m.sender for m in carrier.acs.sent] == [LINKED]


async def test_an_operators_configuration_follows_the_gateway_settings(carrier: Carrier, database_url: str,
                                                                     signing_key_pem: bytes) -> None:
    async with running_stack(database_url, signing_key_pem,
                             lambda _gw, _sb: carrier_settings("acs", carrier)) as stack:
        handle = await launch_handle(stack)
        response = await invite(stack, handle, channel="sms", role="patient")
        assert response.status == 200, await response.text()
    assert [m.sender for m in carrier.acs.sent] == [ACS_NUMBER]
