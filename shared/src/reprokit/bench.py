"""The side-by-side protocol of gsg's and balcon's ``bench``: the package's training loop and
a plain-PyTorch loop of the same step, in one process, alternating.

Each side is timed at its median step time, so a few steps preempted by another process of a
shared machine move neither; one untimed round first takes the process's first allocations
(page faults) off whichever side would have gone first; later rounds reverse the order every
other round, so a machine that speeds up or slows down within a round favours neither side.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable


def median_rate(stamps: list[float], items_per_step: int, warmup: int = 0) -> float:
    """Items/s at the median duration of the steps after the first `warmup` steps; step i
    ends at ``stamps[i]`` (step 0's duration is unknown, so `warmup` 0 starts at step 1)."""
    t = stamps[warmup - 1:] if warmup else stamps
    if len(t) < 2:
        raise ValueError(f"{len(stamps)} step times leave no timed step after {warmup} warm-up")
    return items_per_step / statistics.median(b - a for a, b in zip(t, t[1:]))


def alternating_rounds(sides: dict[str, Callable[[], float]],
                       rounds: int) -> tuple[dict[str, list[float]], list[str]]:
    """Run every side once untimed, then `rounds` rounds (the first in `sides`' order, the
    next reversed, ...); returns each side's values per round and which side went first."""
    names = list(sides)
    for name in names:
        sides[name]()
    values: dict[str, list[float]] = {name: [] for name in names}
    first = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        first.append(order[0])
        for name in order:
            values[name].append(sides[name]())
    return values, first


__all__ = ["alternating_rounds", "median_rate"]
