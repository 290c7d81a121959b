"""Revoking and re-sending a link from the provider view: the revoked link is refused, the re-sent one works,
and the list of invitations says whom and how, never where."""
from __future__ import annotations

import logging

import aiohttp
import pytest

from tests.conftest import Stack, browser_session, reason_code

from .conftest import SmtpServer
from .helpers import invite, launch_handle, link_in, link_works

PAT1_EMAIL = "alex.testpatient@example.org"  # sandbox/seed.py
GUEST_EMAIL = "interpreter.canary@example.org"


async def _post(stack: Stack, handle: str, path: str, origin: str | None = "gateway",
                **fields: str) -> aiohttp.ClientResponse:
    headers = {"Accept": "application/json"}
    if origin == "gateway":
        headers["Origin"] = stack.gateway_url
    elif origin is not None:
        headers["Origin"] = origin
    response = await stack.browser.post(f"{stack.gateway_url}/provider/{handle}/invite/{path}", data=fields,
                                        headers=headers, allow_redirects=False)
    await response.read()
    return response


async def _listed(stack: Stack, handle: str) -> tuple[list[dict[str, object]], str]:
    response = await stack.browser.get(f"{stack.gateway_url}/provider/{handle}/invitations")
    body = await response.text()
    assert response.status == 200, body
    return (await response.json())["invitations"], body


async def _refused(stack: Stack, link: str) -> str | None:
    """What a fresh browser is told when it uses the link."""
    async with browser_session(stack.gateway_url) as other:
        response = await other.post(f"{stack.gateway_url}/join", data={"t": link.split("?", 1)[0].rsplit("/", 1)[1]},
                                    headers={"Origin": stack.gateway_url}, allow_redirects=False)
        body = await response.text()
        assert response.status != 303, body
        return reason_code(body)


async def test_a_revoked_link_is_refused_and_a_re_sent_one_works(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    sent = await (await invite(stack, handle, channel="email", role="patient")).json()
    first = link_in(smtp.received[-1].text)
    patient = sent["participant"]
    [listed], _ = await _listed(stack, handle)
    assert listed["participant"] == patient and listed["live"] is True
    assert (listed["role"], listed["channel"]) == ("patient", "email")

    revoked = await _post(stack, handle, f"{patient}/revoke")
    assert revoked.status == 200, await revoked.text()
    assert (await revoked.json())["ok"] is True
    assert await _refused(stack, first) == "link_revoked"
    [listed], _ = await _listed(stack, handle)
    assert listed["live"] is False

    resent = await _post(stack, handle, f"{patient}/resend")
    answer = await resent.json()
    assert resent.status == 200, answer
    assert answer["message"] == "Sent to the patient's email on file (a***@example.org)."
    assert len(smtp.received) == 2
    second = link_in(smtp.received[-1].text)
    assert second != first
    await link_works(stack, second)
    assert await _refused(stack, first) == "link_revoked"
    [listed], _ = await _listed(stack, handle)
    assert listed["live"] is True


async def test_a_guest_is_re_sent_to_the_address_typed_again_and_no_address_is_listed(
        stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    await invite(stack, handle, channel="email", role="patient")
    guest = await (await invite(stack, handle, channel="email", role="guest", guest_kind="interpreter",
                                address=GUEST_EMAIL)).json()
    assert guest["ok"] is True, guest
    invitations, body = await _listed(stack, handle)
    assert [(i["role"], i["guest_kind"], i["channel"]) for i in invitations] == [
        ("patient", None, "email"), ("guest", "interpreter", "email")]
    view = await stack.browser.get(f"{stack.gateway_url}/provider/{handle}")
    page = await view.text()
    for where in (PAT1_EMAIL, GUEST_EMAIL, "a***@example.org", "i***@example.org"):
        assert where not in body and where not in page

    # The guest's address was never kept: a re-send by email needs it again.
    missing = await _post(stack, handle, f"{guest['participant']}/resend")
    assert missing.status == 400 and (await missing.json())["reason"] == "invalid_address"
    again = await _post(stack, handle, f"{guest['participant']}/resend", address=GUEST_EMAIL)
    assert again.status == 200, await again.text()
    assert smtp.received[-1].rcpt_tos == [GUEST_EMAIL]
    # Or as a link to copy instead.
    copied = await (await _post(stack, handle, f"{guest['participant']}/resend", channel="copy")).json()
    await link_works(stack, copied["link"])
    assert await _refused(stack, link_in(smtp.received[-1].text)) == "link_revoked"


async def test_revoke_and_resend_refuse_what_is_not_this_visits_invitation(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    sent = await (await invite(stack, handle, channel="copy", role="patient")).json()
    for path in ("00000000-0000-0000-0000-000000000000/revoke", "not-a-uuid/resend", f"{'9' * 300}/revoke"):
        response = await _post(stack, handle, path)
        assert response.status == 404, await response.text()
        assert (await response.json())["reason"] == "unknown_invitation"
    cross = await _post(stack, handle, f"{sent['participant']}/revoke", origin="http://localhost:1")
    assert cross.status == 403, await cross.text()
    await link_works(stack, sent["link"])  # still live
    expired = await _post(stack, "not-a-live-handle", f"{sent['participant']}/revoke")
    assert expired.status == 401, await expired.text()


async def test_another_browser_or_a_hostile_body_gets_nothing(stack: Stack, smtp: SmtpServer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    handle = await launch_handle(stack)
    sent = await (await invite(stack, handle, channel="copy", role="patient")).json()
    base = f"{stack.gateway_url}/provider/{handle}"
    async with browser_session(stack.gateway_url) as other:
        async with other.get(f"{base}/invitations") as listed:
            assert listed.status == 401, await listed.text()
        for action in ("revoke", "resend"):
            async with other.post(f"{base}/invite/{sent['participant']}/{action}",
                                  headers={"Origin": stack.gateway_url, "Accept": "application/json"}) as r:
                assert r.status == 401, await r.text()
    form = "application/x-www-form-urlencoded"
    for body, kind in ((b"[" * 50_000, "application/json"), (b"address=%00%ff&channel=\x00", form),
                       (b"channel=carrier-pigeon", form)):
        response = await stack.browser.post(f"{base}/invite/{sent['participant']}/resend", data=body,
                                            headers={"Origin": stack.gateway_url, "Content-Type": kind,
                                                     "Accept": "application/json"})
        assert 400 <= response.status < 500, await response.text()
    await link_works(stack, sent["link"])  # nothing was revoked by any of it
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == [], loud


async def test_a_re_send_that_fails_says_so_and_keeps_the_guest(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    guest = await (await invite(stack, handle, channel="email", role="guest", guest_kind="family",
                                address=GUEST_EMAIL)).json()
    assert smtp.server is not None
    smtp.server.close()
    await smtp.server.wait_closed()
    failed = await _post(stack, handle, f"{guest['participant']}/resend", address=GUEST_EMAIL)
    answer = await failed.json()
    assert failed.status == 502, answer
    assert answer["message"].endswith("The new link was not sent, and the earlier one no longer works: try again, "
                                      "or copy a new link.")
    [listed], _ = await _listed(stack, handle)  # the guest is still invited, with no working link: say so
    assert listed["participant"] == guest["participant"] and listed["live"] is False
    copied = await (await _post(stack, handle, f"{guest['participant']}/resend", channel="copy")).json()
    await link_works(stack, copied["link"])
