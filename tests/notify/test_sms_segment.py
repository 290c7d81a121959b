"""The join SMS fits one GSM-7 segment (160 septets): the short link leaves room for the organisation's name."""
from __future__ import annotations

from tests.conftest import Stack

from tests.join.test_patient_pages import assert_no_clinician

from .conftest import ORGANISATION, SmtpServer
from .helpers import invite, launch_handle, link_in, link_works

# GSM 03.38: the basic character set (one septet each) and its extension table (two septets each: escape + char).
GSM7_BASIC = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
              "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = "^{}\\[~]|€\f"
ONE_SEGMENT = 160


def gsm7_septets(text: str) -> int | None:
    """How many septets text takes in GSM-7, or None when a character needs UCS-2 (70 per segment)."""
    count = 0
    for ch in text:
        if ch in GSM7_BASIC:
            count += 1
        elif ch in GSM7_EXTENSION:
            count += 2
        else:
            return None
    return count


def test_the_septet_counter_knows_gsm7() -> None:
    assert len(GSM7_BASIC) == 128
    assert gsm7_septets("Hello [x]") == 11
    assert gsm7_septets("Привет") is None


async def test_the_patient_join_sms_is_one_gsm7_segment_with_a_working_link(stack: Stack) -> None:
    handle = await launch_handle(stack)
    response = await invite(stack, handle, channel="sms", role="patient")
    assert response.status == 200, await response.text()
    phone = await stack.browser.get(f"{stack.sandbox_url}/phone", headers={"Accept": "application/json"})
    [sms] = (await phone.json())["messages"]
    body = sms["body"]
    assert ORGANISATION in body
    septets = gsm7_septets(body)
    assert septets is not None, body
    assert septets <= ONE_SEGMENT, (septets, body)
    await link_works(stack, link_in(body))
    assert_no_clinician(body, "the join SMS")


async def test_the_join_email_names_no_clinician(stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack)
    response = await invite(stack, handle, channel="email", role="patient")
    assert response.status == 200, await response.text()
    [mail] = smtp.received
    assert_no_clinician(f"{mail.message['Subject']}\n{mail.text}", "the join email")


def test_a_long_public_url_and_organisation_name_still_fit() -> None:
    # A realistic production shape: an https host name of 40 characters and a 40-character name.
    from gateway.notify import Notifier
    from gateway.joinlinks import CODE_LENGTH

    organisation = "Northern Riverside Community Health Org"
    link = f"https://video-visits.northern-riverside.org/j/{'x' * CODE_LENGTH}"
    notifier = Notifier(email=None, sms=None, organisation_name=organisation)  # type: ignore[arg-type]
    text = notifier.join_text(link)
    septets = gsm7_septets(text)
    assert septets is not None and septets <= ONE_SEGMENT, (septets, text)
