"""Meeting providers: where a visit's video happens. The built-in one is a WebRTC room of our own; `teams`
(gateway.teams) makes a Microsoft Teams meeting through Graph."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Meeting:
    """A visit's meeting: which provider holds it and its id there."""

    provider: str
    meeting_id: str
    join_url: str | None = None
    """Where people join it, for providers whose meetings live elsewhere (Teams' joinWebUrl)."""


class MeetingProvider(Protocol):
    """What every meeting provider offers the gateway."""

    name: str

    async def create_meeting(self, visit_id: str, *, organizer: Any = None, deadline: float | None = None) -> Meeting:
        """Create the meeting of a visit (called at most a few times per visit; the first one is kept).

        `organizer` is the provider's own notion of who holds the meeting (Teams: gateway.teams.Organizer);
        `deadline` (loop time) bounds any outside call."""
        ...


def default_providers() -> dict[str, MeetingProvider]:
    """The providers available without outside services."""
    from .builtin import BuiltinRooms

    builtin = BuiltinRooms()
    return {builtin.name: builtin}
