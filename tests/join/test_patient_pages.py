"""What patient pages show: the organisation and the appointment's time, the name the EHR has for a patient
who came from the portal (never stored), and never the clinician's identity."""
from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway import Settings
from gateway.appkeys import DB, SETTINGS
from gateway.errors import ConfigError
from launch.join import EHR_NAME_COOKIE, _read_logo, display_name_of
from sandbox.seed import PRACTITIONERS, practitioner_display
from tests.conftest import Stack, database_text
from tests.test_privacy import CANARIES, _seed_canary_patient

from .conftest import Invite, get_page, post_join
from .test_patient_launch import patient_launch

CLINICIAN_NAMES = [n for _pid, given, family, _npi in PRACTITIONERS
                   for n in (practitioner_display(given, family), f"{given} {family}", family)
                   if n != "Sandbox"]  # "Sandbox" alone is also a word in the sandbox's other names
CLINICIAN_GIVEN = [given for _pid, given, _family, _npi in PRACTITIONERS]


def assert_no_clinician(text: str, where: str) -> None:
    """No practitioner of the sandbox is named in text (a patient page or message)."""
    for name in CLINICIAN_NAMES:
        assert name not in text, f"{name!r} on {where}"
    for given in CLINICIAN_GIVEN:
        assert not re.search(rf"\b{given}\b", text), f"{given!r} on {where}"


async def test_portal_launched_patient_is_greeted_by_the_ehr_name_and_skips_the_name_step(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _seed_canary_patient(stack)
    launch = patient_launch(stack, patient=CANARIES["patient_id"], encounter=CANARIES["encounter_id"])
    response, visited = await stack.follow(f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={launch}")
    page = await response.text()
    assert response.status == 200 and visited[-1].endswith("/lobby"), page
    full = f"{CANARIES['given']} {CANARIES['family']}"
    assert f'data-name="{full}"' in page and f"Welcome, {full}." in page
    assert re.search(r'<section class="card" id="step-name"\s+hidden>', page), page
    # A reload shows it again, from this browser's sealed cookie: the gateway kept nothing.
    again = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    assert f"Welcome, {full}." in await again.text()
    cookies = stack.browser.cookie_jar.filter_cookies(URL(f"{stack.gateway_url}/lobby"))
    sealed = cookies[EHR_NAME_COOKIE].value
    assert CANARIES["given"].lower() not in sealed.lower()
    async with stack.gateway_app[DB].acquire() as conn:
        _tables, dump = await database_text(conn)
    ours = [r for r in caplog.records if not r.name.startswith("sandbox")]
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours).lower()
    for part in (CANARIES["given"], CANARIES["family"]):
        assert part.lower() not in dump.lower() and part.lower() not in logs


async def test_the_ehr_name_of_one_participant_is_not_shown_to_another(stack: Stack, invite: Invite) -> None:
    _seed_canary_patient(stack)
    launch = patient_launch(stack, patient=CANARIES["patient_id"], encounter=CANARIES["encounter_id"])
    response, _ = await stack.follow(f"{stack.gateway_url}/launch/patient?iss={stack.fhir_base}&launch={launch}")
    assert response.status == 200
    # The same browser then opens a link for someone else's visit: its lobby asks for a name.
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    page = await (await get_page(stack.browser, f"{stack.gateway_url}/lobby")).text()
    assert CANARIES["given"] not in page and "data-name" not in page
    assert re.search(r'<section class="card" id="step-name">', page), page


def test_the_display_name_comes_from_the_usual_or_official_name_without_control_characters() -> None:
    assert display_name_of({"name": [{"use": "official", "given": ["Ann", "B"], "family": "Lee"},
                                     {"use": "usual", "given": ["Annie"], "family": "Lee"}]}) == "Annie Lee"
    assert display_name_of({"name": [{"text": "Kim\u202e Park\x00"}]}) == "Kim Park"
    assert display_name_of({"name": "Lee"}) is None and display_name_of({}) is None
    assert display_name_of({"name": [{"given": ["x" * 100]}]}) == "x" * 60


async def test_no_clinician_name_on_any_patient_page(stack: Stack, other_browser: aiohttp.ClientSession) -> None:
    handle = await stack.provider_handle(stack.new_launch(practitioner="prac-1", encounter="enc-1"))
    copied = await stack.browser.post(f"{stack.gateway_url}/provider/{handle}/invite",
                                      data={"channel": "copy", "role": "patient"},
                                      headers={"Origin": stack.gateway_url, "Accept": "application/json"})
    link = (await copied.json())["link"]
    patient = other_browser
    pages = {}
    opened = await patient.get(link)
    pages["join"] = await opened.text()
    assert opened.status == 200, pages["join"]
    code = link.rsplit("/", 1)[1]
    exchanged = await patient.post(f"{stack.gateway_url}/join", data={"t": code},
                                   headers={"Origin": stack.gateway_url})
    pages["lobby"] = await exchanged.text()
    assert exchanged.status == 200 and str(exchanged.url).endswith("/lobby"), pages["lobby"]
    state = await patient.get(f"{stack.gateway_url}/lobby/state")
    pages["lobby state"] = await state.text()
    async with stack.gateway_app[DB].acquire() as conn:
        row = await conn.fetchrow("SELECT visit_id, participant_id FROM participant_sessions")
        await conn.execute("INSERT INTO presence_events (visit_id, participant_id, kind) VALUES ($1, $2, 'admitted')",
                           row["visit_id"], row["participant_id"])
    room = await patient.get(f"{stack.gateway_url}/room")
    pages["room"] = await room.text()
    assert room.status == 200 and str(room.url).endswith("/room"), pages["room"]
    pages["expired link"] = await (await patient.get(f"{stack.gateway_url}/j/{'0' * 22}")).text()
    for where, text in pages.items():
        assert_no_clinician(text, where)
    # What the pages show instead: the organisation, and when the appointment is.
    organisation = stack.gateway_app[SETTINGS].organisation_name
    for where in ("join", "lobby"):
        assert organisation in pages[where]
        found = re.search(r'<time datetime="([^"]+)">', pages[where])
        assert found, pages[where]
        at = dt.datetime.fromisoformat(found.group(1))
        assert at.tzinfo is not None


async def test_without_a_logo_setting_no_logo_is_served_or_shown(stack: Stack, invite: Invite) -> None:
    # Without the setting there is no logo and no image on the page.
    assert (await get_page(stack.browser, f"{stack.gateway_url}/organisation/logo")).status == 404
    page = await (await get_page(stack.browser, f"{stack.gateway_url}/j/{invite.token}")).text()
    assert "organisation-logo" not in page


def test_a_logo_setting_that_is_not_a_small_png_or_svg_stops_start_up(tmp_path: Path) -> None:
    png = tmp_path / "logo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    assert _read_logo(png) == (png.read_bytes(), "image/png")
    svg = tmp_path / "logo.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>')
    assert _read_logo(svg)[1] == "image/svg+xml"
    for name, data in (("logo.gif", b"GIF89a"), ("fake.png", b"<svg/>"), ("big.svg", b" " * (600 * 1024))):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ConfigError):
            _read_logo(path)
    with pytest.raises(ConfigError):
        _read_logo(tmp_path / "missing.png")
    settings = Settings.from_env({"VISITGATE_PUBLIC_URL": "https://v.example", "VISITGATE_SECRET_KEY": "A" * 44,
                                  "VISITGATE_SIGNING_KEY": "x", "VISITGATE_ORGANISATION_LOGO": str(png)})
    assert settings.organisation_logo == png
