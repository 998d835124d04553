"""Pyramid Attention Broadcast's schedule, written to run eagerly, compiled and graph-replayed.

PAB reuses ("broadcasts") an attention module's output over several denoiser calls inside a
window of timesteps, where attention changes least: self-attention (PAB's spatial attention)
every ``spatial`` calls, cross-attention every ``cross`` calls. Its rule is diffusers'
``PyramidAttentionBroadcastHook`` (0.42.1, ``diffusers/hooks/pyramid_attention_broadcast.py``):
call ``i`` computes when it is a generation's first call, when its timestep ``t`` lies outside
the open window ``(low, high)``, or when ``i % skip == 0``; every other call reuses the last
output. It counts calls since the generation began, not since the window opened.

diffusers' hook reads ``t`` from a ``current_timestep_callback`` inside each attention's forward,
and the PixArt pipeline exposes no current timestep. Here the whole schedule is known before
the generation's first call: call ``i`` runs at the scheduler's ``timesteps[i]`` (one call per
entry, PNDM's warm-up and Heun's second evaluations included), which ``host_timesteps`` reads
on the host, from a copy of the scheduler set up on the CPU where the pipeline's lives on the
GPU, so no call reads a device tensor. A call's ``structure`` is what each kind of attention
does in it: compute, compute and keep (a later call reuses it), or reuse; the knobs only pick
which calls replay which structure, so changing them never recompiles.

Kept outputs go into ``Buffers`` at fixed addresses, one per module and shape, and only where
the next call reuses them: diffusers keeps a reference to every output instead, which a graph
replay would overwrite.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from accelopt.portable.buffers import Buffers
from accelopt.portable.graphs import dispatch
from accelopt.portable.tgate import COMPUTE, KEEP, REUSE, attend


def broadcast_modes(
    timesteps: Sequence[float], skip: int, low: float, high: float
) -> tuple[str, ...]:
    """What one kind of attention does at each call: diffusers' rule, with a computed output
    marked ``KEEP`` where the next call reuses it."""
    computes = [i == 0 or not low < t < high or i % skip == 0 for i, t in enumerate(timesteps)]
    found = []
    for i, computed in enumerate(computes):
        reused_next = i + 1 < len(computes) and not computes[i + 1]
        found.append(REUSE if not computed else KEEP if reused_next else COMPUTE)
    return tuple(found)


def host_timesteps(scheduler: Any) -> tuple[float, ...]:
    """The timesteps ``scheduler`` is set to, one per denoiser call, read without a device sync:
    as they are where they live on the CPU, else from a scheduler of the same config set to the
    same number of steps on the CPU. Raises ValueError where that copy's count differs (a
    pipeline that set timesteps or sigmas of its own)."""
    timesteps = scheduler.timesteps
    if timesteps.device.type == "cpu":
        return tuple(float(t) for t in timesteps)
    probe = type(scheduler).from_config(scheduler.config)
    try:
        probe.set_timesteps(scheduler.num_inference_steps)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"the timesteps are read on the host from a {type(scheduler).__name__} set up "
            f"from its config, which needs what the pipeline gave it: {exc}"
        ) from None
    if len(probe.timesteps) != len(timesteps):
        raise ValueError(
            f"the timesteps are read on the host from a {type(scheduler).__name__} set up "
            f"from its config: {len(probe.timesteps)} of them, where the pipeline set "
            f"{len(timesteps)} (timesteps or sigmas of its own)"
        )
    return tuple(float(t) for t in probe.timesteps)


class Broadcast:
    """Which attention each denoiser call computes. ``spatial`` / ``cross``: a self- /
    cross-attention output serves this many calls (1: it computes at every call); ``low`` and
    ``high``: the open window of timesteps where outputs are reused; ``timesteps()``: the
    generation's timesteps, read at its first call (``host_timesteps``)."""

    def __init__(
        self,
        spatial: int,
        cross: int,
        low: float,
        high: float,
        timesteps: Callable[[], Sequence[float]],
    ) -> None:
        self.config = (spatial, cross, low, high)
        self.timesteps = timesteps
        self.reset()

    @property
    def broadcasts(self) -> bool:
        """Whether any attention may be reused (a skip above 1)."""
        return max(self.config[:2]) > 1

    def reset(self) -> None:
        """Before each generation."""
        self.calls = 0
        self.plan: list[tuple[str, str]] = []
        self.current = (COMPUTE, COMPUTE)  # (cross-attention, self-attention)

    def decide(self) -> None:
        """What the next call computes (this alone gives a configuration's schedule,
        ``accelopt.accelerators.schedules``)."""
        if self.calls == 0:
            spatial, cross, low, high = self.config
            timesteps = self.timesteps()
            crosses = broadcast_modes(timesteps, cross, low, high)
            spatials = broadcast_modes(timesteps, spatial, low, high)
            self.plan = list(zip(crosses, spatials, strict=True))
        if self.calls >= len(self.plan):
            raise ValueError(
                f"the denoiser was called more often than the scheduler has timesteps "
                f"({len(self.plan)}); PAB's schedule has one entry per call"
            )
        self.current = self.plan[self.calls]
        self.calls += 1

    def advance(self, *_: Any) -> None:
        """Before each denoiser call (a forward pre-hook)."""
        self.decide()

    def structure(self) -> Hashable:
        return ("pab", *self.current)


def broadcast_attention(net: Any, broadcast: Broadcast, buffers: Buffers) -> Any:
    """Make ``net`` follow ``broadcast``: wrap every ``Attention`` module's forward (on the
    instance; the caller puts them back) and hook the calls. Cross-attention is what diffusers
    takes it for, a module whose ``is_cross_attention`` is set. Returns the hook's handle."""
    for name, module in net.named_modules():
        if type(module).__name__ == "Attention":
            cross = bool(getattr(module, "is_cross_attention", False))
            _broadcast(module, buffers.part(("pab", name)), broadcast, cross)
    return net.register_forward_pre_hook(broadcast.advance)


def _broadcast(module: Any, own: Buffers, broadcast: Broadcast, cross: bool) -> None:
    # Keys name no module (see T-GATE's): one compiled block serves every instance.
    def route(inner: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return attend(own, broadcast.current[0 if cross else 1], inner, *args, **kwargs)

    module.forward = dispatch(route, module.forward)
