"""ToMe for SD: merge redundant tokens before self-attention in the UNet's transformer blocks.

Wraps ``tomesd.apply_patch`` / ``tomesd.remove_patch``. tomesd's default randomised partition
(``use_rand``) draws from a generator it forks from the global one at its first call and then
keeps advancing, so two runs with the same seed differ. Here ``use_rand`` is a knob like the
others: every generation seeds the partition's generator with ``seed`` first, so a trial, and a
generated script, draw the same partitions each time.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

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

__all__ = ["MAX_RATIO", "ToMe", "ToMeConfig", "merge_structure", "seed_partition"]

# tomesd merges at most the tokens outside its 2x2 destination grid: 1 - 1/(sx*sy). Larger ratios
# are clamped silently upstream, so they are refused here and capped in the search space.
MAX_RATIO = 0.75
SEED_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))  # the seed system's 0.1 .. 0.9
SEED_MAX_DOWNSAMPLE = (1, 2, 3, 4)


@dataclass(frozen=True)
class ToMeConfig:
    """``ratio``: share of tokens merged (0 = off); ``max_downsample``: merge in blocks at
    downsampling factors up to this (1 = full-resolution blocks only); ``use_rand``: pick each
    2x2 cell's destination token at random (tomesd's default) rather than its top-left one,
    drawn from a generator seeded with ``seed`` at the start of every generation."""

    ratio: float = 0.5
    max_downsample: int = 1
    use_rand: bool = False
    seed: int = 0


class _ToMePatch(Patch):
    def __init__(self, pipe: Pipeline, config: ToMeConfig) -> None:
        self.pipe = pipe
        self.config = config

    def reset(self, call: Mapping[str, Any]) -> None:
        if self.config.use_rand:
            seed_partition(self.pipe.unet, self.config.seed)

    def structure(self) -> Hashable:
        # The merge is recomputed from the hidden states inside every call, on the device:
        # one graph per (ratio, max_downsample) and input shape.
        return merge_structure(self.config)

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
            "use_rand": Param((False, True)),
        }

    def off(self, steps: int) -> ToMeConfig:
        return ToMeConfig(ratio=0.0)

    def check(self, config: ToMeConfig, traits: PipeTraits, steps: int | None) -> None:
        in_range(self.name, "ratio", config.ratio, 0.0, MAX_RATIO, "tomesd clamps larger ratios")
        in_range(self.name, "max_downsample", config.max_downsample, 1, 8)
        in_range(self.name, "seed", config.seed, 0, 2**63 - 1, "a torch.Generator seed")
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
            pipe,
            ratio=config.ratio,
            max_downsample=config.max_downsample,
            use_rand=config.use_rand,
        )
        return _ToMePatch(pipe, config)


def merge_structure(config: ToMeConfig) -> tuple[Any, ...]:
    """What a call merges: ``("tome", ratio, max_downsample)``, and the partition's seed when
    it is random (a fixed partition keeps the shorter form, as stored schedules have it)."""
    rand = (("rand", config.seed),) if config.use_rand else ()
    return ("tome", config.ratio, config.max_downsample, *rand)


def seed_partition(unet: Any, seed: int) -> None:
    """Give tomesd's random partition a generator seeded with ``seed``, on the UNet's device
    (tomesd keeps it in ``_tome_info`` and advances it at every merge)."""
    import torch

    device = next(unet.parameters()).device
    unet._tome_info["args"]["generator"] = torch.Generator(device).manual_seed(seed)


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
