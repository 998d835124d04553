"""DBCache (cache-dit's Dual Block Cache): the first and last blocks always compute, and the
change of the first blocks' residual decides whether the middle ones are skipped.

accelopt's own implementation of cache-dit 1.5.3's DBCache (github.com/vipshop/cache-dit;
``caching/cache_blocks/pattern_base.py`` and ``caching/cache_contexts/``): the rule, its
arithmetic and where it differs are in ``accelopt.portable.dbcache``, which generated scripts
carry verbatim and FirstBlockCache (``accelopt.accelerators.fbcache``) shares. It computes
cache-dit's images bit for bit (tests/accelerators_tests/test_dbcache.py, cache-dit being the
test extra's reference). cache-dit itself is not wrapped: it patches the pipeline's class
``__call__``, and its ``disable_cache`` leaves an instance ``forward`` on the transformer,
statistics on the block list and the block list moved to the end of the transformer's children;
and it decides in many ``torch.compiler.disable`` regions per call (every accessor of its
context is one), which no CUDA graph can hold.

The knobs keep cache-dit's ``DBCacheConfig`` names and defaults: ``Fn_compute_blocks`` 8,
``Bn_compute_blocks`` 0, ``residual_diff_threshold`` 0.08, ``max_warmup_steps`` 8,
``max_cached_steps`` and ``max_continuous_cached_steps`` -1 (no cap), and no calibrator:
``taylorseer_order`` 0. cache-dit's TaylorSeer calibrator on top (``taylorseer_order`` 1 or 2,
its ``TaylorSeerCalibratorConfig``; on the middle residual) forecasts what a reusing call adds
(``accelopt.portable.dbcache``); its warm-up interval and its static step masks are not
offered. Which calls reuse depends on a value read from the device after the first blocks, once
per call, its one graph break under ``torch.compile`` (what that does to the whole forward
compiled: ``accelopt.portable.dbcache``); under CUDA graphs a deciding call is not captured
whole but replays block by block, the decision between two replays
(``accelopt.portable.graphs.decides``).

The search ranges, from cache-dit's published runs (docs/user_guide/DBCACHE_DESIGN.md:
FLUX.1-dev 28 steps F1B0 at 0.08 and 0.20, F8B8 at 0.12 and 0.15, F12B12 at 0.20, F8B12 at
0.12, F8B16 at 0.20; bench/cache/README.md, FLUX.1-dev 50 steps on DrawBench: F8B0 W4 R0.08
1.80x at PSNR 33.8 dB, F4B0 W4 MC4 R0.12 2.66x at PSNR 31.5 dB, thresholds 0.08-0.32 with W4
or W8 and MC 2-6; its README's configs always run M0, no cap on the cached steps):

- ``Fn_compute_blocks`` 1, 2, 4, 8 (F1, F4 and F8 published, 2 between), at most half the
  stack; ``Bn_compute_blocks`` 0, 2, 4, 8 (B0 mostly; B8-B16 on FLUX's 57 blocks), cut so
  that a middle block is left to skip.
- ``residual_diff_threshold`` 0.04-0.32: the published 0.08-0.32 and one step below. cache-dit's
  range is [0, 1): at 1 or more it reuses every call it may without reading the change, which
  is a static schedule, not this method; ``check`` refuses it.
- ``max_warmup_steps`` 1, 2, 4, 8 (W2 on FLUX-Kontext, W4, W8 the default); 0 decides as 1 does
  (the first call has nothing to compare with). Cut below the call count.
- ``max_continuous_cached_steps`` no cap (-1, listed first: the fastest), 1, 2, 3, 4, 6 (MC2-MC6
  published); ``max_cached_steps`` is not searched.
- ``taylorseer_order`` 0 (no calibrator), 1, 2: cache-dit's default order is 1 and its docs
  recommend 1 or 2 ("higher values ... longer computation time"); its README's TaylorSeer
  examples pair it with DBCache at F1B0 and F8B0 (``DBCacheConfig`` with
  ``calibrator_config=TaylorSeerCalibratorConfig(taylorseer_order=1)``).

Step-valued knobs count denoiser calls (``counts``).
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
from accelopt.portable.buffers import Buffers
from accelopt.portable.dbcache import Decision, cache_middle_blocks
from accelopt.portable.taylorseer import MAX_TAYLOR_ORDER

__all__ = ["DBCache", "DBCacheConfig", "DecisionPatch", "check_threshold"]

FIRST_BLOCKS = (1, 2, 4, 8)
LAST_BLOCKS = (0, 2, 4, 8)
THRESHOLDS = (0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.32)
WARMUPS = (1, 2, 4, 8)
CONTINUOUS = (-1, 1, 2, 3, 4, 6)
ORDERS = (0, 1, 2)


@dataclass(frozen=True)
class DBCacheConfig:
    """cache-dit's names and defaults. ``Fn_compute_blocks`` / ``Bn_compute_blocks``: blocks
    that always compute first / last; ``residual_diff_threshold``: the relative change of the
    first blocks' residual below which a call reuses the middle blocks' residual (0 = off);
    ``max_warmup_steps``: calls that always compute first; ``max_cached_steps`` /
    ``max_continuous_cached_steps``: at most this many reusing calls per generation / in a row
    (-1: no cap); ``taylorseer_order``: cache-dit's TaylorSeer calibrator, the order of the
    forecast a reusing call adds (0: none, the last computing call's residual)."""

    Fn_compute_blocks: int = 8
    Bn_compute_blocks: int = 0
    residual_diff_threshold: float = 0.08
    max_warmup_steps: int = 8
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = -1
    taylorseer_order: int = 0


class DecisionPatch(Patch):
    """DBCache's and FirstBlockCache's patch: ``decision`` on the pipeline's transformer."""

    def __init__(self, pipe: Pipeline, decision: Decision, buffers: Buffers) -> None:
        self.decision = decision
        net = pipe.transformer
        try:
            cache_middle_blocks(net, decision, buffers, counted=False)
        except ValueError as exc:
            raise AccelOptError(f"{decision.name}: {exc}") from None
        self._hook = net.register_forward_pre_hook(decision.advance)

    def reset(self, call: Mapping[str, Any]) -> None:
        self.decision.reset()

    def structure(self) -> Hashable:
        return self.decision.structure() if self.decision.caches else None

    def remove(self) -> None:
        self._hook.remove()  # the snapshot puts the blocks' own forwards back


def decision(config: DBCacheConfig) -> Decision:
    """The per-call rule of ``config`` (``accelopt.portable.dbcache``)."""
    return Decision(
        "dbcache",
        config.Fn_compute_blocks,
        config.Bn_compute_blocks,
        config.residual_diff_threshold,
        config.max_warmup_steps,
        config.max_cached_steps,
        config.max_continuous_cached_steps,
        config.taylorseer_order,
    )


def check_threshold(name: str, key: str, value: float, high: float, why: str) -> None:
    """Refuse a threshold outside ``[0, high)``: one line that says why ``high`` is out."""
    if not 0.0 <= value < high:
        raise AccelOptError(
            f"{name}.{key}={value!r} is out of range; valid: 0.0 up to {high} exclusive ({why})"
        )


class DBCache(Accelerator[DBCacheConfig]):
    name = "dbcache"
    config_cls = DBCacheConfig
    families = frozenset({"pixart-alpha", "pixart-sigma"})
    counts = (
        "denoiser calls since the generation began, as cache-dit counts transformer steps "
        "(without separate CFG): PNDM's 20 steps are 29 calls, and max_warmup_steps 8 computes "
        "the first 8 of them"
    )
    references = (
        Reference(
            "Cache-DiT: DBCache, Dual Block Cache for Diffusion Transformers (vipshop; 2025)",
            "https://github.com/vipshop/cache-dit/blob/main/docs/user_guide/DBCACHE_DESIGN.md",
            "https://github.com/vipshop/cache-dit",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        if steps < 2:
            raise AccelOptError(f"dbcache needs at least 2 steps to reuse anything; got {steps}")
        blocks = traits.transformer_blocks
        first: tuple[int, ...] = FIRST_BLOCKS
        last: tuple[int, ...] = LAST_BLOCKS
        if blocks:  # a middle block left at every draw: Fn at most half, Bn what remains
            first = tuple(v for v in first if v <= max(1, (blocks - 1) // 2))
            last = tuple(v for v in last if v <= blocks - 1 - first[-1])
        return {
            "Fn_compute_blocks": Param(first),
            "Bn_compute_blocks": Param(last),
            "residual_diff_threshold": Param(THRESHOLDS),
            "max_warmup_steps": Param(tuple(v for v in WARMUPS if v < steps)),
            # A cap no run of reuses can reach (steps - 1 of them at most) is no cap.
            "max_continuous_cached_steps": Param(tuple(v for v in CONTINUOUS if v < steps - 1)),
            "taylorseer_order": Param(ORDERS),
        }

    def off(self, steps: int) -> DBCacheConfig:
        # One first block and no warm-up: valid on any stack and step count.
        return DBCacheConfig(1, 0, residual_diff_threshold=0.0, max_warmup_steps=0)

    def check(self, config: DBCacheConfig, traits: PipeTraits, steps: int | None) -> None:
        check_threshold(
            self.name,
            "residual_diff_threshold",
            config.residual_diff_threshold,
            1.0,
            "cache-dit's range: at 1 or more it reuses every call it may without reading the "
            "change",
        )
        blocks = traits.transformer_blocks
        if blocks == 1:
            raise AccelOptError("dbcache needs at least 2 transformer blocks; this one has 1")
        middle = "a middle block must be left to skip"
        bn = config.Bn_compute_blocks
        in_range(self.name, "Bn_compute_blocks", bn, 0, blocks - 2 if blocks else 1000, middle)
        most = blocks - 1 - bn if blocks else 1000
        in_range(self.name, "Fn_compute_blocks", config.Fn_compute_blocks, 1, most, middle)
        longest = steps or 1000
        in_range(self.name, "max_warmup_steps", config.max_warmup_steps, 0, longest)
        for key in ("max_cached_steps", "max_continuous_cached_steps"):
            in_range(self.name, key, getattr(config, key), -1, longest, "-1: no cap")
        in_range(self.name, "taylorseer_order", config.taylorseer_order, 0, MAX_TAYLOR_ORDER,
                 "0: no calibrator")  # fmt: skip

    def apply(self, pipe: Pipeline, config: DBCacheConfig, traits: PipeTraits) -> Patch:
        net = pipe.transformer
        return DecisionPatch(pipe, decision(config), kept(net, "dbcache"))
