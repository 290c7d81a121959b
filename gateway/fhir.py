"""A small FHIR R4 client: reads with a bearer token, every failure turned into FhirError."""
from __future__ import annotations

import json
import re
from typing import Any

import aiohttp

from .errors import FhirError

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
    """Talks to one FHIR base URL on behalf of one access token."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, access_token: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}

    async def read(self, resource_type: str, logical_id: str) -> dict[str, Any]:
        """Read one resource; refuses ids and answers that are not what FHIR promises."""
        if resource_type not in RESOURCE_TYPES or not valid_id(logical_id):
            raise FhirError(f"refused to read {resource_type} with a malformed id", reason="fhir_bad_reference")
        url = f"{self._base}/{resource_type}/{logical_id}"
        try:
            async with self._http.get(url, headers=self._headers) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FhirError(f"the FHIR server could not be reached ({type(exc).__name__})",
                            reason="fhir_unreachable") from exc
        if status != 200:
            raise FhirError(f"the FHIR server answered {status} reading {resource_type}", status=status,
                            reason="fhir_unavailable" if status >= 500 else "fhir_refused")
        try:
            resource = json.loads(body)
        except ValueError as exc:
            raise FhirError("the FHIR server answered something that is not JSON", reason="fhir_malformed") from exc
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            raise FhirError(f"the FHIR server answered something that is not a {resource_type}",
                            reason="fhir_malformed")
        return resource
