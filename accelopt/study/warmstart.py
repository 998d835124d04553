"""Warm start: a new study first tries the best configurations of its neighbours in storage.

A neighbour is another accelopt study in the same storage that measured something close:

- the same pipeline, with any scheduler or step count (a sibling with other targets included:
  ``SD1.5-DDIM-20-deepcache`` is a neighbour of ``SD1.5-DDIM-20``);
- another pipeline with the same step count *and* the same scheduler. Changing the model and
  the sampler at once leaves little of a configuration's quality loss to go by, so a study two
  changes away (``SDXL-UniPC-20`` for ``SD1.5-DDIM-20``) is not a neighbour.

Each neighbour's best feasible trial is translated into this study's parameters (knobs snapped
to the nearest value this study's space allows, T-GATE's ``gate_step`` scaled by the ratio of
step counts first) and enqueued, best speedup first, at most ``LIMIT`` of them. The enqueued
trials are measured like any other; a neighbour's number is never copied. A pareto study starts
the same way (that configuration is one point of its frontier, the fast end within the budget),
and a pareto neighbour offers its best feasible trial like any other.

>>> starts = warm_start(study, storage, spec, space)   # under the study's lock
>>> print(summary(starts))
warm start: 2 configurations from SD1.5-UniPC-20, SD1.5-DDIM-25
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from accelopt._types import is_number
from accelopt.spec import StudySpec
from accelopt.study.results import best_trial
from accelopt.trial.space import PLAN, Space, plan_of, switch

__all__ = [
    "LIMIT",
    "Neighbour",
    "Start",
    "footholds",
    "neighbours",
    "probe",
    "summary",
    "translate",
    "warm_start",
]

LIMIT = 5  # configurations enqueued at most: a head start, not a second search
# Knobs that name a position in the schedule: scaled by the ratio of step counts. The others are
# strides or counts (DeepCache's interval, T-GATE's sp/fi intervals) and carry over as they are;
# so do warm-ups, the calls computed in full first (T-GATE's warm_up, TaylorSeer's
# disable_cache_before_step): a length of history, not a share of the steps (TaylorSeer's
# paper sets it per model, 1-3, whatever the step count).
STEP_VALUED = frozenset({"tgate.gate_step"})


@dataclass(frozen=True)
class Neighbour:
    """A neighbouring study and its best feasible trial."""

    name: str
    pipeline: str
    scheduler: str
    steps: int
    best: FrozenTrial

    @property
    def speedup(self) -> float:
        return float(self.best.user_attrs["speedup"])

    @property
    def config(self) -> dict[str, dict[str, Any]]:
        """``{accelerator: {knob: value}}`` of the best trial (only accelerators that were on)."""
        return dict(self.best.user_attrs.get("accelerators") or {})


@dataclass(frozen=True)
class Start:
    """One enqueued configuration: this study's parameters and where they come from."""

    params: dict[str, Any]
    source: str  # the neighbour study's name
    speedup: float  # what the neighbour measured, on its own pipeline and steps


def _related(spec: StudySpec, record: Mapping[str, Any]) -> bool:
    if record.get("pipeline") == spec.pipeline:
        return True
    return record.get("steps") == spec.steps and record.get("scheduler") == spec.scheduler


def neighbours(storage: optuna.storages.BaseStorage | str, spec: StudySpec) -> list[Neighbour]:
    """The studies in ``storage`` near ``spec`` that have a feasible trial, best speedup first.

    Studies without an accelopt spec, and the study named ``spec.name`` itself, are never
    neighbours; nor is one whose trials are all infeasible.

    >>> [n.name for n in neighbours(storage, load_spec("SD1.5-DDIM-20"))]
    ['SD1.5-UniPC-20', 'SDXL-DDIM-20', 'SD1.5-DDIM-30']
    """
    found = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        record = s.user_attrs.get("spec")
        if s.study_name == spec.name or not isinstance(record, dict):
            continue
        if not _related(spec, record):
            continue
        best = best_trial(optuna.load_study(study_name=s.study_name, storage=storage))
        if best is None:
            continue
        found.append(
            Neighbour(s.study_name, record["pipeline"], record["scheduler"], record["steps"], best)
        )
    return sorted(found, key=lambda n: (-n.speedup, n.name))


# Knobs added after studies were stored, and the value those studies ran with.
ADDED: dict[str, Any] = {"tome.use_rand": False}


def translate(
    config: Mapping[str, Mapping[str, Any]], steps: int, space: Space
) -> dict[str, Any] | None:
    """A configuration measured at ``steps`` steps as parameters of ``space``; None if none fits.

    Accelerators ``space`` cannot search are dropped (nothing left: None). A space with fixed
    targets takes only a configuration of exactly those accelerators. In a space that searches
    which accelerators to use, those absent from ``config`` are switched off (their main knob at
    its off value, the other knobs at their first value: they are not applied); in a space of
    groups, within the first group that holds every accelerator of ``config`` (none: None),
    with its ``PLAN``. Every value is
    snapped to the nearest one the space allows (ties to the smaller); an accelerator that was on
    stays on.

    >>> translate({"tgate": {"gate_step": 14, "sp_interval": 3, "fi_interval": 2,
    ...                      "warm_up": 2}}, 20, Space.build(traits, 10, ["tgate"]))
    {'tgate.gate_step': 7, 'tgate.sp_interval': 3, 'tgate.fi_interval': 2, 'tgate.warm_up': 2}
    """
    names = set(space.names)
    if not space.optional and set(config) != names:
        return None
    kept = {name: knobs for name, knobs in config.items() if name in names}
    if not kept:
        return None
    params: dict[str, Any] = {}
    if len(space.groups) > 1:  # the first group that holds every accelerator kept
        group = next((g for g in space.groups if set(kept) <= set(g)), None)
        if group is None:
            return None
        params[PLAN] = plan_of(group)
        names = set(group)
    for key, param in space.params.items():
        name, knob = key.split(".", 1)
        if name not in names:
            continue
        main, off_value = switch(name, space.steps)
        if name not in kept:  # only in an optional space: fixed targets all are in kept
            params[key] = off_value if knob == main else param.values[0]
            continue
        if knob not in kept[name] and key not in ADDED:
            return None
        value = kept[name].get(knob, ADDED.get(key))
        if key in STEP_VALUED and is_number(value):
            value = value * space.steps / steps
        allowed = param.values
        if space.optional and knob == main:
            allowed = tuple(v for v in allowed if v != off_value)
        snapped = _nearest(value, allowed)
        if snapped is None:
            return None
        params[key] = snapped
    return params


def _nearest(value: Any, allowed: tuple[Any, ...]) -> Any:
    if not is_number(value) or not all(is_number(v) for v in allowed):
        return value if value in allowed else None
    return min(allowed, key=lambda v: (abs(v - value), v), default=None)


def warm_start(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage | str,
    spec: StudySpec,
    space: Space,
    *,
    limit: int = LIMIT,
) -> list[Start]:
    """Enqueue the neighbours' best configurations into a new study; returns what was enqueued.

    Only a study with no trials yet that was never warm-started is touched, so a resumed study
    or a second worker enqueues nothing: call it under the study's lock. At most ``limit``
    configurations, and no more than the study's ``budget`` user attribute where it has one
    (queued trials are run whatever the budget). Duplicates keep the faster neighbour. Each
    trial carries ``user_attrs["warm_start"]`` = the neighbour's name; the study records the
    sources in ``user_attrs["warm_start"]``.

    >>> starts = warm_start(study, storage, spec, space)
    >>> [(s.source, s.params["deepcache.cache_interval"]) for s in starts]
    [('SD1.5-UniPC-20', 3), ('SD1.5-DDIM-25', 1)]
    """
    if "warm_start" in study.user_attrs or study.get_trials(deepcopy=False):
        return []
    budget = study.user_attrs.get("budget")
    if isinstance(budget, int):
        limit = min(limit, budget)
    starts: list[Start] = []
    seen: set[tuple[tuple[str, Any], ...]] = set()
    for n in neighbours(storage, spec):
        if len(starts) >= limit:
            break
        params = translate(n.config, n.steps, space)
        if params is None or tuple(sorted(params.items())) in seen:
            continue
        seen.add(tuple(sorted(params.items())))
        starts.append(Start(params, n.name, n.speedup))
    for s in starts:
        study.enqueue_trial(s.params, user_attrs={"warm_start": s.source})
    study.set_user_attr("warm_start", [s.source for s in starts])
    return starts


def probe(study: optuna.Study, space: Space) -> list[str]:
    """Enqueue each searched accelerator alone at its fastest (``Space.fastest``), once, into a
    study that has measured nothing yet; returns their names. One whose fastest loses to the
    plain pipeline is then searched no further (``accelopt.trial.space.lost_accelerator``):
    where every new structure costs a compile, that is the compile time the search saves.
    Call it under the study's lock, after ``warm_start`` (which starts only empty studies).

    >>> probe(study, space)  # doctest: +SKIP
    ['deepcache', 'tome', 'tgate']
    """
    return _queue_alone(study, space, "probe", space.fastest) if space.optional else []


def footholds(study: optuna.Study, space: Space) -> list[str]:
    """Enqueue each accelerator of a space of groups alone at its mildest (``Space.mildest``),
    once, into a study that has measured nothing yet; returns their names. With several
    families to choose from and a budget of a few trials each, random first draws are mostly
    too aggressive for the quality bound (the toy DiT's default study: 1 feasible trial of 12,
    which failed held-out, so nothing was exported; docs/BENCHMARKS.md): a gentle setting per
    family gives the sampler a feasible point to improve on. Call it under the study's lock,
    after ``probe``.

    >>> footholds(study, space)  # doctest: +SKIP
    ['tgate', 'magcache', 'taylorseer', 'fbcache', 'dbcache']
    """
    return _queue_alone(study, space, "foothold", space.mildest) if len(space.groups) > 1 else []


def _queue_alone(
    study: optuna.Study, space: Space, kind: str, params: Callable[[str], dict[str, Any]]
) -> list[str]:
    """Each accelerator of ``space`` alone, as ``params(name)``, queued once into a study that
    has measured nothing yet, each trial marked ``kind``; the study keeps the names under
    ``kind`` + "s", so a resumed study queues none again."""
    waiting = optuna.trial.TrialState.WAITING
    if f"{kind}s" in study.user_attrs:
        return []
    if any(t.state != waiting for t in study.get_trials(deepcopy=False)):
        return []
    for name in space.names:
        study.enqueue_trial(params(name), user_attrs={kind: name})
    study.set_user_attr(f"{kind}s", list(space.names))
    return list(space.names)


def summary(starts: list[Start]) -> str:
    """One log line: how many configurations, from which neighbours.

    >>> summary(starts)
    'warm start: 3 configurations from SD1.5-DDIM-25, SD1.5-UniPC-20'
    """
    if not starts:
        return "warm start: nothing to start from (no neighbouring study has a feasible fit)"
    sources = ", ".join(dict.fromkeys(s.source for s in starts))
    plural = "" if len(starts) == 1 else "s"
    return f"warm start: {len(starts)} configuration{plural} from {sources}"
