"""The provider view's FHIR reads start at the launch's callback, so the page does not wait on the gateway's
own work; what was read serves one page once, and only in memory."""
from __future__ import annotations

import asyncio
from urllib.parse import urljoin, urlsplit

import pytest

from gateway.fhir import FhirClient
from launch import view_reads
from launch.view_reads import StartedReads, ViewReads
from tests.conftest import Stack

READS = ("GET /fhir/Encounter/enc-1", "GET /fhir/Patient/pat-1", "GET /fhir/Appointment/appt-1")


async def _until_callback_answered(stack: Stack) -> str:
    """Launch up to the callback's answer; the provider view's URL it sends the browser to."""
    url = f"{stack.gateway_url}/launch?iss={stack.fhir_base}&launch={stack.new_launch()}"
    for _ in range(4):
        response = await stack.get(url)
        assert response.status in (302, 303), await response.text()
        url = urljoin(url, response.headers["Location"])
        if urlsplit(url).path.startswith("/provider/"):
            return url
    raise AssertionError("the launch never reached the provider view")


async def _seen(calls: list[str], wanted: tuple[str, ...], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(w in calls for w in wanted):
        assert loop.time() < deadline, f"the EHR saw {calls}, not all of {wanted}"
        await asyncio.sleep(0.02)


async def test_the_callback_starts_the_views_reads_and_the_view_reads_each_resource_once(
        stack: Stack, sandbox_calls: list[str]) -> None:
    view_url = await _until_callback_answered(stack)
    # Before the browser asks for the page, the EHR is already being read for it.
    await _seen(sandbox_calls, READS)
    response = await stack.get(view_url)
    body = await response.text()
    assert response.status == 200, body
    assert 'id="patient-name"' in body and "Reason code" not in body
    assert [c for c in sandbox_calls if c in READS].count(READS[0]) == 1
    assert sorted(c for c in sandbox_calls if c in READS) == sorted(READS)


async def test_a_reload_of_the_view_reads_the_ehr_again(stack: Stack, sandbox_calls: list[str]) -> None:
    view_url = await _until_callback_answered(stack)
    first = await stack.get(view_url)
    assert first.status == 200, await first.text()
    again = await stack.get(view_url)
    assert again.status == 200 and 'id="patient-name"' in await again.text()
    assert sandbox_calls.count(READS[0]) == 2 and sandbox_calls.count(READS[1]) == 2


class _Never(FhirClient):
    """A FHIR client whose reads wait until cancelled (a view that never comes)."""

    def __init__(self) -> None:
        pass

    async def read(self, resource_type: str, logical_id: str) -> dict[str, object]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def test_started_reads_are_taken_once_and_dropped_when_no_view_comes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(view_reads.time, "monotonic", lambda: now[0])
    started = StartedReads()
    started.start(b"a", _Never(), "enc-1", None)
    first = started.take(b"a")
    assert first is not None and started.take(b"a") is None
    first.cancel()
    started.start(b"b", _Never(), "enc-1", None)
    waiting = started._started[b"b"][1]
    now[0] += view_reads.STARTED_READS_TTL + 1
    assert started.take(b"b") is None  # too old: its view never came, and its reads were stopped
    await asyncio.sleep(0)
    assert waiting.cancelled()


async def test_started_reads_are_bounded_and_stopped_with_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(view_reads, "STARTED_READS_MAX", 3)
    started = StartedReads()
    for key in (b"1", b"2", b"3", b"4"):
        started.start(key, _Never(), "enc-1", None)
    assert started.take(b"1") is None and set(started._started) == {b"2", b"3", b"4"}
    tasks = [task for _, task in started._started.values()]
    started.close()
    await asyncio.sleep(0)
    assert all(task.cancelled() for task in tasks) and not started._started


async def test_a_view_whose_started_read_was_cancelled_reads_for_itself() -> None:
    class Answering(FhirClient):
        def __init__(self) -> None:
            pass

        async def read(self, resource_type: str, logical_id: str) -> dict[str, object]:
            return {"resourceType": resource_type, "id": logical_id}

    class App(dict):  # type: ignore[type-arg]
        pass

    app = App()
    app[view_reads.STARTED_READS] = StartedReads()
    app[view_reads.STARTED_READS].start(b"h", _Never(), "enc-1", None)
    app[view_reads.STARTED_READS]._started[b"h"][1].cancel()
    reads = await view_reads.reads_for(app, b"h", Answering(), "enc-1", "pat-1")  # type: ignore[arg-type]
    assert isinstance(reads, ViewReads) and reads.encounter == {"resourceType": "Encounter", "id": "enc-1"}
    assert reads.patient == {"resourceType": "Patient", "id": "pat-1"}
