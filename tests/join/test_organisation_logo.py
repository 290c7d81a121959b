"""The organisation's logo (VISITGATE_ORGANISATION_LOGO): served from our own origin, shown on patient pages."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack

from .conftest import Invite, get_page, post_join

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'


@pytest.fixture
def stack_overrides(tmp_path: Path) -> Any:
    logo = tmp_path / "clinic-logo.svg"
    logo.write_bytes(SVG)

    def overrides(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
        return dict(organisation_name="Lakeside Health", organisation_logo=logo)

    return overrides


async def test_the_logo_is_served_from_our_origin_and_shown_on_patient_pages(stack: Stack, invite: Invite) -> None:
    logo = await get_page(stack.browser, f"{stack.gateway_url}/organisation/logo")
    assert logo.status == 200 and logo.headers["Content-Type"] == "image/svg+xml"
    assert await logo.read() == SVG
    assert "sandbox" in logo.headers["Content-Security-Policy"]  # an SVG opened on its own runs nothing
    join = await (await get_page(stack.browser, f"{stack.gateway_url}/j/{invite.token}")).text()
    assert (await post_join(stack, stack.browser, invite.token)).status == 303
    lobby = await (await get_page(stack.browser, f"{stack.gateway_url}/lobby")).text()
    for page in (join, lobby):
        assert '<img class="organisation-logo" src="/organisation/logo" alt="">' in page
        assert "Lakeside Health" in page
