"""gateway.graph against the Graph and Entra double: tokens by certificate and secret, retries, refusals."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.errors import GraphPolicyDenied, GraphRefused, GraphThrottled, GraphUnavailable
from gateway.graph import CHANGE_TRACKING_APP, GraphClient, SecretCredential, TeamsTenant, load_certificate

from .graph_helpers import (CLIENT_ID, CLINICIAN_OID, OTHER_OID, TENANT_ID, GraphStack, app_certificate_pem,
                            graph_double)

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


# ----- Entra's signing keys and the validationTokens of rich notifications --------------------------------

def _validation_token(stack: GraphStack, **claims: object) -> str:
    """A validationToken as Graph's change tracking sends them, signed by the double's Entra (claims changed
    or, as None, removed)."""
    now = int(time.time())
    body: dict[str, object] = {"iss": f"https://sts.windows.net/{TENANT_ID}/", "aud": CLIENT_ID, "tid": TENANT_ID,
                               "azp": CHANGE_TRACKING_APP, "appid": CHANGE_TRACKING_APP, "iat": now, "nbf": now,
                               "exp": now + 3600}
    body.update(claims)
    return stack.entra.sign({k: v for k, v in body.items() if v is not None})


async def test_validation_tokens_are_checked_against_entras_keys(stack: GraphStack, client: GraphClient) -> None:
    tenant, now = stack.tenant(), time.time()
    exp, ours = await client.validation_token(tenant, _validation_token(stack), at=now)
    assert ours and exp > now
    assert (await client.validation_token(tenant, _validation_token(stack, azp=None), at=now))[1]  # a v1 token
    other = _validation_token(stack, aud="0f0e0d0c-0b0a-4000-8000-000000000000")
    assert (await client.validation_token(tenant, other, at=now))[1] is False  # authentic, another application's
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(jwt.decode(_validation_token(stack), options={"verify_signature": False}), forger,
                        algorithm="RS256", headers={"kid": stack.entra.kid})
    cases = {"graph_token_signature": forged,
             "graph_token_party": _validation_token(stack, azp="11111111-2222-4333-8444-555555555555"),
             "graph_token_issuer": _validation_token(stack, iss=f"{stack.origin}/{TENANT_ID}/v2.0"),
             "graph_token_expired": _validation_token(stack, exp=int(now) - 3600),
             "graph_token_malformed": "not-a-jwt"}
    for reason, token in cases.items():
        with pytest.raises(GraphRefused) as caught:
            await client.validation_token(tenant, token, at=now)
        assert caught.value.reason == reason
    # Expiry is judged at the notification's arrival: a token that was valid then still is.
    late = _validation_token(stack, iat=int(now) - 3000, nbf=int(now) - 3000, exp=int(now) - 600)
    assert (await client.validation_token(tenant, late, at=now - 900))[1]
    assert stack.entra.keys_served == 1  # the keys were read once for all of these


async def test_signing_keys_are_read_again_for_an_unknown_kid_at_most_once_a_while(stack: GraphStack,
                                                                                  client: GraphClient) -> None:
    tenant = stack.tenant()
    await client.validation_token(tenant, _validation_token(stack), at=time.time())
    # Entra rolls its key over: the new kid is not among the keys read.
    stack.entra.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stack.entra.kid = "rolled-over"
    with pytest.raises(GraphRefused) as caught:  # the keys were read just now: not again for this one
        await client.validation_token(tenant, _validation_token(stack), at=time.time())
    assert caught.value.reason == "graph_token_unknown_key" and stack.entra.keys_served == 1
    client.keys_refetch_after = 0.0  # as after a while
    assert (await client.validation_token(tenant, _validation_token(stack), at=time.time()))[1]
    assert stack.entra.keys_served == 2
    assert (await client.validation_token(tenant, _validation_token(stack), at=time.time()))[1]
    assert stack.entra.keys_served == 2  # a known kid: the cached keys
    assert set(await client.signing_keys(TENANT_ID)) == {"rolled-over"}
