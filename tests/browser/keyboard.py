"""The keyboard in the browser tests: Tab through a page as someone without a mouse does, and check at every stop
that the focus shows (a :focus-visible outline of at least 2px, app.css), which axe cannot see."""
from __future__ import annotations

from typing import Any

from playwright.async_api import Page

# A page whose next stop is further than this many Tabs away is not keyboard friendly.
MAX_TABS = 40

# The focused element, and whether its keyboard focus shows.
FOCUS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return {id: null, name: null, visible: false};
  const s = getComputedStyle(el);
  return {id: el.id, name: el.id || `${el.tagName.toLowerCase()} "${(el.textContent || "").trim().slice(0, 30)}"`,
          // On a date field's calendar button (inside the field) the field is :focus-within only.
          visible: (el.matches(":focus-visible") || el.matches('input[type="date"]:focus-within'))
                   && s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2,
          outline: `${s.outlineStyle} ${s.outlineWidth} ${s.outlineColor}`};
}"""


async def focus(page: Page) -> dict[str, Any]:
    """What has the keyboard focus: {id, name, visible, outline}; id None when nothing (the body) has it."""
    found: dict[str, Any] = await page.evaluate(FOCUS)
    return found


async def press_until_focused(page: Page, element_id: str, key: str = "Tab", limit: int = 12) -> None:
    """Press Tab (or Shift+Tab) until the element has the focus, checking that each stop's focus shows."""
    for _ in range(limit):
        await page.keyboard.press(key)
        now = await focus(page)
        assert now["id"] is None or now["visible"], f"the focus on {now['name']} does not show: {now}"
        if now["id"] == element_id:
            return
    raise AssertionError(f"#{element_id} not reached with {key} in {limit} presses")


async def tab_through(page: Page) -> list[str]:
    """Tab from the top of the page through every stop once, asserting that the focus shows at each; answer the
    stops in order."""
    await page.evaluate("() => { if (document.activeElement) document.activeElement.blur(); }")
    stops: list[str] = []
    for _ in range(MAX_TABS):
        await page.keyboard.press("Tab")
        now = await focus(page)
        if stops and now["name"] == stops[-1]:  # a date field's day, month, year and calendar button
            assert now["visible"], f"the focus on {now['name']} does not show: {now}"
            continue
        if now["name"] is None or now["name"] in stops:  # out of the page, or round again
            return stops
        assert now["visible"], f"the focus on {now['name']} does not show: {now}"
        stops.append(now["name"])
    raise AssertionError(f"more than {MAX_TABS} stops: {stops}")
