"""The Graph double's change notifications for Teams meetings: subscriptions, rich notifications, lifecycle
events and attendance reports, added to the Graph double's application (`setup(app, authorize=...)`).

It holds to the documented contract and refuses what Graph refuses:
- `POST /beta/subscriptions` for `/communications/onlineMeetings(joinWebUrl='…')/meetingCallEvents` (beta only:
  v1.0 refuses the resource), changeType `updated`, an application token with OnlineMeetings.Read.All or
  OnlineMeetings.ReadWrite.All for the meeting's tenant; `includeResourceData` needs `encryptionCertificate`
  (base64 DER X.509, RSA) and `encryptionCertificateId`; a rich subscription for more than an hour needs a
  `lifecycleNotificationUrl`; `expirationDateTime` in the future and at most three days on (4,320 minutes,
  the documented limit of this resource; `max_minutes`); a
  `clientState` of at most 128 characters. Before creating it, the double POSTs each notification URL with a
  `validationToken` query parameter and creates the subscription only if the token comes back as text/plain with
  200 within ten seconds.
- `PATCH` (a new expiry, the same limits), `DELETE`, `POST …/reauthorize`.
- Roster changes (the Teams join page's roster hook, or `POST /_controls/meetings/{id}/roster`) go to every
  subscription of the meeting as encrypted rich notifications: a random AES-256 key encrypts the JSON
  (CBC, PKCS7, the key's first 16 bytes as IV), HMAC-SHA256 with that key signs the ciphertext, and the key is
  encrypted to the subscriber's certificate with RSA-OAEP (SHA-1); installed on the Graph double, each collection
  carries `validationTokens` signed by its Entra (iss sts.windows.net/{tenant}/, aud the subscribing app, azp and
  appid Graph's change-tracking application).
- Controls fire lifecycle notifications (reauthorizationRequired, subscriptionRemoved, missed) and can change
  the roster without notifying (a missed notification); attendance reports (v1.0, OnlineMeetingArtifact.Read.All)
  are made from the roster's history, their records paged with @odata.nextLink and the reports answering 404
  for a while, as Graph does before it has produced them, when `POST /_controls/attendance` says so.
Nothing here imports the gateway: it meets it over HTTP only.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .appkeys import GRAPH, ROSTER_LISTENERS

RESOURCE = re.compile(r"^/?communications/onlineMeetings\(joinWebUrl='([^']+)'\)/meetingCallEvents$")
READ_ROLES = frozenset({"OnlineMeetings.Read.All", "OnlineMeetings.ReadWrite.All"})
ARTIFACT_ROLE = "OnlineMeetingArtifact.Read.All"
HANDSHAKE_TIMEOUT = 10.0
CHANGE_TRACKING_APP = "0bf30f3b-4a52-48df-9a82-234910c4a086"  # Microsoft Graph change tracking's application id


@dataclass(frozen=True)
class Caller:
    """Who called, from the bearer token: the tenant and application, and the application's roles."""

    tenant_id: str
    app_id: str
    roles: frozenset[str]


Authorize = Callable[[web.Request], Awaitable[Caller]]


@dataclass
class Stretch:
    """One stretch of time an identity spent in the meeting's call (for attendance reports)."""

    identity: dict[str, Any]
    joined: dt.datetime
    left: dt.datetime | None = None


@dataclass
class Meeting:
    """A meeting the double knows, its live roster (call legs by id) and its history."""

    id: str
    join_web_url: str
    organizer_id: str
    tenant_id: str
    roster: dict[str, dict[str, Any]] = field(default_factory=dict)
    stretches: dict[str, Stretch] = field(default_factory=dict)  # by call leg
    started: bool = False


@dataclass
class Subscription:
    """A subscription as the double keeps it."""

    id: str
    meeting_id: str
    resource: str
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires: dt.datetime
    tenant_id: str
    app_id: str
    public_key: rsa.RSAPublicKey | None
    certificate_id: str | None
    thumbprint: str | None


@dataclass
class GraphEvents:
    """Everything the double's notifications part holds (on the app, under EVENTS)."""

    authorize: Authorize
    max_minutes: int = 4320
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    meetings: dict[str, Meeting] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)  # what was sent where, and the answer
    http: aiohttp.ClientSession | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Meetings made elsewhere in the double (createOrGet): (id, join URL, organizer, tenant) of each.
    elsewhere: Callable[[], list[tuple[str, str, str, str]]] = lambda: []
    # Signs the validation tokens of rich notifications (the double's Entra key), when there is one.
    sign: Callable[[dict[str, Any]], str] | None = None
    # Attendance reports (set by /_controls/attendance): records served this many to a page (None: all at once),
    # and the next this many reads of a report answered 404, as while Graph has not produced it yet.
    records_page_size: int | None = None
    reports_not_ready: int = 0
    reads: list[str] = field(default_factory=list)  # the attendance paths read, in order
    # The origin the double's @odata.nextLink names (None: the one it was called on).
    link_base: str | None = None

    def meeting_by_url(self, join_web_url: str) -> Meeting | None:
        """The meeting with that join URL."""
        found = next((m for m in self.meetings.values() if m.join_web_url == join_web_url), None)
        if found is None:
            found = self._adopt(lambda made: made[1] == join_web_url)
        return found

    def meeting_by_id(self, meeting_id: str) -> Meeting | None:
        """The meeting with that id."""
        return self.meetings.get(meeting_id) or self._adopt(lambda made: made[0] == meeting_id)

    def _adopt(self, wanted: Callable[[tuple[str, str, str, str]], bool]) -> Meeting | None:
        made = next((m for m in self.elsewhere() if wanted(m)), None)
        if made is None:
            return None
        meeting = self.meetings[made[0]] = Meeting(*made)
        return meeting


EVENTS = web.AppKey("graph_events", GraphEvents)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _time(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    text = value.replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def graph_error(status: int, code: str, message: str) -> web.Response:
    """Graph's error body."""
    return web.json_response({"error": {"code": code, "message": message,
                                        "innerError": {"request-id": str(uuid.uuid4())}}}, status=status)


def _url_allowed(url: Any) -> bool:
    # Graph calls https endpoints only; the double also calls a test's gateway on the loopback address.
    if not isinstance(url, str) or len(url) > 2048:
        return False
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost"))


def encrypt_for(public_key: rsa.RSAPublicKey, certificate_id: str, thumbprint: str,
                resource: dict[str, Any]) -> dict[str, Any]:
    """A changeNotificationEncryptedContent of the resource for the subscriber's certificate."""
    key = os.urandom(32)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(json.dumps(resource).encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    data = encryptor.update(plain) + encryptor.finalize()
    wrapped = public_key.encrypt(key, asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA1()),
                                                        algorithm=hashes.SHA1(), label=None))
    return {"data": base64.b64encode(data).decode(),
            "dataSignature": base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode(),
            "dataKey": base64.b64encode(wrapped).decode(),
            "encryptionCertificateId": certificate_id,
            "encryptionCertificateThumbprint": thumbprint}


def _subscription_json(sub: Subscription) -> dict[str, Any]:
    return {"@odata.context": "https://graph.microsoft.com/beta/$metadata#subscriptions/$entity",
            "id": sub.id, "resource": sub.resource, "changeType": "updated", "clientState": sub.client_state,
            "notificationUrl": sub.notification_url, "lifecycleNotificationUrl": sub.lifecycle_url,
            "expirationDateTime": _time(sub.expires), "applicationId": sub.app_id,
            "includeResourceData": sub.public_key is not None, "encryptionCertificateId": sub.certificate_id,
            "latestSupportedTlsVersion": "v1_2"}


async def _handshake(state: GraphEvents, url: str) -> bool:
    """POST the URL with a validationToken; True only for 200, text/plain and the token itself, in time."""
    assert state.http is not None
    token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
    try:
        async with asyncio.timeout(state.handshake_timeout):
            async with state.http.post(url, params={"validationToken": token}, allow_redirects=False) as answer:
                body = await answer.text()
                ok = (answer.status == 200 and answer.content_type == "text/plain" and body == token)
    except (TimeoutError, aiohttp.ClientError):
        ok = False
    state.deliveries.append({"kind": "validation", "url": url, "ok": ok})
    return ok


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def create_subscription(request: web.Request) -> web.Response:
    """POST /{version}/subscriptions."""
    state = request.app[EVENTS]
    caller = await state.authorize(request)
    body = await _body(request)
    if body is None:
        return graph_error(400, "BadRequest", "The request body must be a JSON object.")
    missing = [name for name in ("changeType", "notificationUrl", "resource", "expirationDateTime")
               if not body.get(name)]
    if missing:
        return graph_error(400, "BadRequest", f"Missing required properties: {', '.join(missing)}.")
    match = RESOURCE.match(str(body["resource"]))
    if match is None or request.match_info["version"] != "beta":
        return graph_error(400, "InvalidRequest", "The resource is not supported for subscriptions on this version.")
    if body["changeType"] != "updated":
        return graph_error(400, "InvalidRequest", "meetingCallEvents support changeType 'updated' only.")
    if not READ_ROLES & caller.roles:
        return graph_error(403, "Forbidden", "The application lacks OnlineMeetings.Read.All.")
    meeting = state.meeting_by_url(unquote(match.group(1)))
    if meeting is None:
        return graph_error(404, "NotFound", "No online meeting has this joinWebUrl.")
    if meeting.tenant_id != caller.tenant_id:
        return graph_error(403, "Forbidden", "The meeting is not in the caller's tenant.")
    urls = [body["notificationUrl"]] + ([body["lifecycleNotificationUrl"]] if body.get("lifecycleNotificationUrl")
                                        else [])
    if not all(_url_allowed(url) for url in urls):
        return graph_error(400, "InvalidRequest", "Notification URLs must be https.")
    expires = _parse_time(body["expirationDateTime"])
    now = _now()
    if expires is None or expires <= now:
        return graph_error(400, "InvalidRequest", "expirationDateTime must be a time in the future.")
    if expires > now + dt.timedelta(minutes=state.max_minutes):
        return graph_error(400, "InvalidRequest",
                           f"Subscription expiration can only be {state.max_minutes} minutes in the future.")
    client_state = body.get("clientState")
    if client_state is not None and (not isinstance(client_state, str) or len(client_state) > 128):
        return graph_error(400, "InvalidRequest", "clientState is at most 128 characters.")
    public_key = certificate_id = thumbprint = None
    if body.get("includeResourceData") is True:
        certificate_id = body.get("encryptionCertificateId")
        try:
            der = base64.b64decode(str(body.get("encryptionCertificate") or ""), validate=True)
            certificate = x509.load_der_x509_certificate(der)
            key = certificate.public_key()
        except ValueError:
            return graph_error(400, "InvalidRequest", "encryptionCertificate must be a base64 DER certificate.")
        if not isinstance(key, rsa.RSAPublicKey) or not isinstance(certificate_id, str) \
                or not 0 < len(certificate_id) <= 128:
            return graph_error(400, "InvalidRequest", "Rich notifications need an RSA encryptionCertificate and "
                                                      "an encryptionCertificateId.")
        public_key = key
        thumbprint = certificate.fingerprint(hashes.SHA1()).hex().upper()
        if expires > now + dt.timedelta(hours=1) and not body.get("lifecycleNotificationUrl"):
            return graph_error(400, "InvalidRequest", "lifecycleNotificationUrl is required for subscriptions "
                                                      "with resource data that expire after more than an hour.")
    for url in urls:
        if not await _handshake(state, url):
            return graph_error(400, "ValidationError", "Subscription validation request failed. Notification "
                                                       "endpoint must respond with 200 OK to validation request.")
    sub = Subscription(id=str(uuid.uuid4()), meeting_id=meeting.id, resource=str(body["resource"]),
                       notification_url=body["notificationUrl"], lifecycle_url=body.get("lifecycleNotificationUrl"),
                       client_state=client_state, expires=expires, tenant_id=caller.tenant_id, app_id=caller.app_id,
                       public_key=public_key, certificate_id=certificate_id, thumbprint=thumbprint)
    state.subscriptions[sub.id] = sub
    return web.json_response(_subscription_json(sub), status=201)


async def _own_subscription(request: web.Request) -> tuple[GraphEvents, Subscription | None, Caller]:
    state = request.app[EVENTS]
    caller = await state.authorize(request)
    sub = state.subscriptions.get(request.match_info["id"])
    if sub is not None and (sub.app_id != caller.app_id or sub.tenant_id != caller.tenant_id):
        sub = None
    return state, sub, caller


async def update_subscription(request: web.Request) -> web.Response:
    """PATCH /{version}/subscriptions/{id}: a new expirationDateTime."""
    state, sub, _caller = await _own_subscription(request)
    if sub is None:
        return graph_error(404, "ResourceNotFound", "The object was not found.")
    body = await _body(request)
    expires = _parse_time(body.get("expirationDateTime")) if body else None
    now = _now()
    if expires is None or expires <= now or expires > now + dt.timedelta(minutes=state.max_minutes):
        return graph_error(400, "InvalidRequest",
                           f"expirationDateTime must be in the future and within {state.max_minutes} minutes.")
    sub.expires = expires
    return web.json_response(_subscription_json(sub))


async def reauthorize_subscription(request: web.Request) -> web.Response:
    """POST /{version}/subscriptions/{id}/reauthorize."""
    _state, sub, _caller = await _own_subscription(request)
    if sub is None:
        return graph_error(404, "ResourceNotFound", "The object was not found.")
    return web.Response(status=204)


async def delete_subscription(request: web.Request) -> web.Response:
    """DELETE /{version}/subscriptions/{id}."""
    state, sub, _caller = await _own_subscription(request)
    if sub is None:
        return graph_error(404, "ResourceNotFound", "The object was not found.")
    del state.subscriptions[sub.id]
    return web.Response(status=204)


async def get_subscription(request: web.Request) -> web.Response:
    """GET /{version}/subscriptions/{id}."""
    _state, sub, _caller = await _own_subscription(request)
    if sub is None:
        return graph_error(404, "ResourceNotFound", "The object was not found.")
    return web.json_response(_subscription_json(sub))


# ----- notifications ------------------------------------------------------------------------------------------

def validation_token(state: GraphEvents, sub: Subscription) -> str:
    """A validationToken as Graph's change tracking sends them with rich notifications: a JWT of the tenant's
    Entra, for the subscribing application (aud), from Graph's change-tracking application (azp, appid)."""
    assert state.sign is not None
    now = int(_now().timestamp())
    return state.sign({"iss": f"https://sts.windows.net/{sub.tenant_id}/", "aud": sub.app_id,
                       "azp": CHANGE_TRACKING_APP, "appid": CHANGE_TRACKING_APP, "tid": sub.tenant_id,
                       "iat": now, "nbf": now, "exp": now + 3600})


async def _post(state: GraphEvents, sub: Subscription, url: str, kind: str, items: list[dict[str, Any]],
                tokens: list[str] | None = None) -> None:
    assert state.http is not None
    body: dict[str, Any] = {"value": items}
    if tokens:
        body["validationTokens"] = tokens
    try:
        async with state.http.post(url, json=body, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=10)) as answer:
            status: int | None = answer.status
    except (TimeoutError, aiohttp.ClientError):
        status = None
    state.deliveries.append({"kind": kind, "subscription": sub.id, "status": status})


def _spawn(state: GraphEvents, work: Awaitable[None]) -> None:
    async def run() -> None:
        await work

    task = asyncio.create_task(run())
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


def notify_call_event(state: GraphEvents, meeting: Meeting, resource: dict[str, Any]) -> None:
    """Send a call event of the meeting to each of its subscriptions (in the background, as Graph does)."""
    for sub in list(state.subscriptions.values()):
        if sub.meeting_id != meeting.id or sub.expires <= _now():
            continue
        item: dict[str, Any] = {
            "subscriptionId": sub.id, "changeType": "updated", "clientState": sub.client_state,
            "subscriptionExpirationDateTime": _time(sub.expires), "tenantId": sub.tenant_id,
            "resource": sub.resource.lstrip("/"),
            "resourceData": {"@odata.type": "#Microsoft.Graph.meetingCallEvent", "id": str(uuid.uuid4())}}
        if sub.public_key is not None:
            assert sub.certificate_id is not None and sub.thumbprint is not None
            item["encryptedContent"] = encrypt_for(sub.public_key, sub.certificate_id, sub.thumbprint, resource)
        _spawn(state, _post(state, sub, sub.notification_url, "change", [item],
                            [validation_token(state, sub)] if sub.public_key is not None and state.sign else None))


def set_roster(state: GraphEvents, meeting: Meeting, roster: list[dict[str, Any]], *, notify: bool = True) -> None:
    """The meeting's call roster is now `roster` (entries {id, identity}); who joined and who left is told to
    the subscriptions (unless notify is off: a notification Graph never sent), and kept for attendance."""
    now = _now()
    new = {str(p["id"]): p for p in roster}
    joined = [p for leg, p in new.items() if leg not in meeting.roster]
    exited = [p for leg, p in meeting.roster.items() if leg not in new]
    for entry in joined:
        meeting.stretches[str(entry["id"])] = Stretch(identity=entry["identity"], joined=now)
    for entry in exited:
        stretch = meeting.stretches.get(str(entry["id"]))
        if stretch is not None and stretch.left is None:
            stretch.left = now
    meeting.roster = new
    if not notify:
        return
    if new and not meeting.started:
        meeting.started = True
        notify_call_event(state, meeting, {"eventType": "Microsoft.Communication.CallStarted",
                                           "eventDateTime": _time(now)})
    if joined or exited:
        notify_call_event(state, meeting, {
            "@odata.type": "#Microsoft.Graph.onlineMeeting", "eventType": "Microsoft.Communication.CallRosterUpdate",
            "eventDateTime": _time(now),
            "activeParticipants@joined": [{"Id": p["id"], "Identity": _wire_identity(p["identity"])} for p in joined],
            "activeParticipants@exited": [{"Id": p["id"], "Identity": _wire_identity(p["identity"])} for p in exited]})


def _wire_identity(identity: dict[str, Any]) -> dict[str, Any]:
    # {"user": {...}} -> {"User": {"Id", "DisplayName", "TenantId"}}, as the roster notifications spell it.
    out: dict[str, Any] = {}
    for kind, value in identity.items():
        out[kind[:1].upper() + kind[1:]] = {k[:1].upper() + k[1:]: v for k, v in value.items()}
    return out


def register_meeting(app: web.Application, meeting_id: str, join_web_url: str, organizer_id: str,
                     tenant_id: str) -> Meeting:
    """Make a meeting known to the notifications part (the double's createOrGet calls this)."""
    state = app[EVENTS]
    meeting = state.meetings.get(meeting_id)
    if meeting is None:
        meeting = state.meetings[meeting_id] = Meeting(meeting_id, join_web_url, organizer_id, tenant_id)
    return meeting


def install(app: web.Application) -> GraphEvents:
    """Add this part to the Graph and Entra double (sandbox/graph.py): its Entra's app tokens authorize, its
    createOrGet's meetings can be subscribed to, and its Teams join page's roster changes are notified."""

    double = app[GRAPH]

    async def authorize(request: web.Request) -> Caller:
        header = request.headers.get("Authorization", "")
        claims = double.entra.verify_access_token(header[7:]) if header.startswith("Bearer ") else None
        if claims is None:
            raise web.HTTPUnauthorized(text=json.dumps({"error": {"code": "InvalidAuthenticationToken",
                                                                  "message": "Access token is empty or invalid."}}),
                                       content_type="application/json")
        return Caller(str(claims["tid"]), str(claims["appid"]), frozenset(claims.get("roles", [])))

    state = setup(app, authorize)
    state.sign = double.entra.sign
    state.elsewhere = lambda: [(m.id, m.join_web_url, m.organizer_oid, m.tenant_id) for m in double.meetings.values()]

    async def on_roster(made: Any, roster: list[Any]) -> None:
        meeting = state.meeting_by_id(made.id)
        if meeting is None:
            return
        # Teams' call roster holds who is in the meeting itself; the lobby is not in the call.
        in_call = []
        for person in roster:
            if person.state != "inMeeting":
                continue
            identity = ({"user": {"id": person.oid, "displayName": person.display_name, "tenantId": made.tenant_id}}
                        if person.oid else {"guest": {"id": person.id, "displayName": person.display_name}})
            in_call.append({"id": person.id, "identity": identity})
        set_roster(state, meeting, in_call)

    app[ROSTER_LISTENERS].append(on_roster)
    return state


# ----- attendance reports (v1.0) ---------------------------------------------------------------------------

async def _meeting_for_reports(request: web.Request) -> Meeting | web.Response:
    state = request.app[EVENTS]
    caller = await state.authorize(request)
    if ARTIFACT_ROLE not in caller.roles:
        return graph_error(403, "Forbidden", "The application lacks OnlineMeetingArtifact.Read.All.")
    meeting = state.meeting_by_id(request.match_info["meeting"])
    if meeting is None or meeting.organizer_id != request.match_info["user"] or meeting.tenant_id != caller.tenant_id:
        return graph_error(404, "NotFound", "The online meeting was not found.")
    return meeting


async def attendance_reports(request: web.Request) -> web.Response:
    """GET /v1.0/users/{user}/onlineMeetings/{meeting}/attendanceReports."""
    meeting = await _meeting_for_reports(request)
    if isinstance(meeting, web.Response):
        return meeting
    state = request.app[EVENTS]
    state.reads.append(request.path)
    if state.reports_not_ready > 0:
        state.reports_not_ready -= 1
        return graph_error(404, "NotFound", "The attendance report is not available yet.")
    reports = []
    if meeting.stretches:
        starts = [s.joined for s in meeting.stretches.values()]
        ends = [s.left or _now() for s in meeting.stretches.values()]
        reports.append({"id": f"report-{meeting.id}", "totalParticipantCount": len(_by_identity(meeting)),
                        "meetingStartDateTime": _time(min(starts)), "meetingEndDateTime": _time(max(ends))})
    return web.json_response({"value": reports})


def _by_identity(meeting: Meeting) -> dict[str, list[Stretch]]:
    found: dict[str, list[Stretch]] = {}
    for stretch in meeting.stretches.values():
        person = next(iter(stretch.identity.values()))
        found.setdefault(str(person["id"]), []).append(stretch)
    return found


async def attendance_records(request: web.Request) -> web.Response:
    """GET /v1.0/users/{user}/onlineMeetings/{meeting}/attendanceReports/{report}/attendanceRecords."""
    meeting = await _meeting_for_reports(request)
    if isinstance(meeting, web.Response):
        return meeting
    if request.match_info["report"] != f"report-{meeting.id}" or not meeting.stretches:
        return graph_error(404, "NotFound", "The attendance report was not found.")
    state = request.app[EVENTS]
    state.reads.append(request.path_qs)
    records = []
    for identity_id, stretches in _by_identity(meeting).items():
        kind, person = next(iter(stretches[0].identity.items()))
        intervals = [{"joinDateTime": _time(s.joined), "leaveDateTime": _time(s.left) if s.left else None,
                      "durationInSeconds": int(((s.left or _now()) - s.joined).total_seconds())} for s in stretches]
        records.append({"id": identity_id, "emailAddress": None,
                        "role": "Organizer" if identity_id == meeting.organizer_id else "Attendee",
                        "totalAttendanceInSeconds": sum(int(str(i["durationInSeconds"])) for i in intervals),
                        "identity": {"id": identity_id, "displayName": person.get("displayName"),
                                     "tenantId": person.get("tenantId") if kind == "user" else None},
                        "attendanceIntervals": intervals})
    size = state.records_page_size
    if size is None:
        return web.json_response({"value": records})
    # Graph pages long collections: the next page's full URL, with an opaque $skiptoken, until the last.
    token = request.query.get("$skiptoken", "0")
    offset = int(token) if token.isdigit() else 0
    page: dict[str, Any] = {"value": records[offset:offset + size]}
    if offset + size < len(records):
        origin = state.link_base or str(request.url.origin())
        page["@odata.nextLink"] = f"{origin}{request.path}?$skiptoken={offset + size}"
    return web.json_response(page)


# ----- controls (tests and the demo) -----------------------------------------------------------------------

async def control_meeting(request: web.Request) -> web.Response:
    """POST /_controls/meetings {id, joinWebUrl, organizerId, tenantId}: a meeting the double knows."""
    body = await _body(request) or {}
    try:
        meeting = register_meeting(request.app, str(body["id"]), str(body["joinWebUrl"]), str(body["organizerId"]),
                                   str(body["tenantId"]))
    except KeyError as exc:
        raise web.HTTPBadRequest(text=f"missing {exc}") from None
    return web.json_response({"id": meeting.id})


async def control_roster(request: web.Request) -> web.Response:
    """POST /_controls/meetings/{id}/roster {participants: [{id, identity}], notify: true}."""
    state = request.app[EVENTS]
    meeting = state.meeting_by_id(request.match_info["id"])
    body = await _body(request)
    if meeting is None or body is None or not isinstance(body.get("participants"), list):
        raise web.HTTPBadRequest(text="unknown meeting or no participants list")
    set_roster(state, meeting, body["participants"], notify=body.get("notify", True) is not False)
    return web.json_response({"roster": list(meeting.roster)})


async def control_end(request: web.Request) -> web.Response:
    """POST /_controls/meetings/{id}/end: everyone leaves, and the call ends."""
    state = request.app[EVENTS]
    meeting = state.meeting_by_id(request.match_info["id"])
    if meeting is None:
        raise web.HTTPNotFound()
    set_roster(state, meeting, [], notify=(await _body(request) or {}).get("notify", True) is not False)
    notify_call_event(state, meeting, {"eventType": "Microsoft.Communication.CallEnded",
                                       "eventDateTime": _time(_now())})
    meeting.started = False
    return web.json_response({})


async def control_lifecycle(request: web.Request) -> web.Response:
    """POST /_controls/subscriptions/{id}/lifecycle {event}: a lifecycle notification to the subscriber."""
    state = request.app[EVENTS]
    sub = state.subscriptions.get(request.match_info["id"])
    body = await _body(request) or {}
    event = body.get("event")
    if sub is None or event not in ("reauthorizationRequired", "subscriptionRemoved", "missed") \
            or sub.lifecycle_url is None:
        raise web.HTTPBadRequest(text="unknown subscription, no lifecycle URL, or unknown event")
    item = {"subscriptionId": sub.id, "subscriptionExpirationDateTime": _time(sub.expires),
            "tenantId": sub.tenant_id, "clientState": sub.client_state, "lifecycleEvent": event}
    if event == "subscriptionRemoved":
        del state.subscriptions[sub.id]
    await _post(state, sub, sub.lifecycle_url, "lifecycle", [item])
    return web.json_response(state.deliveries[-1])


async def control_attendance(request: web.Request) -> web.Response:
    """POST /_controls/attendance {pageSize: n | null, notReadyReads: n}: page attendance records n to a page;
    answer 404 to the next n reads of a meeting's attendance reports."""
    state = request.app[EVENTS]
    body = await _body(request) or {}
    size, not_ready = body.get("pageSize"), body.get("notReadyReads", 0)
    if (size is not None and (not isinstance(size, int) or size < 1)) or not isinstance(not_ready, int):
        raise web.HTTPBadRequest(text="pageSize: a positive integer or null; notReadyReads: an integer")
    state.records_page_size, state.reports_not_ready = size, max(0, not_ready)
    return web.json_response({"pageSize": size, "notReadyReads": state.reports_not_ready})


async def control_subscriptions(request: web.Request) -> web.Response:
    """GET /_controls/subscriptions: the subscriptions the double holds, and its deliveries."""
    state = request.app[EVENTS]
    return web.json_response({"subscriptions": [_subscription_json(s) for s in state.subscriptions.values()],
                              "deliveries": state.deliveries})


async def _session(app: web.Application) -> Any:
    state = app[EVENTS]
    async with aiohttp.ClientSession() as http:
        state.http = http
        yield
        if state.tasks:  # deliveries in flight finish first (cancelled mid-connect, a socket can be left open)
            await asyncio.wait(list(state.tasks), timeout=2)
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        state.http = None


def setup(app: web.Application, authorize: Authorize, *, controls: bool = True) -> GraphEvents:
    """Add subscriptions, notifications, attendance reports (and the controls) to the Graph double's app."""
    state = GraphEvents(authorize=authorize)
    app[EVENTS] = state
    app.cleanup_ctx.append(_session)
    app.router.add_post("/{version:beta|v1.0}/subscriptions", create_subscription)
    app.router.add_get("/{version:beta|v1.0}/subscriptions/{id}", get_subscription)
    app.router.add_patch("/{version:beta|v1.0}/subscriptions/{id}", update_subscription)
    app.router.add_delete("/{version:beta|v1.0}/subscriptions/{id}", delete_subscription)
    app.router.add_post("/{version:beta|v1.0}/subscriptions/{id}/reauthorize", reauthorize_subscription)
    app.router.add_get("/v1.0/users/{user}/onlineMeetings/{meeting}/attendanceReports", attendance_reports)
    app.router.add_get("/v1.0/users/{user}/onlineMeetings/{meeting}/attendanceReports/{report}/attendanceRecords",
                       attendance_records)
    if controls:
        app.router.add_post("/_controls/meetings", control_meeting)
        app.router.add_post("/_controls/meetings/{id}/roster", control_roster)
        app.router.add_post("/_controls/meetings/{id}/end", control_end)
        app.router.add_post("/_controls/subscriptions/{id}/lifecycle", control_lifecycle)
        app.router.add_get("/_controls/subscriptions", control_subscriptions)
        app.router.add_post("/_controls/attendance", control_attendance)
    return state


def bearer_tokens(tokens: dict[str, Caller]) -> Authorize:
    """An authorizer for a double run on its own: a bearer token must be one of these (tests)."""
    async def authorize(request: web.Request) -> Caller:
        header = request.headers.get("Authorization", "")
        caller = tokens.get(header[7:]) if header.startswith("Bearer ") else None
        if caller is None:
            raise web.HTTPUnauthorized(text=json.dumps({"error": {"code": "InvalidAuthenticationToken",
                                                                  "message": "Access token is empty or invalid."}}),
                                       content_type="application/json")
        return caller

    return authorize


def new_token() -> str:
    """A random bearer token for bearer_tokens."""
    return secrets.token_urlsafe(24)


def private_key_pem() -> bytes:
    """An RSA key in PEM (for a test's gateway to receive notifications with)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
