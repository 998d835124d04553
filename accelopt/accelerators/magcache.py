"""MagCache: skip whole transformer calls where calibrated residual magnitudes say little changes.

accelopt's own implementation of the rule in diffusers' ``apply_mag_cache`` (and the MagCache
repository's), written so that it also runs compiled and graph-replayed: the skip mask is
computed on the host from the calibrated ratios before the generation (``accelopt.portable.
magcache``, which generated scripts carry verbatim, says where it differs from diffusers' hook
and why). What a call computes is its ``structure``: the whole block stack, or its input plus
the kept residual. The three knobs only pick which calls replay which of those two graphs, so
changing them never recompiles.

The ratios are specific to the model, scheduler and step count ("if you change the number of
steps you need to recalibrate"): ``calibrate`` measures them on the plain pipeline, and a study
measures them once (``accelopt.study.prepare.calibrate``), stores them with the study and gives
them to every trial's config. They are data, never searched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from accelopt._types import Pipeline
from accelopt.accelerators._base import (
    APPLIED,
    Accelerator,
    Param,
    Patch,
    PipeTraits,
    Reference,
    in_range,
    kept,
)
from accelopt.errors import AccelOptError
from accelopt.portable.magcache import (
    MagSchedule,
    cache_block_residuals,
    mag_blocks,
    mag_ratios,
)

__all__ = ["MagCache", "MagCacheConfig", "calibrate"]

# Search ranges, from the published settings. diffusers 0.42.1 ``MagCacheConfig`` defaults:
# threshold 0.06, max_skip_steps 3, retention_ratio 0.2. The MagCache repository
# (github.com/Zehong-Ma/MagCache): FLUX.1-dev E0.24 K5 R0.1 (MagCache4FLUX/magcache_flux.py,
# 2.8x on an A800), Wan2.1 1.3B E0.12 K2 and K4 R0.2, Wan2.1 14B E0.24 K6 R0.2
# (MagCache4Wan2.1/README.md). The thresholds bracket 0.06-0.24 with one step past it; K runs
# 1-6; retention the published 0.1 and 0.2, with the steps between and one more careful.
THRESHOLDS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2, 0.24, 0.3)
MAX_SKIP_STEPS = 6
RETENTION_RATIOS = (0.1, 0.15, 0.2, 0.25, 0.3)


@dataclass(frozen=True)
class MagCacheConfig:
    """``threshold``: the accumulated error below which a call may skip; ``max_skip_steps``:
    at most this many calls in a row skip (0 = off); ``retention_ratio``: this share of the
    first calls always computes; ``ratios``: the calibrated magnitude ratio of every denoiser
    call (``calibrate``; a study measures them, they are never searched)."""

    threshold: float = 0.06
    max_skip_steps: int = 3
    retention_ratio: float = 0.2
    ratios: tuple[float, ...] = ()


class _MagCachePatch(Patch):
    def __init__(self, pipe: Pipeline, config: MagCacheConfig) -> None:
        net = pipe.transformer
        self.schedule = MagSchedule(
            config.threshold,
            config.max_skip_steps,
            config.retention_ratio,
            config.ratios,
            calls=lambda: len(pipe.scheduler.timesteps),
        )
        try:
            cache_block_residuals(net, self.schedule, kept(net, "magcache"),
                                  counted=False)  # fmt: skip
        except ValueError as exc:
            raise AccelOptError(f"magcache: {exc}") from None
        self._hook = net.register_forward_pre_hook(self._advance)

    def _advance(self, *_: Any) -> None:
        try:
            self.schedule.advance()
        except ValueError as exc:  # the ratios were measured for another scheduler or steps
            raise AccelOptError(f"magcache: {exc}") from None

    def reset(self, call: Mapping[str, Any]) -> None:
        self.schedule.reset()

    def structure(self) -> Hashable:
        return self.schedule.structure()

    def remove(self) -> None:
        self._hook.remove()  # the snapshot puts the blocks' own forwards back


class MagCache(Accelerator[MagCacheConfig]):
    name = "magcache"
    config_cls = MagCacheConfig
    families = frozenset({"pixart-alpha", "pixart-sigma"})
    calibrated = ("ratios",)
    counts = (
        "denoiser calls since the generation began, one calibrated ratio each: PNDM's 20 steps "
        "are 29 calls, and retention_ratio 0.2 keeps the first 6 of them"
    )
    references = (
        Reference(
            "MagCache: Fast Video Generation with Magnitude-Aware Cache (Ma et al.; 2025)",
            "https://arxiv.org/abs/2506.09045",
            "https://github.com/Zehong-Ma/MagCache",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        if steps < 2:
            raise AccelOptError(f"magcache needs at least 2 steps to skip anything; got {steps}")
        return {
            "threshold": Param(THRESHOLDS),
            "max_skip_steps": Param(tuple(range(1, min(MAX_SKIP_STEPS, steps - 1) + 1))),
            "retention_ratio": Param(RETENTION_RATIOS),
        }

    def off(self, steps: int) -> MagCacheConfig:
        return MagCacheConfig(max_skip_steps=0)

    def check(self, config: MagCacheConfig, traits: PipeTraits, steps: int | None) -> None:
        in_range(self.name, "threshold", config.threshold, 0.0, 1.0)
        in_range(self.name, "max_skip_steps", config.max_skip_steps, 0, steps or 1000)
        in_range(self.name, "retention_ratio", config.retention_ratio, 0.0, 1.0)
        ratios = config.ratios
        if not ratios:
            if config.max_skip_steps > 0:
                raise AccelOptError(
                    "magcache needs calibrated ratios, one per denoiser call "
                    "(accelopt.accelerators.magcache.calibrate); accelopt measures them once "
                    "per study, or set max_skip_steps=0 (off)"
                )
            return
        bad = next((r for r in ratios if not (math.isfinite(r) and r > 0)), None)
        if bad is not None:
            raise AccelOptError(f"magcache.ratios must be finite and positive; got {bad!r}")
        if steps is not None and not steps <= len(ratios) <= 2 * steps + 9:
            raise AccelOptError(
                f"magcache.ratios has {len(ratios)} entries; {steps} steps make "
                f"{steps}..{2 * steps + 9} denoiser calls (Heun's second evaluations, PNDM's 9 "
                f"warm-up calls), one ratio each"
            )

    def apply(self, pipe: Pipeline, config: MagCacheConfig, traits: PipeTraits) -> Patch:
        return _MagCachePatch(pipe, config)

    def calibrate(self, pipe: Pipeline, generate: Callable[[], Any]) -> dict[str, Any]:
        return {"ratios": list(_measure(pipe, generate))}


def calibrate(pipe: Pipeline, **call: Any) -> tuple[float, ...]:
    """MagCache's ratios for ``pipe`` as it is called with ``call``: one plain generation,
    measured per transformer call (first call 1.0). They hold for this model, scheduler and
    step count; accelopt measures them once per study.

    >>> ratios = calibrate(pipe, prompt="a red cube", num_inference_steps=20)  # doctest: +SKIP
    >>> accelerators.apply(pipe, {"magcache": {"threshold": 0.1, "ratios": ratios}})
    """
    return _measure(pipe, lambda: pipe(**call))


def _measure(pipe: Pipeline, generate: Callable[[], Any]) -> tuple[float, ...]:
    if APPLIED.get(pipe) is not None:
        raise AccelOptError("magcache calibrates the plain pipeline: remove its accelerators")
    try:
        mag_blocks(pipe.transformer)
    except ValueError as exc:
        raise AccelOptError(f"magcache: {exc}") from None
    return tuple(mag_ratios(pipe.transformer, generate))
