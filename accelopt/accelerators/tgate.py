"""T-GATE: keep cross-attention once it has converged, and drop classifier-free guidance after.

accelopt's own implementation of upstream T-GATE's schedule (``accelopt.portable.tgate``, which
generated scripts carry verbatim), so that it also runs compiled and graph-replayed. It computes
what upstream's ``pipe.tgate(...)`` does, bit for bit, alone and with DeepCache
(tests/accelerators_tests/test_accelerators.py checks this against the ``tgate`` package). It
differs by design:

- The pipeline's own call stays. Upstream forks one call per pipeline family and halves the
  batch after the gate inside it; here the denoiser's hooks pass the unconditional half on and
  return its prediction twice, so diffusers' guidance gives that prediction back exactly.
- Kept attention lives in buffers this module owns, one set per denoiser, kept across
  applications (a captured graph reads their addresses). Upstream leaves ``cache`` tensors and a
  ``forward`` on every attention module and never unpatches.
- Without guidance (``guidance_scale <= 1``) the gate keeps attention as it is: upstream averages
  a batch's two halves there, which fails at one image and mixes two images otherwise.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from accelopt._types import Pipeline
from accelopt.accelerators._base import (
    Accelerator,
    Param,
    Patch,
    PipeTraits,
    Reference,
    guided_by,
    in_range,
    kept,
)
from accelopt.errors import AccelOptError
from accelopt.portable.tgate import Gate, gate_attention

if TYPE_CHECKING:
    from accelopt.accelerators.deepcache import DeepCacheConfig

__all__ = ["TGate", "TGateConfig", "apply_with_deepcache"]

FAMILIES = frozenset({"sd", "sdxl", "pixart-alpha", "pixart-sigma"})
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
    def __init__(self, pipe: Pipeline, config: TGateConfig, deepcache: Any = None) -> None:
        from accelopt.pipelines import denoiser

        net = denoiser(pipe)
        self.gate = Gate(
            config.gate_step,
            config.sp_interval,
            config.fi_interval,
            config.warm_up,
            scheduler=lambda: pipe.scheduler,
            deepcache=deepcache,
        )
        try:
            self._handles = gate_attention(net, self.gate, kept(net, "tgate"))
        except ValueError as exc:
            raise AccelOptError(f"tgate: {exc}") from None
        self.guided = guided_by(pipe, net)

    def reset(self, call: Mapping[str, Any]) -> None:
        self.gate.reset(guided=self.guided(call))

    def structure(self) -> Hashable:
        return self.gate.structure()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()  # the snapshot puts the attention modules' own forwards back


class TGate(Accelerator[TGateConfig]):
    name = "tgate"
    config_cls = TGateConfig
    families = FAMILIES
    aliases: ClassVar[Mapping[str, str]] = {"warmup": "warm_up"}  # the seed system's spelling
    counts = (
        "scheduler steps, read as upstream does: calls before diffusers' num_warmup_steps (the "
        "9 extra calls of PNDM's PRK warm-up at 20 steps) come before step 0 and compute in "
        "full, and a multistep scheduler moves to the next step every `order` calls"
    )
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
        return _TGatePatch(pipe, config)


def apply_with_deepcache(
    pipe: Pipeline,
    tgate_config: TGateConfig,
    deepcache_config: DeepCacheConfig,
    traits: PipeTraits,
) -> tuple[Patch, Patch]:
    """T-GATE and DeepCache together: the gate drives DeepCache's schedule (upstream's combined
    loaders restart DeepCache at the gate); returns both patches, DeepCache's first."""
    from accelopt.accelerators.deepcache import apply_driven

    deepcache = apply_driven(pipe, deepcache_config)
    return deepcache, _TGatePatch(pipe, tgate_config, deepcache.schedule)
