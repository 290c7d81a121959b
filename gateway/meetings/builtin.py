"""The built-in meeting provider: a room on this gateway; browsers connect peer to peer (WebRTC)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, Any

from . import Meeting

if TYPE_CHECKING:
    from ..settings import Settings


class BuiltinRooms:
    """Rooms need no outside call: creating one is naming it."""

    name = "builtin"

    async def create_meeting(self, visit_id: str, *, organizer: Any = None, deadline: float | None = None) -> Meeting:
        """A fresh, unguessable room id."""
        return Meeting(provider=self.name, meeting_id=secrets.token_urlsafe(16))


def turn_lifetime(settings: Settings) -> int | None:
    """Seconds the TURN credentials of ice_servers last, or None when no TURN server is offered."""
    return settings.turn_ttl if settings.turn_urls and settings.turn_secret else None


def ice_servers(settings: Settings, participant_id: str, now: float | None = None) -> list[dict[str, Any]]:
    """The RTCPeerConnection iceServers for one participant: STUN as configured, TURN with a credential of
    coturn's shared-secret scheme (use-auth-secret) that expires after settings.turn_ttl.

    username = "<expiry unix time>:<participant id>", credential = base64(HMAC-SHA1(secret, username)); coturn
    recomputes the same from its static-auth-secret and refuses the username once the time has passed. The
    participant id in it is opaque, so a TURN server's logs say nothing about who was in the visit.
    """
    servers: list[dict[str, Any]] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    lifetime = turn_lifetime(settings)
    if lifetime is not None and settings.turn_secret:
        expiry = int(time.time() if now is None else now) + lifetime
        username = f"{expiry}:{participant_id}"
        digest = hmac.new(settings.turn_secret, username.encode(), hashlib.sha1).digest()
        servers.append({"urls": list(settings.turn_urls), "username": username,
                        "credential": base64.b64encode(digest).decode("ascii")})
    return servers
