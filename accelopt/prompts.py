"""The prompt sets shipped with accelopt, each split into search and held-out prompts.

``accelopt``: prompts written for real text-to-image models (data/prompts.json). ``shapes``: the
toy shapes' captions for ToySD; its held-out prompts are (colour, shape, background) combinations
the toy models never saw in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

from accelopt.errors import AccelOptError, choices

__all__ = ["PROMPT_SETS", "SPLITS", "Prompt", "load_prompts"]

Split = Literal["search", "heldout"]
SPLITS: tuple[Split, ...] = ("search", "heldout")
PROMPT_SETS = ("accelopt", "shapes")


@dataclass(frozen=True)
class Prompt:
    """One prompt: its stable id, text, category, length class and split."""

    id: str
    text: str
    category: str
    length: str
    split: Split


@lru_cache(maxsize=2)
def _all_prompts(prompt_set: str) -> tuple[Prompt, ...]:
    if prompt_set == "shapes":
        from accelopt.toy import shapes  # imports torch: only for the toy set

        parts: tuple[tuple[Split, shapes.Split], ...] = (
            ("search", "train"),
            ("heldout", "heldout"),
        )
        return tuple(
            Prompt(f"{split}-{i:04d}", text, text.split()[3].removesuffix("s"), "short", split)
            for split, part in parts
            for i, text in enumerate(shapes.prompt_order(part))
        )
    raw = json.loads(resources.files("accelopt").joinpath("data/prompts.json").read_text("utf-8"))
    return tuple(Prompt(**p) for p in raw["prompts"])


def load_prompts(
    split: str | None = None, count: int | None = None, prompt_set: str = "accelopt"
) -> list[Prompt]:
    """Prompts of one split (or all) of a prompt set, in order; ``count`` takes the first ones.

    >>> len(load_prompts("search", 8))
    8
    >>> load_prompts("heldout", 1, "shapes")[0].split
    'heldout'
    """
    if prompt_set not in PROMPT_SETS:
        raise AccelOptError(f"unknown prompt set {prompt_set!r}; valid: {choices(PROMPT_SETS)}")
    prompts = list(_all_prompts(prompt_set))
    if split is not None:
        if split not in SPLITS:
            raise AccelOptError(f"unknown prompt split {split!r}; valid: {choices(SPLITS)}")
        prompts = [p for p in prompts if p.split == split]
    if count is not None:
        if not 1 <= count <= len(prompts):
            raise AccelOptError(
                f"prompt count {count} out of range; the {split or 'whole'} {prompt_set} set has "
                f"1 to {len(prompts)} prompts"
            )
        prompts = prompts[:count]
    return prompts
