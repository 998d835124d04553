"""TaylorSeer: forecast a transformer's features between full calls from their finite differences.

accelopt's own implementation of diffusers' ``apply_taylorseer_cache`` (diffusers 0.42.1,
``diffusers/hooks/taylorseer_cache.py``), written so that it also runs compiled and
graph-replayed (``accelopt.execution``): its rule and arithmetic, the differences and why are
in ``accelopt.portable.taylorseer``, which generated scripts carry verbatim; this module is its
``Accelerator`` interface. diffusers' hooks decide inside ``torch.compiler.disable`` regions
(7 graph breaks per forward on a tiny FLUX) and its default module patterns match nothing on
PixArt, so it is not wrapped.

The search ranges, and where they come from (the paper's repository, Shenyi-Z/TaylorSeer: each
model's ``cache_functions/cache_init.py``, ``fresh_threshold`` / ``max_order`` /
``first_enhance``, and TaylorSeer-DiT.md; diffusers' ``TaylorSeerCacheConfig`` defaults):

- ``cache_interval`` 2..6: FLUX runs 6, Wan2.1 and FramePack 5, HiDream 4, DiT recommends 4
  (3 as near-lossless); diffusers' default is 5. 2 is the smallest that forecasts at all; cut to
  the step count.
- ``max_order`` 0, 1, 2: FLUX, Wan2.1 and HiDream-I1-nf4 run 1, HiDream 2, FramePack 0 (plain
  reuse, FORA); diffusers' default is 1. DiT recommends 4 and shows 3: ``check`` takes up to
  ``MAX_TAYLOR_ORDER`` = 4, the search stays at 2.
- ``disable_cache_before_step`` 1..4: FLUX 3, DiT 2, HiDream and FramePack 1; diffusers' default
  is 3. 0 is refused: diffusers forecasts call 0 then, from nothing, and raises.
- ``modules``: "attention" (each block's attn1, attn2 and ff outputs, the paper's per-block
  attention and MLP features, and what diffusers' default patterns aim at) or "blocks" (each
  block's output: coarser, as the paper's FLUX forecasts a single-stream block's whole
  attention-and-MLP branch in one piece); diffusers reaches both through ``cache_identifiers``.

Step-valued knobs count denoiser calls, as diffusers' do (``counts``).
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
    one_of,
)
from accelopt.errors import AccelOptError
from accelopt.portable.taylorseer import (
    MAX_TAYLOR_ORDER,
    TAYLORSEER_MODULES,
    Forecast,
    forecast_modules,
)

__all__ = ["TaylorSeer", "TaylorSeerConfig"]

LARGEST_INTERVAL, LARGEST_BEFORE = 6, 4  # the search's, from the sources above


@dataclass(frozen=True)
class TaylorSeerConfig:
    """``cache_interval``: a full call every N denoiser calls, forecasts between (1 = off);
    ``max_order``: the forecast's Taylor order (0 = reuse the last full output);
    ``disable_cache_before_step``: denoiser calls computed in full first, building the history;
    ``modules``: what is cached, "attention" (each block's attn1, attn2, ff) or "blocks"."""

    cache_interval: int = 5
    max_order: int = 1
    disable_cache_before_step: int = 3
    modules: str = "attention"


class _TaylorSeerPatch(Patch):
    def __init__(self, pipe: Pipeline, config: TaylorSeerConfig) -> None:
        from accelopt.pipelines import denoiser

        net = denoiser(pipe)
        self.forecast = Forecast(
            config.cache_interval,
            config.max_order,
            config.disable_cache_before_step,
            config.modules,
        )
        try:
            self._hook = forecast_modules(net, self.forecast, kept(net, "taylorseer"))
        except ValueError as exc:
            raise AccelOptError(f"taylorseer: {exc}") from None

    def reset(self, call: Mapping[str, Any]) -> None:
        self.forecast.reset()

    def structure(self) -> Hashable:
        return None if self._hook is None else self.forecast.structure()

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()  # the snapshot puts the modules' own forwards back


class TaylorSeer(Accelerator[TaylorSeerConfig]):
    name = "taylorseer"
    config_cls = TaylorSeerConfig
    families = frozenset({"pixart-alpha", "pixart-sigma"})
    counts = (
        "denoiser calls since the generation began, as diffusers counts them: one per step "
        "here, but PNDM's 20 steps are 29 calls (its PRK warm-up), and a forecast's distance "
        "is in calls"
    )
    references = (
        Reference(
            "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers "
            "(Liu et al.; ICCV 2025)",
            "https://arxiv.org/abs/2503.06923",
            "https://github.com/Shenyi-Z/TaylorSeer",
        ),
        Reference(
            "diffusers' TaylorSeer cache hook (apply_taylorseer_cache), whose rule this follows",
            "https://huggingface.co/papers/2503.06923",
            "https://github.com/huggingface/diffusers/tree/main/src/diffusers/hooks",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        if steps < 2:
            raise AccelOptError(f"taylorseer needs at least 2 steps to forecast any; got {steps}")
        return {
            "cache_interval": Param(tuple(range(2, min(LARGEST_INTERVAL, steps) + 1))),
            "max_order": Param((0, 1, 2)),
            "disable_cache_before_step": Param(
                tuple(range(1, min(LARGEST_BEFORE, steps - 1) + 1))
            ),
            "modules": Param(TAYLORSEER_MODULES),
        }

    def off(self, steps: int) -> TaylorSeerConfig:
        return TaylorSeerConfig(cache_interval=1, disable_cache_before_step=1)

    def check(self, config: TaylorSeerConfig, traits: PipeTraits, steps: int | None) -> None:
        most = steps or 1000
        in_range(self.name, "cache_interval", config.cache_interval, 1, most)
        in_range(self.name, "max_order", config.max_order, 0, MAX_TAYLOR_ORDER)
        in_range(
            self.name,
            "disable_cache_before_step",
            config.disable_cache_before_step,
            1,
            most,
            "a forecast needs a full call before it",
        )
        one_of(self.name, "modules", config.modules, TAYLORSEER_MODULES)

    def apply(self, pipe: Pipeline, config: TaylorSeerConfig, traits: PipeTraits) -> Patch:
        return _TaylorSeerPatch(pipe, config)
