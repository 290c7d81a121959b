"""The browser's one presence client (launch/static/presence-client.js), seen through the provider view: after a
dropped socket it resumes with every event once, a malformed frame does not break the page, and what the
gateway refuses is said to the clinician.

Between the page and the gateway sits Playwright's WebSocket routing (`Tap`): it passes frames both ways,
records them, and lets a test cut the connection, hold a new one, or answer a request itself.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest
from playwright.async_api import BrowserContext, Page, WebSocketRoute, expect

from gateway import participants
from gateway.appkeys import DB
from presence import eventlog
from tests.browser.conftest import carry_browser_keys
from tests.conftest import Stack

pytestmark = pytest.mark.browser

WAIT_MS = 10_000


class Link:
    """One socket of the page, routed through the test."""

    def __init__(self, route: WebSocketRoute, answer: Callable[[dict[str, Any]], str | None] | None) -> None:
        self.route = route
        self.answer = answer
        self.from_page: list[dict[str, Any]] = []
        self.to_page: list[str] = []
        self._held: list[str] = []
        self._server: WebSocketRoute | None = None
        route.on_message(self._page_sent)

    def connect(self) -> None:
        """Connect to the gateway, passing on what the page sent meanwhile."""
        server = self._server = self.route.connect_to_server()
        server.on_message(self._server_sent)
        for message in self._held:
            server.send(message)
        self._held.clear()

    async def cut(self) -> None:
        """Drop the connection on both sides, as a network failure would."""
        await self.route.close(code=4999, reason="test: connection dropped")
        if self._server is not None:
            await self._server.close(code=1001, reason="test: connection dropped")

    def _page_sent(self, message: str | bytes) -> None:
        frame = json.loads(message)
        self.from_page.append(frame)
        reply = self.answer(frame) if self.answer else None
        if reply is not None:
            self.route.send(reply)
        elif self._server is None:
            self._held.append(str(message))
        else:
            self._server.send(message)

    def _server_sent(self, message: str | bytes) -> None:
        self.to_page.append(str(message))
        self.route.send(message)

    def sent(self, kind: str) -> list[dict[str, Any]]:
        """The frames of a type the page sent on this socket."""
        return [f for f in self.from_page if f.get("type") == kind]


class Tap:
    """Every presence socket the page opens, routed through a Link."""

    def __init__(self) -> None:
        self.links: list[Link] = []
        self.hold = False  # new sockets wait for connect() before they reach the gateway
        self.answer: Callable[[dict[str, Any]], str | None] | None = None

    async def install(self, page: Page) -> None:
        """Route the page's /ws sockets through this tap."""
        await page.route_web_socket("**/ws", self._route)

    def _route(self, route: WebSocketRoute) -> None:
        link = Link(route, lambda frame: self.answer(frame) if self.answer else None)
        self.links.append(link)
        if not self.hold:
            link.connect()

    async def link(self, number: int) -> Link:
        """The number-th socket (1-based), once the page has opened it (bounded wait)."""
        for _ in range(100):
            if len(self.links) >= number:
                return self.links[number - 1]
            await asyncio.sleep(0.1)
        raise AssertionError(f"the page opened {len(self.links)} sockets, not {number}")


@dataclass
class View:
    """A provider view open in Chromium, its socket tapped."""

    page: Page
    tap: Tap
    visit_id: UUID
    patient: UUID
    problems: list[str]  # errors thrown in the page


async def _provider_view(stack: Stack, context: BrowserContext) -> View:
    handle = await stack.provider_handle()
    await carry_browser_keys(stack.browser, context, stack.gateway_url)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    tap = Tap()
    await tap.install(page)
    await page.goto(f"{stack.gateway_url}/provider/{handle}")
    await expect(page.locator("#presence-status")).to_have_text("live", timeout=WAIT_MS)
    async with stack.gateway_app[DB].acquire() as conn:
        visit_id: UUID = await conn.fetchval("SELECT id FROM visits ORDER BY created_at DESC LIMIT 1")
        patient = await participants.patient_participant(conn, visit_id)
    return View(page, tap, visit_id, patient, problems)


def _last_event_id(texts: list[str]) -> int:
    """The newest event id among the frames the gateway sent (events, and snapshots' last_id)."""
    newest = 0
    for text in texts:
        frame = json.loads(text)
        if frame.get("type") == "event":
            newest = max(newest, frame["id"])
        elif frame.get("type") == "snapshot":
            newest = max(newest, frame["last_id"], *(e["id"] for e in frame["events"]))
    return newest


async def test_after_a_dropped_socket_the_provider_view_gets_each_event_once(
        stack: Stack, context: BrowserContext) -> None:
    view = await _provider_view(stack, context)
    page, tap, visit_id, patient = view.page, view.tap, view.visit_id, view.patient
    pool = stack.gateway_app[DB]
    async with pool.acquire() as conn:
        guest = await participants.add_guest(conn, visit_id, "interpreter")
    await eventlog.record_event(pool, visit_id, patient, "lobby_entered")
    patient_row = page.locator(f'li[data-participant="{patient}"]')
    guest_row = page.locator(f'li[data-participant="{guest}"]')
    await expect(patient_row).to_have_attribute("data-state", "waiting")
    first = tap.links[0]
    seen = _last_event_id(first.to_page)
    entered = next(t for t in first.to_page if json.loads(t).get("kind") == "lobby_entered")

    # The connection drops; while the page is away the patient passes the test and leaves, a guest arrives.
    tap.hold = True
    await first.cut()
    second = await tap.link(2)
    await expect(page.locator("#presence-status")).to_have_text("reconnecting…")
    await eventlog.record_event(pool, visit_id, patient, "device_test_passed")
    await eventlog.record_event(pool, visit_id, guest, "lobby_entered")
    await eventlog.record_event(pool, visit_id, patient, "left")
    second.connect()

    # It resumes after the last event it saw: nothing it missed is lost, nothing it had is applied again
    # (a patient whose lobby_entered counted twice would still show waiting after leaving).
    await expect(page.locator("#presence-status")).to_have_text("live", timeout=WAIT_MS)
    assert [f["after"] for f in second.sent("subscribe")] == [seen]
    assert second.sent("auth")[0]["where"] == "view"
    await expect(guest_row).to_have_attribute("data-state", "waiting")
    await expect(patient_row).to_have_attribute("data-state", "left")

    # An event the page already has, arriving again, changes nothing.
    second.route.send(entered)
    await eventlog.record_event(pool, visit_id, guest, "device_test_failed")
    await expect(guest_row.locator(".state")).to_contain_text("device problem")
    await expect(patient_row).to_have_attribute("data-state", "left")
    assert view.problems == []


async def test_a_malformed_frame_does_not_break_the_provider_view(stack: Stack, context: BrowserContext) -> None:
    view = await _provider_view(stack, context)
    page, tap, visit_id, patient = view.page, view.tap, view.visit_id, view.patient
    link = tap.links[0]
    for junk in ("{not json", "[]", "null", '"text"', "42", '{"type": 5}', "[" * 5000 + "]" * 5000,
                 '{"type": "event", "id": "7", "kind": "left"}', '{"type": "event", "id": 3.5, "kind": "left"}',
                 '{"type": "event", "kind": "left", "participant": {"x": 1}}',
                 '{"type": "snapshot", "id": 2, "events": "none"}', '{"type": "result", "id": "2"}',
                 '{"type": "display_name", "participant": null, "display_name": {"a": 1}}',
                 '{"type": "auth_ok", "participant": 5}', '{"type": "signal", "from": [], "data": null}'):
        link.route.send(junk)
    # The page goes on: the next real event shows, and nothing was thrown.
    await eventlog.record_event(stack.gateway_app[DB], visit_id, patient, "lobby_entered")
    row = page.locator(f'li[data-participant="{patient}"]')
    await expect(row).to_have_attribute("data-state", "waiting")
    await expect(row.get_by_role("button", name="Admit")).to_be_enabled()
    await expect(page.locator("#presence-status")).to_have_text("live")
    assert view.problems == []
    assert len(tap.links) == 1  # the socket was not given up either


async def test_an_admit_the_gateway_cannot_store_is_said_to_the_clinician(
        stack: Stack, context: BrowserContext) -> None:
    view = await _provider_view(stack, context)
    page, tap, visit_id, patient = view.page, view.tap, view.visit_id, view.patient
    await eventlog.record_event(stack.gateway_app[DB], visit_id, patient, "lobby_entered")
    row = page.locator(f'li[data-participant="{patient}"]')
    admit = row.get_by_role("button", name="Admit")
    notice = page.locator("#presence-notice")
    await expect(notice).to_be_hidden()

    # The gateway answers the admit with an error frame (its database away; then too many requests).
    refusal = {"code": "database_unavailable"}

    def refuse(frame: dict[str, Any]) -> str | None:
        if frame.get("type") != "admit":
            return None
        return json.dumps({"type": "error", "id": frame["id"], "code": refusal["code"]})

    tap.answer = refuse
    await admit.click()
    await expect(page.get_by_role("alert").filter(has_text="Not done")).to_have_text(
        "Not done: the gateway cannot reach its database. Try again in a moment.")
    await expect(row).to_have_attribute("data-state", "waiting")
    await expect(admit).to_be_enabled()  # the clinician can try again

    refusal["code"] = "rate_limited"
    await admit.click()
    await expect(notice).to_have_text("Not done: too many actions in a short time. Wait a moment, then try again.")

    # A code the page has no words for still says that nothing was done, and which code it was.
    refusal["code"] = "something_new"
    await admit.click()
    await expect(notice).to_have_text("Not done (reason code: something_new).")

    # Once the gateway takes it, the notice goes and the patient is admitted.
    tap.answer = None
    await admit.click()
    await expect(row).to_have_attribute("data-state", "admitted")
    await expect(notice).to_be_hidden()
    assert view.problems == []
