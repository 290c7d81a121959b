"""The built-in video room: who may open it, what the page hands the browser, and TURN credentials."""
from __future__ import annotations

import datetime as dt
import html
import json
import re
import secrets
from uuid import UUID

import pytest
from yarl import URL

from gateway import joinlinks, participants
from gateway.appkeys import DB
from gateway.errors import ConfigError
from gateway.meetings.builtin import ice_servers
from gateway.settings import Settings
from presence import eventlog
from tests.conftest import Stack, reason_code

# An independent vector: computed with
#   printf '%s' '1700003600:6f1c2b8e-4a51-4d43-9a52-2d1b7c0e5f10' \
#     | openssl dgst -sha1 -hmac 'north-clinic-turn-secret' -binary | base64
TURN_SECRET = b"north-clinic-turn-secret"
TURN_PARTICIPANT = "6f1c2b8e-4a51-4d43-9a52-2d1b7c0e5f10"
TURN_NOW = 1_700_000_000
TURN_USERNAME = "1700003600:6f1c2b8e-4a51-4d43-9a52-2d1b7c0e5f10"
TURN_CREDENTIAL = "STGrtdZDb1mc3IDUQYOQ+iYc7hU="


def _settings(**kw: object) -> Settings:
    return Settings(public_url="https://visits.example.org", secret_key=secrets.token_bytes(32),
                    signing_key_pem=b"unused", **kw)  # type: ignore[arg-type]


async def _visit_id(stack: Stack) -> UUID:
    async with stack.gateway_app[DB].acquire() as conn:
        value: UUID = await conn.fetchval("SELECT id FROM visits ORDER BY created_at LIMIT 1")
    return value


async def _patient_session(stack: Stack) -> UUID:
    """The visit's patient with a browser session, as the join-link exchange leaves it; the cookie is set."""
    visit_id = await _visit_id(stack)
    async with stack.gateway_app[DB].acquire() as conn:
        patient = await participants.patient_participant(conn, visit_id)
        session = await joinlinks.create_session(conn, patient, visit_id,
                                                 dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    stack.browser.cookie_jar.update_cookies({joinlinks.PARTICIPANT_COOKIE: session.handle}, URL(stack.gateway_url))
    return patient


def _config(body: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="room-config">(.*?)</script>', body, re.S)
    assert match, body
    return json.loads(html.unescape(match.group(1)))  # type: ignore[no-any-return]


async def test_patient_not_yet_admitted_is_sent_to_the_lobby(stack: Stack) -> None:
    await stack.provider_handle()
    patient = await _patient_session(stack)
    await eventlog.record_event(stack.gateway_app[DB], await _visit_id(stack), patient, "lobby_entered")
    response = await stack.get(f"{stack.gateway_url}/room")
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/lobby"


async def test_admitted_patient_gets_the_room(stack: Stack) -> None:
    await stack.provider_handle()
    patient = await _patient_session(stack)
    await eventlog.record_event(stack.gateway_app[DB], await _visit_id(stack), patient, "admitted")
    response = await stack.get(f"{stack.gateway_url}/room")
    body = await response.text()
    assert response.status == 200, body
    config = _config(body)
    assert config["participant"] == str(patient) and config["role"] == "patient"
    assert config["auth"] == {"where": "room"}
    assert config["ice_servers"] == []  # the test settings name no STUN or TURN server
    assert response.headers["Cache-Control"] == "no-store"


async def test_patient_removed_after_admission_goes_back_to_the_lobby(stack: Stack) -> None:
    await stack.provider_handle()
    patient = await _patient_session(stack)
    visit_id = await _visit_id(stack)
    for kind in ("lobby_entered", "admitted", "connected", "removed"):
        await eventlog.record_event(stack.gateway_app[DB], visit_id, patient, kind)
    response = await stack.get(f"{stack.gateway_url}/room")
    assert response.status == 303 and response.headers["Location"] == "/lobby"


async def test_patient_admitted_again_after_removal_gets_the_room(stack: Stack) -> None:
    await stack.provider_handle()
    patient = await _patient_session(stack)
    visit_id = await _visit_id(stack)
    for kind in ("admitted", "removed", "lobby_entered", "admitted"):
        await eventlog.record_event(stack.gateway_app[DB], visit_id, patient, kind)
    response = await stack.get(f"{stack.gateway_url}/room")
    assert response.status == 200, await response.text()


async def test_denied_patient_is_sent_to_the_lobby(stack: Stack) -> None:
    await stack.provider_handle()
    patient = await _patient_session(stack)
    await eventlog.record_event(stack.gateway_app[DB], await _visit_id(stack), patient, "denied")
    response = await stack.get(f"{stack.gateway_url}/room")
    assert response.status == 303 and response.headers["Location"] == "/lobby"


async def test_room_without_a_session_is_sent_to_the_lobby(stack: Stack) -> None:
    stack.browser.cookie_jar.update_cookies({joinlinks.PARTICIPANT_COOKIE: "forged"}, URL(stack.gateway_url))
    response = await stack.get(f"{stack.gateway_url}/room")
    assert response.status == 303 and response.headers["Location"] == "/lobby"


async def test_admission_state_is_the_latest_decision(stack: Stack) -> None:
    await stack.provider_handle()
    visit_id = await _visit_id(stack)
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        patient = await participants.patient_participant(conn, visit_id)
        assert await participants.admission_state(conn, patient) is None
    for kind, expected in (("admitted", "admitted"), ("connected", "admitted"), ("removed", "removed"),
                           ("lobby_entered", "removed"), ("admitted", "admitted"), ("denied", "denied")):
        await eventlog.record_event(pool, visit_id, patient, kind)
        async with pool.acquire() as conn:
            assert await participants.admission_state(conn, patient) == expected, kind


async def test_provider_handle_opens_the_room(stack: Stack) -> None:
    handle = await stack.provider_handle()
    response = await stack.get(f"{stack.gateway_url}/provider/{handle}/room")
    body = await response.text()
    assert response.status == 200, body
    config = _config(body)
    assert config["role"] == "provider"
    # The presence socket takes provider handles with where=view only.
    assert config["auth"] == {"provider": handle, "where": "room"}
    async with stack.gateway_app[DB].acquire() as conn:
        participant = await participants.get_participant(conn, UUID(str(config["participant"])))
    assert participant is not None and participant.role == "provider"
    assert f'href="/provider/{handle}"' in body  # the way back to the provider view


async def test_unknown_provider_handle_gets_the_expired_page(stack: Stack) -> None:
    response = await stack.get(f"{stack.gateway_url}/provider/not-a-handle/room")
    body = await response.text()
    assert response.status == 401, body
    assert reason_code(body) == "session_expired"


async def test_provider_view_links_to_the_room(stack: Stack) -> None:
    handle = await stack.provider_handle()
    response = await stack.get(f"{stack.gateway_url}/provider/{handle}")
    body = await response.text()
    assert f'href="/provider/{handle}/room"' in body, body


async def test_room_page_has_no_inline_script_or_style(stack: Stack) -> None:
    handle = await stack.provider_handle()
    response = await stack.get(f"{stack.gateway_url}/provider/{handle}/room")
    body = await response.text()
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    for tag in re.findall(r"<script\b[^>]*>", body):
        assert 'src="' in tag or 'type="application/json"' in tag, tag
    assert "<style" not in body and " style=" not in body
    for path in ("/static/launch/room.js", "/static/launch/room.css"):
        asset = await stack.get(f"{stack.gateway_url}{path}")
        assert asset.status == 200, path


def test_turn_credential_follows_coturns_shared_secret_scheme() -> None:
    settings = _settings(turn_urls=("turn:turn.example.org:3478?transport=udp",), turn_secret=TURN_SECRET,
                         turn_ttl=3600)
    servers = ice_servers(settings, TURN_PARTICIPANT, now=TURN_NOW)
    assert servers == [{"urls": ["turn:turn.example.org:3478?transport=udp"], "username": TURN_USERNAME,
                        "credential": TURN_CREDENTIAL}]


def test_turn_credential_expires_after_the_ttl() -> None:
    settings = _settings(turn_urls=("turns:turn.example.org:5349",), turn_secret=TURN_SECRET, turn_ttl=600)
    (turn,) = ice_servers(settings, "p", now=TURN_NOW)
    assert turn["username"] == f"{TURN_NOW + 600}:p"


def test_ice_servers_offer_stun_and_no_turn_without_a_secret() -> None:
    settings = _settings(stun_urls=("stun:stun.example.org:3478",), turn_urls=("turn:turn.example.org",))
    assert ice_servers(settings, "p") == [{"urls": ["stun:stun.example.org:3478"]}]
    assert ice_servers(_settings(), "p") == []


def test_turn_secret_is_not_in_the_settings_repr() -> None:
    assert "north-clinic" not in repr(_settings(turn_secret=TURN_SECRET))


def _env(**extra: str) -> dict[str, str]:
    import base64

    return {"VISITGATE_PUBLIC_URL": "https://visits.example.org",
            "VISITGATE_SECRET_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "VISITGATE_SIGNING_KEY": "unused", **extra}


def test_ice_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(_env(VISITGATE_STUN_URLS="stun:a.example.org stun:b.example.org",
                                      VISITGATE_TURN_URLS="turn:t.example.org:3478",
                                      VISITGATE_TURN_SECRET="north-clinic-turn-secret", VISITGATE_TURN_TTL="900"))
    assert settings.stun_urls == ("stun:a.example.org", "stun:b.example.org")
    assert settings.turn_urls == ("turn:t.example.org:3478",)
    assert settings.turn_secret == TURN_SECRET and settings.turn_ttl == 900


def test_turn_servers_without_a_secret_stop_start_up() -> None:
    with pytest.raises(ConfigError, match="VISITGATE_TURN_SECRET"):
        Settings.from_env(_env(VISITGATE_TURN_URLS="turn:t.example.org:3478"))
