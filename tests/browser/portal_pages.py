"""What the portal's browser tests share: signing in through the sandbox's OpenID provider."""
from __future__ import annotations

from typing import Protocol

from playwright.async_api import Page


class Member(Protocol):
    """A sandbox OpenID user with a role in the organisation (tests/portal/conftest.py)."""

    username: str
    password: str


async def sign_in(page: Page, gateway_url: str, org: str, member: Member) -> None:
    """Sign in to an organisation's portal as this member, landing on its home page."""
    await page.goto(f"{gateway_url}/portal/{org}/sign-in/start")
    await page.get_by_label("User name").fill(member.username)
    await page.get_by_label("Password").fill(member.password)
    await page.get_by_label("Password").press("Enter")
    await page.wait_for_url(f"{gateway_url}/portal/{org}")
