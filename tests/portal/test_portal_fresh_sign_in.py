"""A fresh sign-in on demand (approving will ask for one), and the idle timeout as an operator sets it."""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from aiohttp import web

from config_portal.access import portal_session, require_fresh_sign_in
from tests.conftest import reason_code

from .conftest import ADMIN, ORG, Portal, query_of

FRESH_PATH = f"/portal/{ORG}/fresh-test"


async def fresh_page(request: web.Request) -> web.StreamResponse:
    """A page that, like approving will, needs a sign-in within the last five minutes."""
    redirect = await require_fresh_sign_in(request, 300)
    if redirect is not None:
        return redirect
    session = await portal_session(request, "admin", "approver")
    return web.Response(text=f"fresh for {session.subject}")


@pytest.fixture
def extra_routes() -> list[tuple[str, str, Any]]:
    """The test page, added before the gateway starts."""
    return [("GET", "/portal/{org}/fresh-test", fresh_page)]


@pytest.fixture
def portal_settings() -> dict[str, Any]:
    """A shorter idle timeout, as an operator may set it."""
    return {"portal_idle_timeout": 120}


async def test_a_step_asking_for_a_fresh_sign_in_sends_an_old_sign_in_back_to_the_provider(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    r = await portal.get(FRESH_PATH)
    assert r.status == 200 and await r.text() == f"fresh for {ADMIN.oid}"
    await portal.sql("UPDATE portal_sessions SET auth_time = auth_time - interval '301 seconds'")
    r = await portal.get(FRESH_PATH)
    assert r.status == 302, await r.text()
    q = query_of(r.headers["Location"])
    assert q["prompt"] == "login" and q["max_age"] == "300"
    # The provider asks for the password again although the browser is signed in there, and the portal comes
    # back to the page that asked.
    back = await portal.get(await portal.at_idp(r.headers["Location"], ADMIN))
    assert back.status == 303 and back.headers["Location"] == FRESH_PATH, await back.text()
    r = await portal.get(FRESH_PATH)
    assert r.status == 200, await r.text()
    assert len(await portal.sql("SELECT 1 FROM portal_sessions")) == 1  # the fresh one replaced the old


async def test_a_fresh_sign_in_that_the_provider_did_not_make_fresh_is_refused(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    await portal.sql("UPDATE portal_sessions SET auth_time = auth_time - interval '301 seconds'")
    r = await portal.get(FRESH_PATH)
    assert r.status == 302
    # The browser's sign-in at the provider is ten minutes old, and the request lost prompt and max_age on
    # the way: the provider answers from its session without asking for the password.
    await portal.idp_control("sessions/age", {"seconds": 600})
    parts = urlsplit(r.headers["Location"])
    stripped = {k: v for k, v in parse_qsl(parts.query) if k not in ("prompt", "max_age")}
    done = await portal.get(await portal.at_idp(urlunsplit(parts._replace(query=urlencode(stripped))), ADMIN))
    text = await done.text()
    # MSAL compares auth_time with max_age too; whichever check speaks first, nothing opens.
    assert done.status == 403 and reason_code(text) in ("sign_in_not_fresh", "id_token_invalid"), text
    assert await portal.sql("SELECT 1 FROM portal_sessions WHERE auth_time > now() - interval '300 seconds'") == []


async def test_the_idle_timeout_is_the_operators_setting(portal: Portal) -> None:
    assert (await portal.sign_in(ADMIN)).status == 303
    await portal.sql("UPDATE portal_sessions SET last_seen_at = now() - interval '121 seconds'")
    r = await portal.get(f"/portal/{ORG}")
    assert r.status == 401 and reason_code(await r.text()) == "not_signed_in", await r.text()
