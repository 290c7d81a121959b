"""Sending the join link from the provider view: email to a real SMTP server, SMS to the sandbox phone,
copy, guests, and the refusals."""
from __future__ import annotations

import pytest

from gateway.appkeys import DB
from tests.conftest import Stack, reason_code

from .conftest import ORGANISATION, SmtpServer
from .helpers import invite, launch_handle, link_in, link_works

PAT1_EMAIL = "alex.testpatient@example.org"  # sandbox/seed.py
PAT1_PHONE_E164 = "+12065550101"


async def test_patient_email_arrives_at_the_smtp_server_with_a_working_link(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    response = await invite(stack, handle, channel="email", role="patient")
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["ok"] is True
    assert answer["message"] == "Sent to the patient's email on file (a***@example.org)."
    assert PAT1_EMAIL not in await response.text()
    [mail] = smtp.received
    assert mail.rcpt_tos == [PAT1_EMAIL]
    assert mail.message["To"] == PAT1_EMAIL
    assert mail.mail_from == "visits@gateway.test"
    assert ORGANISATION in mail.message["Subject"]
    assert f"Your video visit with {ORGANISATION} is ready: " in mail.text
    for clinical in ("Alex", "Testpatient", "Follow-up", "1980"):
        assert clinical not in mail.text and clinical not in mail.message["Subject"]
    await link_works(stack, link_in(mail.text))


async def test_patient_sms_arrives_on_the_sandbox_phone_with_a_working_link(stack: Stack) -> None:
    handle = await launch_handle(stack)
    response = await invite(stack, handle, channel="sms", role="patient")
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["message"] == "Sent to the patient's mobile number on file (*** ** 01)."
    phone = await stack.browser.get(f"{stack.sandbox_url}/phone", headers={"Accept": "application/json"})
    [sms] = (await phone.json())["messages"]
    assert sms["to"] == PAT1_PHONE_E164
    assert sms["body"].startswith(f"Your video visit with {ORGANISATION} is ready: ")
    link = link_in(sms["body"])
    page = await stack.browser.get(f"{stack.sandbox_url}/phone")
    assert f'<a href="{link}">' in await page.text()  # the phone page shows it clickable
    await link_works(stack, link)


async def test_copy_answers_a_link_that_works_and_sends_nothing(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    response = await invite(stack, handle, channel="copy", role="patient")
    answer = await response.json()
    assert response.status == 200, answer
    assert smtp.received == []
    await link_works(stack, answer["link"])


async def test_each_send_is_its_own_link_for_the_same_patient_participant(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    first = await (await invite(stack, handle, channel="email", role="patient")).json()
    second = await (await invite(stack, handle, channel="copy", role="patient")).json()
    assert first["participant"] == second["participant"]
    assert link_in(smtp.received[0].text) != second["link"]


async def test_guest_invite_is_its_own_participant_with_role_and_kind(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    patient = await (await invite(stack, handle, channel="copy", role="patient")).json()
    response = await invite(stack, handle, channel="email", role="guest", guest_kind="interpreter",
                            address="lee.interpreter@example.net")
    guest = await response.json()
    assert response.status == 200, guest
    assert guest["message"] == "Sent to the guest's email (l***@example.net)."
    assert guest["participant"] != patient["participant"]
    [mail] = smtp.received
    assert mail.rcpt_tos == ["lee.interpreter@example.net"]
    family = await (await invite(stack, handle, channel="copy", role="guest", guest_kind="family")).json()
    async with stack.gateway_app[DB].acquire() as conn:
        rows = {str(r["id"]): (r["role"], r["guest_kind"]) for r in await conn.fetch(
            "SELECT id, role, guest_kind FROM participants")}
    assert rows[guest["participant"]] == ("guest", "interpreter")
    assert rows[family["participant"]] == ("guest", "family")
    assert rows[patient["participant"]] == ("patient", None)
    await link_works(stack, link_in(mail.text))


async def test_guest_sms_goes_to_the_number_typed(stack: Stack) -> None:
    handle = await launch_handle(stack)
    response = await invite(stack, handle, channel="sms", role="guest", guest_kind="caregiver",
                            address="+44 20 7946 0958")
    assert response.status == 200, await response.text()
    phone = await stack.browser.get(f"{stack.sandbox_url}/phone", headers={"Accept": "application/json"})
    [sms] = (await phone.json())["messages"]
    assert sms["to"] == "+442079460958"


@pytest.mark.parametrize(("fields", "reason"), [
    ({"channel": "fax", "role": "patient"}, "invalid_channel"),
    ({"channel": "email", "role": "doctor"}, "invalid_role"),
    ({"channel": "email", "role": "guest", "guest_kind": "friend", "address": "a@example.net"}, "invalid_guest_kind"),
    ({"channel": "email", "role": "guest", "guest_kind": "family", "address": "not an address"}, "invalid_address"),
    ({"channel": "sms", "role": "guest", "guest_kind": "family", "address": "555-0100"}, "invalid_address"),
])
async def test_malformed_invite_is_refused_with_a_message(stack: Stack, smtp: SmtpServer, fields: dict[str, str],
                                                          reason: str) -> None:
    handle = await launch_handle(stack)
    response = await invite(stack, handle, **fields)
    answer = await response.json()
    assert response.status == 400, answer
    assert answer["reason"] == reason and answer["message"]
    assert smtp.received == []


async def test_invite_with_unknown_handle_is_a_401_page(stack: Stack) -> None:
    response = await invite(stack, "not-a-handle", json=False, channel="email", role="patient")
    assert response.status == 401
    assert reason_code(await response.text()) == "session_expired"


@pytest.mark.parametrize("headers", [
    {"Origin": "http://localhost:1"},                      # another site
    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},    # a sandboxed or opaque origin
    {},                                                    # no evidence it came from our page
])
async def test_cross_origin_invite_is_refused(stack: Stack, smtp: SmtpServer, headers: dict[str, str]) -> None:
    handle = await launch_handle(stack)
    response = await stack.browser.post(f"{stack.gateway_url}/provider/{handle}/invite",
                                        data={"channel": "email", "role": "patient"}, headers=headers)
    assert response.status == 403, await response.text()
    assert reason_code(await response.text()) == "cross_site_request"
    assert smtp.received == []


async def test_form_post_from_our_own_page_is_accepted(stack: Stack, smtp: SmtpServer) -> None:
    """With Referrer-Policy no-referrer a browser's own form post says Origin: null; Sec-Fetch-Site vouches."""
    handle = await launch_handle(stack)
    response = await stack.browser.post(f"{stack.gateway_url}/provider/{handle}/invite",
                                        data={"channel": "email", "role": "patient"},
                                        headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
    body = await response.text()
    assert response.status == 200, body
    assert "a***@example.org" in body and PAT1_EMAIL not in body  # the page form of the answer
    assert len(smtp.received) == 1


async def test_patient_without_email_gets_a_clear_message(stack: Stack, smtp: SmtpServer) -> None:
    from sandbox.appkeys import STORE

    store = stack.sandbox_app[STORE]
    patient = store.get("Patient", "pat-2")
    assert patient is not None
    patient["telecom"] = [{"system": "phone", "value": "+1-206-555-0102", "use": "mobile"},
                          {"system": "email", "value": "old.bea@example.org", "use": "old"},
                          {"system": "email", "value": "ended.bea@example.org", "period": {"end": "2001-01-01"}}]
    store.put(patient)
    handle = await launch_handle(stack, patient="pat-2", encounter="enc-2")
    response = await invite(stack, handle, channel="email", role="patient")
    answer = await response.json()
    assert response.status == 422, answer
    assert answer["reason"] == "no_email_on_file"
    assert "no current email address" in answer["message"]
    assert smtp.received == []
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM join_links") == 0
    page = await invite(stack, handle, json=False, channel="email", role="patient")
    assert page.status == 422 and "no current email address" in await page.text()


async def test_mail_server_down_is_reported_and_the_link_revoked(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    assert smtp.server is not None
    smtp.server.close()
    await smtp.server.wait_closed()
    response = await invite(stack, handle, channel="email", role="patient")
    answer = await response.json()
    assert response.status == 502, answer
    assert answer["reason"] == "email_failed"
    async with stack.gateway_app[DB].acquire() as conn:
        links = await conn.fetch("SELECT revoked_at FROM join_links")
    assert len(links) == 1 and links[0]["revoked_at"] is not None


async def test_a_guest_whose_email_never_went_out_is_not_kept(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    assert smtp.server is not None
    smtp.server.close()
    await smtp.server.wait_closed()
    response = await invite(stack, handle, channel="email", role="guest", guest_kind="family",
                            address="aunt.canary@example.org")
    answer = await response.json()
    assert response.status == 502, answer
    assert "nothing was kept" in answer["message"]
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM participants WHERE role = 'guest'") == 0
        assert await conn.fetchval("SELECT count(*) FROM join_links") == 0


async def test_provider_view_has_the_send_link_panel(stack: Stack) -> None:
    response, _visited = await stack.launch()
    body = await response.text()
    assert 'id="send-link"' in body and 'data-channel="sms"' in body and 'name="guest_kind"' in body
    assert '<script type="module" src="/static/launch/invite.js"></script>' in body
    script = await stack.get(f"{stack.gateway_url}/static/launch/invite.js")
    assert script.status == 200
    assert "/invite" in await script.text()


async def test_sms_when_no_provider_is_set_up_says_so(stack: Stack) -> None:
    from gateway.appkeys import NOTIFIER

    stack.gateway_app[NOTIFIER].sms = None  # as with VISITGATE_SMS_PROVIDER=none
    handle = await launch_handle(stack)
    response = await invite(stack, handle, channel="sms", role="patient")
    answer = await response.json()
    assert response.status == 409, answer
    assert answer["reason"] == "channel_not_configured"
    async with stack.gateway_app[DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM join_links") == 0
