"""Type names shared across modules."""

from __future__ import annotations

import math
from typing import Any, TypeAlias, TypeGuard

__all__ = ["Pipeline", "is_number"]

# A diffusers pipeline. Typed loosely on purpose: components are dynamic attributes (unet or
# transformer, tokenizer_2, ...), which the static DiffusionPipeline type does not know.
Pipeline: TypeAlias = Any


def is_number(value: object) -> TypeGuard[int | float]:
    """A finite real number, not a bool: the one check for numbers read from a store, a task
    file or a storage (JSON allows NaN, Infinity and integers no float holds).

    >>> [is_number(v) for v in (1, 2.5, True, float("nan"), 10**400, "1")]
    [True, True, False, False, False, False]
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False
