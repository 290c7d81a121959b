"""Accessibility checks inside the browser tests: axe-core (vendored from npm in tests/browser/vendor/, MPL-2.0)
run in the page under test.

The script is evaluated through Playwright rather than added as a <script> tag, so the pages' strict CSP
(no inline script) stays as it is in production and still applies to everything the page itself runs.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from playwright.async_api import Frame, Page

AXE_JS = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
# WCAG 2.1 level A and AA: what issue 17 holds every page to (and what the portal's pages must pass).
WCAG_21_AA = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")


@cache
def _axe_source() -> str:
    return AXE_JS.read_text(encoding="utf-8")


async def axe_violations(page: Page | Frame, *, tags: tuple[str, ...] = WCAG_21_AA,
                         impacts: tuple[str, ...] = ("minor", "moderate", "serious", "critical"),
                         exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The page's (or a frame's: the provider view in the EHR's iframe) axe violations of the given WCAG tags and
    impacts, each as {id, impact, help, targets}."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(_axe_source())
    result: dict[str, Any] = await page.evaluate(
        """async ([tags, exclude]) => {
            const context = exclude.length ? {exclude: exclude.map((s) => [s])} : document;
            return await window.axe.run(context, {runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]});
        }""", [list(tags), list(exclude)])
    return [{"id": v["id"], "impact": v.get("impact"), "help": v["help"],
             "targets": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"] if v.get("impact") in impacts]


async def assert_accessible(page: Page | Frame, **options: Any) -> None:
    """Fail with axe's own words when the page has any WCAG 2.1 A/AA violation (or of the impacts given)."""
    found = await axe_violations(page, **options)
    assert not found, "axe found: " + "; ".join(f"{v['id']} ({v['impact']}): {v['help']} at {v['targets']}"
                                              for v in found)
