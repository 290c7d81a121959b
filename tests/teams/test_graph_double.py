"""The Graph and Entra double refuses what Graph and Entra refuse, and its Teams lobby can be driven."""
from __future__ import annotations

import base64
import hashlib
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.graph import GraphClient

from .graph_helpers import CLIENT_ID, CLINICIAN_OID, OTHER_OID, SECRET, TENANT_ID, GraphStack, graph_double

REDIRECT = "http://127.0.0.1:9/teams/callback"


@pytest.fixture
async def double(tmp_path: Path) -> AsyncIterator[GraphStack]:
    async with graph_double(tmp_path, redirect_uris=(REDIRECT,)) as running:
        yield running


@pytest.fixture
async def http(double: GraphStack) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cafile=str(double.ca_path))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


async def _token(double: GraphStack, http: aiohttp.ClientSession) -> str:
    async with http.post(f"{double.origin}/{TENANT_ID}/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET,
            "scope": "https://graph.microsoft.com/.default"}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["access_token"])


async def _create(double: GraphStack, http: aiohttp.ClientSession, body: Any, *, user: str = CLINICIAN_OID,
                  token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(f"{double.origin}/v1.0/users/{user}/onlineMeetings/createOrGet", json=body,
                         headers=headers) as r:
        return r.status, await r.json()


async def test_create_or_get_is_201_then_200_per_organizer_and_external_id(double: GraphStack,
                                                                          http: aiohttp.ClientSession) -> None:
    token = await _token(double, http)
    first = await _create(double, http, {"externalId": "v1"}, token=token)
    again = await _create(double, http, {"externalId": "v1"}, token=token)
    other = await _create(double, http, {"externalId": "v2"}, token=token)
    assert first[0] == 201 and again[0] == 200 and other[0] == 201
    assert first[1]["id"] == again[1]["id"] != other[1]["id"]


@pytest.mark.parametrize("body, words", [({}, "ExternalId is required"), ([], "onlineMeeting object"),
                                         ({"externalId": "v", "patientName": "x"}, "Invalid property"),
                                         ({"externalId": "v", "lobbyBypassSettings": {"scope": "anyone"}},
                                          "lobbyBypassSettings"),
                                         ({"externalId": "v", "startDateTime": "tomorrow"}, "startDateTime")])
async def test_bad_bodies_are_400(double: GraphStack, http: aiohttp.ClientSession, body: Any, words: str) -> None:
    status, doc = await _create(double, http, body, token=await _token(double, http))
    assert status == 400 and words in doc["error"]["message"]


async def test_no_token_is_401_and_no_role_or_policy_is_403_and_a_stranger_404(double: GraphStack,
                                                                             http: aiohttp.ClientSession) -> None:
    assert (await _create(double, http, {"externalId": "v"}))[0] == 401
    assert (await _create(double, http, {"externalId": "v"}, token="x.y.z"))[0] == 401
    token = await _token(double, http)
    status, doc = await _create(double, http, {"externalId": "v"}, user=OTHER_OID, token=token)
    assert status == 403 and "application access policy" in doc["error"]["message"]
    assert (await _create(double, http, {"externalId": "v"}, user="00000000-0000-0000-0000-000000000000",
                          token=token))[0] == 404
    double.entra.tenants[TENANT_ID].apps[CLIENT_ID].roles.clear()
    status, doc = await _create(double, http, {"externalId": "v"}, token=await _token(double, http))
    assert status == 403 and "role" in doc["error"]["message"]


async def test_throttling_carries_retry_after(double: GraphStack, http: aiohttp.ClientSession) -> None:
    token = await _token(double, http)
    double.graph.throttle_rate, double.graph.retry_after = 0.5, 7
    statuses = []
    for n in range(4):
        async with http.post(f"{double.origin}/v1.0/users/{CLINICIAN_OID}/onlineMeetings/createOrGet",
                             json={"externalId": f"t{n}"}, headers={"Authorization": f"Bearer {token}"}) as r:
            statuses.append(r.status)
            if r.status == 429:
                assert r.headers["Retry-After"] == "7"
    assert statuses.count(429) == 2


async def test_client_credentials_refuse_a_wrong_secret_and_scope(double: GraphStack,
                                                                  http: aiohttp.ClientSession) -> None:
    url = f"{double.origin}/{TENANT_ID}/oauth2/v2.0/token"
    async with http.post(url, data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                    "client_secret": "nope", "scope": "https://graph.microsoft.com/.default"}) as r:
        assert r.status == 401 and (await r.json())["error"] == "invalid_client"
    async with http.post(url, data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                    "client_secret": SECRET, "scope": "User.Read"}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_scope"


async def _authorize(double: GraphStack, http: aiohttp.ClientSession, challenge: str,
                     redirect: str = REDIRECT) -> aiohttp.ClientResponse:
    response = await http.get(f"{double.origin}/{TENANT_ID}/oauth2/v2.0/authorize", params={
        "client_id": CLIENT_ID, "redirect_uri": redirect, "response_type": "code", "state": "s1",
        "code_challenge": challenge, "code_challenge_method": "S256", "nonce": "n1"})
    await response.read()
    return response


async def test_the_sign_in_page_refuses_framing_and_unregistered_redirects(double: GraphStack,
                                                                         http: aiohttp.ClientSession) -> None:
    ok = await _authorize(double, http, "a" * 43)
    assert ok.status == 200 and ok.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in ok.headers["Content-Security-Policy"]
    bad = await _authorize(double, http, "a" * 43, redirect="https://evil.example/cb")
    assert bad.status == 400 and "AADSTS50011" in await bad.text()
    assert (await _authorize(double, http, "short")).status == 400


async def test_the_code_needs_the_pkce_verifier_and_the_id_token_names_oid_and_tid(
        double: GraphStack, http: aiohttp.ClientSession) -> None:
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    page = await (await _authorize(double, http, challenge)).text()
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page))
    async with http.post(f"{double.origin}/{TENANT_ID}/oauth2/v2.0/authorize/login",
                         data={**fields, "oid": CLINICIAN_OID}, allow_redirects=False) as r:
        code = re.search(r"code=([^&]+)", r.headers["Location"]).group(1)  # type: ignore[union-attr]
    form = {"grant_type": "authorization_code", "client_id": CLIENT_ID, "client_secret": SECRET, "code": code,
            "redirect_uri": REDIRECT}
    async with http.post(f"{double.origin}/{TENANT_ID}/oauth2/v2.0/token", data={**form, "code_verifier": "w" * 50}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
    # The code was spent by the failed try, as Entra spends it: a fresh sign-in with the right verifier works.
    page = await (await _authorize(double, http, challenge)).text()
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page))
    async with http.post(f"{double.origin}/{TENANT_ID}/oauth2/v2.0/authorize/login",
                         data={**fields, "oid": CLINICIAN_OID}, allow_redirects=False) as r:
        code = re.search(r"code=([^&]+)", r.headers["Location"]).group(1)  # type: ignore[union-attr]
    async with http.post(f"{double.origin}/{TENANT_ID}/oauth2/v2.0/token",
                         data={**form, "code": code, "code_verifier": verifier}) as r:
        doc = await r.json()
        assert r.status == 200, doc
    import jwt
    claims = jwt.decode(doc["id_token"], options={"verify_signature": False})
    assert claims["oid"] == CLINICIAN_OID and claims["tid"] == TENANT_ID and claims["nonce"] == "n1"


async def test_the_teams_lobby_holds_guests_until_admitted_and_tells_the_roster_hook(
        double: GraphStack, http: aiohttp.ClientSession) -> None:
    async with aiohttp.ClientSession() as plain:
        graph = GraphClient(plain, graph_url=double.origin, authority_host=double.origin, ca_file=double.ca_path)
        answer = await graph.request(double.tenant(), "POST", f"/users/{CLINICIAN_OID}/onlineMeetings/createOrGet",
                                     json={"externalId": "lobby", "lobbyBypassSettings": {"scope": "organizer"}})
        graph.close()
    seen: list[list[tuple[str, str]]] = []

    async def on_roster(meeting: Any, roster: list[Any]) -> None:
        assert meeting.id == answer.json["id"]
        seen.append([(p.role, p.state) for p in roster])

    from sandbox.appkeys import ROSTER_LISTENERS
    double.app[ROSTER_LISTENERS].append(on_roster)
    join = answer.json["joinWebUrl"]
    async with http.post(join + "/join", data={"name": "Guest"}, allow_redirects=False) as r:
        guest_page = r.headers["Location"]
    assert "lobby" in await (await http.get(double.origin + guest_page)).text()
    async with http.post(join + "/join", data={"organizer": "1"}, allow_redirects=False) as r:
        organizer_page = double.origin + r.headers["Location"]
    page = await (await http.get(organizer_page)).text()
    who = re.search(r'name="who" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    async with http.post(organizer_page + "/admit", data={"who": who}) as r:
        assert r.status == 200
    assert "inMeeting" in await (await http.get(double.origin + guest_page)).text()
    async with http.post(double.origin + guest_page + "/leave") as r:
        assert r.status == 200
    assert seen == [[("guest", "lobby")], [("guest", "lobby"), ("organizer", "inMeeting")],
                    [("guest", "inMeeting"), ("organizer", "inMeeting")],
                    [("guest", "left"), ("organizer", "inMeeting")]]
