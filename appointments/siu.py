"""HL7v2 scheduling messages (SIU S12-S15, S17) read into what the gateway keeps of an appointment, and their ACKs.

Parsing is the `hl7` library's. From a message only these are taken: the message control id (MSH-10) and time
(MSH-7), the event, the FHIR Appointment id (SCH-2 filler appointment id, else SCH-1 placer id), the start and
end (TQ1-7/8 in v2.5+, SCH-11's timing quantity before), the filler status (SCH-25), and FHIR ids of the
patient (the PID-3 repetition whose identifier type, CX-5, is `FHIR`) and encounter (PV1-19 likewise). Names,
phone numbers, addresses and MRNs in PID are never read into anything, and errors never quote the message.
"""
from __future__ import annotations

import datetime as dt
import re
import secrets
import zoneinfo
from dataclasses import dataclass
from typing import Any

import hl7

EVENTS = {"S12": "booked", "S13": "changed", "S14": "changed", "S15": "cancelled", "S17": "cancelled"}
"""SIU trigger events and what each means for the appointment: new, rescheduled, modified, cancelled, deleted."""
_CANCELLED_STATUS = frozenset({"cancelled", "canceled", "deleted", "noshow", "no show"})
_DTM = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CONTROL_ID = re.compile(r"^[\x21-\x7e]{1,199}$")


class SiuRejected(Exception):
    """A message we will not apply: `code` is the ACK code (AR: not a message we take; AE: its content is
    wrong), `reason` a short reason code put in MSA-3 and logs (never a value from the message)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class AppointmentUpdate:
    """What the feed says about one appointment: identifiers, times and status, nothing about the patient
    beyond FHIR ids."""

    appointment_id: str
    status: str  # booked | cancelled
    event: str  # booked | changed | cancelled
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    source_time: dt.datetime
    patient_id: str | None = None
    encounter_id: str | None = None


@dataclass(frozen=True)
class SiuMessage:
    """A parsed SIU message: its control id and the update it carries."""

    control_id: str
    trigger: str
    update: AppointmentUpdate


def _text(value: object) -> str:
    return str(value).strip() if value is not None else ""


def _field(segment: hl7.Segment, index: int) -> hl7.Field | None:
    return segment[index] if len(segment) > index else None


def _repetitions(field: Any) -> list[Any]:
    """A field's repetitions (a field without components is its own one repetition)."""
    if field is None or not isinstance(field, hl7.Field) or not len(field):
        return []
    return list(field) if isinstance(field[0], hl7.Repetition) else [field]


def _rep_component(rep: Any, comp: int) -> str:
    """Component `comp` (1-based) of one repetition, as text ("" when absent)."""
    if isinstance(rep, hl7.Repetition):
        return _text(rep[comp - 1]) if len(rep) >= comp else ""
    return _text(rep) if comp == 1 else ""


def _component(field: Any, rep: int, comp: int) -> str:
    """Component `comp` (1-based) of repetition `rep` (0-based) of a field, as text ("" when absent)."""
    reps = _repetitions(field)
    return _rep_component(reps[rep], comp) if rep < len(reps) else ""


def parse_dtm(value: str, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """An HL7 DTM (YYYYMMDD[HH[MM[SS]]][+/-ZZZZ]) as an aware datetime; without an offset it is the
    organisation's local time."""
    match = _DTM.match(value.strip())
    if match is None:
        raise ValueError("not an HL7 date/time")
    year, month, day, hour, minute, second, offset = match.groups()
    moment = dt.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    if offset:
        sign = 1 if offset[0] == "+" else -1
        delta = dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        return moment.replace(tzinfo=dt.timezone(sign * delta))
    return moment.replace(tzinfo=zone)


def _decode(block: bytes) -> str:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("latin-1")  # HL7's default character set (MSH-18 empty) is ASCII; be lenient
    # Segments end with CR; some engines send CRLF or LF.
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")


_READ_FIELDS = {"SCH": (1, 2, 11, 25), "TQ1": (7, 8), "PID": (3,), "PV1": (19,)}
"""The fields read_siu reads of each segment besides MSH (kept whole: read_siu and ack read it)."""


def _only_what_is_read(text: str) -> str:
    """The message with only MSH and the segments and fields of _READ_FIELDS (others dropped, fields not read
    emptied in place, so positions hold). The parser builds an object per field, repetition and component:
    this keeps its work to what is used (a real SIU also carries RGS, AIS, AIG, AIL, AIP, NTE, PV2, ...), and the
    patient's name, birth date, address and phone never become objects in our process."""
    separator = text[3]
    kept = []
    for segment in text.split("\r"):
        name = segment[:3]
        if name == "MSH":
            kept.append(segment)
            continue
        fields = _READ_FIELDS.get(name)
        if fields is None or segment[3:4] != separator:
            continue
        last = fields[-1]
        parts = segment.split(separator, last + 1)[:last + 1]
        kept.append(separator.join(part if i == 0 or i in fields else "" for i, part in enumerate(parts)))
    return "\r".join(kept)


def parse_message(block: bytes) -> hl7.Message:
    """The hl7 library's parse of one MLLP block (of what the feed reads of it); SiuRejected (AR, unparsable)
    when it is not HL7."""
    text = _decode(block)
    if not text.startswith("MSH") or len(text) < 8:
        raise SiuRejected("AR", "not_hl7")
    try:
        return hl7.parse(_only_what_is_read(text))
    except Exception:  # the library raises several kinds for broken framing; none quotes are kept
        raise SiuRejected("AR", "unparsable") from None


def read_siu(message: hl7.Message, zone: zoneinfo.ZoneInfo) -> SiuMessage:
    """The update an SIU message carries; SiuRejected with AR or AE and a reason when it cannot be applied."""
    msh = message.segment("MSH")
    control_id = _component(_field(msh, 10), 0, 1)
    if not _CONTROL_ID.match(control_id):
        raise SiuRejected("AR", "no_control_id")
    message_type = _component(_field(msh, 9), 0, 1)
    trigger = _component(_field(msh, 9), 0, 2)
    if message_type != "SIU":
        raise SiuRejected("AR", "unsupported_message_type")
    if trigger not in EVENTS:
        raise SiuRejected("AR", "unsupported_event")
    try:
        sch = message.segment("SCH")
    except KeyError:
        raise SiuRejected("AE", "no_sch_segment") from None
    appointment_id = _component(_field(sch, 2), 0, 1) or _component(_field(sch, 1), 0, 1)
    if not _FHIR_ID.match(appointment_id):
        raise SiuRejected("AE", "no_appointment_id")
    starts, ends = _timing(message, sch, zone)
    status = "cancelled" if EVENTS[trigger] == "cancelled" else "booked"
    filler_status = _component(_field(sch, 25), 0, 1).lower()
    if filler_status in _CANCELLED_STATUS:
        status = "cancelled"
    sent = _component(_field(msh, 7), 0, 1)
    try:
        source_time = parse_dtm(sent, zone) if sent else dt.datetime.now(dt.timezone.utc)
    except ValueError:
        raise SiuRejected("AE", "bad_message_time") from None
    return SiuMessage(control_id, trigger, AppointmentUpdate(
        appointment_id=appointment_id, status=status,
        event="cancelled" if status == "cancelled" else EVENTS[trigger],
        starts_at=starts, ends_at=ends, source_time=source_time,
        patient_id=_fhir_identifier(message, "PID", 3), encounter_id=_fhir_identifier(message, "PV1", 19)))


def _timing(message: hl7.Message, sch: hl7.Segment, zone: zoneinfo.ZoneInfo) -> tuple[dt.datetime, dt.datetime | None]:
    """Start and end: TQ1-7/TQ1-8 (v2.5+), else SCH-11 components 4 and 5 (the timing quantity before v2.5)."""
    start_text = end_text = ""
    try:
        tq1 = message.segment("TQ1")
        start_text, end_text = _component(_field(tq1, 7), 0, 1), _component(_field(tq1, 8), 0, 1)
    except KeyError:
        pass
    if not start_text:
        start_text, end_text = _component(_field(sch, 11), 0, 4), _component(_field(sch, 11), 0, 5)
    if not start_text:
        raise SiuRejected("AE", "no_start_time")
    try:
        starts = parse_dtm(start_text, zone)
        ends = parse_dtm(end_text, zone) if end_text else None
    except (ValueError, OverflowError):
        raise SiuRejected("AE", "bad_start_time") from None
    if ends is not None and ends < starts:
        raise SiuRejected("AE", "end_before_start")
    return starts, ends


def _fhir_identifier(message: hl7.Message, segment_id: str, index: int) -> str | None:
    """The id of the repetition of a CX field whose identifier type code (CX-5) is FHIR; None otherwise."""
    try:
        segment = message.segment(segment_id)
    except KeyError:
        return None
    for rep in _repetitions(_field(segment, index)):
        if _rep_component(rep, 5).upper() == "FHIR":
            value = _rep_component(rep, 1)
            return value if _FHIR_ID.match(value) else None
    return None


def _hl7_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def _escape(value: str) -> str:
    """Text safe inside one HL7 field: only printable ASCII, no delimiters."""
    return re.sub(r"[^A-Za-z0-9 _.\-]", "", value)[:80]


def ack(code: str, control_id: str = "", reason: str | None = None, *, received: hl7.Message | None = None,
        application: str = "VISITGATE") -> bytes:
    """An ACK (original mode): MSA-1 the code, MSA-2 the control id acknowledged, MSA-3 our reason code; the
    sending and receiving applications swapped from the message when it could be read."""
    sender_app = sender_facility = ""
    trigger = ""
    version = "2.5.1"
    if received is not None:
        try:
            msh = received.segment("MSH")
            sender_app = _escape(_component(_field(msh, 3), 0, 1))
            sender_facility = _escape(_component(_field(msh, 4), 0, 1))
            trigger = _escape(_component(_field(msh, 9), 0, 2))
            version = _escape(_component(_field(msh, 12), 0, 1)) or version
        except (KeyError, IndexError):
            pass
    msh_out = "|".join(["MSH", "^~\\&", application, "", sender_app, sender_facility, _hl7_now(), "",
                        f"ACK^{trigger}^ACK" if trigger else "ACK", secrets.token_hex(10), "P", version])
    msa = "|".join(["MSA", code, _escape(control_id) if control_id == _escape(control_id) else "",
                    _escape(reason or "")])
    segments = [msh_out, msa]
    if code != "AA" and reason:
        # ERR-3 (v2.5): the HL7 error code; 207 application internal error, 200 unsupported message type,
        # 201 unsupported event code, 101 required field missing, 102 data type error.
        hl7_code = {"unsupported_message_type": "200", "unsupported_event": "201", "no_appointment_id": "101",
                    "no_start_time": "101", "no_sch_segment": "100", "no_control_id": "101"}.get(reason, "207")
        severity = "E"
        segments.append("|".join(["ERR", "", "", f"{hl7_code}^{_escape(reason)}^HL70357", severity]))
    return ("\r".join(segments) + "\r").encode("ascii")
