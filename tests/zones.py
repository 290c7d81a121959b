"""Time zones for tests of "the organisation's day": one where today's date is not the UTC date right now."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

# Real zones from UTC+14 to UTC-11: at any moment some of them are on another date than UTC.
CANDIDATES = ("Pacific/Kiritimati", "Pacific/Tongatapu", "Pacific/Auckland", "Pacific/Noumea", "Australia/Sydney",
              "Asia/Tokyo", "Asia/Shanghai", "Asia/Bangkok", "Asia/Dhaka", "Asia/Karachi", "Asia/Dubai",
              "Pacific/Pago_Pago", "Pacific/Honolulu", "America/Anchorage", "America/Los_Angeles", "America/Denver",
              "America/Chicago", "America/New_York", "America/Sao_Paulo", "America/Noronha", "Atlantic/Azores")


def local_date(zone: str) -> dt.date:
    """Today in a zone, computed here with zoneinfo (not by the code under test)."""
    return dt.datetime.now(ZoneInfo(zone)).date()


def zone_on_another_date() -> str:
    """A zone whose date is not the UTC date now, as far from its midnight as possible (so a test that takes a
    few seconds does not see the date change under it)."""
    now = dt.datetime.now(dt.timezone.utc)

    def margin(zone: str) -> float:
        local = now.astimezone(ZoneInfo(zone))
        seconds = local.hour * 3600 + local.minute * 60 + local.second
        return min(seconds, 86400 - seconds)

    other = [z for z in CANDIDATES if now.astimezone(ZoneInfo(z)).date() != now.date()]
    assert other, "no candidate zone is on another date than UTC"
    return max(other, key=margin)
