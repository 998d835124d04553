"""DeepCache: reuse the UNet's deep features between steps, recomputing only the shallow branch.

accelopt's own implementation of ``DeepCache.DeepCacheSDHelper``'s "uniform" schedule, written
so that it also runs compiled and graph-replayed (``accelopt.execution``). On every scheduler
whose UNet calls have distinct timesteps it computes exactly what upstream does, bit for bit
(tests/accelerators_tests/test_accelerators.py checks this against the helper). Three things
differ by design:

- Which call is full is counted in UNet calls since the generation began, in a forward pre-hook,
  outside any graph. Upstream looks each call's timestep up with ``timesteps.index(t)`` and a
  host sync; repeated timesteps (PNDM's PRK steps, Heun) break that lookup.
- A full step copies the outputs that shallow steps reuse into buffers this module owns, one set
  per (UNet, branch, shape), kept across applications. Upstream keeps references to the outputs,
  which a CUDA graph overwrites on its next replay; a buffer at a fixed address is what a
  captured graph can read and write.
- Only the outermost modules a shallow step skips are wrapped and cached, not every block.

What a call computes is its ``structure``: full, or shallow at this branch. The interval only
picks which of those graphs each call replays, so changing it never recompiles.

The schedule itself lives in ``accelopt.portable.deepcache``, which generated scripts carry
verbatim; this module is its ``Accelerator`` interface.
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
    kept,
)
from accelopt.errors import AccelOptError
from accelopt.portable.deepcache import Schedule, cache_deep_features

__all__ = ["DeepCache", "DeepCacheConfig", "apply_driven"]


@dataclass(frozen=True)
class DeepCacheConfig:
    """``cache_interval``: full UNet every N UNet calls (1 = off), counted from the first; with
    T-GATE the count restarts at the gate's two steps, which both run in full (as upstream's
    combined loaders do). ``cache_branch_id``: where the shallow branch ends, packed as
    3 x down block + layer (0 = shallowest, fastest)."""

    cache_interval: int = 3
    cache_branch_id: int = 0


class _DeepCachePatch(Patch):
    def __init__(self, unet: Any, config: DeepCacheConfig, counted: bool = True) -> None:
        self.schedule = Schedule(config.cache_interval, config.cache_branch_id)
        buffers = kept(unet, "deepcache")
        self._hook = cache_deep_features(unet, self.schedule, buffers, counted=counted)

    def reset(self, call: Mapping[str, Any]) -> None:
        self.schedule.reset()

    def structure(self) -> Hashable:
        return self.schedule.structure()

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()  # the snapshot puts the modules' own forwards back


class DeepCache(Accelerator[DeepCacheConfig]):
    name = "deepcache"
    config_cls = DeepCacheConfig
    counts = (
        "denoiser calls since the generation began, repeated timesteps included: PNDM's 20 "
        "steps are 29 calls (its PRK warm-up), so cache_interval 2 runs 15 of them in full"
    )
    families = frozenset({"sd", "sdxl"})
    references = (
        Reference(
            "DeepCache: Accelerating Diffusion Models for Free (Ma, Fang, Wang; CVPR 2024)",
            "https://arxiv.org/abs/2312.00858",
            "https://github.com/horseee/DeepCache",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        if steps < 2:
            raise AccelOptError(f"deepcache needs at least 2 steps to cache anything; got {steps}")
        # Ids past 3 x down blocks - 1 raise nothing upstream and cache only the mid block; ids
        # that compute a smaller id's images on this layout (PipeTraits.branches) are left out.
        seed_ids = range(min(3, _max_branch(traits)) + 1)
        return {
            "cache_interval": Param(tuple(range(2, min(5, steps) + 1))),
            "cache_branch_id": Param(
                tuple(b for b in seed_ids if not traits.branches or b in traits.branches)
            ),
        }

    def off(self, steps: int) -> DeepCacheConfig:
        return DeepCacheConfig(cache_interval=1, cache_branch_id=0)

    def check(self, config: DeepCacheConfig, traits: PipeTraits, steps: int | None) -> None:
        in_range(self.name, "cache_interval", config.cache_interval, 1, steps or 1000)
        in_range(
            self.name,
            "cache_branch_id",
            config.cache_branch_id,
            0,
            _max_branch(traits),
            f"3 x {traits.down_blocks} down blocks - 1",
        )

    def apply(self, pipe: Pipeline, config: DeepCacheConfig, traits: PipeTraits) -> Patch:
        return _DeepCachePatch(pipe.unet, config)


def apply_driven(pipe: Pipeline, config: DeepCacheConfig) -> _DeepCachePatch:
    """DeepCache whose schedule another method advances (T-GATE's gate, when combined)."""
    return _DeepCachePatch(pipe.unet, config, counted=False)


def _max_branch(traits: PipeTraits) -> int:
    return 3 * traits.down_blocks - 1
