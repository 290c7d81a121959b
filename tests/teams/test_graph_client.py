"""gateway.graph against the Graph and Entra double: tokens by certificate and secret, retries, refusals."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.errors import GraphPolicyDenied, GraphRefused, GraphThrottled, GraphUnavailable
from gateway.graph import GraphClient, SecretCredential, TeamsTenant, load_certificate

from .graph_helpers import CLINICIAN_OID, OTHER_OID, GraphStack, app_certificate_pem, graph_double

CREATE = f"/users/{CLINICIAN_OID}/onlineMeetings/createOrGet"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[GraphStack]:
    async with graph_double(tmp_path) as running:
        yield running


@pytest.fixture
async def client(stack: GraphStack) -> AsyncIterator[GraphClient]:
    async with aiohttp.ClientSession() as http:
        graph = GraphClient(http, graph_url=stack.origin, authority_host=stack.origin, ca_file=stack.ca_path,
                            budget=5.0)
        yield graph
        graph.close()


async def test_certificate_credential_gets_a_token_and_creates_a_meeting(stack: GraphStack,
                                                                         client: GraphClient) -> None:
    answer = await client.request(stack.tenant(), "POST", CREATE, json={"externalId": "visit-a"})
    assert answer.status == 201 and answer.json["externalId"] == "visit-a"
    again = await client.request(stack.tenant(), "POST", CREATE, json={"externalId": "visit-a"})
    assert again.status == 200 and again.json["id"] == answer.json["id"]
    assert stack.entra.tokens_issued == 1  # the one token cache served the second call


async def test_secret_credential_works_too(stack: GraphStack, client: GraphClient) -> None:
    answer = await client.request(stack.tenant(secret=True), "POST", CREATE, json={"externalId": "visit-b"})
    assert answer.status == 201


async def test_wrong_secret_is_refused_with_an_admin_message(stack: GraphStack, client: GraphClient) -> None:
    tenant = TeamsTenant(stack.tenant().tenant_id, stack.tenant().client_id, SecretCredential("wrong"))
    with pytest.raises(GraphRefused) as caught:
        await client.request(tenant, "POST", CREATE, json={"externalId": "visit-c"})
    assert caught.value.reason == "graph_credential_refused"
    assert "invalid_client" in caught.value.admin_message


async def test_unregistered_certificate_is_refused(stack: GraphStack, client: GraphClient) -> None:
    stack.entra.tenants[stack.tenant().tenant_id].apps[stack.tenant().client_id].certificates.clear()
    with pytest.raises(GraphRefused):
        await client.token(stack.tenant(), fresh=True)


async def test_user_outside_the_access_policy_gets_the_grant_command(stack: GraphStack, client: GraphClient) -> None:
    with pytest.raises(GraphPolicyDenied) as caught:
        await client.request(stack.tenant(), "POST", f"/users/{OTHER_OID}/onlineMeetings/createOrGet",
                             json={"externalId": "visit-d"})
    message = caught.value.admin_message
    assert "Grant-CsApplicationAccessPolicy" in message and OTHER_OID in message
    assert "New-CsApplicationAccessPolicy" in message and stack.tenant().client_id in message
    assert caught.value.status == 502 and "administrator" in caught.value.detail


async def test_throttling_is_retried_after_retry_after(stack: GraphStack, client: GraphClient) -> None:
    stack.graph.throttle_next, stack.graph.retry_after = 2, 0
    answer = await client.request(stack.tenant(), "POST", CREATE, json={"externalId": "visit-e"})
    assert answer.status == 201 and stack.graph.graph_calls == 3


async def test_throttling_past_the_deadline_is_graph_throttled(stack: GraphStack, client: GraphClient) -> None:
    stack.graph.throttle_next, stack.graph.retry_after = 100, 10
    loop = asyncio.get_running_loop()
    with pytest.raises(GraphThrottled):
        await client.request(stack.tenant(), "POST", CREATE, json={"externalId": "visit-f"},
                             deadline=loop.time() + 2)
    assert stack.graph.graph_calls == 1  # a Retry-After beyond the deadline is not waited for


async def test_server_error_storm_is_retried_then_unavailable(stack: GraphStack, client: GraphClient) -> None:
    stack.graph.fail_next = 3
    answer = await client.request(stack.tenant(), "POST", CREATE, json={"externalId": "visit-g"})
    assert answer.status == 201
    stack.graph.fail_next = 10_000
    loop = asyncio.get_running_loop()
    with pytest.raises(GraphUnavailable) as caught:
        await client.request(stack.tenant(), "POST", CREATE, json={"externalId": "visit-h"},
                             deadline=loop.time() + 0.5)
    assert caught.value.status == 503


async def test_missing_external_id_is_refused(stack: GraphStack, client: GraphClient) -> None:
    with pytest.raises(GraphRefused) as caught:
        await client.request(stack.tenant(), "POST", CREATE, json={"subject": "Video visit"})
    assert caught.value.upstream_status == 400


async def test_unreachable_graph_is_unavailable(stack: GraphStack) -> None:
    async with aiohttp.ClientSession() as http:
        graph = GraphClient(http, graph_url="https://127.0.0.1:9", authority_host=stack.origin,
                            ca_file=stack.ca_path, budget=0.5)
        with pytest.raises(GraphUnavailable):
            await graph.request(stack.tenant(), "GET", "/users/x/onlineMeetings")
        graph.close()


def test_a_pem_without_its_certificate_is_refused() -> None:
    key_only = app_certificate_pem().split("-----BEGIN CERTIFICATE-----")[0]
    with pytest.raises(ValueError, match="certificate"):
        load_certificate(key_only)
