"""Near misses: an `iss` that matches no configuration but differs from an approved FHIR base URL only by a
suffix, a path or its environment, so the organisation's admins can be told which configuration it nearly was.

Only admins see a near miss (in the error report); the launch itself is refused as any unknown `iss` is.
What is kept of the `iss` is `shown`: scheme, host and path, never its query, fragment or user info, with
path segments that could name a person replaced by `…`, and bounded in length. The comparison itself uses
the whole path, in memory only.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .ehr import fhir_base_url

MAX_SHOWN = 300
MAX_INPUT = 2048
# Words that name an environment in host names and paths (fhir-tst.example.org, /api/FHIR/R4-PRD).
ENVIRONMENT_WORDS = frozenset({
    "test", "tst", "testing", "dev", "development", "qa", "uat", "stage", "staging", "stg", "sandbox", "sbx",
    "prod", "prd", "production", "preprod", "nonprod", "poc", "train", "training", "demo", "preview"})
# Order of preference when an `iss` nearly matches several configurations.
DIFFERENCES = ("suffix", "environment", "path")
_WORD = re.compile(r"[-_.]")
_ENV_WORD = re.compile(r"^([a-z]+)\d{0,2}$")
# A FHIR resource type (Patient, RelatedPerson): the segment after it is an id, which may name a person.
_RESOURCE_TYPE = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z]+)*$")
_LONG_NUMBER = re.compile(r"\d{6,}")
# An address, an encoded character or a parameter: nothing a FHIR base URL needs, anything a value could hide in.
_PERSONAL = re.compile(r"[@%=;,]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Iss:
    """An `iss` taken apart for comparison (held in memory only)."""

    scheme: str
    netloc: str
    host: str
    segments: tuple[str, ...]
    had_query: bool

    @property
    def shown(self) -> str:
        """What may be kept and shown to admins: no query, no fragment, personal-looking segments masked."""
        kept: list[str] = []
        mask_next = False
        for segment in self.segments:
            if mask_next or _PERSONAL.search(segment) or _LONG_NUMBER.search(segment) or len(segment) > 64:
                kept.append("…")
            else:
                kept.append(segment)
            mask_next = bool(_RESOURCE_TYPE.match(segment))
        text = f"{self.scheme}://{self.netloc}" + "".join("/" + s for s in kept) + ("?…" if self.had_query else "")
        return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 1] + "…"


@dataclass(frozen=True)
class NearMiss:
    """The configuration an `iss` nearly matches, how it differs, and what of it may be kept."""

    configuration_id: int
    difference: str
    shown: str


def parse(url: str) -> Iss | None:
    """An `iss` (or a FHIR base URL) taken apart: scheme and host in lower case, no default port, path
    segments without empty ones; None when it is not an absolute http(s) URL."""
    if len(url) > MAX_INPUT or not url.isprintable():
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or not re.fullmatch(r"[a-z0-9.\-\[\]:]+", host):
        return None
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    segments = tuple(s for s in parts.path.split("/") if s)
    return Iss(scheme, netloc, host, segments, bool(parts.query or parts.fragment or url.endswith(("?", "#"))))


def _without_environment(words: str) -> str:
    kept = []
    for word in _WORD.split(words.lower()):
        match = _ENV_WORD.match(word)
        if match and match.group(1) in ENVIRONMENT_WORDS:
            continue
        kept.append(word)
    return "-".join(w for w in kept if w)


def _env_free(iss: Iss) -> tuple[str, str, tuple[str, ...]]:
    port = iss.netloc[len(iss.host):]
    host = ".".join(x for x in (_without_environment(label) for label in iss.host.split(".")) if x)
    return iss.scheme, host + port, tuple(x for x in (_without_environment(s) for s in iss.segments) if x)


def _lowered(iss: Iss) -> tuple[str, str, tuple[str, ...]]:
    return iss.scheme, iss.netloc, tuple(s.lower() for s in iss.segments)


def difference(iss: Iss, base: Iss) -> str | None:
    """How an `iss` differs from an approved base: "suffix", "environment", "path", or None (not a near miss,
    or no difference at all)."""
    same_origin = (iss.scheme, iss.netloc) == (base.scheme, base.netloc)
    if same_origin:
        shorter = min(len(iss.segments), len(base.segments))
        if iss.segments[:shorter] == base.segments[:shorter]:
            return "suffix" if iss.segments != base.segments or iss.had_query else None
    # Only when a word of an environment was dropped: a difference of case alone is a path's.
    if _env_free(iss) == _env_free(base) and (_env_free(iss) != _lowered(iss) or _env_free(base) != _lowered(base)):
        return "environment"
    return "path" if same_origin else None


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def parse_bases(approved: Iterable[tuple[int, str]]) -> list[tuple[int, Iss]]:
    """Approved (configuration id, FHIR base URL) pairs taken apart once, for `nearest`."""
    parsed = ((config_id, parse(fhir_base_url(base) or base)) for config_id, base in approved)
    return [(config_id, base) for config_id, base in parsed if base is not None]


def nearest(iss_text: str, approved: Iterable[tuple[int, Iss]]) -> NearMiss | None:
    """The approved configuration (id, parsed FHIR base URL: parse_bases) an unknown `iss` nearly matches, if
    any: the closest kind of difference first, then the longest shared path, then the oldest configuration."""
    iss = parse(iss_text)
    if iss is None:
        return None
    best: tuple[tuple[int, int, int], NearMiss] | None = None
    for config_id, base in approved:
        kind = difference(iss, base)
        if kind is None:
            continue
        rank = (DIFFERENCES.index(kind), -_common_prefix(iss.segments, base.segments), config_id)
        if best is None or rank < best[0]:
            best = (rank, NearMiss(config_id, kind, iss.shown))
    return best[1] if best else None
