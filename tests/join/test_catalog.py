"""The patient-facing translation catalog: every message in the launch part's templates and code has an
English translation, the template file is current, and the pages render through the catalog."""
from __future__ import annotations

import re
from pathlib import Path

from babel.messages.pofile import read_po

from launch.catalog import PACKAGE_DIR, extract_messages
from launch.i18n import LOCALE_DIR, load_translations, po_path
from launch.join import JS_STRINGS, LINK_MESSAGES

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
    for message in [*JS_STRINGS.values(), *(m for pair in LINK_MESSAGES.values() for m in pair)]:
        assert english.get(message), message


def test_every_patient_facing_template_string_goes_through_the_catalog() -> None:
    # Text between tags in the patient templates must come from {{ _("...") }}, not be written in English.
    for name in ("join.html", "lobby.html", "patient_inapp.html"):
        source = (LAUNCH_DIR / "templates" / name).read_text()
        source = re.sub(r"\{#.*?#\}|\{\{.*?\}\}|\{%.*?%\}|<[^>]*>", " ", source, flags=re.S)
        assert not re.findall(r"[A-Za-z]{2,}", source), f"{name} has text outside the catalog"


def test_the_catalog_compiles_at_start_up() -> None:
    translations = load_translations("en")
    assert translations.gettext("Waiting room") == "Waiting room"
    assert translations.gettext(JS_STRINGS["waiting"]) == "Your clinician will let you in."
