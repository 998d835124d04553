"""The prompt set shipped with accelopt, split into search and held-out prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

from accelopt.errors import AccelOptError, choices

__all__ = ["SPLITS", "Prompt", "load_prompts"]

Split = Literal["search", "heldout"]
SPLITS: tuple[Split, ...] = ("search", "heldout")


@dataclass(frozen=True)
class Prompt:
    """One prompt: its stable id, text, category, length class and split."""

    id: str
    text: str
    category: str
    length: str
    split: Split


@lru_cache(maxsize=1)
def _all_prompts() -> tuple[Prompt, ...]:
    raw = json.loads(resources.files("accelopt").joinpath("data/prompts.json").read_text("utf-8"))
    return tuple(Prompt(**p) for p in raw["prompts"])


def load_prompts(split: str | None = None, count: int | None = None) -> list[Prompt]:
    """Prompts of one split (or all), in file order; ``count`` takes the first ``count``.

    >>> len(load_prompts("search", 8))
    8
    """
    prompts = list(_all_prompts())
    if split is not None:
        if split not in SPLITS:
            raise AccelOptError(f"unknown prompt split {split!r}; valid: {choices(SPLITS)}")
        prompts = [p for p in prompts if p.split == split]
    if count is not None:
        if not 1 <= count <= len(prompts):
            raise AccelOptError(
                f"prompt count {count} out of range; the {split or 'whole'} set has "
                f"1 to {len(prompts)} prompts"
            )
        prompts = prompts[:count]
    return prompts
