"""FasterCache: rebuild the unconditional half of guidance from the conditional one, and
extrapolate self-attention, in the calls where both change least.

accelopt's own implementation of diffusers' ``apply_faster_cache`` (diffusers 0.42.1), written
so that it also runs compiled and graph-replayed: the rules, and where they differ from
diffusers' hooks, are in ``accelopt.portable.fastercache``, which generated scripts carry
verbatim; this module is its ``Accelerator`` interface. diffusers' hooks need a
``current_timestep_callback`` that PixArt's pipeline cannot answer and decide inside each
forward, so they are not wrapped; tests/accelerators_tests/test_fastercache.py checks ours
against them bit for bit. The timesteps come from the scheduler on the host, as PAB's do.

The search ranges, and where they come from (Lv et al., "FasterCache: Training-Free Video
Diffusion Model Acceleration with High Quality", arXiv 2410.19355; its code,
Vchitect/FasterCache; diffusers' ``FasterCacheConfig`` and its documented CogVideoX example):

- ``unconditional_batch_skip_range`` 2..8: the unconditional half is computed every this many
  calls (the paper's CFG-Cache interval ``n``, "dependent on the model"); diffusers' default
  and documented example use 5. 1 computes it at every call: FasterCache off.
- ``unconditional_batch_timestep_skip_high``: the window's upper timestep, diffusers' default
  641 and its example's 781, moved by 100 each way and one step bolder (901); the lower edge
  stays at diffusers' -1 (the window runs to the last step).
- ``spatial_attention_block_skip_range`` 1..3: self-attention is computed every this many calls
  (the paper and its code fix 2); 1 leaves attention alone, the CFG-Cache by itself.
- ``spatial_attention_timestep_skip_high``: diffusers' 681, and 100 each way.
- ``attention_weight``: the extrapolation's weight, diffusers' default 0.5 and its example's
  0.3, and 0.7 (the paper grows it from 0 to 1 over the steps).
- ``alpha_low_frequency`` / ``alpha_high_frequency``: the paper's 1.1 for both (eq. 11), and
  1.0 (no scaling) and 1.2 beside it.

PixArt's self-attention is ``attn1`` of each of its transformer blocks (diffusers' identifiers
``^transformer_blocks.*attn`` without cross-attention); a PixArt has no temporal attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accelopt._types import Pipeline
from accelopt.accelerators._base import (
    HOST_TIMESTEPS,
    Accelerator,
    Param,
    Patch,
    PipeTraits,
    Reference,
    guided_by,
    host_timesteps_of,
    in_range,
    kept,
)
from accelopt.errors import AccelOptError
from accelopt.portable.fastercache import Faster, faster_attention

__all__ = ["FasterCache", "FasterCacheConfig", "faster"]

UNCOND_SKIPS = (2, 3, 4, 5, 6, 8)
UNCOND_HIGHS = (441, 541, 641, 781, 901)
ATTENTION_SKIPS = (1, 2, 3)
ATTENTION_HIGHS = (581, 681, 781)
WEIGHTS = (0.3, 0.5, 0.7)
ALPHAS = (1.0, 1.1, 1.2)
TIMESTEPS = 1000  # the DDPM-trained timesteps every PixArt scheduler counts in


@dataclass(frozen=True)
class FasterCacheConfig:
    """``unconditional_batch_skip_range``: the unconditional half is computed every this many
    calls (1: always, FasterCache off); ``unconditional_batch_timestep_skip_low`` / ``_high``:
    the open window of timesteps where it may be rebuilt instead; ``spatial_attention_block_skip
    _range``: self-attention is computed every this many calls (1: always), and extrapolated
    with ``attention_weight`` in the other halved calls whose timestep lies in
    ``spatial_attention_timestep_skip_low`` / ``_high``; ``alpha_low_frequency`` /
    ``alpha_high_frequency``: the scaling of the halves' low- and high-frequency differences."""

    unconditional_batch_skip_range: int = 5
    unconditional_batch_timestep_skip_low: int = -1
    unconditional_batch_timestep_skip_high: int = 641
    spatial_attention_block_skip_range: int = 2
    spatial_attention_timestep_skip_low: int = -1
    spatial_attention_timestep_skip_high: int = 681
    attention_weight: float = 0.5
    alpha_low_frequency: float = 1.1
    alpha_high_frequency: float = 1.1


def faster(config: FasterCacheConfig, timesteps: Callable[[], Sequence[float]]) -> Faster:
    """The per-call schedule ``config`` follows, over the generation's ``timesteps()``."""
    return Faster(dataclasses.asdict(config), timesteps)


class _FasterCachePatch(Patch):
    def __init__(self, pipe: Pipeline, config: FasterCacheConfig) -> None:
        net = pipe.transformer
        self.faster = faster(config, timesteps=lambda: host_timesteps_of(pipe, "fastercache"))
        self.guided = guided_by(pipe, net)
        self._handles: list[Any] = []
        if self.faster.halves:  # off: nothing patched, the plain pipeline's graphs
            self._handles = faster_attention(net, self.faster, kept(net, "fastercache"))

    def reset(self, call: Mapping[str, Any]) -> None:
        self.faster.reset(guided=self.guided(call))

    def structure(self) -> Hashable:
        return self.faster.structure() if self._handles else None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()  # the snapshot puts the attention modules' own forwards back


class FasterCache(Accelerator[FasterCacheConfig]):
    name = "fastercache"
    config_cls = FasterCacheConfig
    families = frozenset({"pixart-alpha", "pixart-sigma"})
    counts = HOST_TIMESTEPS
    references = (
        Reference(
            "FasterCache: Training-Free Video Diffusion Model Acceleration with High Quality "
            "(Lv et al.; 2024)",
            "https://arxiv.org/abs/2410.19355",
            "https://github.com/Vchitect/FasterCache",
        ),
        Reference(
            "diffusers' FasterCache hooks (apply_faster_cache), whose rules this follows",
            "https://huggingface.co/papers/2410.19355",
            "https://github.com/huggingface/diffusers/tree/main/src/diffusers/hooks",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        if steps < 2:
            raise AccelOptError(
                f"fastercache needs at least 2 steps to reuse anything; got {steps}"
            )
        return {
            "unconditional_batch_skip_range": Param(tuple(s for s in UNCOND_SKIPS if s <= steps)),
            "unconditional_batch_timestep_skip_high": Param(UNCOND_HIGHS),
            "spatial_attention_block_skip_range": Param(
                tuple(s for s in ATTENTION_SKIPS if s <= steps)
            ),
            "spatial_attention_timestep_skip_high": Param(ATTENTION_HIGHS),
            "attention_weight": Param(WEIGHTS),
            "alpha_low_frequency": Param(ALPHAS),
            "alpha_high_frequency": Param(ALPHAS),
        }

    def off(self, steps: int) -> FasterCacheConfig:
        return FasterCacheConfig(unconditional_batch_skip_range=1)

    def check(self, config: FasterCacheConfig, traits: PipeTraits, steps: int | None) -> None:
        most = steps or 1000
        for knob in ("unconditional_batch_skip_range", "spatial_attention_block_skip_range"):
            in_range(self.name, knob, getattr(config, knob), 1, most)
        for window in ("unconditional_batch_timestep_skip", "spatial_attention_timestep_skip"):
            low = getattr(config, f"{window}_low")
            in_range(self.name, f"{window}_low", low, -1, TIMESTEPS - 1)
            in_range(
                self.name,
                f"{window}_high",
                getattr(config, f"{window}_high"),
                low + 1,
                TIMESTEPS,
                f"above {window}_low",
            )
        in_range(self.name, "attention_weight", config.attention_weight, 0.0, 2.0)
        for knob in ("alpha_low_frequency", "alpha_high_frequency"):
            in_range(self.name, knob, getattr(config, knob), 0.5, 2.0)

    def apply(self, pipe: Pipeline, config: FasterCacheConfig, traits: PipeTraits) -> Patch:
        return _FasterCachePatch(pipe, config)
