"""Patients' pages in six languages: chosen by the browser's Accept-Language, by a `?lang=` on the link (kept in
a cookie for the pages after it) or by the language switcher on every page; `<html lang>` follows; a hostile
`lang` changes nothing. Dates and times read in the patient's language, in the organisation's time zone."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from yarl import URL

from gateway.errors import ConfigError
from gateway.settings import Settings
from launch.i18n import LANGUAGE_COOKIE, LOCALES, Catalogs, format_moment, preferred_language, with_language
from tests.conftest import Stack

from .conftest import Invite, get_page, post_join

JOIN_TITLE = {"en": "Join your video visit", "es": "Entre en su videoconsulta",
              "fr": "Rejoignez votre consultation vidéo", "pt": "Entre na sua consulta por vídeo",
              "ru": "Войдите на видеоприём", "it": "Entri nella sua visita video"}
LOBBY_TITLE = {"en": "Waiting room", "es": "Sala de espera", "fr": "Salle d'attente", "pt": "Sala de espera",
               "ru": "Зал ожидания", "it": "Sala d'attesa"}
# What the switcher calls each language: in itself, so a patient finds their own.
NAMES = {"en": "English", "es": "Español", "fr": "Français", "pt": "Português", "ru": "Русский",
         "it": "Italiano"}


def _lang_of(body: str) -> str:
    found = re.search(r'<html lang="([^"]+)">', body)
    assert found is not None, body[:300]
    return found.group(1)


def _switcher(body: str) -> dict[str, tuple[str, bool]]:
    """The language switcher's links: language -> (href, marked as the current one)."""
    nav = re.search(r'<nav class="languages" aria-label="([^"]+)">(.*?)</nav>', body, re.S)
    assert nav is not None, "no language switcher on the page"
    links = re.findall(r'<a href="([^"]*)" lang="([^"]+)"[^>]*?(aria-current="true")?>([^<]+)</a>',
                       re.sub(r"\s+", " ", nav.group(2)))
    assert [name for *_, name in links] == [NAMES[code] for _, code, _, _ in links]
    return {code: (href.replace("&amp;", "&"), bool(current)) for href, code, current, _ in links}


def _set_language_cookie(stack: Stack, locale: str) -> None:
    stack.browser.cookie_jar.update_cookies({LANGUAGE_COOKIE: locale}, URL(stack.gateway_url))


@pytest.mark.parametrize("locale", LOCALES)
async def test_join_page_and_lobby_speak_the_language_the_browser_asks_for(
        stack: Stack, invite: Invite, locale: str) -> None:
    headers = {"Accept-Language": f"{locale}-XX;q=0.9, de;q=0.5"}
    join = await stack.browser.get(f"{stack.gateway_url}/join?t={invite.token}", headers=headers)
    body = await join.text()
    assert join.status == 200, body
    assert _lang_of(body) == locale
    assert f"<h1>{JOIN_TITLE[locale]}</h1>" in body
    assert LANGUAGE_COOKIE not in join.cookies  # the browser's own wish needs no remembering
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    lobby = await stack.browser.get(f"{stack.gateway_url}/lobby", headers=headers)
    body = await lobby.text()
    assert lobby.status == 200, body
    assert _lang_of(body) == locale
    assert f"<h1>{LOBBY_TITLE[locale]}</h1>" in body
    assert {code: current for code, (_, current) in _switcher(body).items()} == {
        code: code == locale for code in LOCALES}


@pytest.mark.parametrize("locale", LOCALES)
async def test_the_switchers_cookie_outranks_the_browsers_language(
        stack: Stack, invite: Invite, locale: str) -> None:
    _set_language_cookie(stack, locale)
    english = {"Accept-Language": "en-US,en;q=0.9"}
    join = await stack.browser.get(f"{stack.gateway_url}/join?t={invite.token}", headers=english)
    body = await join.text()
    assert join.status == 200, body
    assert _lang_of(body) == locale and f"<h1>{JOIN_TITLE[locale]}</h1>" in body
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    lobby = await stack.browser.get(f"{stack.gateway_url}/lobby", headers=english)
    body = await lobby.text()
    assert _lang_of(body) == locale and f"<h1>{LOBBY_TITLE[locale]}</h1>" in body


async def test_a_link_with_a_language_opens_in_it_and_the_lobby_after_it_too(stack: Stack, invite: Invite) -> None:
    english = {"Accept-Language": "en"}
    join = await stack.browser.get(f"{stack.gateway_url}/join?t={invite.token}&lang=es", headers=english)
    body = await join.text()
    assert join.status == 200, body
    assert _lang_of(body) == "es"
    cookie = join.cookies[LANGUAGE_COOKIE]
    assert cookie.value == "es" and cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    lobby = await stack.browser.get(f"{stack.gateway_url}/lobby", headers=english)
    assert _lang_of(await lobby.text()) == "es"


async def test_the_switcher_on_each_page_leads_to_the_same_page_in_another_language(
        stack: Stack, invite: Invite) -> None:
    join = await get_page(stack.browser, f"{stack.gateway_url}/join?t={invite.token}")
    links = _switcher(await join.text())
    assert list(links) == list(LOCALES) and links["en"][1]
    french = URL(f"{stack.gateway_url}/join").join(URL(links["fr"][0]))
    assert french.query["lang"] == "fr" and french.query["t"] == invite.token  # the same link, in French
    page = await get_page(stack.browser, str(french))
    assert _lang_of(await page.text()) == "fr"
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    lobby = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    body = await lobby.text()
    assert _lang_of(body) == "fr"
    assert _switcher(body)["fr"][1] and _switcher(body)["ru"][0] == "?lang=ru"
    russian = await get_page(stack.browser, f"{stack.gateway_url}/lobby?lang=ru")
    assert _lang_of(await russian.text()) == "ru" and russian.cookies[LANGUAGE_COOKIE].value == "ru"
    again = await get_page(stack.browser, f"{stack.gateway_url}/lobby")
    assert _lang_of(await again.text()) == "ru"


@pytest.mark.parametrize("lang", ["de", "../../etc", "es\r\nSet-Cookie: x=1", "e" * 5000, "ES", ""])
async def test_a_language_we_do_not_have_changes_nothing(stack: Stack, invite: Invite, lang: str) -> None:
    _set_language_cookie(stack, "it")
    join = await stack.browser.get(f"{stack.gateway_url}/join", params={"t": invite.token, "lang": lang},
                                   headers={"Accept-Language": "fr"})
    body = await join.text()
    assert join.status == 200, body
    assert _lang_of(body) == "it"  # the cookie's choice stands
    assert LANGUAGE_COOKIE not in join.cookies


async def test_a_hostile_language_cookie_falls_back_to_the_browsers_language(stack: Stack, invite: Invite) -> None:
    _set_language_cookie(stack, "xx-<script>")
    join = await stack.browser.get(f"{stack.gateway_url}/join?t={invite.token}", headers={"Accept-Language": "pt-BR"})
    body = await join.text()
    assert join.status == 200, body
    assert _lang_of(body) == "pt" and "<script>\"" not in body


# --- Dates and times --------------------------------------------------------------------------------------

MOMENT = dt.datetime(2026, 12, 3, 10, 30, tzinfo=dt.timezone.utc)  # 11:30 in Madrid, 05:30 in New York


@pytest.mark.parametrize("locale, words", [
    ("en", ("Thursday", "December 3", "11:30", "AM", "(Central European Standard Time)")),
    ("es", ("jueves", "3 de diciembre de 2026", "11:30", "(hora estándar de Europa central)")),
    ("fr", ("jeudi", "3 décembre 2026", "11:30", "(heure normale d’Europe centrale)")),
    ("pt", ("quinta-feira", "3 de dezembro de 2026", "11:30", "(Horário Padrão da Europa Central)")),
    ("ru", ("четверг", "3 декабря 2026", "11:30", "(Центральная Европа, стандартное время)")),
    ("it", ("giovedì", "3 dicembre 2026", "11:30", "(Ora standard dell’Europa centrale)")),
])
def test_a_moment_reads_in_the_patients_language_in_the_organisations_time_zone(
        locale: str, words: tuple[str, ...]) -> None:
    # The words and their order, not CLDR's exact spaces and commas (they vary between Babel releases).
    text = re.sub(r"\s", " ", format_moment(MOMENT, locale, "Europe/Madrid"))
    positions = [text.find(word) for word in words]
    assert -1 not in positions and positions == sorted(positions), text
    assert "5:30" in format_moment(MOMENT, locale, "America/New_York")
    assert "10:30" in format_moment(MOMENT, locale, "UTC")


def test_the_organisations_time_zone_is_checked_at_start_up() -> None:
    env = {"VISITGATE_PUBLIC_URL": "https://visits.example.org", "VISITGATE_SECRET_KEY": "A" * 44,
           "VISITGATE_SIGNING_KEY": "unused"}
    assert Settings.from_env(env).time_zone == "UTC"
    assert Settings.from_env({**env, "VISITGATE_TIME_ZONE": " Europe/Madrid "}).time_zone == "Europe/Madrid"
    for wrong in ("Mars/Olympus_Mons", "../../etc/passwd", "CET\x00", "Europe/"):
        with pytest.raises(ConfigError, match="VISITGATE_TIME_ZONE"):
            Settings.from_env({**env, "VISITGATE_TIME_ZONE": wrong})


# --- The preferred language from FHIR -----------------------------------------------------------------------

def _language(code: object, preferred: object = None) -> dict[str, object]:
    entry: dict[str, object] = {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": code}]}}
    if preferred is not None:
        entry["preferred"] = preferred
    return entry


@pytest.mark.parametrize("communication, expected", [
    ([_language("es-MX", True)], "es"),
    ([_language("en"), _language("pt-BR", True)], "pt"),   # the preferred one, wherever it is
    ([_language("de", True), _language("it")], "it"),       # preferred but ours not: the next we have
    ([_language("ru")], "ru"),                              # listed, nothing marked preferred
    ([_language("fr-CA", "true"), _language("es")], "fr"),  # a string is not `true`, but the order stands
    ([_language("de", True)], None),
    ([_language("x" * 500, True), _language(["es"]), _language(None), {"language": "es"}, "es", 7], None),
    ("es", None), (None, None), ([], None),
])
def test_the_preferred_language_comes_from_patient_communication(communication: object, expected: str | None) -> None:
    assert preferred_language({"resourceType": "Patient", "communication": communication}, Catalogs.load()) == expected
    assert preferred_language("not a patient", Catalogs.load()) is None


def test_a_language_rides_on_either_kind_of_link() -> None:
    assert with_language("https://v.example/join?t=abc", "es") == "https://v.example/join?t=abc&lang=es"
    assert with_language("https://v.example/j/Abc123", "fr") == "https://v.example/j/Abc123?lang=fr"
    assert with_language("https://v.example/j/Abc123", None) == "https://v.example/j/Abc123"


async def test_a_patients_error_page_speaks_their_language_whole(stack: Stack) -> None:
    # A link that does not work, opened from a Spanish link: title, advice, the reason line and <html lang>.
    page = await stack.browser.get(f"{stack.gateway_url}/join?t=not-a-token&lang=es",
                                   headers={"Accept-Language": "en"})
    body = await page.text()
    assert page.status == 400, body
    assert _lang_of(body) == "es"
    assert "<h1>Este enlace de la consulta no funciona</h1>" in body
    assert "Código del motivo: " in body and "Reason code" not in body
    assert _switcher(body)["es"][1]


async def test_a_failed_portal_launch_says_so_in_the_patients_language_without_repeating_its_url(
        stack: Stack) -> None:
    _set_language_cookie(stack, "it")
    # An EHR we do not know: the launch is refused on the spot.
    page = await stack.browser.get(f"{stack.gateway_url}/launch/patient?iss=https://unknown.example/fhir"
                                   f"&launch=spent", allow_redirects=False)
    body = await page.text()
    assert page.status >= 400, body
    assert _lang_of(body) == "it"
    assert "Codice del motivo: " in body
    assert 'class="languages"' not in body and "launch=spent" not in body
