"""ToMe for SD: merge redundant tokens before self-attention in the UNet's transformer blocks.

Wraps ``tomesd.apply_patch`` / ``tomesd.remove_patch`` with ``use_rand=False``: tomesd's default
random partition makes two runs with the same seed differ, which no search can score.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from accelopt._types import Pipeline
from accelopt.accelerators._base import (
    Accelerator,
    Param,
    Patch,
    PipeTraits,
    Reference,
    in_range,
    one_of,
)

__all__ = ["MAX_RATIO", "ToMe", "ToMeConfig"]

# tomesd merges at most the tokens outside its 2x2 destination grid: 1 - 1/(sx*sy). Larger ratios
# are clamped silently upstream, so they are refused here and capped in the search space.
MAX_RATIO = 0.75
SEED_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))  # the seed system's 0.1 .. 0.9
SEED_MAX_DOWNSAMPLE = (1, 2, 3, 4)


@dataclass(frozen=True)
class ToMeConfig:
    """``ratio``: share of tokens merged (0 = off); ``max_downsample``: merge in blocks at
    downsampling factors up to this (1 = full-resolution blocks only)."""

    ratio: float = 0.5
    max_downsample: int = 1


class _ToMePatch(Patch):
    def __init__(self, pipe: Pipeline, config: ToMeConfig) -> None:
        self.pipe = pipe
        self.config = config

    def structure(self) -> Hashable:
        # The merge is recomputed from the hidden states inside every call, on the device:
        # one graph per (ratio, max_downsample) and input shape.
        return ("tome", self.config.ratio, self.config.max_downsample)

    def remove(self) -> None:
        import tomesd

        tomesd.remove_patch(self.pipe)


class ToMe(Accelerator[ToMeConfig]):
    name = "tome"
    config_cls = ToMeConfig
    families = frozenset({"sd", "sdxl"})
    references = (
        Reference(
            "Token Merging for Fast Stable Diffusion (Bolya, Hoffman; CVPRW 2023)",
            "https://arxiv.org/abs/2303.17604",
            "https://github.com/dbolya/tomesd",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        ratios = sorted({min(r, MAX_RATIO) for r in SEED_RATIOS})
        return {
            "ratio": Param(tuple(ratios)),
            "max_downsample": Param(effective_downsamples(traits)),
        }

    def off(self, steps: int) -> ToMeConfig:
        return ToMeConfig(ratio=0.0)

    def check(self, config: ToMeConfig, traits: PipeTraits, steps: int | None) -> None:
        in_range(self.name, "ratio", config.ratio, 0.0, MAX_RATIO, "tomesd clamps larger ratios")
        in_range(self.name, "max_downsample", config.max_downsample, 1, 8)
        if config.ratio > 0 and min(traits.attention_downsamples) > config.max_downsample:
            levels = ", ".join(map(str, traits.attention_downsamples))
            one_of(
                self.name,
                "max_downsample",
                config.max_downsample,
                effective_downsamples(traits),
                f"this UNet has attention only at downsample {levels}, so "
                f"{config.max_downsample} merges nothing",
            )

    def apply(self, pipe: Pipeline, config: ToMeConfig, traits: PipeTraits) -> Patch:
        import tomesd

        tomesd.apply_patch(
            pipe, ratio=config.ratio, max_downsample=config.max_downsample, use_rand=False
        )
        return _ToMePatch(pipe, config)


def effective_downsamples(traits: PipeTraits) -> tuple[int, ...]:
    """The seed's max_downsample values that patch a distinct, non-empty set of blocks.

    Values that patch nothing (1 on SDXL, whose first level has no attention) are dropped; values
    that patch the same blocks as a smaller one (3 acts as 2) are folded into it.
    """
    seen: dict[tuple[int, ...], int] = {}
    for m in SEED_MAX_DOWNSAMPLE:
        patched = tuple(d for d in traits.attention_downsamples if d <= m)
        if patched:
            seen.setdefault(patched, m)
    return tuple(seen.values())
