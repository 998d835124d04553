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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from accelopt._types import is_number

__all__ = [
    "CONFIDENCE",
    "Paired",
    "interval_text",
    "median",
    "median_interval",
    "one_pair_read",
    "peak_memory",
    "reset_peak_memory",
    "time_text",
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
    interval: Sequence[float] | None, level: float | None = None, pairs: int | None = 0
) -> str:
    """How a speedup's interval reads after the speedup, everywhere it is shown (the CLI, the
    report, held-out confirmations, a generated script's docstring)::

        >>> interval_text([1.31, 1.6], 0.98, 7)
        ' (1.31x-1.60x, 98% interval over 7 pairs)'
        >>> interval_text(None, None, 1)
        ' (one timed pair: no interval)'
        >>> interval_text([2.0, 2.0], 0.0)  # stored before one pair stopped storing one
        ' (one timed pair: no interval)'
        >>> interval_text(None)
        ''

    ``pairs`` 0 (or None) means the count was not recorded. One pair has no interval: records
    made before that was so hold a degenerate one, ``[x, x]`` at level 0 (only one pair gives
    level 0), and read the same.
    """
    if pairs == 1 or (interval and level == 0):
        return " (one timed pair: no interval)"
    if not interval or len(interval) != 2:
        return ""
    over = f" over {pairs} pairs" if pairs else ""
    covers = f", {100 * level:.0f}% interval{over}" if level is not None else over
    return f" ({interval[0]:.2f}x-{interval[1]:.2f}x{covers})"


def one_pair_read(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` (a trial's attributes, an entry's ``measured``) as one pair reads now: a
    degenerate interval stored before one pair stopped storing one (level 0) becomes its pair
    count instead; any other record is copied as it is.

    >>> one_pair_read({"speedup": 2.0, "speedup_interval": [2.0, 2.0], "speedup_level": 0.0})
    {'speedup': 2.0, 'speedup_pairs': 1}
    """
    out = dict(record)
    if out.get("speedup_level") == 0:
        del out["speedup_level"]
        out.pop("speedup_interval", None)
        out["speedup_pairs"] = 1
    return out


def time_text(measured: Mapping[str, Any], unit: str = "s/image") -> str:
    """How a trial's (or a store entry's) time per image reads beside its speedup: the batch
    size its timed calls ran at, and what the speedup compares it with::

        >>> time_text({"speedup": 2.5, "time_per_image": 0.4, "timing_batch_size": 4,
        ...            "paired_baseline_time_per_image": 1.0, "speedup_vs_mode_baseline": 2.5,
        ...            "speedup_pairs": 1})
        '0.4000 s/image in batches of 4 (plain: 1.0000 s/image in the same pairs)'
        >>> time_text({"time_per_image": 0.4, "speedup_pairs": 0})
        '0.4000 s/image (unpaired: the quality pass against the baseline timed apart)'
        >>> time_text({"time_per_image": 0.4})  # recorded before batch sizes were
        '0.4000 s/image'

    A paired trial's time is its candidate's in the pairs its speedup came from, beside the
    plain pipeline's in them; when the speedup was scaled to a faster plain pipeline (another
    execution mode's), that is said with the speedup against this mode's.
    """
    seconds = measured.get("time_per_image")
    if not is_number(seconds):
        return "time per image not recorded"
    batch = measured.get("timing_batch_size")
    shown = f"{seconds:.4f} {unit}" + (f" in batches of {batch}" if batch else "")
    plain = measured.get("paired_baseline_time_per_image")
    if is_number(plain):
        scaled = ""
        own: Any = measured.get("speedup_vs_mode_baseline")
        speedup: Any = measured.get("speedup")
        if is_number(own) and is_number(speedup) and abs(own - speedup) > 1e-6 * speedup:
            scaled = (f", {own:.2f}x against it; the speedup is scaled to the fastest plain "
                      f"pipeline, another execution mode's")  # fmt: skip
        pairs = measured.get("speedup_pairs")
        # Medians of several pairs need not divide to the median of their ratios (a load that
        # comes and goes moves both sides of a pair): say which is which.
        several = (f"; medians of {pairs} pairs, the speedup is the median of their ratios"
                   if isinstance(pairs, int) and pairs > 1 else "")  # fmt: skip
        shown += f" (plain: {plain:.4f} {unit} in the same pairs{scaled}{several})"
    elif measured.get("speedup_pairs") == 0:
        shown += " (unpaired: the quality pass against the baseline timed apart)"
    return shown


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
        """The plain numbers a trial, a confirmation and a store entry keep (an interval only
        from two pairs on)."""
        out: dict[str, object] = {
            "speedup": self.speedup,
            "ratios": self.ratios,
            "baseline": self.baseline,
            "candidate": self.candidate,
        }
        if len(self.ratios) > 1:  # one pair has no interval: none is stored
            low, high, level = self.interval()
            out.update(interval=[low, high], level=level)
        return out
