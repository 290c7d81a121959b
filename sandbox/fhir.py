"""The sandbox EHR's FHIR R4 REST API: read, vread, search, update (PUT), JSON Patch and history.

Every call under /fhir, except discovery and the CapabilityStatement, needs a live Bearer token whose
scopes allow the interaction. Tokens holding only `patient/` scopes see the launch patient's
compartment and nothing else, as a patient-facing EHR API does. Errors are OperationOutcomes.
"""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timezone
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from .appkeys import FAULTS, OAUTH, SETTINGS, STORE
from .config import Faults
from .grants import AccessToken
from .jsonpatch import PatchError, apply_patch
from .scopes import allowing_levels
from .store import SUPPORTED_TYPES, Resource, VersionConflict, now_instant

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
# Discovery and the CapabilityStatement stay reachable, unauthenticated and unfaulted, so a client can
# always learn how to talk to the server.
OPEN_PATHS = ("/fhir/metadata", "/fhir/.well-known/smart-configuration")
PATCHABLE_TYPES = ("Encounter",)
# Practitioners are not patient data; a patient-scoped token may read them like a portal shows its staff.
COMPARTMENT_FREE_TYPES = ("Practitioner", "PractitionerRole")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ETAG = re.compile(r'^(?:W/)?"([^"]+)"$')
_DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FhirError(Exception):
    """An error answered as an OperationOutcome."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = headers or {}


def fhir_response(body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A FHIR JSON answer."""
    return web.json_response(body, status=status, headers=headers, content_type=FHIR_JSON)


def operation_outcome(status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None) -> web.Response:
    """An OperationOutcome answer with one error issue."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return fhir_response(body, status=status, headers=headers)


_STATUS_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                       409: "conflict", 412: "conflict", 415: "not-supported", 422: "processing", 429: "throttled"}


@web.middleware
async def fhir_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply injected faults to FHIR calls and turn every FHIR error into an OperationOutcome."""
    if not request.path.startswith("/fhir/") or request.path in OPEN_PATHS:
        return await handler(request)
    faults = request.app[FAULTS]
    if faults.fhir_answer_after > 0:
        arrived = time.monotonic()
        response = await _faulty(request, handler, faults)
        await asyncio.sleep(max(0.0, arrived + faults.fhir_answer_after - time.monotonic()))
        return response
    return await _faulty(request, handler, faults)


async def _faulty(request: web.Request, handler: Handler, faults: Faults) -> web.StreamResponse:
    if faults.fhir_delay > 0:
        await asyncio.sleep(faults.fhir_delay)
    if faults.fhir_status is not None:
        code = _STATUS_ISSUE_CODES.get(faults.fhir_status, "exception" if faults.fhir_status >= 500 else "processing")
        return operation_outcome(faults.fhir_status, code, "failure injected by the sandbox",
                                 _retry_after(faults.fhir_status, faults.fhir_retry_after))
    if faults.fhir_fail_next > 0:
        faults.fhir_fail_next -= 1
        status = faults.fhir_fail_status
        code = _STATUS_ISSUE_CODES.get(status, "exception" if status >= 500 else "processing")
        return operation_outcome(status, code, "failure injected by the sandbox",
                                 _retry_after(status, faults.fhir_retry_after))
    if faults.fhir_412_next > 0 and request.method in ("PUT", "PATCH"):
        faults.fhir_412_next -= 1
        return operation_outcome(412, "conflict", "version conflict injected by the sandbox")
    try:
        return await handler(request)
    except FhirError as exc:
        return operation_outcome(exc.status, exc.code, exc.diagnostics, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return operation_outcome(exc.status, _STATUS_ISSUE_CODES.get(exc.status, "exception"), exc.reason, headers)


def _retry_after(status: int, seconds: int | None) -> dict[str, str] | None:
    """A Retry-After header for injected 429 and 503 answers, when the fault names one."""
    return {"Retry-After": str(seconds)} if seconds is not None and status in (429, 503) else None


# --- helpers -------------------------------------------------------------------------------------


def _check_type(rtype: str) -> None:
    if rtype not in SUPPORTED_TYPES:
        raise FhirError(404, "not-supported", f"resource type {rtype!r} is not supported")


def _access(request: web.Request, rtype: str, permission: str) -> tuple[AccessToken, set[str]]:
    """The caller's token and the scope levels that allow `permission` on `rtype`; 401/403 otherwise."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise FhirError(401, "login", "a Bearer access token is required", {"WWW-Authenticate": 'Bearer realm="sandbox"'})
    token = request.app[OAUTH].access_token(value.strip())
    if token is None:
        raise FhirError(
            401, "login", "the access token is unknown, expired or revoked",
            {"WWW-Authenticate": 'Bearer realm="sandbox", error="invalid_token"'},
        )
    levels = allowing_levels(token.scopes, rtype, permission)
    if not levels:
        verbs = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
        raise FhirError(403, "forbidden", f"the token's scopes do not allow {verbs[permission]} on {rtype}")
    return token, levels


def _compartment_patient(token: AccessToken, levels: set[str], rtype: str) -> str | None:
    """The patient whose compartment limits this access, or None when the access is not limited."""
    if levels != {"patient"} or rtype in COMPARTMENT_FREE_TYPES:
        return None
    patient = token.grant.context.patient_id if token.grant.context else None
    if not patient:
        raise FhirError(403, "forbidden", "patient/ scopes need a patient in the launch context")
    return patient


def _local_ref(request: web.Request, reference: str) -> str:
    """A reference as "Type/id", whether it was written relative or absolute to this server."""
    prefix = request.app[SETTINGS].fhir_base + "/"
    return reference[len(prefix):] if reference.startswith(prefix) else reference


def _references(request: web.Request, resource: Resource, rtype: str) -> list[str]:
    """Every patient-relevant reference in a resource, as "Type/id"."""
    refs: list[str] = []
    if rtype == "Encounter":
        refs.append((resource.get("subject") or {}).get("reference", ""))
    elif rtype == "Appointment":
        refs.extend((p.get("actor") or {}).get("reference", "") for p in resource.get("participant", []))
    return [_local_ref(request, r) for r in refs if r]


def _in_compartment(request: web.Request, resource: Resource, patient_id: str) -> bool:
    rtype = resource.get("resourceType", "")
    if rtype == "Patient":
        return resource.get("id") == patient_id
    return f"Patient/{patient_id}" in _references(request, resource, rtype)


def _version_headers(resource: Resource) -> dict[str, str]:
    """ETag and Last-Modified for a stored resource."""
    meta = resource["meta"]
    updated = datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
    return {"ETag": f'W/"{meta["versionId"]}"', "Last-Modified": format_datetime(updated, usegmt=True)}


def _if_match(request: web.Request) -> str | None:
    """The version named by If-Match, or None when the header is absent."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    match = _ETAG.match(header.strip())
    if match is None:
        raise FhirError(400, "invalid", 'If-Match must look like W/"<versionId>"')
    return match.group(1)


async def _json_body(request: web.Request, allowed_types: tuple[str, ...]) -> Any:
    if request.content_type not in allowed_types:
        raise FhirError(415, "not-supported", f"Content-Type must be {' or '.join(allowed_types)}")
    try:
        return await request.json()
    except ValueError as exc:
        raise FhirError(400, "invalid", "the body is not valid JSON") from exc


def _full_url(request: web.Request, resource: Resource) -> str:
    return f"{request.app[SETTINGS].fhir_base}/{resource['resourceType']}/{resource['id']}"


# --- search --------------------------------------------------------------------------------------


def _ref_matches(request: web.Request, reference: str, wanted: str, default_type: str | None) -> bool:
    """Does a reference point at the searched-for value ("id", "Type/id" or an absolute URL)?"""
    ref = _local_ref(request, reference)
    wanted = _local_ref(request, wanted)
    if "/" in wanted:
        return ref == wanted
    if default_type is not None:
        return ref == f"{default_type}/{wanted}"
    return ref.endswith("/" + wanted)


def _date_matches(start: str | None, criterion: str) -> bool:
    """FHIR date search on an instant, at day precision for a date and exactly for a dateTime."""
    prefix = criterion[:2] if criterion[:2] in _DATE_PREFIXES else "eq"
    value = criterion[2:] if criterion[:2] in _DATE_PREFIXES else criterion
    try:
        if len(value) == 10:
            date.fromisoformat(value)
            left: Any = start[:10] if start else None  # the appointment's own local date
            right: Any = value
        else:
            right = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if right.tzinfo is None:
                right = right.replace(tzinfo=timezone.utc)
            left = datetime.fromisoformat(start.replace("Z", "+00:00")) if start else None
    except ValueError as exc:
        raise FhirError(400, "invalid", f"{criterion!r} is not a date") from exc
    if left is None:
        return False
    return bool({
        "eq": left == right, "ne": left != right, "gt": left > right,
        "lt": left < right, "ge": left >= right, "le": left <= right,
    }[prefix])


def _token_matches(identifiers: list[dict[str, Any]], criterion: str) -> bool:
    """Token search on identifiers: "value" or "system|value"."""
    system, sep, value = criterion.rpartition("|")
    for ident in identifiers:
        if ident.get("value") == value and (not sep or ident.get("system") == system):
            return True
    return False


def _matches(request: web.Request, resource: Resource, name: str, value: str) -> bool | None:
    """Whether the resource matches one search criterion; None when the parameter is not supported."""
    rtype = resource["resourceType"]
    if name == "_id":
        return bool(resource["id"] == value)
    if rtype in ("Encounter", "Appointment") and name == "status":
        return bool(resource.get("status") == value)
    if rtype in ("Patient", "Practitioner") and name == "identifier":
        return _token_matches(resource.get("identifier", []), value)
    if rtype == "Encounter":
        if name in ("patient", "subject"):
            ref = (resource.get("subject") or {}).get("reference", "")
            return bool(ref) and _ref_matches(request, ref, value, "Patient" if name == "patient" else None)
        if name == "appointment":
            refs = [a.get("reference", "") for a in resource.get("appointment", [])]
            return any(_ref_matches(request, r, value, "Appointment") for r in refs if r)
    if rtype == "Appointment":
        actors = [(p.get("actor") or {}).get("reference", "") for p in resource.get("participant", [])]
        kinds = {"patient": "Patient", "practitioner": "Practitioner", "actor": None}
        if name in kinds:
            return any(_ref_matches(request, r, value, kinds[name]) for r in actors if r)
        if name == "date":
            return _date_matches(resource.get("start"), value)
    if rtype == "PractitionerRole" and name == "practitioner":
        ref = (resource.get("practitioner") or {}).get("reference", "")
        return bool(ref) and _ref_matches(request, ref, value, "Practitioner")
    return None


async def search(request: web.Request) -> web.Response:
    """GET /fhir/{type}?...: a searchset Bundle of the matching resources."""
    rtype = request.match_info["type"]
    _check_type(rtype)
    token, levels = _access(request, rtype, "s")
    compartment = _compartment_patient(token, levels, rtype)
    count: int | None = None
    if "_count" in request.query:
        try:
            count = int(request.query["_count"])
        except ValueError:
            count = -1
        if count < 0:
            raise FhirError(400, "invalid", "_count must be a non-negative integer")

    found: list[Resource] = []
    for resource in request.app[STORE].all(rtype):
        if compartment is not None and not _in_compartment(request, resource, compartment):
            continue
        ok = True
        # Repeated parameters are ANDed; comma-separated values within one are ORed.
        for name, raw in request.query.items():
            if name == "_lastUpdated" and not _date_matches(resource.get("meta", {}).get("lastUpdated"), raw):
                ok = False
                break
            if name.startswith("_") and name != "_id":
                continue
            results = [_matches(request, resource, name, v) for v in raw.split(",")]
            if results and results[0] is None:
                continue  # a parameter the sandbox does not know is ignored, as lenient servers do
            if not any(results):
                ok = False
                break
        if ok:
            found.append(resource)

    if request.query.get("_sort") in ("_lastUpdated", "-_lastUpdated"):
        found.sort(key=lambda r: r.get("meta", {}).get("lastUpdated", ""),
                   reverse=request.query["_sort"].startswith("-"))
    try:
        offset = max(0, int(request.query.get("_offset", "0")))
    except ValueError:
        raise FhirError(400, "invalid", "_offset must be a non-negative integer") from None
    shown = found[offset:] if count is None else found[offset:offset + count]
    settings = request.app[SETTINGS]
    links = [{"relation": "self", "url": settings.base_url + str(request.rel_url)}]
    if count is not None and offset + count < len(found):
        # Paging as servers do it: the next page is a link to follow verbatim.
        links.append({"relation": "next", "url": settings.base_url + str(
            request.rel_url.update_query({"_offset": str(offset + count)}))})
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": now_instant()},
        "type": "searchset",
        "total": len(found),
        "link": links,
        "entry": [
            {"fullUrl": _full_url(request, r), "resource": r, "search": {"mode": "match"}} for r in shown
        ],
    }
    return fhir_response(bundle)


# --- read, vread, history ------------------------------------------------------------------------


def _readable(request: web.Request, rtype: str, rid: str) -> Resource:
    """The current resource after checking type, token, scope and compartment."""
    _check_type(rtype)
    token, levels = _access(request, rtype, "r")
    resource = request.app[STORE].get(rtype, rid)
    if resource is None:
        raise FhirError(404, "not-found", f"{rtype}/{rid} does not exist")
    compartment = _compartment_patient(token, levels, rtype)
    if compartment is not None and not _in_compartment(request, resource, compartment):
        # Outside the patient's compartment the resource is not there, as far as this token can tell.
        raise FhirError(404, "not-found", f"{rtype}/{rid} does not exist")
    return resource


async def read(request: web.Request) -> web.Response:
    """GET /fhir/{type}/{id}: the current version."""
    resource = _readable(request, request.match_info["type"], request.match_info["id"])
    return fhir_response(resource, headers=_version_headers(resource))


async def vread(request: web.Request) -> web.Response:
    """GET /fhir/{type}/{id}/_history/{vid}: one version."""
    rtype, rid, vid = request.match_info["type"], request.match_info["id"], request.match_info["vid"]
    _readable(request, rtype, rid)
    resource = request.app[STORE].version(rtype, rid, vid)
    if resource is None:
        raise FhirError(404, "not-found", f"{rtype}/{rid} has no version {vid}")
    return fhir_response(resource, headers=_version_headers(resource))


async def history(request: web.Request) -> web.Response:
    """GET /fhir/{type}/{id}/_history: every version, newest first."""
    rtype, rid = request.match_info["type"], request.match_info["id"]
    _readable(request, rtype, rid)
    versions = request.app[STORE].history(rtype, rid)
    entries = []
    for v in versions:
        first = v["meta"]["versionId"] == "1"
        entries.append(
            {
                "fullUrl": _full_url(request, v),
                "resource": v,
                "request": {"method": "POST" if first else "PUT", "url": rtype if first else f"{rtype}/{rid}"},
                "response": {
                    "status": "201 Created" if first else "200 OK",
                    "etag": f'W/"{v["meta"]["versionId"]}"',
                    "lastModified": v["meta"]["lastUpdated"],
                },
            }
        )
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": now_instant()},
        "type": "history",
        "total": len(entries),
        "entry": entries,
    }
    return fhir_response(bundle)


# --- writes --------------------------------------------------------------------------------------


def _store_write(request: web.Request, resource: Resource, if_match: str | None, existed: bool) -> web.Response:
    try:
        stored = request.app[STORE].put(resource, if_match=if_match)
    except VersionConflict as exc:
        raise FhirError(412, "conflict", str(exc)) from exc
    headers = _version_headers(stored)
    if not existed:
        headers["Location"] = f"{_full_url(request, stored)}/_history/{stored['meta']['versionId']}"
    # The text the store just wrote is the answer: no second serialisation.
    text = request.app[STORE].current_text(stored["resourceType"], stored["id"])
    return web.Response(text=text, status=200 if existed else 201, headers=headers, content_type=FHIR_JSON)


async def update(request: web.Request) -> web.Response:
    """PUT /fhir/{type}/{id}: a new version, guarded by If-Match when given."""
    rtype, rid = request.match_info["type"], request.match_info["id"]
    _check_type(rtype)
    body = await _json_body(request, (FHIR_JSON, "application/json"))
    if not isinstance(body, dict) or body.get("resourceType") != rtype:
        raise FhirError(400, "invalid", f"the body must be a {rtype} resource")
    if body.get("id") != rid or not _FHIR_ID.match(rid):
        raise FhirError(400, "invalid", "the resource id must equal the id in the URL")
    if_match = _if_match(request)
    # No await from here to the write, so the version check and the write cannot interleave.
    current = request.app[STORE].get(rtype, rid)
    token, levels = _access(request, rtype, "u" if current else "c")
    compartment = _compartment_patient(token, levels, rtype)
    if compartment is not None and not all(
        _in_compartment(request, r, compartment) for r in (current, body) if r is not None
    ):
        raise FhirError(403, "forbidden", "patient/ scopes only allow writes in the launch patient's record")
    return _store_write(request, body, if_match, existed=current is not None)


async def patch(request: web.Request) -> web.Response:
    """PATCH /fhir/Encounter/{id}: apply an RFC 6902 JSON Patch, all operations or none."""
    rtype, rid = request.match_info["type"], request.match_info["id"]
    _check_type(rtype)
    if rtype not in PATCHABLE_TYPES:
        raise FhirError(405, "not-supported", f"PATCH is supported on {', '.join(PATCHABLE_TYPES)} only")
    operations = await _json_body(request, (JSON_PATCH,))
    if_match = _if_match(request)
    token, levels = _access(request, rtype, "u")
    current = request.app[STORE].get(rtype, rid)
    if current is None:
        raise FhirError(404, "not-found", f"{rtype}/{rid} does not exist")
    compartment = _compartment_patient(token, levels, rtype)
    if compartment is not None and not _in_compartment(request, current, compartment):
        raise FhirError(404, "not-found", f"{rtype}/{rid} does not exist")
    if if_match is not None and if_match != current["meta"]["versionId"]:
        raise FhirError(412, "conflict", f"{rtype}/{rid} is at version {current['meta']['versionId']}, not {if_match}")
    try:
        patched = apply_patch(current, operations)
    except PatchError as exc:
        raise FhirError(422, "processing", f"patch not applied: {exc}") from exc
    if not isinstance(patched, dict) or patched.get("resourceType") != rtype or patched.get("id") != rid:
        raise FhirError(422, "processing", "a patch must not change resourceType or id")
    if compartment is not None and not _in_compartment(request, patched, compartment):
        raise FhirError(403, "forbidden", "the patch would move the resource out of the patient's record")
    return _store_write(request, patched, current["meta"]["versionId"], existed=True)


# --- capability statement ------------------------------------------------------------------------


async def metadata(request: web.Request) -> web.Response:
    """GET /fhir/metadata: a minimal R4 CapabilityStatement naming the SMART endpoints."""
    settings = request.app[SETTINGS]
    search_params = {
        "Patient": ["_id", "identifier"],
        "Practitioner": ["_id", "identifier"],
        "PractitionerRole": ["_id", "practitioner"],
        "Encounter": ["_id", "patient", "subject", "appointment", "status"],
        "Appointment": ["_id", "patient", "practitioner", "actor", "date", "status"],
    }
    resources = []
    for rtype in SUPPORTED_TYPES:
        interactions = ["read", "vread", "update", "history-instance", "search-type"]
        if rtype in PATCHABLE_TYPES:
            interactions.append("patch")
        resources.append(
            {
                "type": rtype,
                "versioning": "versioned-update",
                "updateCreate": True,
                "interaction": [{"code": c} for c in interactions],
                "searchParam": [{"name": n, "type": "string"} for n in search_params[rtype]],
            }
        )
    body = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now_instant(),
        "kind": "instance",
        "software": {"name": "Visitgate sandbox EHR"},
        "implementation": {"description": "Synthetic SMART on FHIR EHR for demos and tests", "url": settings.fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "patchFormat": [JSON_PATCH],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [
                                {"url": "authorize", "valueUri": f"{settings.base_url}/oauth/authorize"},
                                {"url": "token", "valueUri": settings.token_endpoint},
                            ],
                        }
                    ],
                    "service": [
                        {
                            "coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}
                            ]
                        }
                    ],
                },
                "resource": resources,
            }
        ],
    }
    return fhir_response(body)


def setup_routes(app: web.Application) -> None:
    """Add the FHIR routes; fixed paths first so `{type}` never captures them."""
    app.router.add_get("/fhir/metadata", metadata)
    app.router.add_get("/fhir/{type}/{id}/_history/{vid}", vread)
    app.router.add_get("/fhir/{type}/{id}/_history", history)
    app.router.add_get("/fhir/{type}/{id}", read)
    app.router.add_put("/fhir/{type}/{id}", update)
    app.router.add_patch("/fhir/{type}/{id}", patch)
    app.router.add_get("/fhir/{type}", search)
