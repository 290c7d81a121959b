"""The carriers' throughput limit: N messages a second, 429 beyond (a token bucket one second deep)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RateLimit:
    """Accepts `per_second` messages a second on average, bursts of up to one second's worth; None: no limit."""

    per_second: float | None = None
    _tokens: float = field(default=0.0, init=False)
    _at: float = field(default_factory=time.monotonic, init=False)
    refused: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._tokens = self.per_second or 0.0

    def set(self, per_second: float | None) -> None:
        """Change the limit (tests and benchmarks); the bucket starts full."""
        self.per_second = per_second
        self._tokens = per_second or 0.0
        self._at = time.monotonic()

    def take(self) -> bool:
        """Whether one more message may go now (and count it)."""
        if self.per_second is None:
            return True
        now = time.monotonic()
        self._tokens = min(max(self.per_second, 1.0), self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.refused += 1
        return False
