"""The error report's reasons (gateway.reasons) are docs/errors.md's, code for code and word for word; write-back
reasons are cut to their codes; near misses of an unknown `iss` are told from URLs that are not."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.near_miss import nearest, parse_bases
from gateway.reasons import LAUNCH, OTHER, WRITEBACK, Reason, launch_reason, writeback_code, writeback_reason

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def _rows(text: str) -> dict[str, tuple[str, str]]:
    """Per code (or family) of the tables in text: (cause, what to do), the last two cells of its row."""
    found: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        for code in re.findall(r"`([a-z0-9_*]+)`", cells[0]):
            assert code not in found, f"{code} has two rows in one part of docs/errors.md"
            found[code] = (cells[-2], cells[-1])
    return found


def _sections() -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    text = DOCS.read_text()
    before, report = text.split("\n## The error report\n", 1)
    writeback, other = report.split("\n### Write-back failures\n", 1)[1].split("\n### Any other code\n", 1)
    return _rows(before), _rows(writeback), _rows(other)


def _check(reasons: tuple[Reason, ...], documented: dict[str, tuple[str, str]]) -> None:
    for reason in reasons:
        for code in reason.codes:
            assert code in documented, f"`{code}` has no row in docs/errors.md"
            assert documented[code] == (reason.cause, reason.what_to_do), code


def test_every_launch_reason_is_documented_with_the_same_cause_and_what_to_do() -> None:
    launches, _writebacks, _other = _sections()
    _check(LAUNCH, launches)


def test_the_write_back_table_of_the_docs_is_exactly_the_reports() -> None:
    _launches, writebacks, other = _sections()
    _check(WRITEBACK, writebacks)
    assert set(writebacks) == {code for r in WRITEBACK for code in r.codes}
    _check((OTHER,), other)


@pytest.mark.parametrize(("raw", "code"), [
    ("fhir_404 not-found", "fhir_404"), ("gave_up: fhir_503 exception", "fhir_503"), ("fhir_timeout", "fhir_timeout"),
    ("token_refused: invalid_client", "token_refused"), ("scope_not_granted: system/Encounter read and update",
                                                          "scope_not_granted"),
    ("fhir_412 conflict_storm", "fhir_412"), ("Weird Reason", "other"), ("x" * 80, "other"), ("", "other")])
def test_a_write_back_reason_is_counted_by_its_first_word(raw: str, code: str) -> None:
    assert writeback_code(raw) == code


def test_exact_codes_win_over_families_and_longer_families_over_shorter() -> None:
    assert writeback_reason("fhir_404").codes == ("fhir_404", "fhir_410")
    assert writeback_reason("fhir_422").codes == ("fhir_4*",)
    assert writeback_reason("fhir_503").codes[0] == "fhir_5*"
    assert writeback_reason("fhir_no_version").codes == ("fhir_*",)
    assert writeback_reason("token_refused") != writeback_reason("token_failed")
    assert launch_reason("discovery_no_s256") == launch_reason("token_error")
    assert launch_reason("something_new") is OTHER and writeback_reason("something_new") is OTHER


BASES = [(1, "https://fhir.hospital.example/api/FHIR/R4"), (2, "https://ehr.example.net/r4/tenant-a")]
APPROVED = parse_bases(BASES)


@pytest.mark.parametrize(("iss", "config_id", "difference"), [
    ("https://fhir.hospital.example/api/FHIR/R4/metadata", 1, "suffix"),
    ("https://fhir.hospital.example/api/FHIR", 1, "suffix"),
    ("https://FHIR.hospital.example:443/api/FHIR/R4/", 1, None),  # the same URL spelled otherwise: no miss
    ("https://fhir.hospital.example/api/FHIR/R4?patient=1", 1, "suffix"),
    ("https://fhir-tst.hospital.example/api/FHIR/R4", 1, "environment"),
    ("https://fhir.test.hospital.example/api/FHIR/R4", 1, "environment"),
    ("https://fhir.hospital.example/api/FHIR/R4-PRD", 1, "environment"),
    ("https://fhir.hospital.example/other/fhir", 1, "path"),
    ("https://fhir.hospital.example/api/fhir/r4", 1, "path"),
    ("https://ehr.example.net/r4/tenant-b", 2, "path"),
])
def test_near_misses_are_told_by_how_they_differ(iss: str, config_id: int, difference: str | None) -> None:
    found = nearest(iss, APPROVED)
    if difference is None:
        assert found is None
    else:
        assert found is not None and (found.configuration_id, found.difference) == (config_id, difference)


@pytest.mark.parametrize("iss", [
    "https://elsewhere.example/api/FHIR/R4", "http://fhir.hospital.example/api/FHIR/R4",
    "https://fhir.hospital.example.evil.example/api/FHIR/R4", "https://fhir.hospital.example:8443/api/FHIR/R4",
    "https://fhirtest.hospital.example/api/FHIR/R4", "not a url", "javascript:alert(1)", "", "https://\x00/"])
def test_other_urls_are_not_near_misses(iss: str) -> None:
    assert nearest(iss, APPROVED) is None


def test_what_is_kept_of_a_near_miss_holds_no_query_and_no_personal_looking_segment() -> None:
    base = BASES[0][1]
    for iss, shown in ((f"{base}?patient=Jane&launch=abc", f"{base}?…"), (f"{base}#frag", f"{base}?…"),
                       (f"{base}/Patient/jane-doe", f"{base}/Patient/…"), (f"{base}/x/12345678", f"{base}/x/…"),
                       (f"{base}/jane%40example.org", f"{base}/…"), (f"{base}/metadata", f"{base}/metadata"),
                       ("https://user:pw@fhir.hospital.example/api/FHIR/R4/x", f"{base}/x")):
        found = nearest(iss, APPROVED)
        assert found is not None and found.shown == shown, iss
    long = nearest(f"{base}/" + "/".join(["seg"] * 200), APPROVED)
    assert long is not None and len(long.shown) == 300 and long.shown.endswith("…")
