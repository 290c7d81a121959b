"""Contact details used to send links never land in the database or the logs, and neither do the links."""
from __future__ import annotations

import logging

import pytest

from gateway.appkeys import DB
from gateway.notify import to_e164
from tests.conftest import Stack, database_text
from tests.test_privacy import CANARIES, _seed_canary_patient

from .conftest import SmtpServer
from .helpers import invite, launch_handle, link_in

GUEST_EMAIL = "quillon.guestcanary@example.invalid"
GUEST_PHONE = "+44 20 7946 0311"


async def test_sending_links_leaves_no_contact_details_or_links_in_database_or_logs(
        stack: Stack, smtp: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _seed_canary_patient(stack)
    handle = await launch_handle(stack, patient=CANARIES["patient_id"], encounter=CANARIES["encounter_id"])
    sends = [
        {"channel": "email", "role": "patient"},
        {"channel": "sms", "role": "patient"},
        {"channel": "copy", "role": "patient"},
        {"channel": "email", "role": "guest", "guest_kind": "family", "address": GUEST_EMAIL},
        {"channel": "sms", "role": "guest", "guest_kind": "interpreter", "address": GUEST_PHONE},
    ]
    answers = []
    for fields in sends:
        response = await invite(stack, handle, **fields)
        answers.append(await response.json())
        assert response.status == 200, answers[-1]
    assert [m.rcpt_tos for m in smtp.received] == [[CANARIES["email"]], [GUEST_EMAIL]]
    phone = await stack.browser.get(f"{stack.sandbox_url}/phone", headers={"Accept": "application/json"})
    texts = (await phone.json())["messages"]
    assert {t["to"] for t in texts} == {to_e164(CANARIES["phone"]), to_e164(GUEST_PHONE)}
    links = [link_in(m.text) for m in smtp.received] + [link_in(t["body"]) for t in texts] + [answers[2]["link"]]
    tokens = [link.split("/j/", 1)[1].split("?", 1)[0] for link in links]

    async with stack.gateway_app[DB].acquire() as conn:
        tables, dump = await database_text(conn)
        assert {"participants", "join_links"} <= tables
        assert await conn.fetchval("SELECT count(*) FROM join_links") == 5
    stored = dump.lower()
    # The sandbox (the EHR and its phone) and the test's SMTP server (mail.log) are not ours.
    ours = [r for r in caplog.records if not r.name.startswith(("sandbox", "mail.log"))]
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours).lower()
    secrets = {**CANARIES, "guest_email": GUEST_EMAIL, "guest_phone": GUEST_PHONE,
               "patient_e164": to_e164(CANARIES["phone"]), "guest_e164": to_e164(GUEST_PHONE)}
    for name, value in secrets.items():
        assert value
        assert value.lower() not in stored, f"{name} landed in the database"
        assert value.lower() not in logs, f"{name} landed in the logs"
    for token in tokens:
        assert token.lower() not in logs and token.lower() not in stored, "a link landed in logs or database"
    for answer in answers[:2]:
        assert answer["participant"] in logs  # what is logged instead: the opaque participant
    assert "sent email for participant" in logs and "sent sms for participant" in logs
