"""From a visit's presence events to the FHIR R4 Encounter we want: pure functions, no I/O.

`derive` reads the whole event log of a visit (never the resource's current state) and says what
happened: status transitions, when each clinician was connected, when the patient and guests were.
`desired_encounter` (for `fhir-r4-put`) and `patch_operations` (for `fhir-r4-patch`) lay those facts
over the Encounter as the EHR has it now. Both are idempotent: laying the same facts over their own
result changes nothing, so a write that already happened is never made twice. docs/writeback.md says
why the mapping is what it is.
"""
from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from gateway.fhir import parse_reference

STRATEGIES = ("fhir-r4-put", "fhir-r4-patch", "none")
PRESENCE_URL = "https://fhir.visitgate.org/StructureDefinition/participant-presence"
DEVICE_TEST_URL = "https://fhir.visitgate.org/StructureDefinition/participant-device-test"
VIRTUAL_SERVICE_URL = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.virtualService"
OUR_EXTENSIONS = frozenset({PRESENCE_URL, VIRTUAL_SERVICE_URL, DEVICE_TEST_URL})
VIRTUAL_SERVICE_TYPE = "http://hl7.org/fhir/virtual-service-type"
MEETING_PROVIDER_SYSTEM = "https://fhir.visitgate.org/CodeSystem/meeting-provider"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# The only statuses we move an Encounter through, in order; each step goes to the next one only.
STATUS_CHAIN = ("planned", "arrived", "in-progress", "finished")
# A visit that ends before the patient ever came (a no-show) is `cancelled`, which FHIR R4 defines as "the
# Encounter has ended before it has begun": it ranks with `finished`, the other end of the chain.
_RANK = {**{status: rank for rank, status in enumerate(STATUS_CHAIN)}, "cancelled": len(STATUS_CHAIN) - 1}
# Operations Oracle Health documents for PATCH on Encounter; nothing else is ever sent. `/extension` is
# added whole when the Encounter has none: RFC 6902 4.1 lets `add` create a member of an object that exists,
# but `add /extension/-` needs the array to exist (Medplum refuses it, rightly, and the whole patch with it).
# Likewise `/period/end` is added when the period has no end yet (a visit's end is usually the first): Oracle
# documents `replace` for it, which RFC 6902 allows only on a member that exists.
ALLOWED_PATCH = frozenset({("replace", "/period/start"), ("replace", "/period/end"), ("replace", "/extension"),
                           ("add", "/extension"), ("add", "/period/end")})
# What ends a connected stretch (`left` closes a lobby socket, never a room's).
_CLOSING = frozenset({"disconnected", "removed"})
_DEVICE_TEST_KINDS = frozenset({"device_test_passed", "device_test_failed"})
# What a device test's result may say (presence.ws builds it; anything else is not written).
_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
_RELAY_STATES = frozenset({"ok", "failed", "not_offered", "unknown"})
_RTT_BUCKETS = frozenset({"under_50ms", "50_100ms", "100_200ms", "200_400ms", "over_400ms"})
# A patient with any of these came to the visit; one with none when it ends was a no-show (as visit_end.sql).
_CAME = frozenset({"lobby_entered", "connected", "admitted"})
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class VisitEvent:
    """One presence event with what the mapping needs of its participant (no patient data)."""

    id: int
    kind: str
    at: dt.datetime
    participant_id: UUID | None = None
    role: str | None = None
    guest_kind: str | None = None
    fhir_user: str | None = None
    detail: Mapping[str, Any] | None = None  # a device test's result (see sql/migrations/0016)


@dataclass(frozen=True)
class DeviceTest:
    """A patient's or guest's latest device test: results and buckets only, never a name."""

    label: str  # "patient", "guest-1", ...
    role: str
    passed: bool
    at: str
    camera: bool | None = None
    microphone: bool | None = None
    speaker: bool | None = None
    candidates: tuple[str, ...] = ()
    relay: str | None = None
    rtt: str | None = None


@dataclass(frozen=True)
class Presence:
    """One stretch of time a participant was connected to the meeting."""

    label: str  # "patient", "guest-1", ... or "Practitioner/<id>": never a name
    role: str
    guest_kind: str | None
    start: str
    end: str | None


@dataclass(frozen=True)
class EncounterChanges:
    """Everything the event log says about the Encounter, as FHIR instants."""

    up_to_event_id: int
    meeting_provider: str
    transitions: tuple[tuple[str, str], ...]  # (status reached, when), in order, from "planned"
    practitioners: tuple[tuple[str, str, str | None], ...]  # ("Practitioner/<id>", first start, last end)
    presence: tuple[Presence, ...]  # patient, guests and clinicians, in order of start
    device_tests: tuple[DeviceTest, ...] = ()  # each patient's and guest's latest, in order of first event

    @property
    def status(self) -> str:
        """The status the events lead to."""
        return self.transitions[-1][0] if self.transitions else "planned"


def instant(at: dt.datetime) -> str:
    """A FHIR instant in UTC with milliseconds."""
    return at.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _practitioner(fhir_user: str | None) -> str | None:
    ident = parse_reference(fhir_user, "Practitioner")
    return f"Practitioner/{ident}" if ident else None


def derive(events: Iterable[VisitEvent], meeting_provider: str) -> EncounterChanges:
    """What a visit's events (all of them, any order) say about its Encounter."""
    ordered = sorted(events, key=lambda e: e.id)
    status = "planned"
    transitions: list[tuple[str, str]] = []
    open_since: dict[UUID, str] = {}
    sockets: dict[UUID, int] = {}  # open room and view sockets per participant
    labels: dict[UUID, tuple[str, str, str | None]] = {}
    periods: list[tuple[UUID, str, str | None]] = []
    guests = 0
    device_tests: dict[UUID, DeviceTest] = {}
    patient_came = False
    for event in ordered:
        at = instant(event.at)
        pid = event.participant_id
        if pid is not None and pid not in labels and event.role is not None:
            if event.role == "patient":
                labels[pid] = ("patient", "patient", None)
            elif event.role == "guest":
                guests += 1
                labels[pid] = (f"guest-{guests}", "guest", event.guest_kind)
            else:
                ref = _practitioner(event.fhir_user)
                if ref is not None:
                    labels[pid] = (ref, "provider", None)
        if event.role == "patient" and event.kind in _CAME:
            patient_came = True
        # Status: one step along the chain at a time; anything else is not a transition we send.
        if event.role == "patient" and event.kind == "lobby_entered" and status == "planned":
            status = "arrived"
            transitions.append((status, at))
        elif event.role == "patient" and event.kind == "admitted" and status == "arrived":
            status = "in-progress"
            transitions.append((status, at))
        elif event.kind == "visit_ended" and status in ("arrived", "in-progress"):
            status = "finished"
            transitions.append((status, at))
        elif event.kind == "visit_ended" and status == "planned" and not patient_came:
            status = "cancelled"  # the patient never entered the lobby: a no-show
            transitions.append((status, at))
        # Connections: a stretch opens on `connected` and closes on leaving or at the end of the visit.
        if event.kind == "visit_ended":
            for open_pid, start in open_since.items():
                periods.append((open_pid, start, at))
            open_since.clear()
            break  # nothing after the end of the visit changes the Encounter
        if pid is None or pid not in labels:
            continue
        if event.kind in _DEVICE_TEST_KINDS and labels[pid][1] != "provider":
            device_tests[pid] = _device_test(labels[pid][0], labels[pid][1], event, at)
        # Counted per participant: a clinician's view and room are two sockets, a page reload opens the new one
        # before the old one's `disconnected` may be written, and a crashed process's sockets are closed late
        # (presence.lease). The stretch ends when the last socket closes, or at a removal.
        if event.kind == "connected":
            sockets[pid] = sockets.get(pid, 0) + 1
            open_since.setdefault(pid, at)
        elif event.kind in _CLOSING:
            sockets[pid] = 0 if event.kind == "removed" else max(0, sockets.get(pid, 0) - 1)
            if sockets[pid] == 0 and pid in open_since:
                periods.append((pid, open_since.pop(pid), at))
    for open_pid, start in open_since.items():
        periods.append((open_pid, start, None))
    periods.sort(key=lambda p: (p[1], str(p[0])))

    presence = tuple(Presence(labels[pid][0], labels[pid][1], labels[pid][2], start, end)
                     for pid, start, end in periods)
    spans: dict[str, tuple[str, str | None, bool]] = {}  # practitioner -> (first start, last end, still open)
    for p in presence:
        if p.role != "provider":
            continue
        first, last, still_open = spans.get(p.label, (p.start, None, False))
        if p.end is None:
            still_open = True
        elif last is None or p.end > last:
            last = p.end
        spans[p.label] = (first, last, still_open)
    practitioners = tuple((ref, first, None if still_open else last)
                          for ref, (first, last, still_open) in sorted(spans.items(), key=lambda s: s[1][0]))
    order = list(labels)
    tests = tuple(device_tests[pid] for pid in sorted(device_tests, key=order.index))
    return EncounterChanges(up_to_event_id=ordered[-1].id if ordered else 0, meeting_provider=meeting_provider,
                            transitions=tuple(transitions), practitioners=practitioners, presence=presence,
                            device_tests=tests)


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _device_test(label: str, role: str, event: VisitEvent, at: str) -> DeviceTest:
    """A device test event's facts; only the vocabularies of presence.ws pass (a bad value is left out)."""
    detail = event.detail if isinstance(event.detail, Mapping) else {}
    found = detail.get("candidates")
    candidates = tuple(c for c in _CANDIDATE_TYPES if isinstance(found, list) and c in found)
    relay = detail.get("relay")
    rtt = detail.get("rtt")
    return DeviceTest(label=label, role=role, passed=event.kind == "device_test_passed", at=at,
                      camera=_flag(detail.get("camera")), microphone=_flag(detail.get("microphone")),
                      speaker=_flag(detail.get("speaker")), candidates=candidates,
                      relay=relay if relay in _RELAY_STATES else None, rtt=rtt if rtt in _RTT_BUCKETS else None)


# --- laying the facts over the Encounter ----------------------------------------------------------


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def same(a: Any, b: Any) -> bool:
    """JSON equality where two instants are equal when they name the same moment."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, str) and isinstance(b, str) and a != b and _INSTANT.match(a) and _INSTANT.match(b):
        return _parse(a) == _parse(b)
    return type(a) is type(b) and a == b


def _period(start: str | None, end: str | None) -> dict[str, str]:
    period = {}
    if start is not None:
        period["start"] = start
    if end is not None:
        period["end"] = end
    return period


def _status_history(existing: Sequence[Any], transitions: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Our status stretches, after the EHR's own history that closed before our first transition."""
    first = _parse(transitions[0][1])
    kept = [entry for entry in existing
            if isinstance(entry, dict) and isinstance((entry.get("period") or {}).get("end"), str)
            and _INSTANT.match(entry["period"]["end"]) and _parse(entry["period"]["end"]) < first]
    ours = [{"status": "planned", "period": {"end": transitions[0][1]}}]
    for index, (status, at) in enumerate(transitions):
        end = transitions[index + 1][1] if index + 1 < len(transitions) else None
        ours.append({"status": status, "period": _period(at, end)})
    return kept + ours


def _presence_extension(p: Presence) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "role", "valueCode": p.role}]
    if p.role == "provider":
        parts.append({"url": "individual", "valueReference": {"reference": p.label}})
    else:
        parts.append({"url": "participant", "valueString": p.label})
    if p.guest_kind:
        parts.append({"url": "guestKind", "valueCode": p.guest_kind})
    parts.append({"url": "period", "valuePeriod": _period(p.start, p.end)})
    return {"url": PRESENCE_URL, "extension": parts}


def _device_test_extension(d: DeviceTest) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "participant", "valueString": d.label}, {"url": "role", "valueCode": d.role},
                                   {"url": "result", "valueCode": "passed" if d.passed else "failed"},
                                   {"url": "tested", "valueDateTime": d.at}]
    for name, flag in (("camera", d.camera), ("microphone", d.microphone), ("speaker", d.speaker)):
        if flag is not None:
            parts.append({"url": name, "valueBoolean": flag})
    parts += [{"url": "candidateType", "valueCode": c} for c in d.candidates]
    if d.relay is not None:
        parts.append({"url": "relay", "valueCode": d.relay})
    if d.rtt is not None:
        parts.append({"url": "roundTripTime", "valueCode": d.rtt})
    return {"url": DEVICE_TEST_URL, "extension": parts}


def _virtual_service(meeting_provider: str) -> dict[str, Any]:
    # Only the kind of meeting: no address, no session key, nothing that lets anyone in.
    if meeting_provider == "teams":
        coding = {"system": VIRTUAL_SERVICE_TYPE, "code": "ms-teams", "display": "Microsoft Teams"}
    else:
        coding = {"system": MEETING_PROVIDER_SYSTEM, "code": meeting_provider}
    return {"url": VIRTUAL_SERVICE_URL, "extension": [{"url": "channelType", "valueCoding": coding}]}


def _extensions(current: dict[str, Any], changes: EncounterChanges, *, with_providers: bool) -> list[dict[str, Any]]:
    foreign = [x for x in current.get("extension") or [] if not (isinstance(x, dict) and x.get("url") in OUR_EXTENSIONS)]
    ours = [_virtual_service(changes.meeting_provider)]
    ours += [_presence_extension(p) for p in changes.presence if with_providers or p.role != "provider"]
    ours += [_device_test_extension(d) for d in changes.device_tests]
    return foreign + ours


def _same_reference(reference: object, wanted: str) -> bool:
    ident = parse_reference(reference, "Practitioner")
    return ident is not None and f"Practitioner/{ident}" == wanted


def _status_applies(current: dict[str, Any], changes: EncounterChanges) -> bool:
    """Whether we may set the status: the EHR's is on our chain and not ahead of the events."""
    return bool(changes.transitions) and _may_move(current.get("status"), changes.status)


def _may_move(now: object, wanted: str) -> bool:
    """Whether the EHR's status may become wanted: on our chain and not ahead (an EHR's own `cancelled` stays)."""
    if now == wanted:
        return True
    return isinstance(now, str) and now in STATUS_CHAIN and _RANK[now] <= _RANK[wanted]


def desired_encounter(current: dict[str, Any], changes: EncounterChanges) -> dict[str, Any]:
    """The whole Encounter to PUT (fhir-r4-put): the EHR's resource with the events laid over it."""
    desired = copy.deepcopy(current)
    if _status_applies(current, changes):
        desired["status"] = changes.status
        desired["statusHistory"] = _status_history(current.get("statusHistory") or [], changes.transitions)
        times = dict(changes.transitions)
        period = dict(desired.get("period") or {})
        if "in-progress" in times:
            period["start"] = times["in-progress"]
        if "finished" in times:
            period["end"] = times["finished"]
        if period:
            desired["period"] = period
    participants = list(desired.get("participant") or [])
    for ref, start, end in changes.practitioners:
        period = _period(start, end)
        for index, entry in enumerate(participants):
            if isinstance(entry, dict) and _same_reference((entry.get("individual") or {}).get("reference"), ref):
                participants[index] = {**entry, "period": period}
                break
        else:
            participants.append({"type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "PART",
                                                        "display": "Participation"}]}],
                                 "individual": {"reference": ref}, "period": period})
    if participants:
        desired["participant"] = participants
    desired["extension"] = _extensions(current, changes, with_providers=False)
    return desired


def unchanged(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether writing desired would change nothing (the server's meta aside)."""
    def strip(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if k != "meta"}

    return same(strip(current), strip(desired))


def patch_operations(current: dict[str, Any], changes: EncounterChanges) -> list[dict[str, Any]]:
    """The JSON Patch (fhir-r4-patch) that lays the events over current, with Oracle Health's operations only.

    Status, statusHistory and participant periods cannot be patched there, so clinicians' presence goes in
    our extension too, and the Encounter's period carries when the visit started and ended. A member the
    resource does not have cannot be `replace`d, so it is left alone.
    """
    ops: list[dict[str, Any]] = []
    times = dict(changes.transitions)
    raw_period = current.get("period")
    period: dict[str, Any] = raw_period if isinstance(raw_period, dict) else {}
    now = current.get("status")
    if _may_move(now, changes.status):
        for member, status in (("start", "in-progress"), ("end", "finished")):
            if status in times and member in period and not same(period[member], times[status]):
                ops.append({"op": "replace", "path": f"/period/{member}", "value": times[status]})
            elif member == "end" and status in times and "period" in current and member not in period:
                ops.append({"op": "add", "path": "/period/end", "value": times[status]})
    wanted = _extensions(current, changes, with_providers=True)
    have = current.get("extension")
    if "extension" not in current:
        ops.append({"op": "add", "path": "/extension", "value": wanted})
    elif not (isinstance(have, list) and same(have, wanted)):
        ops.append({"op": "replace", "path": "/extension", "value": wanted})
    assert all((op["op"], op["path"]) in ALLOWED_PATCH and applies(current, op) for op in ops)
    return ops


def applies(document: dict[str, Any], op: dict[str, Any]) -> bool:
    """Whether an add or replace at op's path can apply to document under RFC 6902 (object members only).

    Every parent on the path must exist as an object; `replace` also needs the member itself, `add` does not.
    """
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
    node: Any = document
    for token in tokens[:-1]:
        if not isinstance(node, dict) or token not in node:
            return False
        node = node[token]
    return isinstance(node, dict) and (op["op"] == "add" or tokens[-1] in node)
