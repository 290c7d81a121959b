"""Signing in to the configuration portal through the organisation's identity provider (the sandbox's, over
TLS), and everything that must open nothing."""
from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import reason_code

from .conftest import ADMIN, GENERIC_ADMIN, GENERIC_ORG, ORG, OUTSIDER, READER, APPROVER, Portal, query_of


async def test_admin_signs_in_and_sees_what_admins_may_do(portal: Portal) -> None:
    r = await portal.sign_in(ADMIN)
    assert r.status == 303, await r.text()
    assert r.headers["Location"] == f"/portal/{ORG}"
    home = await portal.get(f"/portal/{ORG}")
    text = await home.text()
    assert home.status == 200, text
    assert 'data-role="admin"' in text and 'data-role="approver"' not in text
    assert portal.session_cookie() is not None
