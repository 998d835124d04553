"""Several processes, one study: which trial each worker starts next, decided under a lock.

Every worker (the one inside ``accelopt run``, each of ``--workers N``, each ``accelopt worker``
on another host) takes its next trial from the shared storage under one lock, so that:

- ``--n-trials`` is the study's total, exactly: a trial is started only while fewer than the
  budget are done, running or failed (a failed trial that was queued again makes room for its
  retry; one cut short by Ctrl-C makes room for a new one);
- a grid study evaluates every point once: the next point is the first unused one in an order
  fixed by the seed, never drawn at random by several workers at once;
- TPE draws trial ``n``'s random numbers from ``seed + n``: the same seed gives the same trials,
  whichever worker runs them.

The lock, heartbeats and owners are ``accelopt.storage``'s; starting ``--workers N`` processes
is ``accelopt.study.launch``'s.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt.storage import heartbeat, owner

__all__ = ["WAIT", "GridOrder", "Slots", "TrialSeededTPE", "released_trials", "take_trial"]

WAIT = object()  # take_trial: nothing to start now, but a running trial may still fail


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random draws for trial ``n`` come from ``seed + n``.

    A plain seeded TPE gives each worker the same random stream, so N workers propose the same
    first points N times; seeding per trial number gives every trial its own draws and keeps a
    study reproducible for a seed, whichever worker runs which trial. (Optuna's TPE keeps its
    streams in ``_rng`` and ``_random_sampler``: pinned optuna, checked by
    tests/study_tests/test_workers.py.)
    A study with two directions (``objective = "pareto"``) gets multi-objective TPE from the same
    class, seeded the same way.
    """

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, constant_liar=True, **kwargs)
        self.seed = seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        seed = (self.seed + trial.number) % 2**32
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


@dataclass(frozen=True)
class Slots:
    """How much of a study's trial budget is taken."""

    used: int  # done, running or failed, less the failures that made room for a retry
    waiting: int  # queued: retries of trials whose worker died
    running: int

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial]) -> Slots:
        released = released_trials(trials)
        used = sum(t.state != TrialState.WAITING and t.number not in released for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return cls(used, waiting, running)


def released_trials(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that do not take a slot: queued again, or stopped by Ctrl-C."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return retried | {
        t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
    }


class GridOrder:
    """The points of a grid in an order fixed by a seed; hands out the first unused one."""

    def __init__(self, points: Iterable[Mapping[str, Any]], seed: int) -> None:
        self.points = [dict(p) for p in points]  # ``Space.points``
        random.Random(seed).shuffle(self.points)

    def next(self, trials: Sequence[FrozenTrial]) -> dict[str, Any] | None:
        """The first point no trial holds (a released failure gives its point back)."""
        released = released_trials(trials)
        held = {
            _key(t.system_attrs.get("fixed_params", t.params))
            for t in trials
            if t.number not in released
        }
        return next((p for p in self.points if _key(p) not in held), None)


def _key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def take_trial(
    study: optuna.Study,
    total: int,
    grid: GridOrder | None,
    stop: Callable[[Sequence[FrozenTrial]], bool],
    beating: contextlib.ExitStack | None = None,
) -> optuna.Trial | object | None:
    """Start the study's next trial, call under ``storage_lock``.

    Returns the trial, None when the study is done (budget spent, grid exhausted or ``stop``),
    or ``WAIT`` when the budget is spent but trials still run elsewhere: one of them may fail
    and be queued again.

    The trial's heartbeat is entered on ``beating`` (it beats until the caller leaves that
    stack), then its owner recorded, both before the lock is let go: a worker killed at any
    moment leaves a trial that recovery sees as its own kind of dead (no owner: no heartbeat
    either; an owner: a heartbeat that stops).
    """
    trials = study.get_trials(deepcopy=False)
    if stop(trials):
        return None
    slots = Slots.of(trials)
    if not slots.waiting:
        if slots.used >= total:
            return WAIT if slots.running else None
        if grid is not None:
            point = grid.next(trials)
            if point is None:
                return WAIT if slots.running else None
            study.enqueue_trial(point)
    with warnings.catch_warnings():
        # Optuna expects heartbeats only inside Study.optimize; ours come from heartbeat().
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    if beating is not None:
        beating.enter_context(heartbeat(study, trial))
    owner(trial)
    return trial
