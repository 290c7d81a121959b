"""A patient's link and messages in their preferred language (FHIR Patient.communication, read at send time):
the SMS and the email arrive in it, the link carries it as `?lang=` and opens the pages in it, the email's
times read in it in the organisation's time zone, and the language lands in neither the database nor the logs."""
from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from yarl import URL

from gateway.appkeys import DB
from tests.conftest import Stack, database_text
from tests.test_privacy import CANARIES, _seed_canary_patient

from .conftest import ORGANISATION, SmtpServer
from .helpers import invite, launch_handle

BEA_PHONE_E164 = "+12065550102"  # pat-2, who prefers Spanish (sandbox/seed.py)
BEA_EMAIL = "bea.example@example.org"
LINK = re.compile(r"https?://\S+")


@pytest.fixture
def stack_overrides(smtp: SmtpServer) -> Any:
    """As the folder's, with the organisation in Madrid."""

    def overrides(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
        return dict(organisation_name=ORGANISATION, smtp_host="127.0.0.1", smtp_port=smtp.port,
                    smtp_from="visits@gateway.test", smtp_timeout=5, sms_provider="sink",
                    sms_sink_url=f"{sandbox_url}/_sms", time_zone="Europe/Madrid")

    return overrides


async def _texts(stack: Stack) -> list[dict[str, str]]:
    phone = await stack.browser.get(f"{stack.sandbox_url}/phone", headers={"Accept": "application/json"})
    messages: list[dict[str, str]] = (await phone.json())["messages"]
    return messages


def _link(text: str) -> str:
    [found] = LINK.findall(text)
    return found


async def _opens_in(stack: Stack, link: str) -> str:
    """The language of the page a link opens, in an English-speaking browser."""
    page = await stack.browser.get(link, headers={"Accept-Language": "en-US,en;q=0.9"}, allow_redirects=False)
    body = await page.text()
    assert page.status == 200, body
    found = re.search(r'<html lang="([^"]+)">', body)
    assert found is not None
    return found.group(1)


async def test_a_spanish_patients_sms_arrives_in_spanish_with_a_link_that_opens_in_spanish(stack: Stack) -> None:
    handle = await launch_handle(stack, patient="pat-2", encounter="enc-2")
    response = await invite(stack, handle, channel="sms", role="patient")
    answer = await response.json()
    assert response.status == 200, answer
    [sms] = await _texts(stack)
    assert sms["to"] == BEA_PHONE_E164
    link = _link(sms["body"])
    assert sms["body"] == f"Su videoconsulta con {ORGANISATION}: {link}"
    assert URL(link).query["lang"] == "es"
    assert await _opens_in(stack, link) == "es"


async def test_a_spanish_patients_email_arrives_in_spanish_with_madrid_time(
        stack: Stack, smtp: SmtpServer) -> None:
    handle = await launch_handle(stack, patient="pat-2", encounter="enc-2")
    response = await invite(stack, handle, channel="email", role="patient")
    assert response.status == 200, await response.text()
    [mail] = smtp.received
    assert mail.rcpt_tos == [BEA_EMAIL]
    assert mail.message["Subject"] == f"Su videoconsulta con {ORGANISATION}"
    text = mail.text.replace("\r\n", "\n")
    link = _link(text)
    assert text.startswith(f"Su videoconsulta con {ORGANISATION}: {link}\n")
    assert "Abra el enlace en un teléfono o en una computadora con cámara y micrófono" in text
    until = re.search(r"El enlace funciona hasta el (.+?)\. Si no esperaba este mensaje", text, re.S)
    assert until is not None, text
    # jueves, 3 de diciembre de 2026, 11:50 (hora estándar de Europa central): Spanish words, Madrid's zone.
    assert re.fullmatch(r"(lunes|martes|miércoles|jueves|viernes|sábado|domingo), \d{1,2} de [a-z]+ de \d{4},"
                        r"\s\d{1,2}:\d{2} \(hora .*de Europa central\)", until.group(1)), until.group(1)
    assert await _opens_in(stack, link) == "es"


async def test_a_patient_without_a_preferred_language_gets_english_and_a_plain_link(stack: Stack) -> None:
    handle = await launch_handle(stack)
    assert (await invite(stack, handle, channel="sms", role="patient")).status == 200
    [sms] = await _texts(stack)
    assert sms["body"].startswith(f"Your video visit with {ORGANISATION} is ready: ")
    assert "lang" not in URL(_link(sms["body"])).query  # the browser's Accept-Language decides the pages


async def test_the_preferred_language_lands_in_neither_the_database_nor_the_logs(
        stack: Stack, smtp: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _seed_canary_patient(stack)
    from sandbox.appkeys import STORE

    store = stack.sandbox_app[STORE]
    patient = store.get("Patient", CANARIES["patient_id"])
    assert patient is not None
    patient["communication"] = [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "pt-BR"}],
                                              "text": "Português canário"}, "preferred": True}]
    store.put(patient)
    handle = await launch_handle(stack, patient=CANARIES["patient_id"], encounter=CANARIES["encounter_id"])
    for channel in ("sms", "email"):
        response = await invite(stack, handle, channel=channel, role="patient")
        assert response.status == 200, await response.text()
    [sms] = await _texts(stack)
    assert sms["body"].startswith(f"Sua videoconsulta com {ORGANISATION}: ")  # it was read and used
    # The patient opens the link, joins, and waits in the lobby: every page in Portuguese.
    link = _link(sms["body"])
    assert await _opens_in(stack, link) == "pt"
    joined = await stack.browser.post(f"{stack.gateway_url}/join", data={"t": URL(link).path.rsplit("/", 1)[1]},
                                      headers={"Origin": stack.gateway_url}, allow_redirects=False)
    assert joined.status == 303, await joined.text()
    assert await _opens_in(stack, f"{stack.gateway_url}/lobby") == "pt"

    async with stack.gateway_app[DB].acquire() as conn:
        _tables, dump = await database_text(conn)
    stored = dump.lower()
    ours = [r for r in caplog.records if not r.name.startswith(("sandbox", "mail.log"))]
    assert any(r.name == "visitgate.access" for r in ours), "the gateway's access log should be captured"
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in ours).lower()
    for where, text in (("database", stored), ("logs", logs)):
        for canary in ("lang=pt", "pt-br", "portugu", "vg_lang"):
            assert canary not in text, f"{canary} landed in the {where}"
        assert not re.search(r"[(,\"' ]pt[,)\"' ]", text), f"the language code landed in the {where}"
