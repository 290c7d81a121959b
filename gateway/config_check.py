"""The live check of a configuration before it is saved: what the portal's form and `visitgate config add` both
run, so an admin hears about a misconfiguration (the seeds' troubleshooting list) before an approver or a
clinician meets it.

Each known misconfiguration has its own reason code and an actionable message (PROBLEMS); the EHR is asked
only through the one EHR client, and a failure of the EHR becomes a message, never a stack trace.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from .configurations import NewConfiguration, by_base
from .ehr import EhrClient
from .errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

# reason → (the form field it belongs to, what to do about it). {base} and {suggested} are filled in.
PROBLEMS: dict[str, tuple[str, str]] = {
    "http_in_production": ("fhir_base_url", "A production FHIR base URL must use https. Plain http would carry "
                           "tokens and patient context unencrypted; use the https address your EHR publishes."),
    "test_url_as_production": ("environment", "This URL looks like a test or sandbox server ({base}), but the "
                               "environment is production. Choose test, or enter the production FHIR base URL."),
    "production_url_as_test": ("environment", "This URL looks like a production server ({base}), but the "
                               "environment is test. Choose production, or enter the test FHIR base URL."),
    "duplicate": ("fhir_base_url", "This FHIR base URL is already registered (here or in another organisation). "
                  "Change the existing configuration instead of adding a second one."),
    "missing_r4_suffix": ("fhir_base_url", "This URL answers as an older FHIR version, and {suggested} answers as "
                          "R4. Use the R4 endpoint: {suggested}"),
    "fhir_dstu2": ("fhir_base_url", "This server speaks FHIR DSTU2 (1.0). Virtual visits need the R4 endpoint; "
                   "ask your EHR team for the R4 FHIR base URL (often the same address ending in /R4)."),
    "fhir_stu3": ("fhir_base_url", "This server speaks FHIR STU3 (3.0). Virtual visits need the R4 endpoint; "
                  "ask your EHR team for the R4 FHIR base URL."),
    "fhir_version_unknown": ("fhir_base_url", "This server's CapabilityStatement does not say it speaks FHIR R4 "
                             "(4.0). Check that the URL is the R4 FHIR base URL."),
    "no_metadata": ("fhir_base_url", "No FHIR CapabilityStatement was found at {base}/metadata. Check that this is "
                    "the FHIR base URL (not the EHR's web address or its OAuth server)."),
    "unreachable": ("fhir_base_url", "The FHIR server at {base} could not be reached from this gateway. Check the "
                    "address, and that the gateway's network may reach it (firewall, VPN, DNS)."),
    "oauth_not_set_up": ("fhir_base_url", "The FHIR server answers, but publishes no SMART configuration "
                         "({base}/.well-known/smart-configuration). OAuth 2.0 is not set up for it at the EHR: ask "
                         "your EHR team to enable SMART on FHIR for this endpoint."),
    "no_s256": ("fhir_base_url", "The EHR's authorization server does not list PKCE S256 "
                "(code_challenge_methods_supported), which Visitgate requires. Ask your EHR team to enable it."),
    "no_private_key_jwt": ("client_auth", "The EHR does not accept private_key_jwt (asymmetric client "
                           "authentication) at its token endpoint. Choose the authentication registered for this "
                           "client at the EHR, or ask your EHR team to enable JWT client authentication."),
    "no_backend_services": ("writeback_strategy", "Write-back needs SMART backend services (the client_credentials "
                            "grant), which this EHR does not list. Turn write-back off, or register a backend "
                            "services client at the EHR first."),
}
# Words in a host name or path that say which kind of server it is.
_TEST_WORDS = {"test", "tst", "sandbox", "sbx", "poc", "dev", "uat", "stage", "staging", "nonprod", "preprod"}
_PROD_WORDS = {"prod", "prd", "production"}
_TEST_HOSTS = {"fhir.epic.com"}  # Epic's public sandbox (open.epic)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Problem:
    """One misconfiguration: its reason code, the form field it concerns and what to do about it."""

    reason: str
    field: str
    message: str


def problem(reason: str, base: str, suggested: str = "") -> Problem:
    """The Problem for a reason code, its message filled in."""
    field, message = PROBLEMS[reason]
    return Problem(reason, field, message.format(base=base, suggested=suggested))


def environment_said(base: str) -> str | None:
    """"test" or "production" when the URL's host or path says which, else None."""
    parts = urlsplit(base)
    host = (parts.hostname or "").lower()
    if host in _TEST_HOSTS:
        return "test"
    words = set(_WORD.findall(host)) | set(_WORD.findall(parts.path.lower()))
    if words & _TEST_WORDS:
        return "test"
    if words & _PROD_WORDS:
        return "production"
    return None


def fhir_release(version: object) -> str | None:
    """FHIR's release name for a CapabilityStatement's fhirVersion: DSTU2, STU3, R4, or None."""
    if not isinstance(version, str):
        return None
    for prefix, name in (("1.0.", "DSTU2"), ("3.0.", "STU3"), ("4.0.", "R4")):
        if version.startswith(prefix):
            return name
    return None


def static_problems(new: NewConfiguration) -> list[Problem]:
    """What can be said of a configuration without asking anyone."""
    return url_problems(new.fhir_base_url, new.environment)


def url_problems(base: str, environment: str) -> list[Problem]:
    """What a FHIR base URL (in its one spelling) says against the environment it is registered for."""
    found = []
    if environment == "production" and base.startswith("http://"):
        found.append(problem("http_in_production", base))
    said = environment_said(base)
    if said == "test" and environment == "production":
        found.append(problem("test_url_as_production", base))
    elif said == "production" and environment == "test":
        found.append(problem("production_url_as_test", base))
    return found


async def _release_at(ehr: EhrClient, base: str) -> str:
    """The FHIR release at base: "DSTU2", "STU3", "R4", "unknown" (answered, other version) or "none"."""
    try:
        response = await ehr.request("GET", f"{base}/metadata", what="metadata",
                                     headers={"Accept": "application/fhir+json"})
    except (UpstreamUnavailable, UpstreamTimeout):
        raise
    except UpstreamError:
        return "none"
    doc = response.json_or_none() if response.status == 200 else None
    if doc is None or doc.get("resourceType") != "CapabilityStatement" and doc.get("resourceType") != "Conformance":
        return "none"
    return fhir_release(doc.get("fhirVersion")) or "unknown"


async def live_problems(ehr: EhrClient, new: NewConfiguration) -> list[Problem]:
    """What the EHR itself says: FHIR version (and a missing /R4), SMART discovery, S256, client auth, backend
    services. An EHR that cannot be reached is one problem, not many."""
    base = new.fhir_base_url
    try:
        release = await _release_at(ehr, base)
        if release != "R4" and not base.lower().endswith("/r4"):
            if await _release_at(ehr, base + "/R4") == "R4":
                return [problem("missing_r4_suffix", base, base + "/R4")]
        if release != "R4":
            reason = {"DSTU2": "fhir_dstu2", "STU3": "fhir_stu3", "unknown": "fhir_version_unknown"}
            return [problem(reason.get(release, "no_metadata"), base)]
        try:
            # Asked afresh, not from the launch's discovery cache: the admin may just have fixed the EHR.
            doc: Mapping[str, Any] = await ehr.get_json(f"{base}/.well-known/smart-configuration", "discovery")
        except (UpstreamUnavailable, UpstreamTimeout):
            raise
        except UpstreamError:
            return [problem("oauth_not_set_up", base)]
    except (UpstreamUnavailable, UpstreamTimeout):
        return [problem("unreachable", base)]
    found = []
    if not isinstance(doc.get("authorization_endpoint"), str) or not isinstance(doc.get("token_endpoint"), str):
        found.append(problem("oauth_not_set_up", base))
    methods = doc.get("code_challenge_methods_supported")
    if not isinstance(methods, list) or "S256" not in methods:
        found.append(problem("no_s256", base))
    auth_methods = doc.get("token_endpoint_auth_methods_supported")
    if new.client_auth == "private_key_jwt" and not (isinstance(auth_methods, list)
                                                     and "private_key_jwt" in auth_methods):
        found.append(problem("no_private_key_jwt", base))
    grants = doc.get("grant_types_supported")
    if new.writeback_strategy != "none" and not (isinstance(grants, list) and "client_credentials" in grants):
        found.append(problem("no_backend_services", base))
    return found


async def stored_problems(conn: asyncpg.Connection, new: NewConfiguration, *,
                          configuration_id: int | None = None) -> list[Problem]:
    """The static problems and a duplicate FHIR base URL (in any organisation; configuration_id is the one
    being changed): what can be said without asking the EHR."""
    found = static_problems(new)
    other = await by_base(conn, new.fhir_base_url)
    if other is not None and other[0] != configuration_id:
        found.append(problem("duplicate", new.fhir_base_url))
    return found


async def check_configuration(conn: asyncpg.Connection, ehr: EhrClient, new: NewConfiguration, *,
                              configuration_id: int | None = None) -> list[Problem]:
    """Every problem of a configuration about to be saved (empty: it may be saved): stored_problems, then the
    live check through the EHR client. (A server hands its connection back before the live check: see the
    portal's form.)"""
    found = await stored_problems(conn, new, configuration_id=configuration_id)
    return found + await live_problems(ehr, new)
