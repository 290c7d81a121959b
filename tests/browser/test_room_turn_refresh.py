"""A room page keeps its TURN credentials fresh: before they expire it asks its socket for new ones, and the
call goes on (real Chromium, as in test_video_room; the TURN server named here does not answer, so the peers
meet over loopback host candidates as usual)."""
from __future__ import annotations

from typing import Any

import pytest

from tests.browser.test_video_room import OpenContext, _both_live, _frames, _open_room
from tests.conftest import Stack

pytestmark = pytest.mark.browser

TTL = 3  # seconds: the page asks again after 2.4 s


@pytest.fixture
def stack_overrides() -> Any:
    """This module's gateway offers a TURN server whose credentials last a few seconds."""

    def overrides(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
        return dict(turn_urls=("turn:127.0.0.1:9?transport=udp",), turn_secret=b"short-lived-turn-secret",
                    turn_ttl=TTL)

    return overrides


async def _ufrags(page: Any) -> list[str]:
    """The ICE username fragments this page's connection has used (one more after each ICE restart)."""
    value: list[str] = await page.evaluate("() => Object.values(window.visitgateRoom.peers)[0].ufrags")
    return value


async def test_turn_credentials_are_refreshed_and_the_call_goes_on(stack: Stack, open_context: OpenContext) -> None:
    problems: list[str] = []
    room = await _open_room(stack, open_context, "desktop", problems)
    await _both_live(room)
    for page in (room.provider, room.patient):
        await page.wait_for_function("() => window.visitgateRoom.iceRefreshes >= 2", timeout=15_000)
    # Each side took the fresh servers on its open connection: ICE restarted there, no new connection.
    for page, other in ((room.provider, room.patient_id), (room.patient, room.provider_id)):
        await page.wait_for_function("(p) => window.visitgateRoom.peers[p].iceRestarts >= 1", arg=other,
                                     timeout=15_000)
    restarted = {"provider": await _ufrags(room.provider), "patient": await _ufrags(room.patient)}
    assert all(len(set(seen)) >= 2 for seen in restarted.values()), restarted
    # The answerer's own refresh restarts ICE too: it asks the offerer (the smaller participant id) to.
    offerer, answerer_id = ((room.provider, room.patient_id) if room.provider_id < room.patient_id
                            else (room.patient, room.provider_id))
    await offerer.wait_for_function("(p) => window.visitgateRoom.peers[p].restartsAsked >= 1", arg=answerer_id,
                                    timeout=15_000)
    before = await _frames(room.patient, room.provider_id)
    await room.patient.wait_for_function(
        "([p, n]) => window.visitgateRoom.peers[p].framesDecoded > n + 10", arg=[room.provider_id, before],
        timeout=10_000)
    for page, other in ((room.provider, room.patient_id), (room.patient, room.provider_id)):
        assert await page.evaluate("(p) => window.visitgateRoom.peers[p].connectionState", other) == "connected"
    # A connection opened after the refresh (leave, then rejoin) comes up too.
    await room.patient.get_by_role("button", name="Leave").click()
    await room.provider.wait_for_function("() => Object.keys(window.visitgateRoom.peers).length === 0",
                                          timeout=5_000)
    await room.patient.get_by_role("button", name="Rejoin").click()
    await _both_live(room)
    assert problems == []
