"""A known set of visits for the usage report's tests: each visit planned as plain facts (when each participant
came and went), written as the gateway would write them (visits, participants, presence events, visit ends,
invitations), and the figures each visit should have worked out here from the plan alone."""
from __future__ import annotations

import datetime as dt
import os
import random
import uuid
import zoneinfo
from dataclasses import dataclass, field

import asyncpg

from gateway.configurations import DEFAULT_SCOPES, NewConfiguration, add_approved
from gateway.security import Sealer
from launch.invites import record_sent

ZONE = "America/New_York"
DEPARTMENTS = ("cardiology", "=dermatology", None)  # one that a spreadsheet would run as a formula
CANARY_PATIENT = "canarypat-usage-5d2e"
CANARY_ENCOUNTER = "canaryenc-usage-8f1a"


@dataclass
class PlannedVisit:
    """One visit's facts, and the figures the report should show for it."""

    visit_id: uuid.UUID
    configuration_id: int
    environment: str
    department: str | None
    opened_at: dt.datetime
    outcome: str  # completed, no_show, cancelled, open
    # (seconds after opened_at, participant label, kind); labels: provider, patient, guest
    events: list[tuple[float, str, str]] = field(default_factory=list)
    invitations: dict[str, str] = field(default_factory=dict)  # label -> channel
    attendees: int = 0

    def at(self, seconds: float) -> dt.datetime:
        """An instant of this visit."""
        return self.opened_at + dt.timedelta(seconds=seconds)

    def first(self, label_kinds: set[tuple[str, str]]) -> dt.datetime | None:
        """When the first of these (label, kind) happened."""
        times = [self.at(s) for s, label, kind in self.events if (label, kind) in label_kinds]
        return min(times) if times else None

    @property
    def started_at(self) -> dt.datetime | None:
        """Both sides connected: the later of the clinician's and the patient's or guest's first connection."""
        provider = self.first({("provider", "connected")})
        others = self.first({("patient", "connected"), ("guest", "connected")})
        return max(provider, others) if provider and others else None

    @property
    def duration_s(self) -> float | None:
        """Start to the last disconnection."""
        leaves = [self.at(s) for s, _label, kind in self.events if kind == "disconnected"]
        start = self.started_at
        if start is None or not leaves or max(leaves) < start:
            return None
        return (max(leaves) - start).total_seconds()

    @property
    def lobby_wait_s(self) -> float | None:
        """First lobby entry of a patient or guest to the first admission."""
        lobby = self.first({("patient", "lobby_entered"), ("guest", "lobby_entered")})
        admitted = self.first({("patient", "admitted"), ("guest", "admitted")})
        return None if lobby is None or admitted is None else (admitted - lobby).total_seconds()

    @property
    def status(self) -> str:
        """What the report should call it."""
        return "open" if self.outcome == "open" else self.outcome

    def local_day(self, zone: str = ZONE) -> dt.date:
        """The day it counts on, in the organisation's zone."""
        return self.opened_at.astimezone(zoneinfo.ZoneInfo(zone)).date()


def plan_visits(configs: dict[str, int], first_day: dt.date, days: int, seed: int = 16) -> list[PlannedVisit]:
    """A few visits a day of every outcome, departments and environments mixed, some just after local midnight."""
    rng = random.Random(seed)
    tz = zoneinfo.ZoneInfo(ZONE)
    plans = []
    for d in range(days):
        day = first_day + dt.timedelta(days=d)
        for n in range(rng.randint(2, 6)):
            # 00:20 local is 04:20 or 05:20 UTC: the right local day needs the zone, not UTC's date.
            local = dt.datetime.combine(day, dt.time(0, 20) if n == 0 else dt.time(rng.randint(8, 17),
                                                                                   rng.randint(0, 59)), tz)
            environment = rng.choice(("test", "production"))
            outcome = rng.choice(("completed", "completed", "completed", "no_show", "cancelled"))
            plan = PlannedVisit(uuid.uuid4(), configs[environment], environment, rng.choice(DEPARTMENTS),
                                local.astimezone(dt.timezone.utc), outcome)
            _story(plan, rng)
            plans.append(plan)
    return plans


def _story(p: PlannedVisit, rng: random.Random) -> None:
    ev = p.events
    if p.outcome == "completed":
        lobby = rng.randint(30, 300)
        wait = rng.randint(0, 900)
        length = rng.randint(120, 2400)
        guest = rng.random() < 0.4
        ev += [(20, "provider", "connected"), (lobby, "patient", "lobby_entered")]
        if guest:
            ev += [(lobby + 15, "guest", "lobby_entered")]
        ev += [(lobby + wait, "patient", "admitted"), (lobby + wait + 1, "patient", "left"),
               (lobby + wait + 2, "patient", "connected")]
        if guest:
            ev += [(lobby + wait + 3, "guest", "admitted"), (lobby + wait + 4, "guest", "left"),
                   (lobby + wait + 5, "guest", "connected")]
        # The clinician opens the room as a second socket beside the provider view: still one attendee.
        ev += [(lobby + wait + 6, "provider", "connected")]
        end = lobby + wait + 2 + length
        if guest:
            ev += [(end - 60, "guest", "disconnected")]
        ev += [(end - 5, "provider", "disconnected"), (end - 4, "provider", "disconnected"),
               (end + 10, "visit", "visit_ended"), (end + 12, "patient", "disconnected")]
        p.attendees = 3 if guest else 2
        p.invitations = {"patient": rng.choice(("sms", "email", "copy"))}
        if guest:
            p.invitations["guest"] = rng.choice(("sms", "email"))
    elif p.outcome == "no_show":
        ev += [(30, "provider", "connected"), (900, "provider", "disconnected"), (4000, "visit", "visit_ended")]
        p.attendees = 1
        p.invitations = {"patient": rng.choice(("sms", "email"))}
    else:  # cancelled: the patient came to the lobby, the visit ended before it started
        ev += [(40, "provider", "connected"), (90, "patient", "lobby_entered"), (300, "patient", "left"),
               (400, "provider", "disconnected"), (500, "visit", "visit_ended")]
        p.attendees = 1
    ev.sort()


def open_visit(config_id: int, environment: str, opened_at: dt.datetime) -> PlannedVisit:
    """A visit going on now: admitted after 60 s, both sides connected, nobody left."""
    p = PlannedVisit(uuid.uuid4(), config_id, environment, "cardiology", opened_at, "open",
                     [(10, "provider", "connected"), (100, "patient", "lobby_entered"), (160, "patient", "admitted"),
                      (170, "patient", "connected")], {"patient": "sms"}, attendees=2)
    return p


async def configurations(conn: asyncpg.Connection, sealer: Sealer, org_slug: str, tag: str) -> dict[str, int]:
    """An approved configuration of the organisation per environment."""
    found = {}
    for environment in ("test", "production"):
        config_id = await add_approved(conn, sealer, NewConfiguration(
            fhir_base_url=f"https://ehr-{tag}-{environment}.example.org/fhir/R4", environment=environment,
            client_id=f"client-{tag}", client_auth="private_key_jwt", scopes=DEFAULT_SCOPES),
            approved_by="test-operator")
        await conn.execute("UPDATE configurations SET organisation_id = (SELECT id FROM organisations WHERE slug = $2)"
                           " WHERE id = $1", config_id, org_slug)
        found[environment] = config_id
    return found


async def write_visits(conn: asyncpg.Connection, sealer: Sealer, plans: list[PlannedVisit]) -> None:
    """Write the planned visits as the gateway would have: rows, events in time order, ends, invitations; in one
    transaction, as a `visit_ended` event and its visit_ends row are written together."""
    async with conn.transaction():
        await _write_visits(conn, sealer, plans)


async def _write_visits(conn: asyncpg.Connection, sealer: Sealer, plans: list[PlannedVisit]) -> None:
    events: list[tuple[dt.datetime, PlannedVisit, str, str]] = []
    for p in plans:
        await conn.execute(
            "INSERT INTO visits (id, configuration_id, encounter_key, encounter_ref, patient_ref, meeting_provider,"
            " created_at, department) VALUES ($1, $2, $3, $4, $5, 'builtin', $6, $7)",
            p.visit_id, p.configuration_id, os.urandom(32), sealer.seal(CANARY_ENCOUNTER, "visits.encounter_ref"),
            sealer.seal(CANARY_PATIENT, "visits.patient_ref"), p.opened_at, p.department)
        events += [(p.at(s), p, label, kind) for s, label, kind in p.events]
    participants: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
    for p in plans:
        for label in ("provider", "patient", "guest"):
            pid = uuid.uuid4()
            participants[(p.visit_id, label)] = pid
            await conn.execute(
                "INSERT INTO participants (id, visit_id, role, guest_kind, fhir_user) VALUES ($1, $2, $3, $4, $5)",
                pid, p.visit_id, label, "family" if label == "guest" else None,
                "Practitioner/prac-1" if label == "provider" else None)
        for label, channel in p.invitations.items():
            await record_sent(conn, participants[(p.visit_id, label)], p.visit_id, channel)
    for at, p, label, kind in sorted(events, key=lambda e: e[0]):
        if kind == "visit_ended":
            event_id = await conn.fetchval(
                "INSERT INTO presence_events (visit_id, participant_id, kind, at) VALUES ($1, NULL, 'visit_ended', $2)"
                " RETURNING id", p.visit_id, at)
            await conn.execute(
                "INSERT INTO visit_ends (visit_id, event_id, reason, no_show, ended_at) VALUES ($1, $2, $3, $4, $5)",
                p.visit_id, event_id, "window" if p.outcome == "no_show" else "clinician", p.outcome == "no_show", at)
        else:
            await conn.execute("INSERT INTO presence_events (visit_id, participant_id, kind, at) VALUES ($1, $2, $3, $4)",
                               p.visit_id, participants[(p.visit_id, label)], kind, at)
