"""The one outbound client for EHR calls: SMART discovery, token, JWKS, FHIR reads and writes.

Every request to an EHR (the SMART launch, backend services tokens, the provider view's reads, write-back)
goes through `EhrClient`, so the rules live in one place: no redirect is followed to another origin, an
answer is read up to a size cap, each call has a time limit, JSON is taken only under a JSON content type,
no request path carries `//`, and every failure is one of the upstream exceptions of gateway.errors with
a reason code (`<what>_<failure>`). Callers keep their own semantics: write-back reads the status and
headers of an answer this client hands back unjudged, and decides what to retry.

`fhir_base_url` is the one spelling of a FHIR base URL: configurations are stored in it, an EHR's `iss`
is looked up in it, and every URL under a base is built from it.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from .errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

MAX_BODY = 2 * 1024 * 1024  # an Encounter with years of extensions fits many times over
MAX_REDIRECTS = 3  # same-origin GET redirects only
DISCOVERY_TTL = 3600.0
DEFAULT_TIMEOUT = 10.0
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def fhir_base_url(url: str) -> str | None:
    """The canonical form of a FHIR base URL, or None when url cannot be one.

    Scheme and host in lower case (RFC 3986 says they are case-insensitive), no default port, no empty
    path segments (so no trailing slash and no `//`); no query, fragment, user info, spaces or control
    characters. Two spellings of one base give the same string.
    """
    if len(url) > 2048 or _CONTROL.search(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.query or parts.fragment or "@" in parts.netloc \
            or url.endswith(("?", "#")):
        return None
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = "/".join(segment for segment in parts.path.split("/") if segment)
    return urlunsplit((scheme, netloc, "/" + path if path else "", "", ""))


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port out of range, a broken IPv6 literal
        return None


def _join(url: str, location: str) -> str:
    try:
        return urljoin(url, location) if location else ""
    except ValueError:
        return ""


def is_json(content_type: str) -> bool:
    """Whether a media type (parameters already stripped) is JSON: application/json or application/*+json
    (application/fhir+json, application/jwk-set+json), or FHIR's pre-R4 application/json+fhir."""
    kind = content_type.strip().lower()
    return kind in ("application/json", "application/json+fhir") or \
        (kind.startswith("application/") and kind.endswith("+json"))


@dataclass(frozen=True)
class EhrResponse:
    """An EHR's answer, read whole (under the cap) and not yet judged."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    content_type: str
    what: str

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; a non-JSON content type or body is an UpstreamError (`<what>_invalid`)."""
        doc = self.json_or_none()
        if doc is None:
            raise UpstreamError(f"the EHR answered something that is not a JSON object ({self.what})",
                                reason=f"{self.what}_invalid", upstream_status=self.status)
        return doc

    def json_or_none(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None (for error answers, whose body is a courtesy)."""
        if not is_json(self.content_type):
            return None
        try:
            doc = json.loads(self.body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting is not
            return None
        return doc if isinstance(doc, dict) else None


def status_error(what: str, status: int) -> UpstreamError:
    """The exception for an EHR that answered an error status: 503 when it says it is unavailable, else 502."""
    if status in (429, 503):
        return UpstreamUnavailable(f"the EHR is unavailable ({what}, {status})", reason=f"{what}_unavailable",
                                   upstream_status=status)
    return UpstreamError(f"the EHR answered {status} ({what})", reason=f"{what}_failed", upstream_status=status)


class EhrClient:
    """Talks to EHRs for every part of the gateway, over one shared ClientSession, with one rule book."""

    def __init__(self, http: aiohttp.ClientSession, *, timeout: float = DEFAULT_TIMEOUT, max_body: int = MAX_BODY,
                 discovery_ttl: float = DISCOVERY_TTL) -> None:
        self._http = http
        self.timeout = timeout
        self.max_body = max_body
        self._discovery_ttl = discovery_ttl
        self._discovery: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._discovery_fetches: dict[str, asyncio.Future[Mapping[str, Any]]] = {}

    async def close(self) -> None:
        """Cancel discovery fetches still under way (at shutdown, before the session closes)."""
        fetches = list(self._discovery_fetches.values())
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)

    async def request(self, method: str, url: str, *, what: str, headers: Mapping[str, str] | None = None,
                      data: bytes | Mapping[str, str] | None = None, timeout: float | None = None) -> EhrResponse:
        """Send one request and read its answer whole, whatever its status; failures raise UpstreamError.

        Redirects: a GET follows at most MAX_REDIRECTS to the same origin; any other redirect is refused
        (`<what>_redirect`) without a request to where it points.
        """
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                return await self._request(method, url, what, dict(headers or {}), data)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"the EHR did not answer in time ({what})", reason=f"{what}_timeout") from exc
        except aiohttp.ClientConnectionError as exc:  # refused, reset, DNS, TLS, disconnected
            raise UpstreamUnavailable(f"the EHR could not be reached ({what}, {type(exc).__name__})",
                                      reason=f"{what}_unreachable") from exc
        except aiohttp.ClientError as exc:  # a malformed answer: bad headers, bad chunking, bad encoding
            raise UpstreamError(f"the EHR answered something unreadable ({what}, {type(exc).__name__})",
                                reason=f"{what}_invalid") from exc

    async def _request(self, method: str, url: str, what: str, headers: dict[str, str],
                       data: bytes | Mapping[str, str] | None) -> EhrResponse:
        first = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            self._check_url(url, what)
            async with self._http.request(method, url, headers=headers, data=data, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=None)) as response:
                if response.status in (301, 302, 303, 307, 308):
                    target = _join(url, response.headers.get("Location", ""))
                    if method != "GET" or not target or first is None or _origin(target) != first:
                        raise UpstreamError(f"the EHR redirected elsewhere ({what}); not followed",
                                            reason=f"{what}_redirect", upstream_status=response.status)
                    url = target
                    continue
                body = await self._read_capped(response, what)
                return EhrResponse(response.status, response.headers, body, response.content_type, what)
        raise UpstreamError(f"the EHR redirected too many times ({what})", reason=f"{what}_redirect")

    def _check_url(self, url: str, what: str) -> None:
        try:
            parts = urlsplit(url)
            ok = parts.scheme.lower() in _DEFAULT_PORTS and bool(parts.hostname) and parts.port != 0 \
                and "//" not in parts.path and not _CONTROL.search(url)
        except ValueError:
            ok = False
        if not ok:
            raise UpstreamError(f"refused to call a malformed EHR URL ({what})", reason=f"{what}_bad_url")

    async def _read_capped(self, response: aiohttp.ClientResponse, what: str) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self.max_body:
            raise UpstreamError(f"the EHR's answer is too large ({what})", reason=f"{what}_too_large",
                                upstream_status=response.status)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_body:
                raise UpstreamError(f"the EHR's answer is too large ({what})", reason=f"{what}_too_large",
                                    upstream_status=response.status)
            chunks.append(chunk)
        return b"".join(chunks)

    async def get_json(self, url: str, what: str, *, headers: Mapping[str, str] | None = None,
                       timeout: float | None = None) -> dict[str, Any]:
        """GET a JSON object that must come with 200; anything else is an UpstreamError."""
        response = await self.request("GET", url, what=what, timeout=timeout,
                                      headers={"Accept": "application/json", **(headers or {})})
        if response.status != 200:
            raise status_error(what, response.status)
        return response.json()

    async def smart_configuration(self, fhir_base: str) -> Mapping[str, Any]:
        """The EHR's `.well-known/smart-configuration`, as sent (callers vet what they use).

        One cache for the whole gateway (launch and backend services): fetched once per base URL per TTL,
        concurrent callers share one fetch, failures are not kept.
        """
        base = fhir_base_url(fhir_base)
        if base is None:
            raise UpstreamError("refused to discover a malformed FHIR base URL", reason="discovery_bad_url")
        cached = self._discovery.get(base)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        # Callers that arrive while a fetch is under way wait for that fetch, and share its failure too: ten
        # launches against an EHR that is down wait one time limit, not ten in a row.
        fetch = self._discovery_fetches.get(base)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch_discovery(base))
            self._discovery_fetches[base] = fetch
            fetch.add_done_callback(lambda done: self._fetched(base, done))
        # Shielded: a caller that gives up (its browser went away) does not cancel the others' fetch.
        return await asyncio.shield(fetch)

    async def _fetch_discovery(self, base: str) -> Mapping[str, Any]:
        doc = await self.get_json(f"{base}/.well-known/smart-configuration", "discovery")
        self._discovery[base] = (time.monotonic() + self._discovery_ttl, doc)
        return doc

    def _fetched(self, base: str, done: asyncio.Future[Mapping[str, Any]]) -> None:
        self._discovery_fetches.pop(base, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so a failure nobody waited for any more is not reported as lost
