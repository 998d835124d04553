"""The search space of a study, as Optuna parameters, and the seed system's dominance skip.

With targets (``SD1.5-DDIM-20-deepcache+tgate``) a study searches those accelerators' knobs, all
on. Without, it also searches which to use: each applicable accelerator's main knob gains its
"off" value (DeepCache interval 1, ToMe ratio 0, T-GATE gate at the last step), and an
accelerator whose main knob is off is not applied at all. Where the applicable accelerators do
not all combine (on PixArt T-GATE and each block cache go one at a time: ``NOT_DECLARED``), the
space is a choice of groups (``_groups``: the largest sets that combine in every declared way),
and each trial first draws which group it tries (the parameter ``plan``), then that group's
knobs only: a conditional space, which TPE learns per branch and a grid walks branch by branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import combinations, pairwise, product
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from accelopt import accelerators
from accelopt._types import is_number
from accelopt.accelerators import Param, PipeTraits
from accelopt.errors import AccelOptError

__all__ = ["PLAN", "Space", "dominating_trial", "lost_accelerator", "plan_of", "switch"]

PLAN = "plan"  # the parameter that picks a group, in a space of groups: "tgate", "magcache"...


def plan_of(group: Iterable[str]) -> str:
    """The ``PLAN`` value that picks ``group``: its names joined by "+" (stored in trials).

    >>> plan_of(("deepcache", "tgate"))
    'deepcache+tgate'
    """
    return "+".join(group)


# Which way each knob makes generation faster: +1 larger is faster, -1 smaller is faster.
FASTER: dict[str, int] = {
    "deepcache.cache_interval": +1,
    "deepcache.cache_branch_id": -1,  # a deeper branch recomputes more
    "tome.ratio": +1,
    "tome.max_downsample": +1,
    "tome.use_rand": 0,  # the same work either way
    "tgate.gate_step": -1,  # gating earlier skips more steps of cross-attention
    "tgate.sp_interval": +1,
    "tgate.fi_interval": +1,
    "tgate.warm_up": -1,
    "magcache.threshold": +1,  # a larger accumulated error may skip more calls
    "magcache.max_skip_steps": +1,
    "magcache.retention_ratio": -1,  # fewer calls kept at the start
    "taylorseer.cache_interval": +1,
    "taylorseer.max_order": -1,  # a lower order sums fewer factors
    "taylorseer.disable_cache_before_step": -1,
    "taylorseer.modules": 0,  # a named choice: no order
    "fbcache.threshold": +1,  # a larger change may reuse: more calls skip the rest
    "dbcache.Fn_compute_blocks": -1,  # fewer blocks always computed
    "dbcache.Bn_compute_blocks": -1,
    "dbcache.residual_diff_threshold": +1,
    "dbcache.max_warmup_steps": -1,
    # -1 (no cap) is the fastest, then the larger caps: no order of the values; the space lists
    # -1 first, which is what fastest() takes for a knob without one.
    "dbcache.max_continuous_cached_steps": 0,
    "dbcache.max_cached_steps": 0,
    # The forecast changes what later calls decide: no order of the values by speed.
    "dbcache.taylorseer_order": 0,
    "pab.spatial_attention_block_skip_range": +1,
    "pab.cross_attention_block_skip_range": +1,
    "pab.timestep_skip_low": -1,  # a wider window reuses at more calls
    "pab.timestep_skip_high": +1,
    "fastercache.unconditional_batch_skip_range": +1,
    "fastercache.unconditional_batch_timestep_skip_high": +1,  # a wider window halves more
    "fastercache.spatial_attention_block_skip_range": +1,
    "fastercache.spatial_attention_timestep_skip_high": +1,
    "fastercache.attention_weight": 0,  # the same work at any weight or scale
    "fastercache.alpha_low_frequency": 0,
    "fastercache.alpha_high_frequency": 0,
}
# The knob that switches each accelerator off, and its off value (None: the step count).
PRIMARY: dict[str, tuple[str, Any]] = {
    "deepcache": ("cache_interval", 1),
    "tome": ("ratio", 0.0),
    "tgate": ("gate_step", None),
    "magcache": ("max_skip_steps", 0),
    "taylorseer": ("cache_interval", 1),
    "fbcache": ("threshold", 0.0),
    "dbcache": ("residual_diff_threshold", 0.0),
    "pab": ("spatial_attention_block_skip_range", 1),  # PAB broadcasts self-attention first
    "fastercache": ("unconditional_batch_skip_range", 1),  # no halved call: nothing reused
}


@dataclass(frozen=True)
class Space:
    """Namespaced parameters (``"deepcache.cache_interval"``) and what they may take."""

    params: dict[str, Param]
    steps: int
    optional: bool  # True: each accelerator can be off
    # Distributions a stored study drew parameters from, where ours would clash (see adopt).
    stored: dict[str, BaseDistribution] = field(default_factory=dict)
    # Knobs measured once per study, never searched (``Accelerator.calibrated``: MagCache's
    # ratios), by accelerator: every config that turns one on carries them.
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Two or more: a trial tries one of these sets (``PLAN``); one or none: all of ``params``.
    groups: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def build(
        cls,
        traits: PipeTraits,
        steps: int,
        targets: Iterable[str] | None,
        mode: str = "eager",
        scheduler: str | None = None,
    ) -> Space:
        """``mode``: the execution mode; accelerators it cannot run are refused when named and
        left out of the search when not (``execution.REFUSED`` says why), and knob values it
        cannot run are left out (``execution.REFUSED_VALUES``). The same for accelerators
        whose step logic ``scheduler`` (a study name) breaks (``refused_schedulers``)."""
        from accelopt import execution

        if targets is not None:
            names = tuple(targets)
            accelerators.check_plan(names)
            execution.check(mode, names)
            if scheduler is not None:
                accelerators.check_scheduler(names, scheduler)
        else:  # search which to use: leave out those this step count, mode or scheduler breaks
            usable = [
                n
                for n in accelerators.applicable(traits)
                if _searchable(n, traits, steps)
                and (scheduler is None or accelerators.follows(n, scheduler))
            ]
            groups = _groups(execution.allowed(mode, usable))
            if not groups:
                raise AccelOptError(
                    f"no accelerator can be searched at {steps} steps under execution mode {mode}"
                )
            names = tuple(n for n in accelerators.ORDER if any(n in g for g in groups))
        refused = execution.REFUSED_VALUES
        params = {
            key: Param(tuple(v for v in p.values if (mode, key, v) not in refused))
            for key, p in accelerators.search_space(traits, steps, names).items()
        }
        if targets is None:
            for name in names:
                knob, off = switch(name, steps)
                key = f"{name}.{knob}"
                params[key] = Param((off, *params[key].values))
        if targets is None and len(groups) > 1:
            return cls(params, steps, True, groups=groups)
        return cls(params, steps, targets is None)

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter (of every group), by parameter."""
        return {k: list(p.values) for k, p in self.params.items()}

    def points(self) -> list[dict[str, Any]]:
        """Every configuration of the space as flat params: the product of every value of
        every parameter, or of a group's parameters, group by group (with its ``PLAN``)."""
        found: list[dict[str, Any]] = []
        for label, keys in self._branches():
            keys = sorted(keys)  # so a seed gives the grid order it gave before groups
            values = product(*(self.params[k].values for k in keys))
            chosen = {PLAN: label} if label is not None else {}
            found += [{**chosen, **dict(zip(keys, v, strict=True))} for v in values]
        return found

    @property
    def size(self) -> int:
        return sum(math.prod(len(self.params[k].values) for k in keys)
                   for _, keys in self._branches())  # fmt: skip

    def _branches(self) -> list[tuple[str | None, list[str]]]:
        """(plan, its parameters) per group; (None, every parameter) in a space of one."""
        if len(self.groups) < 2:
            return [(None, list(self.params))]
        return [(plan_of(g), [k for k in self.params if k.split(".", 1)[0] in g])
                for g in self.groups]  # fmt: skip

    def group_of(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        """The accelerators ``params`` may turn on: its ``PLAN``'s group, or all of them."""
        if len(self.groups) < 2:
            return self.names
        plan = params.get(PLAN)
        found = next((g for g in self.groups if plan_of(g) == plan), None)
        if found is None:
            raise AccelOptError(
                f"{PLAN} {plan!r} is not one of this space's: "
                + ", ".join(map(plan_of, self.groups))
            )
        return found

    def distributions(self) -> dict[str, BaseDistribution]:
        """What each parameter is drawn from: integers on an even step as an integer range,
        the rest as categories (``stored`` ones first)."""
        found: dict[str, BaseDistribution] = {}
        for key, p in self.params.items():
            values = p.values
            step = values[1] - values[0] if p.is_int and len(values) > 1 else 1
            arithmetic = p.is_int and all(b - a == step for a, b in pairwise(values))
            if key in self.stored:
                found[key] = self.stored[key]
            elif arithmetic and step > 0:
                found[key] = IntDistribution(values[0], values[-1], step=step)
            else:
                found[key] = CategoricalDistribution(list(values))
        if len(self.groups) > 1:
            found = {PLAN: CategoricalDistribution([label for label, _ in self._branches()]),
                     **found}  # fmt: skip
        return found

    def adopt(self, trials: Iterable[optuna.trial.FrozenTrial]) -> Space:
        """This space, drawing a parameter from the distribution a study's earlier ``trials``
        drew it from where ours would clash with it (Optuna refuses a second kind of
        distribution for one name). A stored study then resumes: one made before the space
        left out DeepCache branch ids that repeat a smaller id's images keeps its integer
        range, and a repeated id it draws is skipped as the same schedule."""
        mine = self.distributions()
        stored: dict[str, BaseDistribution] = {}
        for trial in trials:
            for key, theirs in trial.distributions.items():
                if key in mine and key not in stored:
                    try:
                        check_distribution_compatibility(theirs, mine[key])
                    except ValueError:
                        stored[key] = theirs
        return replace(self, stored=stored) if stored else self

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw every parameter from its distribution (``distributions``); in a space of
        groups, ``PLAN`` first and then only the chosen group's."""
        drawn: dict[str, Any] = {}
        distributions = self.distributions()
        if PLAN in distributions:
            plan = distributions.pop(PLAN)
            assert isinstance(plan, CategoricalDistribution)
            drawn[PLAN] = trial.suggest_categorical(PLAN, list(plan.choices))
            group = self.group_of(drawn)
            distributions = {k: d for k, d in distributions.items()
                             if k.split(".", 1)[0] in group}  # fmt: skip
        for key, dist in distributions.items():
            if isinstance(dist, IntDistribution):
                drawn[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step)
            elif isinstance(dist, CategoricalDistribution):
                drawn[key] = trial.suggest_categorical(key, list(dist.choices))
            else:
                raise AccelOptError(f"{key}: a stored {type(dist).__name__} is not one of ours")
        return drawn

    def fastest(self, name: str) -> dict[str, Any]:
        """Params that apply ``name`` alone with every knob at its faster end (``FASTER``; the
        first value where speed does not depend on it), every other accelerator off: the
        probe that says whether ``name`` can win at all. Searched spaces only.

        >>> space.fastest("tome")  # doctest: +SKIP
        {'deepcache.cache_interval': 1, 'tome.ratio': 0.75, ...}
        """
        return self._alone(name, faster=True)

    def mildest(self, name: str) -> dict[str, Any]:
        """Params that apply ``name`` alone with every knob at its slower end, the gentlest
        setting that still applies it (MagCache's lowest threshold and skip cap, DBCache's most
        blocks computed): a foothold that a quality bound likely holds. Searched spaces only."""
        return self._alone(name, faster=False)

    def _alone(self, name: str, *, faster: bool) -> dict[str, Any]:
        if not self.optional:
            raise ValueError("a space of fixed targets has no accelerator to switch off")
        out: dict[str, Any] = {}
        if len(self.groups) > 1:
            out[PLAN] = next(plan_of(g) for g in self.groups if name in g)
        group = self.group_of(out)
        for key, p in self.params.items():
            owner, knob = key.split(".", 1)
            if owner not in group:
                continue
            primary, off = switch(owner, self.steps)
            if owner != name:
                out[key] = off if knob == primary else p.values[0]
                continue
            on = [v for v in p.values if knob != primary or v != off]
            way = FASTER.get(key, 0) * (1 if faster else -1)
            out[key] = max(on) if way > 0 else min(on) if way < 0 else on[0]
        return out

    def configs(self, params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Flat params -> ``{accelerator: {knob: value}}`` for the accelerators that are on
        (in a space of groups: of its ``PLAN``'s group)."""
        group = self.group_of(params)
        grouped: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            if key == PLAN:
                continue
            name, knob = key.split(".", 1)
            if name not in group:
                continue
            grouped.setdefault(name, {})[knob] = value
        if self.optional:
            for name in PRIMARY:
                knob, off = switch(name, self.steps)
                if name in grouped and grouped[name][knob] == off:
                    del grouped[name]
        for name, knobs in grouped.items():
            knobs.update(self.calibration.get(name, {}))
        return grouped

    @property
    def names(self) -> tuple[str, ...]:
        """The accelerators this space searches, in its order."""
        return tuple(dict.fromkeys(key.split(".", 1)[0] for key in self.params))


def switch(name: str, steps: int) -> tuple[str, Any]:
    """``name``'s primary knob and the value that switches it off at ``steps`` (``PRIMARY``).

    >>> switch("tgate", 20)
    ('gate_step', 20)
    """
    knob, off = PRIMARY[name]
    return knob, steps if off is None else off


def _groups(
    names: tuple[str, ...], plans: Collection[frozenset[str]] | None = None
) -> tuple[tuple[str, ...], ...]:
    """The sets of ``names`` a space that searches which to use chooses from: the largest sets
    whose every non-empty subset is a declared combination (``plans``, by default
    ``accelerators.PLANS``), since the search may switch any of them off, each in canonical
    order, the larger first, then the earlier. On SD every UNet accelerator combines: one set.
    On PixArt T-GATE and each block cache combine with nothing: one set each, and a trial
    tries one of them."""
    declared = accelerators.PLANS if plans is None else plans

    def closed(kept: tuple[str, ...]) -> bool:
        return all(frozenset(c) in declared
                   for n in range(1, len(kept) + 1) for c in combinations(kept, n))  # fmt: skip

    found: list[tuple[str, ...]] = []
    for size in range(len(names), 0, -1):
        for kept in combinations(names, size):  # in canonical order: the earliest set first
            if closed(kept) and not any(set(kept) <= set(g) for g in found):
                found.append(kept)
    return tuple(found)


def _searchable(name: str, traits: PipeTraits, steps: int) -> bool:
    try:
        accelerators.get(name).space(traits, steps)
    except AccelOptError:
        return False
    return True


def dominating_trial(
    configs: Mapping[str, Mapping[str, Any]],
    done: Iterable[optuna.trial.FrozenTrial],
    *,
    dominance: bool = True,
    schedule_of: Callable[[Mapping[str, Mapping[str, Any]]], tuple[Any, ...]] | None = None,
) -> tuple[optuna.trial.FrozenTrial, str] | None:
    """A finished trial that makes running ``configs`` pointless, and why; None if there is none.

    Identical configurations are never run twice, nor, with ``schedule_of`` (configs -> schedule,
    ``accelopt.accelerators.schedules``), configurations that compute the same thing at every UNet
    call (T-GATE's intervals are step moduli, so different values often keep at the same steps). A
    configuration that cannot be faster than a feasible trial (same accelerators) cannot beat the
    best feasible trial: the seed system skipped those, and so do we, unless ``dominance`` is False
    (a pareto study: the slower configuration may lose less). With ``schedule_of`` that is one
    computing at least what the trial computes (``schedules.does_at_least``: work); without, one
    whose every knob is at most as aggressive (knob order).
    """
    from accelopt.accelerators.schedules import does_at_least

    mine = schedule_of(configs) if schedule_of is not None else None
    for t in done:
        other = t.user_attrs.get("accelerators")
        if other is None:
            continue
        if other == configs:
            return t, f"same configuration as trial {t.number}"
        theirs = schedule_of(other) if schedule_of is not None else None
        if mine is not None and theirs == mine:
            return t, f"computes what trial {t.number} computed at every step (same schedule)"
        if set(other) != set(configs) or not dominance or not t.user_attrs.get("feasible"):
            continue
        if mine is not None and theirs is not None:
            slower = does_at_least(mine, theirs)
            why = "computes all it computes"
        else:
            slower = all(
                FASTER[f"{name}.{knob}"] * (value - other[name][knob]) <= 0
                for name, knobs in configs.items()
                for knob, value in knobs.items()
            )
            why = "no knob more aggressive"
        if slower:
            return t, (
                f"cannot beat feasible trial {t.number} "
                f"({t.user_attrs.get('speedup', 0):.2f}x): {why}"
            )
    return None


def lost_accelerator(
    configs: Mapping[str, Mapping[str, Any]],
    done: Iterable[optuna.trial.FrozenTrial],
    space: Space,
) -> tuple[str, str] | None:
    """An accelerator in ``configs`` that has lost, and why; None if none has.

    One has lost when it was measured alone at its fastest (``Space.fastest``, the study's
    probe) and ran slower than the plain pipeline: with other accelerators it only adds its
    own cost, so every configuration with it is slower than the same one without it (ToMe
    under CUDA graphs at batch 1: 0.66x, docs/BENCHMARKS.md). Such configurations are not
    measured, nor their new structures compiled. Searched spaces only: named targets stay.
    """
    if not space.optional:
        return None
    finished = [t for t in done if is_number(t.user_attrs.get("speedup"))]
    for name in configs:
        alone = space.configs(space.fastest(name))
        for t in finished:
            speedup = t.user_attrs["speedup"]
            if t.user_attrs.get("accelerators") == alone and speedup < 1:
                knobs = ", ".join(f"{k} {v}" for k, v in alone[name].items())
                return name, (
                    f"{name} lost: alone at its fastest ({knobs}) trial {t.number} ran "
                    f"{speedup:.2f}x the plain pipeline, so it only slows what it joins"
                )
    return None
