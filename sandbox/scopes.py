"""SMART scopes: which ones the sandbox knows, and what a set of granted scopes allows.

Both SMART v1 (`patient/Encounter.read`, `.write`, `.*`) and v2 (`patient/Encounter.rs`, `.cu`, ...)
resource scopes are understood; v2 scopes with query parameters are not, so they are not granted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .store import SUPPORTED_TYPES

# Scopes that are not about resources; an EHR grants these when asked.
IDENTITY_SCOPES = frozenset(
    {"openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter", "offline_access", "online_access"}
)
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z]+|\*)$")
_V2_LETTERS = "cruds"


@dataclass(frozen=True)
class ResourceScope:
    """One parsed resource scope."""

    level: str  # "patient" | "user" | "system"
    resource_type: str  # a type or "*"
    permissions: str  # a subset of "cruds"

    def allows(self, resource_type: str, permission: str) -> bool:
        """True when this scope grants `permission` (one of c r u d s) on `resource_type`."""
        return self.resource_type in ("*", resource_type) and permission in self.permissions


def parse_resource_scope(scope: str) -> ResourceScope | None:
    """Parse a resource scope; None when it is not one the sandbox understands."""
    match = _RESOURCE_SCOPE.match(scope)
    if match is None:
        return None
    level, rtype, perms = match.groups()
    if rtype != "*" and rtype not in SUPPORTED_TYPES:
        return None
    if perms in V1_PERMISSIONS:
        return ResourceScope(level, rtype, V1_PERMISSIONS[perms])
    # v2 letters must appear at most once each and in the order c r u d s.
    if re.fullmatch("c?r?u?d?s?", perms) and perms:
        return ResourceScope(level, rtype, perms)
    return None


def known_scopes(requested: list[str]) -> tuple[str, ...]:
    """The requested scopes the sandbox can grant, in request order, without duplicates."""
    granted: list[str] = []
    for scope in requested:
        if scope in granted:
            continue
        if scope in IDENTITY_SCOPES or parse_resource_scope(scope) is not None:
            granted.append(scope)
    return tuple(granted)


def resource_scopes(scopes: tuple[str, ...]) -> list[ResourceScope]:
    """The resource scopes among granted scopes."""
    return [p for p in (parse_resource_scope(s) for s in scopes) if p is not None]


def allowing_levels(scopes: tuple[str, ...], resource_type: str, permission: str) -> set[str]:
    """Levels ("patient", "user", "system") of the granted scopes that allow this access."""
    return {s.level for s in resource_scopes(scopes) if s.allows(resource_type, permission)}
