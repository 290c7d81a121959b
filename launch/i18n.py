"""The translation catalog (Babel, gettext) of the launch part's pages, compiled at start-up from launch/locale.

Only the `.po` sources live in the repository: `Catalogs.load` compiles every locale's catalog in memory
when the gateway starts, so a fresh clone works after `pip install -e .` with no build step and there is
no `.mo` file to fall out of date.

One mechanism for every page, its template and its script alike: a handler adds
`page_strings.for_page(request, page)` to its template's context. That picks the request's language
(`Catalogs.locale_for`) and, through `page_context` here, gives the template a
`gettext` for that language (jinja2's i18n extension resolves `_()` through it) and `lang` for `<html lang>`,
and gives it `js_strings`: the page's script strings (launch/page_strings.py, marked with `N_`) translated,
which the template renders into `<script type="application/json" id="i18n">` for launch/static/i18n.js.

The language of a request (`Catalogs.locale_for`): a `?lang=xx` in the URL (the join link carries the
patient's preferred language from FHIR `Patient.communication`, read when the link is sent; the language
switcher's links carry the patient's choice), then the `vg_lang` cookie that remembers such a choice in the
patient's own browser, then Accept-Language. The preferred language is patient data: it travels in the link
and the cookie only, never into the database or the logs.

After adding or changing a patient-facing string anywhere in launch/, refresh the catalog:

    python -m launch.catalog

It extracts every message into launch/locale/messages.pot, merges it into each locale's messages.po and,
for English (the language the messages are written in), fills in the translation. Other locales' new
entries then wait for a translator. (`pybabel extract -F launch/babel.cfg` does the extraction too.)
tests/join/test_catalog.py fails while a message is missing from the catalog.
"""
from __future__ import annotations

import datetime as dt
import io
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import hdrs, web
from babel import dates
from babel.core import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"
DEFAULT_LOCALE = "en"
LOCALES = ("en", "es", "fr", "pt", "ru", "it")
"""The languages every patient-facing page and message comes in; `python -m launch.catalog` keeps a
catalog for each, and tests/join/test_catalog.py fails while one of them lacks a translation."""
LANGUAGE_PARAM = "lang"
"""The query parameter that names a page's language: on join links and the language switcher's links."""
LANGUAGE_COOKIE = "vg_lang"
"""Remembers, in the patient's browser only, the language a link or the switcher chose."""
LANGUAGE_COOKIE_AGE = 365 * 24 * 3600


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



def available_locales() -> list[str]:
    """The locales that have a catalog in launch/locale, the default first."""
    found = sorted(p.parent.parent.name for p in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))
    return sorted(found, key=lambda name: name != DEFAULT_LOCALE)


def _accepted(header: str) -> list[str]:
    """Accept-Language's language tags, most wanted first (q=0 and malformed parts left out)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip()
        if not tag or tag == "*" or len(tag) > 35 or not all(c.isalnum() or c == "-" for c in tag):
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if 0 < quality <= 1:
            ranked.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(ranked)]


class Catalogs:
    """Every locale's compiled catalog, and the choice of one for a request."""

    def __init__(self, translations: Mapping[str, Translations]) -> None:
        self._translations = dict(translations)

    @classmethod
    def load(cls) -> Catalogs:
        """Compile every locale in launch/locale (in LOCALES' order: the switcher shows them so)."""
        found = available_locales()
        ordered = [locale for locale in LOCALES if locale in found] + [l for l in found if l not in LOCALES]
        return cls({locale: load_translations(locale) for locale in ordered})

    @property
    def locales(self) -> list[str]:
        """The locales there are catalogs for."""
        return list(self._translations)

    def negotiate(self, accept_language: str) -> str:
        """The best of our locales for an Accept-Language header (the default when none fits)."""
        for tag in _accepted(accept_language):
            found = self.from_tag(tag)
            if found is not None:
                return found
        return DEFAULT_LOCALE

    def from_tag(self, tag: object) -> str | None:
        """One of our locales for a BCP-47 language tag (`es-MX` gives `es`), or None."""
        if not isinstance(tag, str) or not 0 < len(tag) <= 35 or not all(c.isalnum() or c in "-_" for c in tag):
            return None
        tag = tag.replace("_", "-")
        # The whole tag first (a catalog for a region would win), then its language alone: Babel refuses tags
        # with subtags it does not know (`es-XX`), and the language is what matters.
        for candidate in (tag, tag.split("-")[0]):
            try:
                wanted = Locale.parse(candidate, sep="-")
            except (ValueError, TypeError, UnknownLocaleError):
                continue
            for name in (str(wanted), wanted.language):
                if name in self._translations:
                    return name
        return None

    def chosen(self, request: web.Request) -> str | None:
        """The language the URL (`?lang=`) or, failing that, the language cookie names, when it is ours."""
        for value in (request.query.get(LANGUAGE_PARAM), request.cookies.get(LANGUAGE_COOKIE)):
            if value in self._translations:
                return value
        return None

    def locale_for(self, request: web.Request) -> str:
        """The language to answer a request in: the URL's or the cookie's choice, else Accept-Language."""
        return self.chosen(request) or self.negotiate(request.headers.get("Accept-Language", ""))

    def translations(self, locale: str) -> Translations:
        """A locale's catalog (the default one for a locale we do not have)."""
        return self._translations.get(locale) or self._translations[DEFAULT_LOCALE]


def preferred_language(patient: object, catalogs: Catalogs) -> str | None:
    """The patient's language from a FHIR Patient's `communication`, when we have a catalog for it: an
    entry marked `preferred: true` first, then the others in their order; `language.coding[].code` is BCP-47."""
    communication = patient.get("communication") if isinstance(patient, dict) else None
    if not isinstance(communication, list):
        return None
    entries = [entry for entry in communication[:20] if isinstance(entry, dict)]
    entries.sort(key=lambda entry: entry.get("preferred") is not True)  # stable: keeps the order within each
    for entry in entries:
        language = entry.get("language")
        codings = language.get("coding") if isinstance(language, dict) else None
        if not isinstance(codings, list):
            continue
        for coding in codings[:20]:
            found = catalogs.from_tag(coding.get("code")) if isinstance(coding, dict) else None
            if found is not None:
                return found
    return None


def with_language(url: str, locale: str | None) -> str:
    """A link with `?lang=` added (after any query it has already), so the page it opens speaks `locale`."""
    if not locale:
        return url
    return f"{url}{'&' if '?' in url else '?'}{LANGUAGE_PARAM}={locale}"


def format_moment(moment: dt.datetime, locale: str, zone: str) -> str:
    """A date and time as a patient reads it: in the locale's words and order, in the organisation's time
    zone, with that zone's name (\"jueves, 3 de diciembre de 2026, 11:30 (hora estándar de Europa central)\")."""
    tz = ZoneInfo(zone)
    local = moment.astimezone(tz)
    day = dates.format_date(local, "full", locale=locale)
    time = dates.format_time(local, "short", tzinfo=tz, locale=locale)
    name = dates.get_timezone_name(local, "long", locale=locale)
    pattern = str(dates.get_datetime_format("medium", locale=locale)).replace("'", "")
    return pattern.replace("{1}", day).replace("{0}", f"{time} ({name})")


def language_choices(request: web.Request, current: str, locales: list[str]) -> list[dict[str, Any]]:
    """The language switcher's links: this page again with `?lang=` set (other query parameters kept), each
    language named in itself."""
    choices = []
    for locale in locales:
        query = request.rel_url.update_query({LANGUAGE_PARAM: locale}).raw_query_string
        name = Locale.parse(locale).get_display_name(locale) or locale
        choices.append({"code": locale, "name": name[:1].upper() + name[1:], "href": f"?{query}",
                        "current": locale == current})
    return choices


def language_cookie_hook(catalogs: Catalogs, secure: bool) -> Callable[[web.Request, web.StreamResponse],
                                                                         Awaitable[None]]:
    """An on_response_prepare hook: a page opened with a `?lang=` we have keeps that language in the
    browser's cookie, so the pages after it (the lobby after the join page, the room) speak it too."""
    async def remember(request: web.Request, response: web.StreamResponse) -> None:
        # It runs before every response: the method and status first, the query only for a page with one.
        if request.method != "GET" or response.status != 200 or not request.rel_url.raw_query_string:
            return
        wanted = request.query.get(LANGUAGE_PARAM)
        if wanted is None or wanted not in catalogs.locales or request.cookies.get(LANGUAGE_COOKIE) == wanted:
            return
        # By now aiohttp has turned response.cookies into headers, so the cookie goes in as a header itself
        # (`wanted` is one of our locale names, nothing else).
        cookie = (f"{LANGUAGE_COOKIE}={wanted}; Max-Age={LANGUAGE_COOKIE_AGE}; Path=/; HttpOnly; SameSite=Lax"
                  + ("; Secure" if secure else ""))
        response.headers.add(hdrs.SET_COOKIE, cookie)

    return remember


def _template_gettext(translations: Translations) -> Callable[..., str]:
    # What jinja2's i18n extension installs ("newstyle"): autoescaped, with %(name)s variables.
    @pass_context
    def gettext(context: Context, message: str, **variables: Any) -> str:
        text = str(translations.gettext(message))
        if context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables

    return gettext


def _template_ngettext(translations: Translations) -> Callable[..., str]:
    @pass_context
    def ngettext(context: Context, singular: str, plural: str, num: int, **variables: Any) -> str:
        variables.setdefault("num", num)
        text = str(translations.ngettext(singular, plural, num))
        if context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables

    return ngettext


def page_context(catalogs: Catalogs, locale: str, strings: Mapping[str, str]) -> dict[str, Any]:
    """What a page's template needs to speak a language: `lang`, the `gettext` its `_()` uses, and
    `js_strings`, the page's script strings translated (for the i18n block)."""
    translations = catalogs.translations(locale)
    return {
        "lang": locale,
        "gettext": _template_gettext(translations),
        "ngettext": _template_ngettext(translations),
        "js_strings": {key: str(translations.gettext(message)) for key, message in strings.items()},
    }
