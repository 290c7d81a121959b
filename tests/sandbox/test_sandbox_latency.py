"""The EHR's latency switch: every EHR endpoint answers `ehr_answer_after` seconds after arrival, the controls at once."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sandbox import FAULTS

# What a launch and the provider view call, answers that are errors included (a client sees the latency
# before it sees the refusal).
EHR_CALLS = [("GET", "/fhir/.well-known/smart-configuration"), ("GET", "/fhir/metadata"), ("GET", "/oauth/jwks"),
             ("GET", "/oauth/authorize?response_type=code"), ("POST", "/oauth/token"),
             ("GET", "/fhir/Encounter/enc-1"), ("GET", "/ehr")]


async def test_every_ehr_endpoint_answers_after_the_latency_and_the_controls_at_once(
        ehr: TestClient[Any, Any]) -> None:
    ehr.server.app[FAULTS].update({"ehr_answer_after": 2.0})
    calls = [asyncio.create_task(ehr.request(method, path, allow_redirects=False)) for method, path in EHR_CALLS]
    # A control call made after them all is answered while every EHR call is still held.
    control = await ehr.post("/_sandbox/faults", json={})
    assert control.status == 200, await control.text()
    assert (await control.json())["ehr_answer_after"] == 2.0
    await asyncio.sleep(0.3)  # time for every call to arrive and, but for the latency, be answered
    assert [path for (_, path), call in zip(EHR_CALLS, calls) if call.done()] == []
    answers = await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert all(r.status < 500 for r in answers), [(p, r.status) for (_, p), r in zip(EHR_CALLS, answers)]


async def test_the_latency_switch_refuses_a_negative_delay(ehr: TestClient[Any, Any]) -> None:
    r = await ehr.post("/_sandbox/faults", json={"ehr_answer_after": -1})
    assert r.status == 400, await r.text()
    with pytest.raises(ValueError):
        ehr.server.app[FAULTS].update({"ehr_answer_after": "soon"})
