"""FirstBlockCache: the first block always computes, and the change of its residual decides
whether the rest of the stack is skipped (its residual from the last full call added instead).

accelopt's own implementation of diffusers 0.42.1's ``apply_first_block_cache``
(``diffusers/hooks/first_block_cache.py``, after ParaAttention's First Block Cache,
github.com/chengzeyi/ParaAttention): the mechanism is DBCache's with ``Fn=1, Bn=0``, no
warm-up and no caps (``accelopt.portable.dbcache``, shared with ``accelopt.accelerators.
dbcache``), with diffusers' own rule, matched bit for bit on TinyPixArt
(tests/accelerators_tests/test_fbcache.py, four schedulers):

- the change is the first block's residual (its output minus its input) against the one of
  the last call that ran every block, ``mean|r - r_prev| / mean|r_prev|``, read with
  ``.item()``; ``r_prev`` is replaced only at calls that run every block (a reusing call
  leaves it);
- a call reuses unless the change is *above* the threshold (``FBCHeadBlockHook.
  _should_compute_remaining_blocks``: compute when ``diff > threshold``); the first call of a
  generation, with nothing to compare with, computes.

Where it differs from diffusers' hook, and why: threshold 0 is off (nothing is read; diffusers
would still reuse at a change of exactly 0); the state is reset before every generation
(diffusers resets it only for models with ``CacheMixin``, which PixArt's transformer lacks, and
its pipeline opens no cache context: the hook raises "No cache context is set" there); the
decision is made outside every graph, once per call (diffusers decides in a
``torch.compiler.disable`` region and its other blocks' hooks read the shared state). Under
CUDA graphs a deciding call replays block by block, since the decision reads a device value in
the middle of the forward (``accelopt.portable.graphs.decides``).

The threshold's search range, from the published settings: diffusers' default 0.05;
ParaAttention on FLUX.1-dev, 28 steps on an L20 (diffusers' docs, optimization/para_attn.md):
0.06, 0.08 (its FLUX default, 1.55x), 0.10, 0.12 (1.91x; also its setting under FP8 dynamic
quantization, which "significantly changes the distribution of the model output"), and 0.06
its HunyuanVideo default. The search runs 0.04-0.3: those, one step below, and steps above for
models whose changes run larger (thresholds do not transfer between models).
"""

from __future__ import annotations

from dataclasses import dataclass

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
from accelopt.accelerators.dbcache import DecisionPatch
from accelopt.errors import AccelOptError
from accelopt.portable.dbcache import Decision

__all__ = ["FBCache", "FBCacheConfig"]

THRESHOLDS = (0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2, 0.3)


@dataclass(frozen=True)
class FBCacheConfig:
    """``threshold``: the relative change of the first block's residual at or below which a call
    reuses the rest of the stack's residual (diffusers' default 0.05; 0 = off)."""

    threshold: float = 0.05


def decision(config: FBCacheConfig) -> Decision:
    """The per-call rule of ``config``: DBCache's with one first block, no last block, no
    warm-up or caps, and diffusers' comparison."""
    return Decision("fbcache", 1, 0, config.threshold, strict=False)


class FBCache(Accelerator[FBCacheConfig]):
    name = "fbcache"
    config_cls = FBCacheConfig
    families = frozenset({"pixart-alpha", "pixart-sigma"})
    counts = "nothing: no knob depends on the step (a generation's first call computes)"
    references = (
        Reference(
            "ParaAttention: First Block Cache (Cheng; 2025), after TeaCache",
            "https://github.com/chengzeyi/ParaAttention#first-block-cache-our-dynamic-caching",
            "https://github.com/chengzeyi/ParaAttention",
        ),
        Reference(
            "diffusers' FirstBlockCache hook (apply_first_block_cache), whose rule this follows",
            "https://huggingface.co/docs/diffusers/main/en/optimization/para_attn",
            "https://github.com/huggingface/diffusers/tree/main/src/diffusers/hooks",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        if steps < 2:
            raise AccelOptError(f"fbcache needs at least 2 steps to reuse anything; got {steps}")
        return {"threshold": Param(THRESHOLDS)}

    def off(self, steps: int) -> FBCacheConfig:
        return FBCacheConfig(threshold=0.0)

    def check(self, config: FBCacheConfig, traits: PipeTraits, steps: int | None) -> None:
        in_range(self.name, "threshold", config.threshold, 0.0, 1.0)
        if traits.transformer_blocks == 1:
            raise AccelOptError("fbcache needs at least 2 transformer blocks; this one has 1")

    def apply(self, pipe: Pipeline, config: FBCacheConfig, traits: PipeTraits) -> Patch:
        net = pipe.transformer
        return DecisionPatch(pipe, decision(config), kept(net, "fbcache"))
