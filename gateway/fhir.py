"""A small FHIR R4 client: reads with a bearer token over gateway.ehr, every failure turned into FhirError."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from .ehr import EhrClient, fhir_base_url, status_error
from .errors import FhirError, UpstreamError

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
RESOURCE_TYPES = frozenset({"Patient", "Practitioner", "PractitionerRole", "Encounter", "Appointment"})


def valid_id(value: object) -> bool:
    """Whether value is a FHIR logical id (so it is safe to put in a URL path)."""
    return isinstance(value, str) and bool(_ID.match(value))


def parse_reference(reference: object, expected_type: str) -> str | None:
    """The logical id of a relative reference like "Patient/123", or None when it is not one."""
    if not isinstance(reference, str):
        return None
    kind, _, ident = reference.rpartition("/")
    if kind.rsplit("/", 1)[-1] != expected_type or not valid_id(ident):
        return None
    return ident


class FhirClient:
    """Talks to one FHIR base URL on behalf of one access token, through the gateway's EHR client."""

    def __init__(self, ehr: EhrClient, base_url: str, access_token: str) -> None:
        self._ehr = ehr
        self._base = fhir_base_url(base_url) or base_url
        self._headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}

    async def read(self, resource_type: str, logical_id: str) -> dict[str, Any]:
        """Read one resource; refuses ids and answers that are not what FHIR promises."""
        if resource_type not in RESOURCE_TYPES or not valid_id(logical_id):
            raise FhirError(f"refused to read {resource_type} with a malformed id", reason="fhir_bad_reference")
        try:
            response = await self._ehr.request("GET", f"{self._base}/{resource_type}/{logical_id}", what="fhir",
                                               headers=self._headers)
        except UpstreamError as exc:
            # Same reason code and status (503 unreachable, 504 timeout, 502 otherwise), as a FhirError.
            raise FhirError(exc.detail, reason=exc.reason, status=exc.status,
                            upstream_status=exc.upstream_status) from exc
        status = response.status
        if status != 200:
            raise FhirError(f"the FHIR server answered {status} reading {resource_type}", upstream_status=status,
                            reason="fhir_unavailable" if status >= 500 else "fhir_refused",
                            status=status_error("fhir", status).status)
        resource = response.json_or_none()
        if resource is None:
            raise FhirError("the FHIR server answered something that is not a JSON object", reason="fhir_malformed")
        if resource.get("resourceType") != resource_type:
            raise FhirError(f"the FHIR server answered something that is not a {resource_type}",
                            reason="fhir_malformed")
        return resource


class FhirSearch:
    """Searches of one FHIR base URL, page by page, following the server's own `next` links only while they stay
    under that base (a link elsewhere is refused, not followed)."""

    def __init__(self, ehr: EhrClient, base_url: str, access_token: str) -> None:
        self._ehr = ehr
        self._base = fhir_base_url(base_url) or base_url
        self._headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}

    def first_url(self, resource_type: str, params: dict[str, str]) -> str:
        """The URL of a search's first page."""
        if resource_type not in RESOURCE_TYPES:
            raise FhirError(f"refused to search {resource_type}", reason="fhir_bad_reference")
        return f"{self._base}/{resource_type}?{urlencode(params)}"

    async def page(self, url: str) -> tuple[list[dict[str, Any]], str | None]:
        """One searchset page: its resources (entries in `match` mode) and the next page's URL, if any."""
        if not url.startswith(self._base + "/"):
            raise FhirError("the FHIR server's next link leaves its base URL; not followed",
                            reason="fhir_bad_reference")
        try:
            response = await self._ehr.request("GET", url, what="fhir", headers=self._headers)
        except UpstreamError as exc:
            raise FhirError(exc.detail, reason=exc.reason, status=exc.status,
                            upstream_status=exc.upstream_status) from exc
        if response.status != 200:
            raise FhirError(f"the FHIR server answered {response.status} to a search",
                            upstream_status=response.status,
                            reason="fhir_unavailable" if response.status >= 500 else "fhir_refused",
                            status=status_error("fhir", response.status).status)
        bundle = response.json_or_none()
        if bundle is None or bundle.get("resourceType") != "Bundle":
            raise FhirError("the FHIR server answered a search with something that is not a Bundle",
                            reason="fhir_malformed")
        found: list[dict[str, Any]] = []
        for entry in bundle.get("entry") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                continue
            mode = (entry.get("search") or {}).get("mode", "match") if isinstance(entry.get("search"), dict) \
                else "match"
            if mode == "match":
                found.append(entry["resource"])
        following = next((link.get("url") for link in bundle.get("link") or []
                          if isinstance(link, dict) and link.get("relation") == "next"), None)
        return found, following if isinstance(following, str) and following else None
