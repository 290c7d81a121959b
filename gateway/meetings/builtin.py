"""The built-in meeting provider: a room on this gateway; browsers connect peer to peer (WebRTC)."""
from __future__ import annotations

import secrets

from . import Meeting


class BuiltinRooms:
    """Rooms need no outside call: creating one is naming it."""

    name = "builtin"

    async def create_meeting(self, visit_id: str) -> Meeting:
        """A fresh, unguessable room id."""
        return Meeting(provider=self.name, meeting_id=secrets.token_urlsafe(16))

    def join_path(self, meeting: Meeting) -> str:
        """The room page of the meeting."""
        return f"/room/{meeting.meeting_id}"
