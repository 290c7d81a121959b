"""Meeting providers: where a visit's video happens. The built-in one is a WebRTC room of our own."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Meeting:
    """A visit's meeting: which provider holds it and its id there."""

    provider: str
    meeting_id: str


class MeetingProvider(Protocol):
    """What every meeting provider offers the gateway."""

    name: str

    async def create_meeting(self, visit_id: str) -> Meeting:
        """Create the meeting of a visit (called at most a few times per visit; the first one is kept)."""
        ...


def default_providers() -> dict[str, MeetingProvider]:
    """The providers available without outside services."""
    from .builtin import BuiltinRooms

    builtin = BuiltinRooms()
    return {builtin.name: builtin}
