"""The error report's days are the organisation's: a failure counts on the day it happened in the time zone of
its configuration's organisation (the gateway's VISITGATE_TIME_ZONE when the organisation has none, or the
configuration no organisation), the periods end on the organisation's today, and a chosen range of days shows
only its days; a range that is not one falls back to the default period, never a 500."""
from __future__ import annotations

import datetime as dt
import shutil
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from gateway.appkeys import DB
from gateway.configurations import organisation_id, set_organisation_zone
from gateway.errors import ConfigError
from tests.conftest import reason_code
from tests.zones import local_date, zone_on_another_date

from .conftest import ORG, Ehr, Portal
from .test_error_report import _DAY_ROW, _as_admin, _configurations, _follow, _launch_url

# Chosen when the module is collected: the zone is on another date than UTC for hours either side of now.
GATEWAY_ZONE = zone_on_another_date()


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


async def _set_zone(portal: Portal, zone: str | None) -> None:
    async with portal.gateway_app[DB].acquire() as conn:
        await set_organisation_zone(conn, await organisation_id(conn, ORG), zone, "test-operator")


async def _refused(portal: Portal, iss: str, launch: str, reason: str) -> None:
    r = await _follow(portal, _launch_url(portal, iss, launch))
    assert reason_code(await r.text()) == reason, await r.text()


async def _counted_days(portal: Portal) -> dict[tuple[int | None, str], list[dt.date]]:
    rows = await portal.sql("SELECT configuration_id, reason, day, sum(count)::int AS n FROM launch_refusals "
                            "GROUP BY configuration_id, reason, day ORDER BY day")
    found: dict[tuple[int | None, str], list[dt.date]] = {}
    for row in rows:
        found.setdefault((row["configuration_id"], row["reason"]), []).extend([row["day"]] * row["n"])
    return found


def _days_shown(body: str) -> dict[tuple[str, int, str], int]:
    if 'id="launch-days"' not in body:
        return {}
    table = body.split('id="launch-days"', 1)[1].split("</table>", 1)[0]
    return {(d, int(c), r): int(n) for d, c, r, n in _DAY_ROW.findall(table)}


async def test_failures_count_on_the_organisations_day_and_the_report_ends_on_its_today(portal: Portal,
                                                                                       ehr: Ehr) -> None:
    approved, pending = await _configurations(portal, ehr)
    zone = zone_on_another_date()
    await _set_zone(portal, zone)
    local = local_date(zone)
    assert local != _utc_today()
    # Refused at /launch (a configuration not in force), failed after the EHR's sign-in, and a near miss.
    await _refused(portal, f"{ehr.url}/pending/fhir", "launch-x", "configuration_pending")
    await _refused(portal, ehr.fhir_base, "no-such-launch", "authorize_refused")
    await _refused(portal, f"{ehr.fhir_base}/R4", "launch-1", "unknown_iss")
    # An unknown `iss` belongs to no organisation: the gateway's day (UTC, the default).
    await _refused(portal, "https://elsewhere.example.org/fhir", "launch-1", "unknown_iss")

    assert await _counted_days(portal) == {
        (pending, "configuration_pending"): [local], (approved, "authorize_refused"): [local],
        (approved, "iss_near_miss"): [local], (None, "unknown_iss"): [_utc_today()]}
    assert [r["day"] for r in await portal.sql("SELECT day FROM launch_near_misses")] == [local]

    await _as_admin(portal)
    page = await portal.get(f"/portal/{ORG}/errors?days=7")
    assert page.status == 200, await page.text()
    body = await page.text()
    assert f'<strong class="value">{zone}</strong>' in body
    # The period is the organisation's last seven days, today included.
    assert f"from\n     {(local - dt.timedelta(days=6)).isoformat()} to {local.isoformat()}." in body, body
    assert f'name="to" value="{local.isoformat()}"' in body
    assert _days_shown(body) == {(local.isoformat(), pending, "configuration_pending"): 1,
                                 (local.isoformat(), approved, "authorize_refused"): 1,
                                 (local.isoformat(), approved, "iss_near_miss"): 1}
    assert f"<td>{local.isoformat()}</td><td>{local.isoformat()}</td>" in body  # the near miss's first and last day


@pytest.mark.parametrize("portal_settings", [{"time_zone": GATEWAY_ZONE}])
async def test_without_a_zone_of_its_own_an_organisation_counts_on_the_gateways_day(
        portal: Portal, ehr: Ehr, portal_settings: dict[str, Any]) -> None:
    _approved, pending = await _configurations(portal, ehr)
    gateway_day, utc_day = local_date(GATEWAY_ZONE), _utc_today()
    assert gateway_day != utc_day
    await _refused(portal, f"{ehr.url}/pending/fhir", "launch-x", "configuration_pending")
    await _refused(portal, "https://elsewhere.example.org/fhir", "launch-1", "unknown_iss")
    # The organisation's own zone, once set, wins over the gateway's.
    await _set_zone(portal, "UTC")
    await _refused(portal, f"{ehr.url}/pending/fhir", "launch-y", "configuration_pending")
    assert await _counted_days(portal) == {(pending, "configuration_pending"): sorted([gateway_day, utc_day]),
                                           (None, "unknown_iss"): [gateway_day]}
    await _set_zone(portal, None)
    await _as_admin(portal)
    body = await (await portal.get(f"/portal/{ORG}/errors")).text()
    assert f'<strong class="value">{GATEWAY_ZONE}</strong>' in body
    assert f'name="to" value="{gateway_day.isoformat()}"' in body


async def test_a_chosen_range_shows_only_its_days_and_a_bad_one_falls_back(portal: Portal, ehr: Ehr) -> None:
    approved, _pending = await _configurations(portal, ehr)
    today = _utc_today()  # the organisation has no zone and the gateway's is UTC here
    for back in (40, 10, 3):
        await portal.sql("INSERT INTO launch_refusals (configuration_id, reason, day, bucket, count) "
                         "VALUES ($1, 'token_error', $2, 0, $3)", approved, today - dt.timedelta(days=back), back)
    await _as_admin(portal)
    url = f"/portal/{ORG}/errors"

    def day(back: int) -> str:
        return (today - dt.timedelta(days=back)).isoformat()

    chosen = await portal.get(url, params={"from": day(12), "to": day(2)})
    body = await chosen.text()
    assert chosen.status == 200, body
    assert _days_shown(body) == {(day(10), approved, "token_error"): 10, (day(3), approved, "token_error"): 3}
    assert 'data-reason="token_error" data-count="13"' in body
    assert 'aria-current="page"' not in body.split('aria-label="Period"', 1)[1].split("</nav>", 1)[0]
    assert "range-refused" not in body and f'name="from" value="{day(12)}"' in body
    # A year and a day (a leap year's 366 days) is the longest range.
    longest = await (await portal.get(url, params={"from": day(365), "to": day(0)})).text()
    assert set(_days_shown(longest)) == {(day(b), approved, "token_error") for b in (40, 10, 3)}

    hostile = [
        {"from": day(2), "to": day(12)},  # backwards
        {"from": day(366), "to": day(0)},  # 367 days
        {"from": day(12)}, {"to": day(2)}, {"from": "", "to": day(2)},
        {"from": "2026-13-01", "to": day(2)}, {"from": "2026-02-30", "to": day(2)},
        {"from": "20260101", "to": day(2)}, {"from": "2026-W01-1", "to": day(2)},
        {"from": "２０２６-０１-０１", "to": day(2)}, {"from": day(12) + "\u200b", "to": day(2)},
        {"from": "9" * 3000, "to": "-" * 3000}, {"from": "0000-01-01", "to": "9999-12-31"},
        {"from": "0001-01-01", "to": "0001-01-01 "},
    ]
    for params in hostile:
        r = await portal.get(url, params=params)
        text = await r.text()
        assert r.status == 200, (params, text)
        assert 'aria-current="page">Last 30 days' in text and 'id="range-refused"' in text, params
        assert _days_shown(text) == {(day(10), approved, "token_error"): 10, (day(3), approved, "token_error"): 3}
    # A control character is refused by the gateway for every route before the page sees it: a 400, not a 500.
    nul = await portal.get(url, params={"from": day(12) + "\x00", "to": day(2)})
    assert nul.status == 400 and reason_code(await nul.text()) == "invalid_characters"
    # The period asked for alongside a bad range is kept.
    r = await portal.get(url, params={"days": "7", "from": day(2), "to": day(12)})
    assert 'aria-current="page">Last 7 days' in await r.text()
    assert set(_days_shown(await r.text())) == {(day(3), approved, "token_error")}


async def test_a_zone_only_python_knows_is_refused_before_it_breaks_the_counters(portal: Portal,
                                                                                tmp_path: Path) -> None:
    # A zone file under a name no database has: Python's tz data knows it, PostgreSQL's does not (as happens
    # when the two tz databases are of different ages: a new zone, such as America/Coyhaique in 2025).
    (tmp_path / "Visitgate").mkdir()
    shutil.copy(Path(zoneinfo.TZPATH[0] if zoneinfo.TZPATH else "/usr/share/zoneinfo") / "Europe" / "Paris",
                tmp_path / "Visitgate" / "Nowhere")
    zoneinfo.reset_tzpath(to=[str(tmp_path), *zoneinfo.TZPATH])
    try:
        assert zoneinfo.ZoneInfo("Visitgate/Nowhere").utcoffset(dt.datetime(2026, 1, 1)) == dt.timedelta(hours=1)
        with pytest.raises(ConfigError, match="database does not know"):
            await _set_zone(portal, "Visitgate/Nowhere")
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache(only_keys=["Visitgate/Nowhere"])
    assert (await portal.sql("SELECT time_zone FROM organisations WHERE slug = $1", ORG))[0]["time_zone"] is None
