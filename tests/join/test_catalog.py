"""The translation catalog of the launch part's pages and messages: every message in their templates, code and
script string tables is translated in each of the six languages with its placeholders kept, the template file
is current, the pages render through the catalog, and every string a script asks for by name is in its page's
table."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from launch.catalog import PACKAGE_DIR, extract_messages
from launch.i18n import LOCALE_DIR, LOCALES, Catalogs, load_translations, po_path
from launch.invites import SMS_TEXT
from launch.join import LINK_MESSAGES
from launch.page_strings import JOIN, LOBBY, PAGES, PROVIDER, ROOM

LAUNCH_DIR = PACKAGE_DIR


def _extracted() -> set[str]:
    found = set()
    for message in extract_messages():
        if message.id:
            assert isinstance(message.id, str), f"plural messages need ngettext support: {message.id!r}"
            found.add(message.id)
    return found


def _catalog(path: Path) -> dict[str, str]:
    with path.open("rb") as source:
        catalog = read_po(source)
    return {m.id: m.string for m in catalog if m.id and not m.fuzzy}


def test_every_template_and_code_message_has_an_english_translation() -> None:
    messages = _extracted()
    assert len(messages) > 40  # the join page, the lobby and the refusal pages
    english = _catalog(po_path("en"))
    missing = sorted(m for m in messages if not english.get(m))
    assert not missing, f"untranslated in en (run python -m launch.catalog): {missing}"


def test_the_message_template_is_current() -> None:
    template = _catalog(LOCALE_DIR / "messages.pot")
    assert _extracted() <= set(template), "run python -m launch.catalog"


def test_javascript_and_refusal_strings_are_in_the_catalog() -> None:
    english = _catalog(po_path("en"))
    for message in [*(m for strings in PAGES.values() for m in strings.values()), *(m for pair in LINK_MESSAGES.values() for m in pair)]:
        assert english.get(message), message


def test_every_template_string_goes_through_the_catalog() -> None:
    # Text between tags in the patients' and the clinician's templates must come from {{ _("...") }}, not be
    # written in English (the product's name aside).
    for name in ("join.html", "lobby.html", "patient_inapp.html", "room.html", "provider.html", "invite_result.html",
                 "launch_new_window.html", "teams_signed_in.html"):
        source = (LAUNCH_DIR / "templates" / name).read_text()
        source = re.sub(r"\{#.*?#\}|\{\{.*?\}\}|\{%.*?%\}|<[^>]*>|Visitgate", " ", source, flags=re.S)
        assert not re.findall(r"[A-Za-z]{2,}", source), f"{name} has text outside the catalog"


def test_the_catalog_compiles_at_start_up() -> None:
    translations = load_translations("en")
    assert translations.gettext("Waiting room") == "Waiting room"
    assert translations.gettext(LOBBY["waiting"]) == "Your clinician will let you in."
    assert translations.gettext(PROVIDER["error.database_unavailable"]) == (
        "Not done: the gateway cannot reach its database. Try again in a moment.")


# Each page's scripts (its module and the modules it imports), for the check below.
SCRIPTS = {
    "join": ["join.js", "patient-common.js"],
    "lobby": ["lobby.js", "patient-common.js", "chat.js"],
    "room": ["room.js", "waiting.js", "chat.js"],
    "provider": ["provider.js", "invite.js", "waiting.js", "chat.js", "invitations.js"],
    "queue": ["queue.js", "waiting.js"],
}


def test_every_string_a_script_asks_for_is_in_its_page_table() -> None:
    # t("key") with a literal key: a key missing from the table would show the key itself to the user.
    for page, files in SCRIPTS.items():
        for name in files:
            source = (LAUNCH_DIR / "static" / name).read_text()
            for key in re.findall(r"""\bt\(\s*["']([^"']+)["']\s*[,)]""", source):
                assert key in PAGES[page], f"{name} asks for {key!r}, which the {page} page's strings lack"


def test_no_script_writes_its_words_in_english() -> None:
    # Words reach the scripts through i18n.js only: no English sentence assigned to what the page shows.
    for path in (LAUNCH_DIR / "static").glob("*.js"):
        source = path.read_text()
        shown = re.findall(r"""(?:textContent|innerText|title)\s*=\s*["'][A-Za-z][^"']*["']""", source)
        assert not shown, f"{path.name} shows text outside the catalog: {shown}"


@pytest.mark.parametrize("locale", LOCALES)
def test_every_message_is_translated_in_each_of_the_six_languages(locale: str) -> None:
    # Every page, email and SMS message, the clinician's included: a page must never fall back to English midway.
    catalog = _catalog(po_path(locale))
    untranslated = sorted(m for m in _extracted() if not catalog.get(m))
    assert not untranslated, f"untranslated in {locale} (write them in {po_path(locale)}): {untranslated}"


@pytest.mark.parametrize("locale", LOCALES)
def test_each_translation_keeps_its_placeholders(locale: str) -> None:
    # %(name)s for templates and messages, {name} for scripts: a lost or renamed one breaks the sentence.
    placeholder = re.compile(r"%\([a-z_]+\)s|\{[a-z_]+\}")
    for message, translation in _catalog(po_path(locale)).items():
        assert sorted(placeholder.findall(translation)) == sorted(placeholder.findall(message)), (
            locale, message, translation)


def test_the_six_languages_have_a_catalog_each_and_load_at_start_up() -> None:
    assert set(LOCALES) == {"en", "es", "fr", "pt", "ru", "it"}
    assert Catalogs.load().locales == list(LOCALES)
    expected = {"es": "Su profesional de la salud le dejará entrar.", "fr": "Votre soignant va vous faire entrer.",
                "pt": "O profissional de saúde vai deixar você entrar.", "ru": "Врач пригласит Вас.",
                "it": "Il medico la farà entrare.", "en": "Your clinician will let you in."}
    for locale, text in expected.items():
        assert load_translations(locale).gettext(LOBBY["waiting"]) == text


# GSM 03.38's basic alphabet and extension table: a text in it is one SMS segment up to 160 characters;
# one letter outside it makes the whole text UCS-2, 70 a segment.
GSM_7 = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
            "¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€")


@pytest.mark.parametrize("locale", ["en", "es", "fr", "pt", "it"])
def test_the_join_sms_stays_in_the_gsm_alphabet(locale: str) -> None:
    # Cyrillic cannot; the other five can, and a stray accent would halve what one segment holds.
    text = load_translations(locale).gettext(SMS_TEXT) % {"organisation": "Clinic", "link": "https://x.test/j/abc"}
    assert set(text) <= GSM_7, sorted(set(text) - GSM_7)
