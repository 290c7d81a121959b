"""In-memory FHIR R4 resource store with versions, as the sandbox EHR's database.

Every `put` writes a new version: `meta.versionId` counts up from "1" and `meta.lastUpdated` is the
write time, and every earlier version stays readable (`history`, `version`). Versions are kept as JSON
text and every read parses a fresh copy, so a test that edits what it read cannot change the store behind
the server's back (parsing is several times cheaper than the deep copies this used to make, which
delayed every answer queued behind a write).
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

SUPPORTED_TYPES = ("Patient", "Practitioner", "PractitionerRole", "Encounter", "Appointment")

Resource = dict[str, Any]


class StoreError(Exception):
    """Base of the store's own errors."""


class VersionConflict(StoreError):
    """The caller's expected version is not the current one (HTTP 412)."""


class UnsupportedType(StoreError):
    """The sandbox does not hold resources of this type."""


def now_instant() -> str:
    """Current time as a FHIR instant with milliseconds, in UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FhirStore:
    """Resources by type and logical id, each with its full version history."""

    def __init__(self) -> None:
        # (type, id) -> versions as JSON text, oldest first; the last one is current.
        self._versions: dict[tuple[str, str], list[str]] = {}

    def put(self, resource: Resource, *, if_match: str | None = None) -> Resource:
        """Create or update a resource and return the stored copy with its new meta."""
        rtype = resource.get("resourceType")
        if rtype not in SUPPORTED_TYPES:
            raise UnsupportedType(f"resource type {rtype!r} is not supported")
        rid = resource.get("id") or str(uuid.uuid4())
        key = (rtype, rid)
        # versionId n is the n-th version, so the current one is the count (no need to parse it).
        current = str(len(self._versions[key])) if key in self._versions else None
        # Checked and written with no await in between, so concurrent requests cannot interleave here.
        if if_match is not None and if_match != current:
            raise VersionConflict(f"{rtype}/{rid} is at version {current}, not {if_match}")
        versions = self._versions.setdefault(key, [])
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(len(versions) + 1)
        meta["lastUpdated"] = now_instant()
        stored = {**resource, "id": rid, "meta": meta}
        text = json.dumps(stored)
        versions.append(text)
        return stored  # the caller's to keep: the store holds only the text

    def current_text(self, rtype: str, rid: str) -> str | None:
        """The current version as stored JSON text (to answer with, unparsed), or None."""
        versions = self._versions.get((rtype, rid))
        return versions[-1] if versions else None

    def get(self, rtype: str, rid: str) -> Resource | None:
        """The current version of a resource, or None."""
        versions = self._versions.get((rtype, rid))
        return json.loads(versions[-1]) if versions else None

    def version(self, rtype: str, rid: str, version_id: str) -> Resource | None:
        """One version of a resource, or None."""
        versions = self._versions.get((rtype, rid), [])
        # versionId n is the n-th version (put numbers them so).
        if version_id.isdigit() and 1 <= int(version_id) <= len(versions):
            found: Resource = json.loads(versions[int(version_id) - 1])
            return found
        return None

    def history(self, rtype: str, rid: str) -> list[Resource]:
        """All versions of a resource, newest first (the order of FHIR's _history)."""
        return [json.loads(v) for v in reversed(self._versions.get((rtype, rid), []))]

    def all(self, rtype: str) -> list[Resource]:
        """Current versions of every resource of a type, in creation order."""
        return [json.loads(v[-1]) for (t, _), v in self._versions.items() if t == rtype]
