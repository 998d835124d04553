"""Which measured points no other beats: the one Pareto filter over (speedup, loss) pairs.

A study's frontier (``accelopt.study.results.frontier``), the frontier points a params store
keeps and the ones codegen picks from all use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["non_dominated"]

T = TypeVar("T")


def non_dominated(items: Sequence[T], values: Callable[[T], tuple[float, float]]) -> list[T]:
    """The items no other item beats: as fast or faster and losing as little or less, one of
    them strictly. ``values(item)`` is ``(speedup, score_loss)``; order is kept.

    >>> non_dominated([(2.0, 0.01), (1.5, 0.02), (1.2, 0.0)], lambda p: p)
    [(2.0, 0.01), (1.2, 0.0)]
    """
    pairs = [values(item) for item in items]

    def beaten(s: float, loss: float) -> bool:
        return any(s2 >= s and l2 <= loss and (s2, l2) != (s, loss) for s2, l2 in pairs)

    return [item for item, (s, loss) in zip(items, pairs, strict=True) if not beaten(s, loss)]
