"""Figures of the benchmarks: percentiles, latency splits, and the CPU the hypervisor stole while timing."""
from __future__ import annotations

import contextlib
import gc
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """No cycle collection in this (load-generating) process while a latency is being timed.

    The benchmark's bookkeeping (a record per event written) makes each full collection longer as a phase
    goes on: a pause of the apparatus, not of the gateway, which freezes its start-up heap."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100.0 * len(ordered))) - 1]


def _cpu_ticks() -> tuple[int, ...] | None:
    """The machine's `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal), or None."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    # guest and guest_nice are left out: the kernel already counts them in user and nice.
    return tuple(int(x) for x in fields[1:9])


def _steal_share(before: tuple[int, ...], after: tuple[int, ...]) -> float:
    """Stolen ticks as a percentage of all ticks between two readings (nan if no tick passed)."""
    total = sum(after) - sum(before)
    return (after[7] - before[7]) / total * 100 if total > 0 else math.nan


class CpuSteal:
    """CPU time the hypervisor stole, and how busy the machine was, over the stretches timed with `with`.

    This VM's host takes up to a quarter of its CPU at times, which moves a p99 far more than our code does,
    so a timed phase says how much it lost. /proc/stat is read at both ends of a stretch, and every `interval`
    seconds in between by a daemon thread that keeps the worst ~1 s of steal: a p99 is made by the worst
    second, which an average over the phase hides. One object may time several stretches (alternating
    blocks) and adds them up. Without /proc/stat every figure is nan.
    """

    WINDOW = 1.0  # seconds: the span of the worst-window figure

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._ticks = [0] * 8  # summed over every stretch timed
        self._worst = math.nan
        self._first: tuple[int, ...] | None = None
        self._recent: deque[tuple[float, tuple[int, ...]]] = deque()
        self._windows = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CpuSteal":
        self._first = _cpu_ticks()
        # Enough readings to reach back one window at the sampling pace, never more.
        self._recent = deque(maxlen=math.ceil(self.WINDOW / self.interval) + 2)
        self._windows = 0
        if self._first is not None:
            self._recent.append((time.monotonic(), self._first))
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, name="cpu-steal", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        last = _cpu_ticks()
        if self._first is None or last is None:
            return
        self._ticks = [t + (b - a) for t, a, b in zip(self._ticks, self._first, last)]
        self._reading(time.monotonic(), last)
        if not self._windows:  # a stretch shorter than the window: the stretch is its own worst
            self._note(_steal_share(self._first, last))
        self._first = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            ticks = _cpu_ticks()
            if ticks is None:
                return
            self._reading(time.monotonic(), ticks)

    def _reading(self, now: float, ticks: tuple[int, ...]) -> None:
        # The shortest span back from this reading that covers the window (a late wake-up only widens it).
        # The jitter allowance keeps a 0.5 s pace from reaching three readings back.
        for then, earlier in reversed(self._recent):
            if now - then >= self.WINDOW * 0.95:
                self._windows += 1
                self._note(_steal_share(earlier, ticks))
                break
        self._recent.append((now, ticks))

    def _note(self, share: float) -> None:
        if not math.isnan(share) and (math.isnan(self._worst) or share > self._worst):
            self._worst = share

    @classmethod
    def merged(cls, parts: Iterable["CpuSteal"]) -> "CpuSteal":
        """One CpuSteal covering all of the given (already timed) stretches."""
        whole = cls()
        for part in parts:
            whole._ticks = [a + b for a, b in zip(whole._ticks, part._ticks)]
            whole._note(part._worst)
        return whole

    @property
    def steal_pct(self) -> float:
        """Stolen ticks as a percentage of all ticks in the timed stretches."""
        total = sum(self._ticks)
        return self._ticks[7] / total * 100 if total > 0 else math.nan

    @property
    def worst_pct(self) -> float:
        """The most stolen in any ~1 s window, as a percentage of that window's ticks."""
        return self._worst

    @property
    def busy_pct(self) -> float:
        """Ticks spent running something here (user, nice, system, irq, softirq) as a percentage of all ticks."""
        t = self._ticks
        total = sum(t)
        return (t[0] + t[1] + t[2] + t[5] + t[6]) / total * 100 if total > 0 else math.nan

    def describe(self) -> str:
        """One line for a phase's report."""
        if math.isnan(self.steal_pct):
            return "CPU stolen by the hypervisor: unknown (no readable /proc/stat)"
        return (f"CPU stolen by the hypervisor: {self.steal_pct:.1f}% of the window (worst 1 s: "
                f"{self.worst_pct:.1f}%); machine busy {self.busy_pct:.0f}%")


def latencies(written: dict[int, tuple[float, float, float]], received: dict[int, list[float]],
              subs: int) -> dict[str, Any]:
    """Per event: until the last of its subscribers received it, from its scheduled write, from its commit,
    and from the moment every event with a smaller id had committed (ids are allocated before commit, and
    the bus delivers in id order, so an event may wait for an earlier one's commit: this isolates that)."""
    out: dict[str, Any] = {"from_write": [], "from_commit": [], "from_ready": [], "lost": 0}
    ready = 0.0
    for event_id in sorted(written):
        due, committed, _notified = written[event_id]
        ready = max(ready, committed)
        times = received.get(event_id, [])
        if len(times) < subs:
            out["lost"] += 1
            continue
        last = max(times)
        out["from_write"].append((last - due) * 1000)
        out["from_commit"].append((last - committed) * 1000)
        out["from_ready"].append((last - ready) * 1000)
    return out


def describe(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50):.2f} p99 {percentile(values, 99):.2f} max "
            f"{max(values, default=math.nan):.2f} ms")


