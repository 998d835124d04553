"""What each denoiser call of a generation computes, from a configuration alone.

A configuration's *schedule* is the sequence of its denoiser calls' structures: DeepCache's full
step or its shallow step at a branch, T-GATE's attention modes and whether the batch is halved,
ToMe's merge. It is computed by running the accelerators' own per-call state machines
(``accelopt.portable``: the code their hooks run) for the scheduler's number of calls, without
a model. Two configurations with equal schedules compute the same images bit for bit, so a
study measures only one of them.

>>> calls = Calls.of(pipe.scheduler, steps=20)
>>> schedule({"deepcache": DeepCacheConfig(3, 0)}, calls)[:2]
((('deepcache', 'full'),), (('deepcache', 0, 'shallow'),))
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from accelopt.portable.deepcache import Schedule
from accelopt.portable.tgate import Gate

__all__ = ["Calls", "digest", "schedule"]


@dataclass(frozen=True)
class Calls:
    """How a scheduler calls the denoiser for ``steps`` steps: ``timesteps`` calls in all (PNDM's
    PRK steps and Heun's second evaluations included), its ``order``, and the steps it was
    asked for (what diffusers' ``num_warmup_steps`` is computed from)."""

    timesteps: tuple[Any, ...]
    order: int
    num_inference_steps: int

    @classmethod
    def of(cls, scheduler: Any, steps: int) -> Calls:
        """Set ``steps`` on a copy of ``scheduler`` (the pipeline's stays as it is)."""
        probe = copy.deepcopy(scheduler)
        probe.set_timesteps(steps)
        timesteps = tuple(float(t) for t in probe.timesteps)
        return cls(timesteps, int(getattr(probe, "order", 1)), int(probe.num_inference_steps))


def schedule(
    configs: Mapping[str, Any],
    calls: Calls,
    *,
    guided: bool = True,
    branches: tuple[int, ...] = (),
) -> tuple[Hashable, ...]:
    """Each denoiser call's structure under ``configs`` (accelerator -> config object).

    ``branches``: the DeepCache branch ids that compute distinct images on this UNet
    (``PipeTraits.branches``); another id is named by the kept id below it, whose images it
    computes.
    """
    deepcache = configs.get("deepcache")
    tgate = configs.get("tgate")
    tome = configs.get("tome")
    cache = None
    if deepcache is not None and deepcache.cache_interval > 1:  # interval 1: every call full
        branch = max((b for b in branches if b <= deepcache.cache_branch_id), default=None)
        named = deepcache.cache_branch_id if branch is None else branch
        cache = Schedule(deepcache.cache_interval, named)
    gate = None
    if tgate is not None:
        config = (tgate.gate_step, tgate.sp_interval, tgate.fi_interval, tgate.warm_up)
        gate = Gate(*config, scheduler=lambda: calls, deepcache=cache)
        gate.reset(guided=guided)
    merge = ("tome", tome.ratio, tome.max_downsample) if tome is not None and tome.ratio else None
    found = []
    for _ in calls.timesteps:
        parts: list[Hashable] = []
        if gate is not None:
            gate.decide()
        elif cache is not None:
            cache.advance()
        if cache is not None:
            shallow = ("deepcache", cache.branch, "shallow")
            parts.append(shallow if cache.shallow else ("deepcache", "full"))
        if merge is not None:
            parts.append(merge)
        if gate is not None:
            parts.append(gate.structure())
        found.append(tuple(parts))
    return tuple(found)


def digest(steps: tuple[Hashable, ...]) -> str:
    """A short stable name for a schedule, to compare trials by (stored as a user attribute)."""
    return hashlib.sha256(repr(steps).encode("utf-8")).hexdigest()[:16]
