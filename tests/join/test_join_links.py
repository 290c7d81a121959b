"""Signed join links, as sent to patients before short codes (they keep working until they expire): one
button that consumes nothing, binding to the first browser session, revocation, and every kind of forged,
foreign, stale or replayed link refused with a clear page."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway import Settings, joinlinks
from gateway.appkeys import DB, SETTINGS
from presence import eventlog
from tests.conftest import Stack, database_text, reason_code

from .conftest import Invite, get_page, issue, open_visit, post_join


@pytest.fixture
def invite(signed_invite: Invite) -> Invite:
    """This module's links are signed ones, as issued before short codes (tests/join/test_short_links.py)."""
    return signed_invite


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keys(stack: Stack) -> joinlinks.JoinKeys:
    return joinlinks.keys_of(stack.gateway_app)


def _claims(stack: Stack, invite: Invite, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    keys = _keys(stack)
    claims = {"iss": keys.issuer, "aud": keys.audience, "sub": str(invite.participant_id),
              "jti": jwt.decode(invite.token, options={"verify_signature": False})["jti"],
              "iat": now, "exp": now + 3600}
    claims.update(changes)
    return claims


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signature)}"


def alg_none(stack: Stack, invite: Invite) -> str:
    return _unsigned({"alg": "none", "typ": joinlinks.TOKEN_TYPE}, _claims(stack, invite))


def hs256_with_public_key(stack: Stack, invite: Invite) -> str:
    # The classic key-confusion attack: HMAC "signed" with the verifier's public key (PEM, as published).
    key = _keys(stack).public_key.public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    head = _b64(json.dumps({"alg": "HS256", "typ": joinlinks.TOKEN_TYPE}).encode())
    body = _b64(json.dumps(_claims(stack, invite)).encode())
    return f"{head}.{body}.{_b64(hmac.new(key, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"


def _signed(stack: Stack, claims: dict[str, Any], typ: str = joinlinks.TOKEN_TYPE,
            keys: joinlinks.JoinKeys | None = None) -> str:
    keys = keys or _keys(stack)
    return jwt.encode(claims, keys.private_key, algorithm="EdDSA", headers={"typ": typ})


def wrong_aud(stack: Stack, invite: Invite) -> str:
    return _signed(stack, _claims(stack, invite, aud=f"{stack.gateway_url}/elsewhere"))


def wrong_typ(stack: Stack, invite: Invite) -> str:
    return _signed(stack, _claims(stack, invite), typ="JWT")


def wrong_iss(stack: Stack, invite: Invite) -> str:
    return _signed(stack, _claims(stack, invite, iss="https://another-gateway.example"))


def expired(stack: Stack, invite: Invite) -> str:
    now = int(time.time())
    return _signed(stack, _claims(stack, invite, iat=now - 7200, exp=now - 60))


def tampered(stack: Stack, invite: Invite) -> str:
    # Another participant's id swapped into a genuine token, keeping its signature.
    head, body, sig = invite.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = str(uuid.uuid4())
    return ".".join([head, _b64(json.dumps(claims).encode()), sig])


def flipped_signature(stack: Stack, invite: Invite) -> str:
    head, body, sig = invite.token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 1
    return ".".join([head, body, _b64(bytes(raw))])


def foreign(stack: Stack, invite: Invite) -> str:
    # A well-formed link from another gateway (another secret key) naming the same claims.
    settings: Settings = stack.gateway_app[SETTINGS]
    other = joinlinks.JoinKeys.from_settings(Settings(public_url=settings.public_url,
                                                      secret_key=secrets.token_bytes(32),
                                                      signing_key_pem=settings.signing_key_pem))
    return _signed(stack, _claims(stack, invite), keys=other)


def unknown_jti(stack: Stack, invite: Invite) -> str:
    # Signed by us, but no such link was ever issued.
    return _signed(stack, _claims(stack, invite, jti=str(uuid.uuid4())))


def garbage(stack: Stack, invite: Invite) -> str:
    return "not-a-token"


ATTACKS: dict[str, tuple[Callable[[Stack, Invite], str], str]] = {
    "alg_none": (alg_none, "link_invalid"),
    "hs256_signed_with_public_key": (hs256_with_public_key, "link_invalid"),
    "wrong_aud": (wrong_aud, "link_invalid"),
    "wrong_typ": (wrong_typ, "link_invalid"),
    "wrong_iss": (wrong_iss, "link_invalid"),
    "expired": (expired, "link_expired"),
    "tampered_claims": (tampered, "link_invalid"),
    "tampered_signature": (flipped_signature, "link_invalid"),
    "foreign_key": (foreign, "link_invalid"),
    "unknown_jti": (unknown_jti, "link_invalid"),
    "garbage": (garbage, "link_invalid"),
}


def _assert_refusal_page(response: aiohttp.ClientResponse, body: str, reason: str) -> None:
    assert 400 <= response.status < 500, body
    assert reason_code(body) == reason, body
    assert "Location" not in response.headers
    assert joinlinks.PARTICIPANT_COOKIE not in response.cookies
    assert "new link" in body  # says what to do


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_forged_or_stale_link_is_refused_on_open_and_on_exchange(stack: Stack, invite: Invite,
                                                                      attack: str) -> None:
    make, reason = ATTACKS[attack]
    token = make(stack, invite)
    opened = await get_page(stack.browser, f"{stack.gateway_url}/join?t={token}")
    _assert_refusal_page(opened, await opened.text(), reason)
    posted = await post_join(stack, stack.browser, token)
    _assert_refusal_page(posted, await posted.text(), reason)
    # The genuine link is untouched by all of that.
    assert (await post_join(stack, stack.browser, invite.token)).status == 303


async def test_hs256_with_raw_public_key_is_refused_too(stack: Stack, invite: Invite) -> None:
    raw = _keys(stack).public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    head = _b64(json.dumps({"alg": "HS256", "typ": joinlinks.TOKEN_TYPE}).encode())
    body = _b64(json.dumps(_claims(stack, invite)).encode())
    token = f"{head}.{body}.{_b64(hmac.new(raw, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"
    response = await post_join(stack, stack.browser, token)
    assert response.status == 400 and reason_code(await response.text()) == "link_invalid"


async def test_link_without_token_is_refused(stack: Stack) -> None:
    response = await get_page(stack.browser, f"{stack.gateway_url}/join")
    assert response.status == 400 and reason_code(await response.text()) == "link_invalid"


async def test_opening_a_link_shows_one_button_and_consumes_nothing(stack: Stack, invite: Invite) -> None:
    for _ in range(2):
        response = await get_page(stack.browser, f"{stack.gateway_url}/join?t={invite.token}")
        body = await response.text()
        assert response.status == 200, body
        assert len(re.findall(r"<button", body)) == 2  # the join button, and the in-app guidance's copy button
        assert 'id="join"' in body and 'method="post" action="/join"' in body
        assert joinlinks.PARTICIPANT_COOKIE not in response.cookies
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM participant_sessions") == 0
        assert await conn.fetchval("SELECT count(*) FROM join_links WHERE bound_session_hash IS NULL") == 1
    response = await post_join(stack, stack.browser, invite.token)
    assert response.status == 303, await response.text()


async def test_join_page_keeps_the_token_out_of_referers_caches_and_urls(stack: Stack, invite: Invite) -> None:
    response = await get_page(stack.browser, f"{stack.gateway_url}/join?t={invite.token}")
    body = await response.text()
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    # The language switcher's links go back to this same page (a relative `?` URL: no other place learns the
    # token, and the page stays no-referrer); apart from them the token is in the form's hidden field only.
    switcher = re.search(r'<nav class="languages".*?</nav>', body, re.S)
    assert switcher is not None
    assert all(href.startswith("?") for href in re.findall(r'href="([^"]*)"', switcher.group(0)))
    body = body.replace(switcher.group(0), "")
    urls = re.findall(r'(?:href|src|action)="([^"]*)"', body)
    assert urls and not any(invite.token in url for url in urls)
    assert body.count(invite.token) == 1  # only in the form's hidden field, POSTed in the body
    assert re.search(r'<input type="hidden" name="t" value="' + re.escape(invite.token) + '"', body)
    assert "<script>" not in body and "style=" not in body  # CSP: no inline script or style


async def test_exchange_binds_the_session_and_redirects_to_a_clean_lobby(stack: Stack, invite: Invite) -> None:
    response = await post_join(stack, stack.browser, invite.token)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/lobby"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    cookie = SimpleCookie(response.headers["Set-Cookie"])[joinlinks.PARTICIPANT_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert not cookie["secure"]  # the test gateway's public URL is http; https sets Secure
    assert 0 < int(cookie["max-age"]) <= 3 * 3600 + 60  # the visit's window (2 h) plus grace
    handle = cookie.value
    async with stack.gateway_app[DB].acquire() as conn:
        participant = await joinlinks.participant_for_session(conn, handle)
    assert participant is not None and participant.id == invite.participant_id
    assert participant.visit_id == invite.visit_id and participant.role == "patient"
    lobby = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    body = await lobby.text()
    assert lobby.status == 200, body
    assert lobby.headers["Referrer-Policy"] == "no-referrer" and lobby.headers["Cache-Control"] == "no-store"
    assert 'id="display-name"' in body and 'id="i18n"' in body
    assert invite.token not in body and handle not in body


async def test_the_bound_session_may_exchange_the_link_again(stack: Stack, invite: Invite) -> None:
    first = await post_join(stack, stack.browser, invite.token)
    second = await post_join(stack, stack.browser, invite.token)
    assert first.status == second.status == 303, await second.text()
    assert first.cookies[joinlinks.PARTICIPANT_COOKIE].value == second.cookies[joinlinks.PARTICIPANT_COOKIE].value
    opened = await get_page(stack.browser, f"{stack.gateway_url}/join?t={invite.token}")
    assert opened.status == 200
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM participant_sessions") == 1


async def test_a_used_signed_link_opened_in_another_browser_moves_the_session_there(
        stack: Stack, invite: Invite, other_browser: aiohttp.ClientSession) -> None:
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    moved = await post_join(stack, other_browser, invite.token)
    assert moved.status == 303, await moved.text()
    assert (await get_page(other_browser, f"{stack.gateway_url}/lobby")).status == 200
    # The first browser's session ended, and its page says why.
    lobby = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    assert lobby.status == 401 and reason_code(await lobby.text()) == "session_moved"


async def test_a_stolen_cookie_value_of_another_participant_does_not_bind(stack: Stack, invite: Invite,
                                                                         other_browser: aiohttp.ClientSession) -> None:
    # A browser already in some other visit exchanges a fresh link: it gets a new session, not the old one.
    other_visit, other_participant = await open_visit(stack, encounter="enc-2")
    other_token = await issue(stack, other_participant, other_visit)
    first = await post_join(stack, stack.browser, other_token)
    second = await post_join(stack, stack.browser, invite.token)
    assert first.status == second.status == 303
    assert first.cookies[joinlinks.PARTICIPANT_COOKIE].value != second.cookies[joinlinks.PARTICIPANT_COOKIE].value


async def test_revoked_link_is_refused_and_a_reissued_one_works(stack: Stack, invite: Invite,
                                                               other_browser: aiohttp.ClientSession) -> None:
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    async with stack.gateway_app[DB].acquire() as conn:
        new_token = await joinlinks.reissue_link(conn, stack.gateway_app, invite.participant_id, invite.visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    assert new_token != invite.token
    for method in (get_page(stack.browser, f"{stack.gateway_url}/join?t={invite.token}"),
                   post_join(stack, stack.browser, invite.token)):
        response = await method
        _assert_refusal_page(response, await response.text(), "link_revoked")
    # The session that came from the revoked link has ended with it.
    lobby = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    assert lobby.status == 401
    # The new link binds to whichever browser uses it first, here another one.
    response = await post_join(stack, other_browser, new_token)
    assert response.status == 303, await response.text()
    assert (await get_page(other_browser, f"{stack.gateway_url}/lobby")).status == 200


async def test_revoke_link_by_token(stack: Stack, invite: Invite) -> None:
    async with stack.gateway_app[DB].acquire() as conn:
        assert await joinlinks.revoke_link(conn, stack.gateway_app, invite.token) is True
        assert await joinlinks.revoke_link(conn, stack.gateway_app, invite.token) is False
        assert await joinlinks.revoke_link(conn, stack.gateway_app, "garbage") is False
    response = await post_join(stack, stack.browser, invite.token)
    assert response.status == 410 and reason_code(await response.text()) == "link_revoked"


async def test_link_of_an_ended_visit_says_the_visit_ended_and_its_session_ends(stack: Stack, invite: Invite) -> None:
    response = await post_join(stack, stack.browser, invite.token)
    handle = response.cookies[joinlinks.PARTICIPANT_COOKIE].value
    await eventlog.record_event(stack.gateway_app[DB], invite.visit_id, None, "visit_ended")
    async with stack.gateway_app[DB].acquire() as conn:
        assert await joinlinks.participant_for_session(conn, handle) is None
    again = await post_join(stack, stack.browser, invite.token)
    assert again.status == 410 and reason_code(await again.text()) == "visit_ended"


async def test_link_past_its_expiry_in_the_database_is_expired(stack: Stack, invite: Invite) -> None:
    async with stack.gateway_app[DB].acquire() as conn:
        await conn.execute("UPDATE join_links SET expires_at = now() - interval '1 second'")
    response = await get_page(stack.browser, f"{stack.gateway_url}/join?t={invite.token}")
    assert response.status == 410 and reason_code(await response.text()) == "link_expired"


@pytest.mark.parametrize("headers, allowed", [
    ({}, False),
    ({"Origin": "http://evil.example"}, False),
    ({"Origin": "null"}, False),
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"}, False),
    ({"Origin": "null", "Sec-Fetch-Site": "cross-site"}, False),
    ({"Sec-Fetch-Site": "same-origin"}, True),
    # What Chromium sends for a form POST from a no-referrer page of ours.
    ({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, True),
])
async def test_exchange_must_come_from_our_own_page(stack: Stack, invite: Invite, headers: dict[str, str],
                                                    allowed: bool) -> None:
    response = await stack.browser.post(f"{stack.gateway_url}/join", data={"t": invite.token}, headers=headers,
                                        allow_redirects=False)
    body = await response.text()
    if allowed:
        assert response.status == 303, body
    else:
        assert response.status == 403 and reason_code(body) == "cross_site_request", body
        async with stack.gateway_app[DB].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM participant_sessions") == 0


async def test_lobby_without_a_session_is_refused(stack: Stack) -> None:
    response = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    body = await response.text()
    assert response.status == 401 and reason_code(body) == "session_expired", body
    stack.browser.cookie_jar.update_cookies({joinlinks.PARTICIPANT_COOKIE: "made-up"})
    response = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    assert response.status == 401


async def test_token_and_handle_never_reach_logs_locations_or_the_database(
        stack: Stack, invite: Invite, other_browser: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    locations = []
    opened = await get_page(stack.browser, f"{stack.gateway_url}/join?t={invite.token}")
    exchanged = await post_join(stack, stack.browser, invite.token)
    forged = await get_page(stack.browser, f"{stack.gateway_url}/join?t={tampered(stack, invite)}")
    lobby = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    handoff = await stack.browser.post(f"{stack.gateway_url}/lobby/handoff", headers={"Origin": stack.gateway_url})
    handoff_url = (await handoff.json())["url"]
    moved = await post_join(stack, other_browser, invite.token)
    for response in (opened, exchanged, moved, forged, lobby, handoff):
        locations.append(response.headers.get("Location", ""))
    assert [opened.status, exchanged.status, moved.status, forged.status, lobby.status, handoff.status] == \
        [200, 303, 303, 400, 200, 200]
    handle = exchanged.cookies[joinlinks.PARTICIPANT_COOKIE].value
    handoff_code = handoff_url.rsplit("/", 1)[1]
    secrets_ = [invite.token, handle, handoff_code, invite.token.split(".")[2],
                moved.cookies[joinlinks.PARTICIPANT_COOKIE].value]
    ours = [r for r in caplog.records if not r.name.startswith("sandbox")]
    assert any(r.name == "visitgate.access" and "/join" in r.getMessage() for r in ours)
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours)
    async with stack.gateway_app[DB].acquire() as conn:
        _tables, dump = await database_text(conn)
    for value in secrets_:
        assert value not in logs
        assert not any(value in location for location in locations)
        assert value not in dump


async def test_handoff_gives_a_fresh_link_that_another_browser_can_use(stack: Stack, invite: Invite,
                                                                       other_browser: aiohttp.ClientSession) -> None:
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    refused = await stack.browser.post(f"{stack.gateway_url}/lobby/handoff", headers={"Origin": "http://evil.example"})
    assert refused.status == 403
    response = await stack.browser.post(f"{stack.gateway_url}/lobby/handoff", headers={"Origin": stack.gateway_url})
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    url = (await response.json())["url"]
    assert url.startswith(f"{stack.gateway_url}/j/")
    moved = await post_join(stack, other_browser, url.rsplit("/", 1)[1])
    assert moved.status == 303
    assert (await get_page(other_browser, f"{stack.gateway_url}/lobby")).status == 200


async def test_issued_token_pins_algorithm_type_audience_and_expiry(stack: Stack) -> None:
    visit_id, participant_id = await open_visit(stack)
    window_end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=30)
    token = await issue(stack, participant_id, visit_id, window_end, signed=True)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["typ"] == "vg-join+jwt"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == f"{stack.gateway_url}/join" and claims["iss"] == stack.gateway_url
    assert claims["sub"] == str(participant_id) and uuid.UUID(claims["jti"])
    assert claims["exp"] == int((window_end + joinlinks.GRACE).replace(microsecond=0).timestamp())
    assert set(claims) == {"iss", "aud", "sub", "jti", "iat", "exp"}  # names only the participant
    far = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=90)
    capped = jwt.decode(await issue(stack, participant_id, visit_id, far, signed=True),
                        options={"verify_signature": False})
    assert capped["exp"] <= time.time() + joinlinks.MAX_LIFETIME.total_seconds() + 1
    with pytest.raises(ValueError):
        await issue(stack, participant_id, visit_id, dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2),
                    signed=True)
    other_visit, _ = await open_visit(stack, encounter="enc-2")
    with pytest.raises(ValueError):
        await issue(stack, participant_id, other_visit, signed=True)


def test_every_gateway_process_derives_the_same_join_key(signing_key_pem: bytes) -> None:
    secret = secrets.token_bytes(32)
    keys = [joinlinks.JoinKeys.from_settings(Settings(public_url="https://visits.example.org", secret_key=secret,
                                                      signing_key_pem=signing_key_pem)) for _ in range(2)]
    raw = [k.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) for k in keys]
    assert raw[0] == raw[1] and keys[0].kid == keys[1].kid
    assert keys[0].audience == "https://visits.example.org/join"


async def test_participant_for_session_is_none_for_unknown_handles(stack: Stack) -> None:
    async with stack.gateway_app[DB].acquire() as conn:
        assert await joinlinks.participant_for_session(conn, "nope") is None
        assert await joinlinks.participant_for_session(conn, "") is None
        assert await joinlinks.participant_for_session(conn, "x" * 5000) is None


def test_session_cookie_is_secure_behind_https(signing_key_pem: bytes) -> None:
    from aiohttp import web

    settings = Settings(public_url="https://visits.example.org", secret_key=secrets.token_bytes(32),
                        signing_key_pem=signing_key_pem)
    session = joinlinks.ParticipantSession(handle="h", participant_id=uuid.uuid4(), visit_id=uuid.uuid4(),
                                           expires_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    response = web.Response()
    joinlinks.set_session_cookie(response, settings, session)
    cookie = response.cookies[joinlinks.PARTICIPANT_COOKIE]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
