"""DeepCache: reuse the UNet's deep features between steps, recomputing only the shallow branch.

Wraps ``DeepCache.DeepCacheSDHelper``, the one entry point that works on current diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accelopt._types import Pipeline
from accelopt.accelerators._base import Accelerator, Param, Patch, PipeTraits, Reference, in_range
from accelopt.errors import AccelOptError

__all__ = ["DeepCache", "DeepCacheConfig"]


@dataclass(frozen=True)
class DeepCacheConfig:
    """``cache_interval``: full UNet every N steps (1 = off); ``cache_branch_id``: where the
    shallow branch ends, packed as 3 x down block + layer (0 = shallowest, fastest)."""

    cache_interval: int = 3
    cache_branch_id: int = 0


class _DeepCachePatch(Patch):
    def __init__(self, helper: Any) -> None:
        self.helper = helper

    def reset(self) -> None:
        # The helper counts steps from its first call: without this the second generation
        # starts mid-schedule and caches the wrong steps.
        self.helper.disable()
        self.helper.enable()

    def remove(self) -> None:
        self.helper.disable()


class DeepCache(Accelerator[DeepCacheConfig]):
    name = "deepcache"
    config_cls = DeepCacheConfig
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
        return {
            "cache_interval": Param(tuple(range(2, min(5, steps) + 1))),
            # Ids past 3 x down blocks - 1 raise nothing upstream and cache only the mid block.
            "cache_branch_id": Param(tuple(range(min(3, _max_branch(traits)) + 1))),
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
        from DeepCache import DeepCacheSDHelper

        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(
            cache_interval=config.cache_interval, cache_branch_id=config.cache_branch_id
        )
        helper.enable()
        return _DeepCachePatch(helper)


def _max_branch(traits: PipeTraits) -> int:
    return 3 * traits.down_blocks - 1
