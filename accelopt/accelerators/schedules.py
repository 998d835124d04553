"""What each denoiser call of a generation computes, from a configuration alone.

A configuration's *schedule* is the sequence of its denoiser calls' structures: DeepCache's full
step or its shallow step at a branch, T-GATE's attention modes and whether the batch is halved,
ToMe's merge (with T-GATE, the self-attention ToMe merges computes at every call, so the
merge's part says that too), MagCache's compute or skip. It is computed by running the
accelerators' own per-call state machines (``accelopt.portable``: the code their hooks run) for
the scheduler's number of calls, without a model. Two configurations with equal schedules
compute the same images bit for bit, so a study measures only one of them. TaylorSeer's part is
its full call or forecast, what it caches and the Taylor order; a configuration with no forecast
at all has none (its images are plain). PAB's is what its cross- and self-attention do (compute,
keep or reuse), at the timesteps the scheduler gives each call. FasterCache's is whether the
call's batch is halved, what its self-attention does, and in a halved call the scales of the
kept frequency differences (they change the images, not the graph).

FirstBlockCache and DBCache decide per call from a value read off the device after their first
blocks, so which calls reuse is not known without the model: their part of a call that may
reuse is ``(name, "decided per call", *knobs)``, naming every knob that decides (a cap no run
can reach written as -1, as it decides), and of a warm-up call ``(name, "compute")``. Two such
configurations have equal schedules only when they decide alike by construction (same
threshold, first and last blocks, warm-up and caps), and neither does at least the work of the
other (``does_at_least``): a lower threshold may still reuse more, since what it computes
changes what it compares. One that can never reuse has no part (its images are plain).

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

from accelopt.accelerators import dbcache, fastercache, fbcache
from accelopt.accelerators.tome import merge_structure
from accelopt.portable.deepcache import Schedule
from accelopt.portable.fastercache import EXTRAPOLATE, GUIDED, HALVED
from accelopt.portable.magcache import MagSchedule
from accelopt.portable.pab import REUSE, Broadcast
from accelopt.portable.taylorseer import Forecast
from accelopt.portable.tgate import Gate

__all__ = ["Calls", "digest", "does_at_least", "schedule"]


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
    merge = merge_structure(tome) if tome is not None and tome.ratio else None
    mag = _mag_schedule(configs.get("magcache"), calls)
    forecasts = _forecasts(configs.get("taylorseer"), len(calls.timesteps))
    broadcasts = _broadcasts(configs.get("pab"), calls)
    fasters = _fasters(configs.get("fastercache"), calls, guided)
    decided = [
        _decided(module.decision(configs[name]), len(calls.timesteps))
        for module, name in ((fbcache, "fbcache"), (dbcache, "dbcache"))
        if name in configs
    ]
    found: list[Hashable] = []
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
        if mag is not None:
            mag.advance()
            parts.append(mag.structure())
        if forecasts is not None:
            parts.append(forecasts[len(found)])
        if broadcasts is not None:
            parts.append(broadcasts[len(found)])
        if fasters is not None:
            parts.append(fasters[len(found)])
        parts.extend(each[len(found)] for each in decided if each is not None)
        found.append(tuple(parts))
    return tuple(found)


def _mag_schedule(config: Any, calls: Calls) -> MagSchedule | None:
    """MagCache's per-call mask as its hooks follow it; None where no call skips (max_skip_steps
    0: every call computes, the plain pipeline's structure)."""
    if config is None or config.max_skip_steps == 0:
        return None
    fields = (config.threshold, config.max_skip_steps, config.retention_ratio, config.ratios)
    mag = MagSchedule(*fields, calls=lambda: len(calls.timesteps))
    mag.reset()
    return mag


def _forecasts(config: Any, calls: int) -> list[Hashable] | None:
    """TaylorSeer's structure at each call; None where no call forecasts (interval 1, or a
    warm-up as long as the generation): every call computes the plain images then."""
    if config is None or config.cache_interval <= 1:
        return None
    forecast = Forecast(
        config.cache_interval,
        config.max_order,
        config.disable_cache_before_step,
        config.modules,
    )
    found: list[Hashable] = []
    for _ in range(calls):
        forecast.decide()
        found.append(forecast.structure())
    return found if forecast.fulls < calls else None


def _broadcasts(config: Any, calls: Calls) -> list[Hashable] | None:
    """PAB's structure at each call; None where no call reuses attention (skips of 1, or a
    window no timestep falls in): every call computes the plain images then."""
    if config is None:
        return None
    broadcast = Broadcast(
        config.spatial_attention_block_skip_range,
        config.cross_attention_block_skip_range,
        config.timestep_skip_low,
        config.timestep_skip_high,
        timesteps=lambda: calls.timesteps,
    )
    found: list[Hashable] = []
    reuses = False
    for _ in calls.timesteps:
        broadcast.decide()
        reuses = reuses or REUSE in broadcast.current
        found.append(broadcast.structure())
    return found if reuses else None


def _fasters(config: Any, calls: Calls, guided: bool) -> list[Hashable] | None:
    """FasterCache's part of each call; None where no call halves its batch (a skip of 1, a
    window no timestep falls in, or no guidance): every call computes the plain images then."""
    if config is None:
        return None
    faster = fastercache.faster(config, timesteps=lambda: calls.timesteps)
    faster.reset(guided=guided)
    found: list[Hashable] = []
    for _ in calls.timesteps:
        faster.decide()
        halved = faster.current[0] == HALVED
        found.append((*faster.structure(), *faster.scales()) if halved else faster.structure())
    return found if any(batch == HALVED for batch, _ in faster.plan) else None


def _decided(decision: Any, calls: int) -> list[Hashable] | None:
    """FirstBlockCache's or DBCache's part of each call (see the module docstring); None where
    no call can reuse: every call computes, the plain pipeline's images."""
    knobs = decision.deciding_knobs(calls)
    if knobs is None:
        return None
    first = knobs[3]  # the warm-up: these calls always compute
    return [(decision.name, "compute") if i < first
            else (decision.name, "decided per call", *knobs) for i in range(calls)]  # fmt: skip


def digest(steps: tuple[Hashable, ...]) -> str:
    """A short stable name for a schedule, to compare trials by (stored as a user attribute)."""
    return hashlib.sha256(repr(steps).encode("utf-8")).hexdigest()[:16]


def does_at_least(mine: tuple[Hashable, ...], theirs: tuple[Hashable, ...]) -> bool:
    """Whether ``mine`` computes at least what ``theirs`` does, so it cannot be faster: its
    calls can be paired one to one with theirs so that each covers its partner (a full step
    covers every shallow one and a shallow step at a deeper branch a shallower one's; fewer
    merged tokens cover more; a guided batch covers a halved one; attention that computes covers
    attention that reuses, T-GATE's and PAB's, or FasterCache's that extrapolates). Pairing,
    not position: DeepCache interval 2 does at least interval 3's work though at call 3 it is
    the shallow one. A TaylorSeer full call covers a forecast."""
    if len(mine) != len(theirs):
        return False
    covering: dict[int, int] = {}  # my call -> the call of theirs it is paired with

    def pair(j: int, tried: set[int]) -> bool:  # Kuhn's augmenting path
        for i, call in enumerate(mine):
            if i not in tried and _covers(call, theirs[j]):
                tried.add(i)
                if i not in covering or pair(covering[i], tried):
                    covering[i] = j
                    return True
        return False

    return all(pair(j, set()) for j in range(len(theirs)))


def _covers(mine: Any, theirs: Any) -> bool:
    ours, other = _parts(mine), _parts(theirs)
    if ours.keys() != other.keys():
        return False
    for kind, a in ours.items():
        b = other[kind]
        if kind == "deepcache" and _depth(a) < _depth(b):
            return False
        # A larger ratio or a deeper max_downsample is less work; the partition's kind costs
        # the same either way. With T-GATE, merged self-attention computes at every call
        # (accelopt.portable.tgate), so merging deeper also computes more: only equal merges
        # compare.
        if kind == "tome" and "tgate" in ours and a != b:
            return False
        if kind == "tome" and (a[1] > b[1] or a[2] > b[2]):
            return False
        if kind == "tgate" and not _computes(a) >= _computes(b):
            return False
        if kind == "magcache" and a[1] == "skip" and b[1] != "skip":
            return False
        if kind == "taylorseer" and not _forecasts_at_least(a, b):
            return False
        if kind == "pab" and any(x == REUSE != y for x, y in zip(a[1:], b[1:], strict=True)):
            return False
        # A guided batch covers a halved one, and an attention computed one extrapolated.
        if kind == "fastercache" and (
            (a[1], b[1]) == (HALVED, GUIDED)
            or (a[2].startswith(EXTRAPOLATE) and not b[2].startswith(EXTRAPOLATE))
        ):
            return False
        # Decided per call on the device: only an equal part is known to do the same work.
        if kind in ("fbcache", "dbcache") and a != b:
            return False
    return True


def _forecasts_at_least(mine: Any, theirs: Any) -> bool:
    """A TaylorSeer call covers another: a full call covers a forecast; else the same kind on
    the same modules at an order at least as high (it differences or sums more factors)."""
    if (mine[2], theirs[2]) == ("full", "forecast"):
        return True
    return bool(mine[1:3] == theirs[1:3] and mine[3] >= theirs[3])


def _parts(call: Any) -> dict[str, Any]:
    return {part[0]: part for part in call}


def _depth(part: Any) -> float:
    """How much of the UNet a DeepCache call runs: its branch, or everything when full."""
    return float("inf") if part[-1] == "full" else float(part[1])


def _computes(part: Any) -> set[tuple[str, int]]:
    """What a T-GATE call computes: the guided half, and each group's attention that runs."""
    done: set[tuple[str, int]] = {("guided", 0)} if part[1] == "guided" else set()
    for group_modes in part[2:]:
        group, *modes = group_modes.split()
        done |= {(group, i) for i, mode in enumerate(modes) if mode != "reuse"}
    return done
