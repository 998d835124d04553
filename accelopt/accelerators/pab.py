"""Pyramid Attention Broadcast: reuse attention outputs over several calls in the middle steps.

accelopt's own implementation of diffusers' ``apply_pyramid_attention_broadcast`` (diffusers
0.42.1), written so that it also runs compiled and graph-replayed: the rule, and why the
timesteps are read on the host, are in ``accelopt.portable.pab``, which generated scripts carry
verbatim; this module is its ``Accelerator`` interface. diffusers' hook needs a
``current_timestep_callback`` that PixArt's pipeline cannot answer and decides inside each
attention's forward (PAB recompiles at every new counter value under ``torch.compile``), so it
is not wrapped; tests/accelerators_tests/test_pab.py checks ours against it bit for bit.

The search ranges, and where they come from (Zhao et al., "Real-Time Video Generation with
Pyramid Attention Broadcast", arXiv 2408.12588; its code, NUS-HPC-AI-Lab/VideoSys, and
diffusers' ``PyramidAttentionBroadcastConfig``):

- ``spatial_attention_block_skip_range`` 2..5: the paper's ablation broadcasts spatial
  (self-)attention over gaps of 2-5 (``eval/pab/experiments/attention_ablation.py``), and
  diffusers' documented example uses 2. 1 computes at every call: it switches PAB off in a
  search (a broadcast of cross-attention alone is not searched; ``check`` takes it).
- ``cross_attention_block_skip_range`` 1..8: cross-attention changes least, the ablation's gaps
  are 5-8; the smaller ones are PixArt's, whose cross-attention the paper did not measure.
- ``timestep_skip_low`` / ``timestep_skip_high``: the window of timesteps where outputs are
  reused, diffusers' default (100, 800) for every kind of attention, from the paper's finding
  that attention changes least in the middle 70% of the steps; the search moves each edge by
  100 at a time. One window serves both kinds of attention (diffusers takes one per kind).

A PixArt has no temporal attention; PAB's MLP broadcast is in neither diffusers nor here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
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
    host_timesteps_of,
    in_range,
    kept,
)
from accelopt.errors import AccelOptError
from accelopt.portable.pab import Broadcast, broadcast_attention

__all__ = ["PAB", "PABConfig"]

SPATIAL_SKIPS = (2, 3, 4, 5)
CROSS_SKIPS = (1, 2, 3, 4, 5, 6, 8)
LOWS = (0, 100, 200, 300)
HIGHS = (700, 800, 900, 1000)
TIMESTEPS = 1000  # the DDPM-trained timesteps every PixArt scheduler counts in


@dataclass(frozen=True)
class PABConfig:
    """``spatial_attention_block_skip_range`` / ``cross_attention_block_skip_range``: a self- /
    cross-attention output serves this many denoiser calls (1: computed at every call);
    ``timestep_skip_low`` / ``timestep_skip_high``: the open window of timesteps where outputs
    are reused."""

    spatial_attention_block_skip_range: int = 2
    cross_attention_block_skip_range: int = 1
    timestep_skip_low: int = 100
    timestep_skip_high: int = 800


class _PABPatch(Patch):
    def __init__(self, pipe: Pipeline, config: PABConfig) -> None:
        net = pipe.transformer
        self.broadcast = Broadcast(
            config.spatial_attention_block_skip_range,
            config.cross_attention_block_skip_range,
            config.timestep_skip_low,
            config.timestep_skip_high,
            timesteps=lambda: host_timesteps_of(pipe, "pab"),
        )
        self._hook = None
        if self.broadcast.broadcasts:  # off: nothing patched, the plain pipeline's graphs
            buffers = kept(net, "pab")
            self._hook = broadcast_attention(net, self.broadcast, buffers)

    def reset(self, call: Mapping[str, Any]) -> None:
        self.broadcast.reset()

    def structure(self) -> Hashable:
        return None if self._hook is None else self.broadcast.structure()

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()  # the snapshot puts the attention modules' own forwards back


class PAB(Accelerator[PABConfig]):
    name = "pab"
    config_cls = PABConfig
    families = frozenset({"pixart-alpha", "pixart-sigma"})
    counts = HOST_TIMESTEPS
    references = (
        Reference(
            "Real-Time Video Generation with Pyramid Attention Broadcast (Zhao et al.; 2024)",
            "https://arxiv.org/abs/2408.12588",
            "https://github.com/NUS-HPC-AI-Lab/VideoSys",
        ),
        Reference(
            "diffusers' Pyramid Attention Broadcast hook (apply_pyramid_attention_broadcast), "
            "whose rule this follows",
            "https://huggingface.co/papers/2408.12588",
            "https://github.com/huggingface/diffusers/tree/main/src/diffusers/hooks",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        if steps < 2:
            raise AccelOptError(f"pab needs at least 2 steps to reuse anything; got {steps}")
        return {
            "spatial_attention_block_skip_range": Param(
                tuple(s for s in SPATIAL_SKIPS if s <= steps)
            ),
            "cross_attention_block_skip_range": Param(tuple(s for s in CROSS_SKIPS if s <= steps)),
            "timestep_skip_low": Param(LOWS),
            "timestep_skip_high": Param(HIGHS),
        }

    def off(self, steps: int) -> PABConfig:
        return PABConfig(spatial_attention_block_skip_range=1, cross_attention_block_skip_range=1)

    def check(self, config: PABConfig, traits: PipeTraits, steps: int | None) -> None:
        most = steps or 1000
        for knob in ("spatial_attention_block_skip_range", "cross_attention_block_skip_range"):
            in_range(self.name, knob, getattr(config, knob), 1, most)
        in_range(self.name, "timestep_skip_low", config.timestep_skip_low, 0, TIMESTEPS - 1)
        in_range(
            self.name,
            "timestep_skip_high",
            config.timestep_skip_high,
            config.timestep_skip_low + 1,
            TIMESTEPS,
            "above timestep_skip_low",
        )

    def apply(self, pipe: Pipeline, config: PABConfig, traits: PipeTraits) -> Patch:
        return _PABPatch(pipe, config)
