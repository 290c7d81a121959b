"""The standalone device test (/device-test) on a phone, with Chromium's fake camera and microphone: a patient
with no visit and no account starts it, sees their camera, answers the sound question and gets the connection
check's answer, by keyboard alone, and axe finds nothing."""
from __future__ import annotations

from playwright.async_api import expect

from tests.browser.axe import assert_accessible
from tests.browser.conftest import OpenContext
from tests.browser.keyboard import focus, press_until_focused
from tests.conftest import Stack

DEVICES_MS = 10_000  # camera, microphone and the candidates' gathering on a loaded 2-core machine


async def test_a_patient_without_a_visit_tests_camera_sound_and_connection_by_keyboard_on_a_phone(
        stack: Stack, open_context: OpenContext) -> None:
    page = await (await open_context("phone")).new_page()
    await page.goto(f"{stack.gateway_url}/device-test")
    await expect(page.locator("#not-recorded")).to_be_visible()
    await assert_accessible(page)

    # Start: the focus follows to the devices' heading; the fake camera plays in the preview.
    await press_until_focused(page, "start-test")
    await page.keyboard.press("Enter")
    await expect(page.locator("#step-devices")).to_be_visible()
    assert (await focus(page))["id"] == "devices-title"
    await expect(page.locator("#preview")).to_be_visible(timeout=DEVICES_MS)
    await page.wait_for_function(
        "() => { const v = document.getElementById('preview'); return v.readyState >= 2 && !v.paused"
        " && v.videoWidth > 0; }", timeout=DEVICES_MS)

    # The connection check: these tests configure no STUN server, so it finds this device's own (host)
    # candidates and says the network is checked when the patient joins.
    await page.wait_for_function("() => window.visitgateConnectionCheck.state === 'done'", timeout=DEVICES_MS)
    result = await page.evaluate("() => window.visitgateConnectionCheck.result")
    assert "host" in result["candidates"] and "relay" not in result["candidates"], result
    await expect(page.locator("#network-status")).to_have_text(
        "Your device is online. The full network check runs when you join your visit.")

    # The sound: played and answered from the keyboard; the answer ends the test, and the focus goes there.
    await press_until_focused(page, "speaker-test")
    await page.keyboard.press("Space")
    await expect(page.locator("#speaker-answer")).to_be_visible(timeout=DEVICES_MS)
    await press_until_focused(page, "speaker-yes")
    await page.keyboard.press("Space")
    await expect(page.locator("#speaker-status")).to_have_text("Good: your speaker works.")
    await expect(page.locator("#step-done")).to_be_visible()
    assert (await focus(page))["id"] == "done-title"
    await press_until_focused(page, "test-again")
    await assert_accessible(page)
