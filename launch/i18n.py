"""The patient-facing translation catalog (Babel, gettext), compiled at start-up from launch/locale.

Only the `.po` sources live in the repository: `load_translations` compiles a locale's catalog in memory
when the gateway starts, so a fresh clone works after `pip install -e .` with no build step and there is
no `.mo` file to fall out of date. Templates use jinja2's i18n extension (`{{ _("...") }}`); strings
the lobby's JavaScript shows are marked with `N_` in Python and rendered translated into a JSON blob.

After adding or changing a patient-facing string anywhere in launch/, refresh the catalog:

    python -m launch.catalog

It extracts every message into launch/locale/messages.pot, merges it into each locale's messages.po and,
for English (the language the messages are written in), fills in the translation. Other locales' new
entries then wait for a translator. (`pybabel extract -F launch/babel.cfg` does the extraction too.)
tests/join/test_catalog.py fails while a message is missing from the catalog.
"""
from __future__ import annotations

import io
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"
DEFAULT_LOCALE = "en"


def N_(message: str) -> str:
    """Mark a string for the catalog where it is defined; it is translated where it is shown."""
    return message


def po_path(locale: str) -> Path:
    """Where a locale's catalog source is."""
    return LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def load_translations(locale: str = DEFAULT_LOCALE) -> Translations:
    """Compile a locale's `.po` catalog in memory (fuzzy entries are left out, as msgfmt does)."""
    with po_path(locale).open("rb") as source:
        catalog = read_po(source, locale=locale, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(fp=compiled, domain=DOMAIN)

