"""The FHIR client refuses malformed answers with a reason, never a crash."""
from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from gateway.ehr import EhrClient
from gateway.errors import FhirError
from gateway.fhir import FhirClient, parse_reference


@pytest.mark.parametrize("body, status, reason", [
    (b"<html>not json</html>", 200, "fhir_malformed"),
    (b'{"resourceType": "Observation", "id": "x"}', 200, "fhir_malformed"),
    (b"[1, 2]", 200, "fhir_malformed"),
    (b'{"resourceType": "OperationOutcome"}', 500, "fhir_unavailable"),
    (b'{"resourceType": "OperationOutcome"}', 403, "fhir_refused"),
])
async def test_malformed_or_failed_fhir_answers_become_fhir_errors(aiohttp_server, body: bytes, status: int,
                                                                   reason: str) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status, content_type="application/fhir+json")

    app = web.Application()
    app.router.add_get("/fhir/Patient/{id}", answer)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(FhirError) as caught:
            await FhirClient(EhrClient(http), str(server.make_url("/fhir")), "t").read("Patient", "p1")
    assert caught.value.reason == reason


async def test_ids_that_are_not_fhir_ids_are_never_requested() -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(FhirError) as caught:
            await FhirClient(EhrClient(http), "http://127.0.0.1:9/fhir", "t").read("Patient", "../../admin")
    assert caught.value.reason == "fhir_bad_reference"


def test_references_parse_only_when_of_the_expected_type() -> None:
    assert parse_reference("Appointment/a-1", "Appointment") == "a-1"
    assert parse_reference("https://ehr/fhir/Appointment/a-1", "Appointment") == "a-1"
    assert parse_reference("Patient/a-1", "Appointment") is None
    assert parse_reference("Appointment/../x", "Appointment") is None
    assert parse_reference(None, "Appointment") is None
