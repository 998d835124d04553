"""T-GATE: cache cross-attention once it has converged, and drop classifier-free guidance after.

Upstream T-GATE is a forked pipeline call, ``pipe.tgate(...)``, installed by a loader per pipeline
family; with DeepCache it needs the combined loaders (a DeepCache helper beside a plain loader
fails at the gate step). It never unpatches: attention modules keep a T-GATE ``forward`` and
``cache`` tensors. ``reset`` clears both before each call; the snapshot removes them for good.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from accelopt._types import Pipeline
from accelopt.accelerators._base import Accelerator, Param, Patch, PipeTraits, Reference, in_range
from accelopt.errors import AccelOptError

if TYPE_CHECKING:
    from accelopt.accelerators.deepcache import DeepCacheConfig

__all__ = ["LOADERS", "TGate", "TGateConfig", "apply_with_deepcache"]

# family -> (plain loader, loader with DeepCache); names in the tgate package.
LOADERS: dict[str, tuple[str, str | None]] = {
    "sd": ("TgateSDLoader", "TgateSDDeepCacheLoader"),
    "sdxl": ("TgateSDXLLoader", "TgateSDXLDeepCacheLoader"),
    "pixart-alpha": ("TgatePixArtAlphaLoader", None),
    "pixart-sigma": ("TgatePixArtSigmaLoader", None),
}
FIRST_GATE_STEP, LAST_GATE_STEP = 5, 19  # the seed system's range


@dataclass(frozen=True)
class TGateConfig:
    """``gate_step``: last step that computes cross-attention (and guidance); ``sp_interval`` /
    ``fi_interval``: self-attention refresh interval before / after the gate; ``warm_up``: steps
    computed in full before any caching. ``gate_step >= steps`` with ``warm_up = steps`` is off."""

    gate_step: int = 10
    sp_interval: int = 5
    fi_interval: int = 1
    warm_up: int = 2


class _TGatePatch(Patch):
    entry = "tgate"

    def __init__(self, pipe: Pipeline, config: TGateConfig) -> None:
        self.pipe = pipe
        self.call_kwargs = {
            "gate_step": config.gate_step,
            "sp_interval": config.sp_interval,
            "fi_interval": config.fi_interval,
            "warm_up": config.warm_up,
        }

    def reset(self) -> None:
        # Left over from the last call: its gated attention forwards and cached outputs.
        from accelopt.pipelines import denoiser

        for module in denoiser(self.pipe).modules():
            if type(module).__name__ == "Attention":
                vars(module).pop("cache", None)
                vars(module).pop("forward", None)


class _TGateDeepCachePatch(_TGatePatch):
    def reset(self) -> None:
        super().reset()
        self.pipe.deepcache.disable()  # the combined loader's DeepCache helper keeps step state
        self.pipe.deepcache.enable()

    def remove(self) -> None:
        self.pipe.deepcache.disable()


class TGate(Accelerator[TGateConfig]):
    name = "tgate"
    config_cls = TGateConfig
    families = frozenset(LOADERS)
    aliases: ClassVar[Mapping[str, str]] = {"warmup": "warm_up"}  # the seed system's spelling
    references = (
        Reference(
            "Faster Diffusion via Temporal Attention Decomposition (Liu et al.; TMLR 2025)",
            "https://arxiv.org/abs/2404.02747",
            "https://github.com/HaozheLiu-ST/T-GATE",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        last = min(LAST_GATE_STEP, steps - 1)  # gating at the last step or later gates nothing
        if last < FIRST_GATE_STEP:
            raise AccelOptError(
                f"tgate needs more than {FIRST_GATE_STEP} steps to search gate_step "
                f"{FIRST_GATE_STEP}..{LAST_GATE_STEP}; got {steps} steps"
            )
        return {
            "gate_step": Param(tuple(range(FIRST_GATE_STEP, last + 1))),
            "sp_interval": Param(tuple(range(2, 10))),
            "fi_interval": Param(tuple(range(1, 6))),
            "warm_up": Param(tuple(range(1, 4))),
        }

    def off(self, steps: int) -> TGateConfig:
        return TGateConfig(gate_step=steps, sp_interval=1, fi_interval=1, warm_up=steps)

    def check(self, config: TGateConfig, traits: PipeTraits, steps: int | None) -> None:
        most = steps or 1000
        in_range(self.name, "gate_step", config.gate_step, 1, most, "steps, or fewer")
        in_range(self.name, "sp_interval", config.sp_interval, 1, most)
        in_range(self.name, "fi_interval", config.fi_interval, 1, most)
        in_range(self.name, "warm_up", config.warm_up, 0, most)

    def apply(self, pipe: Pipeline, config: TGateConfig, traits: PipeTraits) -> Patch:
        _loader(traits.family, with_deepcache=False)(pipe)
        return _TGatePatch(pipe, config)


def apply_with_deepcache(
    pipe: Pipeline,
    tgate_config: TGateConfig,
    deepcache_config: DeepCacheConfig,
    traits: PipeTraits,
) -> Patch:
    """Apply T-GATE and DeepCache together through tgate's combined loader (the one that works)."""
    _loader(traits.family, with_deepcache=True)(
        pipe,
        cache_interval=deepcache_config.cache_interval,
        cache_branch_id=deepcache_config.cache_branch_id,
    )
    return _TGateDeepCachePatch(pipe, tgate_config)


def _loader(family: str, with_deepcache: bool) -> Any:
    import tgate

    plain, combined = LOADERS[family]
    name = combined if with_deepcache else plain
    assert name is not None, f"no T-GATE + DeepCache loader for {family}"
    return getattr(tgate, name)
