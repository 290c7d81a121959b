"""SIU parsing details, MLLP over TLS, and `visitgate config feed`."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
import zoneinfo
from pathlib import Path

import asyncpg
import pytest
from hl7.mllp import open_hl7_connection

from appointments.cli import offsets
from appointments.siu import parse_message, read_siu
from gateway.cli import main
from gateway.errors import ConfigError
from sandbox.siu import siu_message
from tests.appointments.conftest import Feed

MADRID = zoneinfo.ZoneInfo("Europe/Madrid")


def test_times_without_an_offset_are_the_organisations_local_time() -> None:
    message = parse_message(b"MSH|^~\\&|EHR|H|VG|VG|20261203101500||SIU^S12|C1|P|2.3\r"
                            b"SCH|p1|appt-9|||||||||^^20^20261204093000^20261204095000\r")
    update = read_siu(message, MADRID).update
    assert update.starts_at == dt.datetime(2026, 12, 4, 8, 30, tzinfo=dt.timezone.utc)  # v2.3: SCH-11, CET
    assert update.ends_at == dt.datetime(2026, 12, 4, 8, 50, tzinfo=dt.timezone.utc)
    assert update.appointment_id == "appt-9" and update.patient_id is None and update.encounter_id is None


def test_a_filler_status_of_cancelled_cancels_whatever_the_event() -> None:
    appointment = {"id": "appt-1", "status": "cancelled", "start": "2026-12-04T10:00:00+01:00",
                   "end": "2026-12-04T10:30:00+01:00"}
    siu = read_siu(parse_message(siu_message("S14", appointment)), MADRID)
    assert (siu.trigger, siu.update.status, siu.update.event) == ("S14", "cancelled", "cancelled")


def test_only_fhir_identifiers_are_read_from_pid_and_pv1() -> None:
    appointment = {"id": "appt-1", "status": "booked", "start": "2026-12-04T10:00:00+01:00"}
    patient = {"id": "pat-7", "name": [{"family": "Doe", "given": ["Jo"]}], "identifier": [{"value": "MRN-7"}],
               "telecom": [{"system": "phone", "value": "+1-206-555-0107"}], "birthDate": "1990-02-03"}
    update = read_siu(parse_message(siu_message("S12", appointment, patient=patient, encounter_id="enc-7")),
                      MADRID).update
    assert (update.patient_id, update.encounter_id) == ("pat-7", "enc-7")
    assert "MRN-7" not in repr(update) and "Doe" not in repr(update) and "0107" not in repr(update)


def test_reminder_offsets_are_read_in_minutes_hours_and_days() -> None:
    assert offsets("24h, 15m,2d,90") == (1440, 15, 2880, 90)
    with pytest.raises(ConfigError):
        offsets("soon")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "mllp.pem", folder / "mllp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_mllp_over_tls_takes_siu_and_plain_tcp_is_not_answered(feed: Feed, tmp_path: Path) -> None:
    from aiohttp.test_utils import unused_port

    cert, key = _self_signed(tmp_path)
    port = unused_port()
    feed.mllp_port = port
    await feed.configure(mllp_port=port, mllp_tls_cert=str(cert), mllp_tls_key=str(key))
    client = ssl.create_default_context(cafile=str(cert))
    start = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).replace(microsecond=0)
    appointment = {"id": "appt-tls", "status": "booked", "start": start.isoformat(),
                   "end": (start + dt.timedelta(minutes=30)).isoformat()}
    reader, writer = await open_hl7_connection("127.0.0.1", port, ssl=client, encoding="utf-8")
    try:
        writer.writeblock(siu_message("S12", appointment, encounter_id="enc-1"))
        await writer.drain()
        answer = await asyncio.wait_for(reader.readmessage(), 10)
        assert str(answer.segment("MSA")[1]) == "AA"
    finally:
        writer.close()
    assert [r.kind for r in await feed.schedule("appt-tls")].count("booked") == 2
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # no TLS: the handshake fails
    try:
        writer.write(b"\x0b" + siu_message("S12", appointment) + b"\x1c\r")
        await writer.drain()
        assert b"MSA" not in await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_config_feed_set_and_show_are_audited(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                                    signing_key_pem: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("VISITGATE_PUBLIC_URL", "https://visits.example.org")
    monkeypatch.setenv("VISITGATE_SECRET_KEY", base64.b64encode(b"x" * 32).decode())
    monkeypatch.setenv("VISITGATE_SIGNING_KEY", signing_key_pem.decode())
    assert await asyncio.to_thread(main, [
        "config", "add", "--fhir-base-url", "https://ehr.example.org/fhir/r4", "--environment", "production",
        "--client-id", "abc", "--approved-by", "ops@example.org", "--no-live-check"]) == 0
    conn = await asyncpg.connect(database_url)
    try:
        config_id = await conn.fetchval("SELECT id FROM configurations")
        assert await asyncio.to_thread(main, [
            "config", "feed", "set", str(config_id), "--mllp-port", "2575", "--reminders", "24h,15m",
            "--channels", "email", "--by", "ops@example.org"]) == 0
        assert await asyncio.to_thread(main, ["config", "feed", "show", str(config_id)]) == 0
        out = capsys.readouterr().out
        assert "mllp 127.0.0.1:2575" in out and "1440 min, 15 min before" in out and "channels email" in out
        assert await asyncio.to_thread(main, ["config", "feed", "set", str(config_id), "--channels", "fax"]) == 2
        audit = await conn.fetch("SELECT actor, details FROM audit_log WHERE action = 'appointment_feed.set'")
        assert [r["actor"] for r in audit] == ["ops@example.org"]
        assert '"mllp_port"' in audit[0]["details"]
    finally:
        await conn.close()


def test_only_the_fields_read_reach_the_parser() -> None:
    """Segments not read (NTE, AIL, ...) are dropped and fields not read emptied before the hl7 library parses:
    the patient's name, birth date and phone never become objects, and what is read is where it was."""
    appointment = {"id": "appt-1", "status": "booked", "start": "2026-12-04T10:00:00+01:00",
                   "end": "2026-12-04T10:30:00+01:00"}
    patient = {"id": "pat-7", "name": [{"family": "Doe", "given": ["Jo"]}], "identifier": [{"value": "MRN-7"}],
               "telecom": [{"system": "phone", "value": "+1-206-555-0107"}], "birthDate": "1990-02-03"}
    block = siu_message("S12", appointment, patient=patient, encounter_id="enc-7")
    block = block.replace(b"\rPID|", b"\rNTE|1||Doe likes mornings\rAIL|1||Room 4\rPID|")
    message = parse_message(block)
    text = str(message)
    assert "Doe" not in text and "19900203" not in text and "0107" not in text and "Room 4" not in text
    assert [str(s[0]) for s in message] == ["MSH", "SCH", "TQ1", "PID", "PV1"]
    update = read_siu(message, MADRID).update
    assert (update.appointment_id, update.patient_id, update.encounter_id) == ("appt-1", "pat-7", "enc-7")
    assert update.starts_at == dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.timezone.utc)
