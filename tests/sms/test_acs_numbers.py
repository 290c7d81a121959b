"""The ACS phone numbers client against the double, which refuses what ACS refuses."""
from __future__ import annotations

import base64

import aiohttp
import pytest

from gateway.notify.acs import NUMBERS_API_VERSION, AcsClient
from gateway.notify.errors import NotifyError

from .conftest import ACS_KEY, Carrier


def _client(http: aiohttp.ClientSession, carrier: Carrier, key: str = ACS_KEY) -> AcsClient:
    return AcsClient(http, f"{carrier.url}/acs", key)


async def test_search_purchase_and_release_run_as_operations(carrier: Carrier, http: aiohttp.ClientSession) -> None:
    client = _client(http, carrier)
    location = await client.start_search("US", "tollFree")
    done = await client.operation(location)
    assert done.status == "succeeded" and done.resource_location
    search_id, number = await client.search_result(done.resource_location)
    assert (await client.operation(await client.start_purchase(search_id))).status == "succeeded"
    assert number in carrier.acs.numbers
    with pytest.raises(NotifyError) as twice:
        await client.start_purchase(search_id)
    assert twice.value.reason == "acs_failed"  # 409: a search is bought once
    assert (await client.operation(await client.start_release(number))).status == "succeeded"
    assert number not in carrier.acs.numbers
    with pytest.raises(NotifyError):
        await client.start_release(number)  # 404: no longer the resource's


async def test_the_numbers_api_wants_signed_requests(carrier: Carrier, http: aiohttp.ClientSession) -> None:
    wrong = base64.b64encode(b"w" * 64).decode()
    with pytest.raises(NotifyError) as refused:
        await _client(http, carrier, wrong).start_search("US", "tollFree")
    assert refused.value.reason == "acs_unauthorized"
    url = f"{carrier.url}/acs/availablePhoneNumbers/countries/US/:search?api-version={NUMBERS_API_VERSION}"
    async with http.post(url, json={"phoneNumberType": "tollFree"}) as r:
        assert r.status == 401


async def test_the_double_refuses_a_search_the_service_would_refuse(carrier: Carrier,
                                                                    http: aiohttp.ClientSession) -> None:
    client = _client(http, carrier)
    for country, kind in (("FR", "tollFree"), ("US", "vanity")):
        with pytest.raises(NotifyError) as refused:
            await client.start_search(country, kind)
        assert refused.value.reason == "acs_failed"
    answer = await client.request("POST", client.url("/availablePhoneNumbers/countries/US/:search",
                                                     NUMBERS_API_VERSION), {"phoneNumberType": "tollFree"})
    assert answer.status == 400  # no assignmentType, no capabilities
    answer = await client.request("GET", client.url("/phoneNumbers/operations/nope", NUMBERS_API_VERSION))
    assert answer.status == 404
    answer = await client.request("GET", client.url("/phoneNumbers/operations/nope", "2021-03-07"))
    assert answer.status == 404


async def test_a_location_on_another_host_is_not_followed(carrier: Carrier, http: aiohttp.ClientSession) -> None:
    client = _client(http, carrier)
    with pytest.raises(NotifyError) as refused:
        await client.operation("https://elsewhere.example/phoneNumbers/operations/x?api-version=2022-12-01")
    assert refused.value.reason == "acs_bad_answer"
    assert carrier.acs.calls == []
