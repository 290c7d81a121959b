"""What a participant can make the gateway store: a budget of events per participant per minute.

The websocket's token bucket bounds frames (20 a second); this bounds what those frames write. A page stores a
handful of events a minute (a device test, an admission); a flood gets `rate_limited` answers and adds
nothing to the event log or the write-back outbox.
"""
from __future__ import annotations

import collections
import time
from uuid import UUID

# Events a participant's requests may store per minute (device tests, admissions).
STORED_PER_MINUTE = 10
# Chat messages a participant may send per minute (waiting-room chat: a few short lines, never a flood).
CHAT_PER_MINUTE = 10
BUDGET_PARTICIPANTS = 10_000  # participants remembered by the budget; the least recently active are forgotten


class StoreBudget:
    """How many events each participant's requests stored in the last minute, in this process."""

    def __init__(self, per_minute: int = STORED_PER_MINUTE) -> None:
        self.per_minute = per_minute
        self._stored: collections.OrderedDict[UUID, collections.deque[float]] = collections.OrderedDict()
        self.refused = 0  # for /metrics

    def allows(self, participant_id: UUID) -> bool:
        """Whether the participant may store one more event now."""
        stamps = self._stored.get(participant_id)
        if stamps is None:
            return True
        horizon = time.monotonic() - 60.0
        while stamps and stamps[0] < horizon:
            stamps.popleft()
        if len(stamps) < self.per_minute:
            return True
        self.refused += 1
        return False

    def spend(self, participant_id: UUID) -> None:
        """Count one stored event."""
        stamps = self._stored.pop(participant_id, None) or collections.deque()
        stamps.append(time.monotonic())
        self._stored[participant_id] = stamps  # most recent last
        while len(self._stored) > BUDGET_PARTICIPANTS:
            self._stored.popitem(last=False)
