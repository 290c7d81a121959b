"""Profiling helpers: py-spy samples of a served process, and what they say."""
from __future__ import annotations

from pathlib import Path

from tests.harness import BIN, Processes, ServedProcess


def py_spy(procs: Processes, pid: int, seconds: float, out: Path) -> ServedProcess | None:
    """Sample a process with py-spy for a while (raw collapsed stacks), if py-spy is installed."""
    spy = BIN / "py-spy"
    if not spy.exists():
        return None
    return procs.spawn(f"py-spy-{pid}", [str(spy), "record", "--pid", str(pid), "--rate", "200", "--duration",
                                          str(max(1, int(seconds))), "--format", "raw", "--nonblocking",
                                          "--output", str(out)])


def _samples(path: Path) -> list[tuple[str, int]]:
    """(stack, count) for each line of py-spy's collapsed output."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            found.append((stack, int(count)))
    return found


def top_frames(path: Path, n: int = 12) -> list[tuple[float, str]]:
    """The n functions with the most samples of their own (self time), as (share, frame)."""
    own: dict[str, int] = {}
    samples = _samples(path)
    total = sum(count for _, count in samples)
    for stack, count in samples:
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + count
    return sorted(((c / total, f) for f, c in own.items()), reverse=True)[:n] if total else []


def inclusive_frames(path: Path, needles: tuple[str, ...]) -> dict[str, float]:
    """Share of samples whose stack passes through a function whose frame text contains each needle."""
    samples = _samples(path)
    total = sum(count for _, count in samples)
    hits = dict.fromkeys(needles, 0)
    for stack, count in samples:
        for needle in needles:
            if needle in stack:
                hits[needle] += count
    return {k: v / total for k, v in hits.items()} if total else {}


