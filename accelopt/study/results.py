"""What a study's trials answer: the best feasible trial, the frontier, a requirement met, and
the configurations that were never measured.

Plain reading of stored trials, no storage or run loop: the run loop (``accelopt.study.loop``),
export, warm start, reports and the CLI all read a study through these.

>>> best = best_trial(study)
>>> best.user_attrs["speedup"]
2.4
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt._types import is_number
from accelopt.measure.constraints import quality_loss
from accelopt.storage import retry_owed

__all__ = [
    "DONE",
    "ENDINGS",
    "Requirement",
    "best_trial",
    "compile_cost",
    "config_text",
    "ending",
    "endings",
    "frontier",
    "is_pareto",
    "measured",
    "never_measured",
    "pareto_metric",
    "plain_time",
    "why_ended",
]

DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # measured (a pruned trial was, or was skipped)


def plain_time(attrs: dict[str, Any]) -> Any:
    """The plain pipeline's seconds per image beside a trial's, as export stores it and the
    report shows it: the pairs' own when the trial was paired, so that baseline over measured
    time reads as the speedup; else the running median of baseline timings it was measured
    against (trials timed before pairs).

    >>> plain_time({"baseline_time_per_image": 0.3, "paired_baseline_time_per_image": 0.28})
    0.28
    """
    return attrs.get("paired_baseline_time_per_image", attrs.get("baseline_time_per_image"))


def config_text(accelerators: Any) -> str:
    """A trial's accelerators as the terminal and the report show them, a calibrated list
    (MagCache's ratios, one per call) by its length; what a storage holds is read as it is
    (anything but an object of objects is no record of accelerators).

    >>> config_text({"tome": {"ratio": 0.5}, "magcache": {"threshold": 0.1, "ratios": [1.0]}})
    'tome ratio=0.5; magcache threshold=0.1, ratios=[1 calibrated]'
    """
    if not isinstance(accelerators, dict):
        return "not recorded"
    if not accelerators:
        return "none"
    return "; ".join(
        f"{name} " + ", ".join(f"{k}={_knob_text(v)}" for k, v in knobs.items())
        for name, knobs in accelerators.items()
        if isinstance(knobs, dict)
    )


def _knob_text(value: Any) -> Any:
    return f"[{len(value)} calibrated]" if isinstance(value, list) else value


@dataclass(frozen=True)
class Requirement:
    """The seed system's modes: stop at the first feasible trial reaching a speedup or a time."""

    speedup: float | None = None
    time_per_image: float | None = None

    def met_by(self, trial: FrozenTrial) -> bool:
        a = trial.user_attrs
        if trial.state != TrialState.COMPLETE or not a.get("feasible"):
            return False
        # a speedup or time a lost journal line left unrecorded meets nothing
        speedup: Any = a.get("speedup")
        seconds: Any = a.get("time_per_image")
        if self.speedup is not None:
            return is_number(speedup) and bool(speedup >= self.speedup)
        if self.time_per_image is not None:  # timed as its speedup was: in its pairs if any
            return is_number(seconds) and bool(seconds <= self.time_per_image)
        return False

    @property
    def active(self) -> bool:
        return self.speedup is not None or self.time_per_image is not None

    def describe(self) -> str:
        if self.speedup is not None:
            return f"speedup >= {self.speedup:g}x"
        return f"time per image <= {self.time_per_image:g} s"


# Why a finished trial did not complete, as every summary counts it (the report, ``run``,
# ``list``), each kind by its label, in this order. A PRUNED trial was stopped early for
# breaking a bound (measured in part: ``stopped_early``) or never measured (``skipped``, by
# ``accelopt.trial.space.dominating_trial`` or for having no accelerator on); a FAIL was
# interrupted (Ctrl-C, SIGTERM: its slot is given back) or failed.
ENDINGS: dict[str, str] = {
    "stopped": "stopped early for a bound",
    "same": "skipped, same schedule as an earlier trial",
    "dominated": "skipped, dominated",
    "lost": "skipped, its accelerator lost alone",
    "baseline": "skipped, no accelerator on",
    "pruned": "pruned",  # by a sampler or a hand, with no reason stored
    "interrupted": "interrupted",
    "failed": "failed",
}


def ending(trial: FrozenTrial) -> str | None:
    """The ``ENDINGS`` key of a trial that ended without completing; None for a completed,
    running or waiting one.

    >>> ending(stopped_trial)  # doctest: +SKIP
    'stopped'
    """
    a = trial.user_attrs
    if trial.state == TrialState.FAIL:
        return "interrupted" if a.get("interrupted") else "failed"
    if trial.state != TrialState.PRUNED:
        return None
    if "stopped_early" in a:
        return "stopped"
    skipped = str(a.get("skipped", ""))
    # The reasons dominating_trial and the objective store (tests check they stay these).
    if "lost" in a:
        return "lost"
    if skipped.startswith("no accelerator on"):
        return "baseline"
    if skipped.startswith("same configuration as") or skipped.endswith("(same schedule)"):
        return "same"
    if skipped.startswith("cannot beat"):
        return "dominated"
    return "pruned"


def why_ended(trial: FrozenTrial) -> str:
    """One line on why a trial did not complete: its kind's label and the stored reason
    (``stopped early for a bound: stopped after 8 of 16 prompts: ...``); empty when it did."""
    kind = ending(trial)
    if kind is None:
        return ""
    a = trial.user_attrs
    stored = {"stopped": a.get("stopped_early"), "failed": a.get("failed")}.get(
        kind, a.get("skipped")
    )
    # Their labels say it all (the objective stores "no accelerator on: that is the baseline").
    if kind in ("interrupted", "baseline") or not isinstance(stored, str) or not stored:
        return ENDINGS[kind]
    return f"{ENDINGS[kind]}: {stored}"


def endings(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """How many trials ended each way (``ENDINGS`` keys, in its order), only the ways some did."""
    counted = [ending(t) for t in trials]
    return {k: counted.count(k) for k in ENDINGS if k in counted}


def compile_cost(study: optuna.Study) -> dict[str, float]:
    """What compiling and capturing cost a study, of all the seconds it measured for:
    ``{"compile_seconds": 212.0, "seconds": 431.0, "share": 0.49}``, summed over its measured
    trials (``compile_seconds`` of ``trial_seconds``) and its start's timing of the plain
    pipeline under each mode (``accelopt.study.prepare.choose_mode``). Several workers' seconds
    add up: GPU time, not wall time. Zeros for a study that compiled nothing (eager)."""
    start = study.user_attrs.get("execution")
    start = start if isinstance(start, dict) else {}
    compiling = sum(_numbers(start.get("compile_seconds")))
    # a start stored before its seconds were: at least its compiling
    seconds = sum(_numbers(start.get("seconds"))) or compiling
    for trial in study.get_trials(deepcopy=False):
        a = trial.user_attrs
        if is_number(a.get("trial_seconds")):  # measured, not skipped
            seconds += a["trial_seconds"]
            compiling += a["compile_seconds"] if is_number(a.get("compile_seconds")) else 0.0
    return {"compile_seconds": compiling, "seconds": seconds,
            "share": compiling / seconds if seconds > 0 else 0.0}  # fmt: skip


def _numbers(values: Any) -> list[float]:
    """The numbers of a stored ``{mode: seconds}`` (nothing when none is stored)."""
    if not isinstance(values, dict):
        return []
    return [v for v in values.values() if is_number(v)]


def measured(trial: FrozenTrial) -> bool:
    """A completed trial holding what every summary of one reads: its speedup (a number),
    whether it is feasible, its accelerators. One whose journal line setting them was lost is
    none: best, list, the report and export pass over it rather than fail on it."""
    a, accelerators = trial.user_attrs, trial.user_attrs.get("accelerators")
    return (trial.state == TrialState.COMPLETE and is_number(a.get("speedup"))
            and isinstance(a.get("feasible"), bool) and isinstance(accelerators, dict)
            and all(isinstance(knobs, dict) for knobs in accelerators.values()))  # fmt: skip


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The feasible measured trial (``measured``) with the highest speedup, or None."""
    feasible = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if measured(t) and t.user_attrs["feasible"]]  # fmt: skip
    return max(feasible, key=lambda t: t.user_attrs["speedup"], default=None)


def is_pareto(study: optuna.Study) -> bool:
    """Whether a stored study searched speedup and score loss together."""
    return bool((study.user_attrs.get("spec") or {}).get("objective") == "pareto")


def pareto_metric(study: optuna.Study) -> str:
    """A pareto study's second objective (``accelopt.measure.constraints.METRICS``): the score loss
    unless its spec chose another."""
    return str((study.user_attrs.get("spec") or {}).get("pareto_metric") or "score_loss")


def frontier(trials: Sequence[FrozenTrial], metric: str = "score_loss") -> list[FrozenTrial]:
    """The completed trials no other completed trial beats on both speedup and ``metric`` (its
    good direction), fastest first (a pareto study's ``best_trials``; ``trials`` may be any
    subset). A trial that did not measure ``metric`` is on no frontier of it."""
    from accelopt.measure.pareto import non_dominated

    done = [t for t in trials if measured(t)
            and quality_loss(t.user_attrs, metric) is not None]  # fmt: skip

    def values(t: FrozenTrial) -> tuple[float, float]:
        return t.user_attrs["speedup"], quality_loss(t.user_attrs, metric) or 0.0

    front = non_dominated(done, values)
    return sorted(front, key=lambda t: (-t.user_attrs["speedup"], t.number))


def _point(trial: FrozenTrial) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(trial.system_attrs.get("fixed_params", trial.params).items()))


def never_measured(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The given configurations (grid points, warm starts) that failed and will not be measured:
    no trial of theirs finished, none is queued or running, and their retry failed too. One
    trial each, the last that failed, in order of trial number.

    Still to come, not listed: a point whose trial was stopped by Ctrl-C (it gave the point
    back), and one whose failure was never queued again (a worker killed in between, a storage
    error: ``storage.retry_owed``), which the next run queues.
    """
    measured = {_point(t) for t in trials if t.state in DONE}
    coming = {_point(t) for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)}
    coming |= {_point(t) for t in retry_owed(trials)}
    last: dict[tuple[tuple[str, Any], ...], FrozenTrial] = {}
    for t in trials:
        if t.state != TrialState.FAIL or "fixed_params" not in t.system_attrs:
            continue
        if t.user_attrs.get("interrupted"):
            continue
        point = _point(t)
        if point not in measured and point not in coming:
            last[point] = t
    return sorted(last.values(), key=lambda t: t.number)
