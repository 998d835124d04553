"""How we time generation: synchronize around the work on a GPU, wall clock on a CPU, and
speedups as statistics of alternated pairs.

GPU work is asynchronous: reading a host clock without synchronizing first measures the launch,
not the work. Peak memory is reset before and read after each measured region.

A speedup is never one timing divided by another taken minutes apart: a shared machine's load
moves both by more than most accelerators gain (a loaded 2-core CPU swung 0.93x-2.43x on one
configuration). ``Paired`` holds baseline and candidate timings taken in alternation, one pair
after the other, and reads the speedup as the median of the pairs' ratios, with a
distribution-free interval for that median (order statistics of the ratios: no assumption
about the noise, exact for any number of pairs).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

__all__ = [
    "CONFIDENCE",
    "Paired",
    "interval_text",
    "median",
    "median_interval",
    "peak_memory",
    "reset_peak_memory",
    "timed",
    "verdict",
]

CONFIDENCE = 0.9  # the two-sided level a speedup interval aims for (fewer pairs reach less)

T = TypeVar("T")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """Run ``fn`` and return its result and the seconds it took on ``device``."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes allocated on a CUDA device since the last reset; None elsewhere."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def median_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """``(low, high, level)``: an interval for the median of the distribution ``values`` come
    from, and the probability it covers it, whatever that distribution is.

    It is ``[x_(k), x_(n+1-k)]`` of the sorted values, ``k`` the largest whose level
    ``1 - 2 P(Binomial(n, 1/2) < k)`` still reaches ``confidence``; with too few values for that,
    the whole range and the level it has (3 values: 75%; the low end alone, 87.5%).

    >>> median_interval([1.2, 0.9, 1.5])
    (0.9, 1.5, 0.75)
    >>> median_interval([float(i) for i in range(1, 10)])  # 9 values: the 2nd to the 8th
    (2.0, 8.0, 0.9609375)
    """
    if not values:
        raise ValueError("no values")
    x, n = sorted(values), len(values)

    def level(k: int) -> float:  # coverage of [x_(k), x_(n+1-k)]
        below = sum(math.comb(n, i) for i in range(k)) / 2**n
        return 1.0 - 2.0 * below

    k = 1
    while k + 1 <= (n + 1) // 2 and level(k + 1) >= confidence:
        k += 1
    return x[k - 1], x[n - k], level(k)


def interval_text(
    interval: Sequence[float] | None, level: float | None = None, pairs: int = 0
) -> str:
    """How a speedup's interval reads after the speedup, everywhere it is shown (the CLI, the
    report, held-out confirmations, a generated script's docstring)::

        >>> interval_text([1.31, 1.6], 0.98, 7)
        ' (1.31x-1.60x, 98% interval over 7 pairs)'
        >>> interval_text([2.0, 2.0], 0.0, 1)
        ' (one timed pair: no interval)'
        >>> interval_text(None)
        ''

    ``pairs`` 0 means the count was not recorded; one pair has no interval to show.
    """
    if not interval or len(interval) != 2:
        return ""
    if pairs == 1:
        return " (one timed pair: no interval)"
    over = f" over {pairs} pairs" if pairs else ""
    covers = f", {100 * level:.0f}% interval{over}" if level is not None else over
    return f" ({interval[0]:.2f}x-{interval[1]:.2f}x{covers})"


def verdict(low: float, high: float, threshold: float = 1.0) -> str:
    """An interval ``[low, high]`` of a speedup against ``threshold``: ``faster`` above it,
    ``slower`` at or below it, ``undecidable`` across it."""
    if low > threshold:
        return "faster"
    return "slower" if high <= threshold else "undecidable"


@dataclass(frozen=True)
class Paired:
    """Baseline and candidate seconds timed in alternation, pair by pair."""

    baseline: list[float]
    candidate: list[float]

    def __post_init__(self) -> None:
        if not self.baseline or len(self.baseline) != len(self.candidate):
            raise ValueError("need as many baseline timings as candidate timings, at least one")

    @property
    def ratios(self) -> list[float]:
        """Each pair's speedup: its baseline time over its candidate time."""
        return [b / c for b, c in zip(self.baseline, self.candidate, strict=True)]

    @property
    def speedup(self) -> float:
        """The median of the pairs' ratios."""
        return float(statistics.median(self.ratios))

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
        """``(low, high, level)`` for the speedup (``median_interval`` of the ratios)."""
        return median_interval(self.ratios, confidence)

    def verdict(self, threshold: float = 1.0) -> str:
        """Whether the candidate is faster than ``threshold`` times the baseline: ``faster``
        when the interval lies above it, ``slower`` when at or below, else ``undecidable``."""
        low, high, _ = self.interval()
        return verdict(low, high, threshold)

    def record(self) -> dict[str, object]:
        """The plain numbers a trial, a confirmation and a store entry keep."""
        low, high, level = self.interval()
        return {"speedup": self.speedup, "interval": [low, high], "level": level,
                "ratios": self.ratios, "baseline": self.baseline,
                "candidate": self.candidate}  # fmt: skip
