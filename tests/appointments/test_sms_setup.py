"""Reminders and confirmations by SMS honour what join links honour: the patient's STOP, the organisation's SMS
set-up (consents, the kinds it chose) and the number it linked to the configuration's FHIR base URL. Texts go
through the sandbox's ACS double, which shows each text on the sandbox phone with the number it came from."""
from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import pytest

from config_portal.organisations import NewOrganisation, add_organisation
from gateway.appkeys import DB, SEALER
from gateway.notify.optout import suppressed_total
from sandbox.carriers.wiring import ACS, DEMO_ACS_KEY, DEMO_ACS_NUMBER
from tests.appointments.conftest import TIME_ZONE, Feed
from tests.notify.conftest import ORGANISATION, SmtpServer

PATIENT = "+12065550101"  # pat-1's mobile in the sandbox's seed ("+1-206-555-0101")
LINKED = "+18335550142"  # a number the organisation bought and linked to the sandbox's FHIR base URL
WEBHOOK_SECRET = "event-grid-secret-" + "s" * 16


@pytest.fixture
def stack_overrides(smtp: SmtpServer) -> Any:
    """The feed's settings, with texts through the sandbox's ACS double instead of the sink."""

    def overrides(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
        return dict(organisation_name=ORGANISATION, time_zone=TIME_ZONE, smtp_host="127.0.0.1", smtp_port=smtp.port,
                    smtp_from="visits@gateway.test", smtp_timeout=5, sms_provider="acs",
                    acs_endpoint=f"{sandbox_url}/acs", acs_access_key=DEMO_ACS_KEY, sms_from=DEMO_ACS_NUMBER,
                    sms_webhook_secret=WEBHOOK_SECRET, phone_region="US", reminder_poll_interval=0.05,
                    reminder_backoff=0.1, reminder_lease_seconds=5.0)

    return overrides


def _start() -> dt.datetime:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).replace(second=0, microsecond=0)


async def _ours(feed: Feed) -> list[dict[str, Any]]:
    """The texts the gateway sent the patient about visits (not the carrier's STOP confirmation)."""
    return [t for t in await feed.phone()
            if t["to"] == PATIENT and ("is booked for" in t["body"] or t["body"].startswith("Reminder"))]


async def _outcomes(feed: Feed, appointment: str, channel: str) -> list[tuple[str, int | None, str, str | None]]:
    rows = await feed.settled(appointment)
    return sorted((r.kind, r.offset_minutes if r.kind == "reminder" else None, r.state, r.outcome)
                  for r in rows if r.channel == channel)


async def _organisation_set_up(feed: Feed, *, reminders: bool, linked: bool) -> None:
    """The sandbox configuration belongs to an organisation whose admins gave both consents, with reminders
    on or off, and (linked) a number of its own linked to the configuration."""
    stack = feed.stack
    async with stack.gateway_app[DB].acquire() as conn:
        org_id = await add_organisation(conn, stack.gateway_app[SEALER], NewOrganisation(
            slug="riverside", name="Riverside", idp_kind="oidc", issuer="https://idp.example/riverside",
            client_id="c", client_secret="s" * 20), "test-operator")
        await conn.execute("UPDATE configurations SET organisation_id = $1 WHERE id = $2", org_id,
                           stack.configuration_id)
        await conn.execute("INSERT INTO sms_setups (organisation_id, terms_accepted_by, terms_accepted_at, consent_by, "
                           "consent_at, send_reminder) VALUES ($1, 'riverside:admin', now(), 'riverside:admin', now(), "
                           "$2)", org_id, reminders)
        if linked:
            number_id = await conn.fetchval("INSERT INTO sms_numbers (organisation_id, number) VALUES ($1, $2) "
                                            "RETURNING id", org_id, LINKED)
            await conn.execute("INSERT INTO sms_number_links (configuration_id, number_id) VALUES ($1, $2)",
                               stack.configuration_id, number_id)
    stack.sandbox_app[ACS].numbers.add(LINKED)  # ACS sends only from the resource's own numbers


async def test_a_patient_who_replied_stop_gets_no_confirmation_or_reminder_text(feed: Feed) -> None:
    stack = feed.stack
    async with aiohttp.ClientSession() as http:
        status = await stack.sandbox_app[ACS].deliver_sms(
            http, f"{stack.gateway_url}/sms/inbound/acs?code={WEBHOOK_SECRET}", PATIENT, DEMO_ACS_NUMBER, "STOP")
    assert status == 200
    appointment = await feed.book(_start())
    await feed.settled(appointment)
    await feed.make_due(appointment)
    assert await _outcomes(feed, appointment, "sms") == [
        ("booked", None, "skipped", "sms_opted_out"), ("reminder", 15, "skipped", "sms_opted_out"),
        ("reminder", 1440, "skipped", "sms_opted_out")]
    assert [state for _k, _o, state, _r in await _outcomes(feed, appointment, "email")] == ["sent"] * 3
    assert await _ours(feed) == []
    async with stack.gateway_app[DB].acquire() as conn:
        assert await suppressed_total(conn) == 3  # each held back and counted once (skipped for good, not retried)
        # The visit's usage row counts the three emails the mailbox got and none of the skipped texts.
        assert len(feed.smtp.received) == 3
        assert tuple(await conn.fetchrow("SELECT sms_sent, email_sent FROM visit_usage")) == (0, 3)


async def test_an_organisation_that_turned_reminders_off_gets_its_confirmation_but_no_reminder(feed: Feed) -> None:
    await _organisation_set_up(feed, reminders=False, linked=False)
    appointment = await feed.book(_start())
    await feed.settled(appointment)
    await feed.make_due(appointment)
    assert await _outcomes(feed, appointment, "sms") == [
        ("booked", None, "sent", None), ("reminder", 15, "skipped", "sms_kind_off"),
        ("reminder", 1440, "skipped", "sms_kind_off")]
    texts = await _ours(feed)
    assert [t["body"].startswith("Reminder") for t in texts] == [False]
    assert texts[0]["from"] == DEMO_ACS_NUMBER  # no number linked: the gateway's own


async def test_confirmations_and_reminders_go_from_the_number_linked_to_the_fhir_base_url(feed: Feed) -> None:
    await _organisation_set_up(feed, reminders=True, linked=True)
    appointment = await feed.book(_start())
    await feed.settled(appointment)
    await feed.make_due(appointment)
    assert [state for _k, _o, state, _r in await _outcomes(feed, appointment, "sms")] == ["sent"] * 3
    texts = await _ours(feed)
    assert sorted(t["body"].startswith("Reminder") for t in texts) == [False, True, True]
    assert {t["from"] for t in texts} == {LINKED}
    assert feed.stack.sandbox_app[ACS].repeats == 0
