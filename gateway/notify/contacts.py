"""Choosing a patient's email address or SMS number from FHIR `Patient.telecom`, read live just before a send.

Shared by the clinician's "send the link" (launch) and the appointment feed's confirmations and reminders
(appointments); the address chosen is handed to the notifier once and never kept.
"""
from __future__ import annotations

import datetime as dt
import re


def _partial_now(value: str, now: dt.datetime) -> str:
    """Today in the same precision as a partial FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)."""
    return now.date().isoformat()[:len(value)]


def _period_current(period: object, now: dt.datetime) -> bool:
    """Whether a ContactPoint.period includes now; a malformed period counts as not current."""
    if period is None:
        return True
    if not isinstance(period, dict):
        return False
    for key, started in (("start", True), ("end", False)):
        value = period.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return False
        if re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", value):
            # Partial dates compare as text at their own precision; the whole day/month/year counts.
            today = _partial_now(value, now)
            if (started and value > today) or (not started and value < today):
                return False
            continue
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return False
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        if (started and moment > now) or (not started and moment <= now):
            return False
    return True


# Lower sorts first. Email: personal addresses before work ones. SMS: numbers that take texts first.
_EMAIL_USE = {"home": 0, "mobile": 0, None: 1, "temp": 2, "work": 3}
_SMS_USE = {"mobile": 0, None: 1, "temp": 2, "home": 3, "work": 4}


def pick_contact(telecom: object, channel: str, now: dt.datetime | None = None) -> str | None:
    """The patient's address for a channel ("email" or "sms") from Patient.telecom: current entries only
    (no `old` use, no period that has ended or not begun), home/mobile preferred, then `rank`, then order."""
    if not isinstance(telecom, list):
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    candidates: list[tuple[tuple[int, int, int], str]] = []
    for index, point in enumerate(telecom):
        if not isinstance(point, dict):
            continue
        value, system, use = point.get("value"), point.get("system"), point.get("use")
        if not isinstance(value, str) or not value.strip() or use == "old":
            continue
        if not _period_current(point.get("period"), now):
            continue
        rank = point.get("rank")
        rank_key = rank if isinstance(rank, int) and not isinstance(rank, bool) and rank > 0 else 1 << 30
        if channel == "email" and system == "email":
            use_key = _EMAIL_USE.get(use, 3)
        elif channel == "sms" and system == "sms":
            use_key = -1  # said outright to take texts
        elif channel == "sms" and system == "phone":
            use_key = _SMS_USE.get(use, 4)
        else:
            continue
        candidates.append(((use_key, rank_key, index), value.strip()))
    return min(candidates)[1] if candidates else None
