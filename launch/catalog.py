"""Keeping the patient-facing catalog current: extract the messages of launch/ and merge them into every
locale of i18n.LOCALES, starting a catalog for a locale that has none yet (`python -m launch.catalog`; see
launch/i18n.py)."""
from __future__ import annotations

import copy
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

from .i18n import DOMAIN, LOCALE_DIR, LOCALES, po_path

PACKAGE_DIR = Path(__file__).parent
EXTRACT_METHODS = [("**/templates/**.html", "jinja2"), ("**.py", "python")]
# The gateway's own pages that patients see too (the error page, through patient_facing_errors).
SHARED_TEMPLATES = PACKAGE_DIR.parent / "gateway" / "templates"


def extract_messages() -> Catalog:
    """Every message marked in the launch part's templates (`_()`) and code (`_()`, `N_()`), and in the
    gateway's shared templates."""
    template = Catalog(project="visitgate", copyright_holder="Visitgate contributors", fuzzy=False)
    for folder, methods in ((PACKAGE_DIR, EXTRACT_METHODS), (SHARED_TEMPLATES, [("**.html", "jinja2")])):
        for filename, lineno, message, comments, context in extract_from_dir(str(folder), methods):
            template.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return template


def refresh_catalog() -> None:
    """Rewrite messages.pot from the sources and merge it into every locale (English translates itself)."""
    template = extract_messages()
    with (LOCALE_DIR / "messages.pot").open("wb") as out:
        write_po(out, template, no_location=True, sort_output=True, width=100)
    for locale in LOCALES:
        po = po_path(locale)
        if po.exists():
            with po.open("rb") as source:
                catalog = read_po(source, locale=locale, domain=DOMAIN)
        else:
            po.parent.mkdir(parents=True, exist_ok=True)
            catalog = Catalog(locale=locale, domain=DOMAIN, project="visitgate",
                              copyright_holder="Visitgate contributors", fuzzy=False)
        # A copy each: update() adopts the template's message objects, and English fills them in below.
        catalog.update(copy.deepcopy(template), no_fuzzy_matching=True)
        if locale == "en":
            for message in catalog:
                if message.id and not message.string:
                    message.string = message.id
        with po.open("wb") as out:
            write_po(out, catalog, no_location=True, sort_output=True, width=100, ignore_obsolete=True)


if __name__ == "__main__":
    refresh_catalog()
