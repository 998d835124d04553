"""Search strategies replayed offline on a recorded landscape: GPU time to a near-best point.

    python -m bench.replay bench/landscapes/SD1.5-DDIM-20.json --min-psnr 35 --seeds 20 --out DIR
    python -m bench.replay bench/landscapes/SDXL-DDIM-25.json --min-psnr 0 --seeds 20 --out DIR
    python -m bench.replay bench/landscapes/ToySD-DDIM-20.json --seeds 20 --out DIR

A trial is answered from the record (``bench/landscapes/README.md``) instead of running the
pipeline. The space is the study's own Optuna parameters (``accelopt.trial.space.Space``) cut to
the part every landscape records completely: DeepCache x ToMe, T-GATE off. A proposal whose
configuration the record lacks (SDXL's file is partial) is never invented: it is counted as
``unrecorded`` and dropped at no cost (TPE is told a failed trial: no information), and the
table says how many configurations are missing. Only recorded points set the target.

Cost model: a measured trial costs the GPU time the record spent generating its images,
``time_per_image * images_per_point``, times ``1 + --warmup-calls`` (default 0: the study's
warm-up is shared, not per trial). Skipped trials cost nothing: the plain pipeline (the
baseline, known before the search), a configuration already measured, one dominated by a
feasible measured one (``accelopt.trial.space.dominating_trial``), and unrecorded ones. Baseline
re-timings, scoring and process start are left out: every strategy pays them alike.

Structures (issue 33): under a graph mode a trial also pays, once per run, each *structure* its
configuration meets for the first time in that run (``structures``; a later trial meeting it is
free): DeepCache's first structure once (``--deepcache-seconds``) and each branch id
(``--branch-seconds``), each ToMe (ratio, max_downsample) (``--tome-seconds``), T-GATE once
(``--tgate-seconds``). The plain pipeline's own compile comes before the search and is left out.
Defaults (``MEASURED``) are docs/BENCHMARKS.md's regional compilation on one H100 (SD1.5 B=1,
2026-12-07, "Regional compilation: what a new structure costs"): DeepCache 3/0, the first
DeepCache structure, cost 7 s, and DeepCache 3/1 after it 1 s, so 6 s once plus 1 s a branch;
T-GATE's one structure 422 s (before the fix that section describes; never met here, T-GATE is
off). **ToMe's 7 s per (ratio, max_downsample) is an assumption, not a measurement** (the same
as the first DeepCache structure; that call ended before its ToMe plan): the output says so.
``--structure-seconds S`` sets every family not given on its own to S; ``--structure-seconds 0``
is the model above without structures, today's numbers exactly. The measuring part stays the
record's eager H200 time: the two parts come from different cards and modes.

``--tome-factor F`` replays the graph-mode situation on these eagerly timed landscapes: every
configuration with ToMe on runs at F times its recorded speedup (its time divided by F). 0.66
is ToMe 0.5's measured ratio to the plain pipeline under cuda-graphs on SD1.5 at batch 1 (one
H200, 2026-12-02, docs/BENCHMARKS.md "Execution modes", where eager ToMe 0.5 ran 0.87x); the
recorded eager ratios are kept under it, so F = 0.66 is the harsher reading of that figure.

Feasible: recorded PSNR >= ``--min-psnr`` (dB). It stands in for the study's 2% CLIP-loss budget,
since CLIP scores of random weights mean nothing. SDXL's random-weight PSNR is flat at ~14 dB
(docs/BENCHMARKS.md), so ``--min-psnr 0`` replays it for speed only, and the output says so.
A scored landscape (``python -m bench.landscape measure --heldout N``: ToySD-DDIM-20, whose toy
CLIP scorer is trained) has per-prompt CLIP scores instead, and the study's own rule applies:
feasible when the relative score loss over all its search prompts
(``accelopt.measure.metrics.score_loss``) is at most the study's ``max_score_loss``
(``--max-score-loss`` overrides it); ``--min-psnr`` is unused.

Metric: the GPU time a strategy spends until it first holds a feasible point whose speedup is at
least ``TARGET`` (98%) of the best feasible speedup in the replayed space (the grid optimum; the
landscapes carry single timings, no intervals, so 98% stands in for "within its interval"). A
strategy that has not got there when it runs out of points (TPE: after ``ASKS_PER_POINT`` asks
per grid point; ``tpe+cost``: when all it has left is pruned) is charged the cost of measuring
every point and building every structure, and flagged; the table shows the fraction of seeds
that reached it. ``spent`` is what a run paid until it stopped, reached or not, and
``answer_speedup`` the speedup of what its study would export then. Speedups are the record's
single timings (+-20%, docs/BENCHMARKS.md), so the dominance skip can pass over a point that
timed faster than the one that dominates it.

Strategies (``STRATEGIES``): ``grid``, the seed system (every grid point in a seeded order,
``accelopt.study.workers.GridOrder``, with the dominance skip); ``random``, uniform over the
recorded configurations without repeats; ``tpe``, the study's sampler (``TrialSeededTPE``) driven
by ask/tell with the study's parameters, the score loss over the budget (PSNR shortfall on an
unscored landscape) as its constraint, repeats and dominated points pruned as
``accelopt.trial.objective.Objective`` prunes them. Then, on the same TPE:

- ``tpe+early`` (scored landscapes only): a trial stops early exactly as the study's does:
  after each batch of the study's ``batch_size`` prompts but the last, ``Objective.over_budget``
  itself judges the recorded scores so far (the loss's one-sided lower bound at the study's
  ``early_stop`` confidence over the budget, from the second batch on). A stopped trial costs
  the share of the prompts it generated times the point's cost, is pruned (never the answer;
  TPE sees its partial loss as its constraint) and, as in the Objective, counts as measured:
  a repeat of it is skipped (the same prompts and seeds would stop it again). The study's
  prompts are the recorded ones (ToySD-DDIM-20: 32, where the study itself measures 16).
- ``tpe+warm``: ``accelopt.study.warmstart.warm_start`` enqueues its neighbours' best
  configurations first. The neighbours are the other recorded landscapes (``--neighbours``; default
  bench/landscapes/ and the replayed file's folder), each one a study in an in-memory storage
  whose best trial is its best feasible configuration in this replay's space by its own rule
  (a scored landscape's budget, else PSNR >= ``MIN_PSNR``), so warmstart's own neighbour rule
  (same pipeline, or same steps and scheduler) and ``translate`` decide: ToySD-DDIM-20 starts
  from SD1.5-DDIM-20's best (same 20 DDIM steps, another pipeline); SDXL-DDIM-25 is no
  neighbour of either.
- ``tpe+early+warm``: both.
- ``tpe+cost``: the cost-aware search of a study under a graph mode (``accelopt.study.loop``):
  ``accelopt.study.warmstart.probe`` enqueues each accelerator of the space alone at its fastest
  (``Space.fastest``) first, and a configuration with an accelerator whose probe ran slower than
  the plain pipeline is pruned unmeasured, at no cost (``accelopt.trial.space.lost_accelerator``
  on the finished trials, as the Objective records them). A run whose remaining configurations
  are all pruned or dominated stops there.

Held-out pass rate (scored landscapes with held-out scores): when a run stops, the study would
export its fastest feasible configuration (``exported``); it passes if its loss on the recorded
held-out prompts (other prompts, other seeds: ``accelopt.study.confirm``'s) keeps the budget. With
confirmation, as accelopt does before export: of the ``TOP_K`` (3) fastest feasible
configurations measured so far, the fastest that keeps the budget on the held-out prompts
(``confirmed``; none: nothing is exported, which counts as not passing).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property, partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import optuna

from accelopt.accelerators import Param
from accelopt.measure.metrics import loss_bound, score_loss
from accelopt.spec import PromptSpec, StudySpec
from accelopt.study import warmstart
from accelopt.study.confirm import TOP_K
from accelopt.study.workers import GridOrder, TrialSeededTPE
from accelopt.trial.objective import Objective
from accelopt.trial.space import Space, dominating_trial, lost_accelerator
from bench import _lib
from bench import landscape_records as recorded

__all__ = [
    "MEASURED",
    "STRATEGIES",
    "Replay",
    "Scores",
    "Step",
    "StructureCosts",
    "exported",
    "main",
    "markdown",
    "probes",
    "replay",
    "run",
    "structures",
    "unavailable",
]

SEARCHED = ("deepcache", "tome")  # the accelerators every landscape records completely
TARGET = 0.98
MIN_PSNR = 35.0
ASKS_PER_POINT = 10  # TPE gives up after this many asks per grid point of the space
# TrialSeededTPE draws trial n from seed + n: seeds s and s + 1 would replay the same draws one
# trial apart. Replay seed s runs TrialSeededTPE(s * SEED_STRIDE), streams far apart.
SEED_STRIDE = 2**20
LANDSCAPES = Path(__file__).resolve().parent / "landscapes"


@dataclass(frozen=True)
class StructureCosts:
    """GPU seconds a run pays the first time it meets a structure, per family (``structures``)."""

    deepcache: float = 0.0  # once: DeepCache's first structure beyond its branch's captures
    branch: float = 0.0  # per DeepCache branch id: its full and shallow graphs captured
    tome: float = 0.0  # per ToMe (ratio, max_downsample): its transformer blocks compiled
    tgate: float = 0.0  # once: T-GATE's attention modes

    def __bool__(self) -> bool:
        return any(asdict(self).values())

    def seconds(self, structure: tuple[Any, ...]) -> float:
        return float(getattr(self, structure[0]))


# docs/BENCHMARKS.md, "Regional compilation: what a new structure costs (issue 33)", one H100,
# SD1.5 B=1: DeepCache 3/0 (the first DeepCache structure) 7 s, then 3/1 (a new branch) 1 s;
# T-GATE 10 422 s (before its fix). ToMe's is NOT measured: assumed as DeepCache's first.
MEASURED = StructureCosts(deepcache=6.0, branch=1.0, tome=7.0, tgate=422.0)
TOME_ASSUMED = "ToMe's seconds per (ratio, max_downsample) are assumed, not measured"


def structures(configs: Mapping[str, Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The structures generating with ``configs`` builds beyond the plain pipeline's, each a
    tuple whose first item names its family in ``StructureCosts``.

    >>> structures({"deepcache": {"cache_interval": 3, "cache_branch_id": 1},
    ...             "tome": {"ratio": 0.5, "max_downsample": 1}})
    [('deepcache',), ('branch', 1), ('tome', 0.5, 1)]
    """
    found: list[tuple[Any, ...]] = []
    if "deepcache" in configs:
        found += [("deepcache",), ("branch", configs["deepcache"].get("cache_branch_id", 0))]
    if "tome" in configs:
        knobs = configs["tome"]
        found.append(("tome", knobs.get("ratio"), knobs.get("max_downsample")))
    if "tgate" in configs:
        found.append(("tgate",))
    return found


@dataclass(frozen=True)
class Step:
    """One trial of a strategy: a configuration (``config_key``), measured or skipped."""

    key: str
    measured: bool
    why: str = ""  # skipped: "off", "repeat", "dominated", "unrecorded", "lost"; or "stopped"
    fraction: float = 1.0  # of the prompts generated: less than 1 when it stopped early


@dataclass(frozen=True)
class Scores:
    """A scored landscape's plain-pipeline CLIP scores and the study's rules for them."""

    baseline: list[float]  # per search prompt
    heldout: list[float] | None  # per held-out prompt; None: no held-out scores recorded
    max_score_loss: float
    batch_size: int  # the study's: early stopping judges after each batch
    early_stop: float  # the study's confidence; 0: never stop early


@dataclass
class Replay:
    """A landscape as the replay sees it: the searched space and the recorded answers."""

    study: str
    space: Space
    points: dict[str, dict[str, Any]]  # config_key -> recorded point, DeepCache x ToMe only
    min_psnr: float
    warmup_calls: int = 0
    images_per_point: int = 1
    missing: list[str] = field(default_factory=list)  # configurations the record lacks
    scores: Scores | None = None  # None: an unscored landscape (PSNR decides)
    pipeline: str = ""
    scheduler: str = ""
    neighbours: list[dict[str, Any]] = field(default_factory=list)  # see neighbour_best
    structure_costs: StructureCosts = field(default_factory=StructureCosts)  # none: free
    tome_factor: float = 1.0  # recorded speedups of configurations with ToMe, times this

    @classmethod
    def of(
        cls,
        record: dict[str, Any],
        min_psnr: float = MIN_PSNR,
        warmup_calls: int = 0,
        max_score_loss: float | None = None,
        neighbours: Iterable[dict[str, Any]] = (),
        structure_costs: StructureCosts | None = None,
        tome_factor: float = 1.0,
    ) -> Replay:
        """The replay of ``record``; ``neighbours``: other landscapes a warm start may use;
        ``structure_costs``: what a new structure costs (None: nothing); ``tome_factor``: every
        configuration with ToMe runs at this times its recorded speedup (neighbours' too)."""
        space = searched_space(record)
        by_key = recorded.lookup(record)
        grid = GridOrder(space.points(), 0).points
        keys = {recorded.config_key(space.configs(p)) for p in grid}
        points = {k: by_key[k] for k in sorted(keys) if k in by_key}
        if tome_factor != 1.0:  # copies: the record (and its neighbours' view of it) stays
            points = {k: _scaled(p, tome_factor) if "tome" in p["accelerators"] else p
                      for k, p in points.items()}  # fmt: skip
        for key, p in points.items():
            if p.get("error") or not p.get("time_per_image") or p.get("speedup") is None:
                raise ValueError(f"{record['study']}: point {key} has no measurement")
        scores = None
        if record.get("baseline_scores") is not None:
            budget = record["max_score_loss"] if max_score_loss is None else max_score_loss
            scores = Scores(
                baseline=list(record["baseline_scores"]),
                heldout=record.get("heldout_baseline_scores"),
                max_score_loss=float(budget),
                batch_size=int(record["batch_size"]),
                early_stop=float(record["early_stop"]),
            )
            for key, p in points.items():
                held = scores.heldout is None or p.get("heldout_scores") is not None
                if p.get("scores") is None or not held:
                    raise ValueError(f"{record['study']}: point {key} has no scores")
        others: dict[str, dict[str, Any]] = {}  # one per study (its first file), never itself
        for n in neighbours:
            if n["study"] != record["study"]:
                others.setdefault(n["study"], n)
        bests = (neighbour_best(n, tome_factor) for n in others.values())
        return cls(
            study=record["study"],
            space=space,
            points=points,
            min_psnr=min_psnr,
            warmup_calls=warmup_calls,
            images_per_point=int(record["images_per_point"]),
            missing=sorted(keys - set(by_key)),
            scores=scores,
            pipeline=record.get("pipeline", record["study"]),
            scheduler=record.get("scheduler", ""),
            neighbours=[b for b in bests if b is not None],
            structure_costs=structure_costs or StructureCosts(),
            tome_factor=tome_factor,
        )

    @property
    def candidates(self) -> list[str]:
        """Every recorded configuration with an accelerator on (the plain one is the baseline)."""
        return [k for k, p in self.points.items() if p["accelerators"]]

    def cost(self, key: str) -> float:
        """What measuring ``key`` costs (its structures apart: ``build``)."""
        p = self.points[key]
        return float(p["time_per_image"]) * self.images_per_point * (1 + self.warmup_calls)

    def build(self, key: str, met: set[tuple[Any, ...]]) -> float:
        """What ``key``'s structures not in ``met`` cost; adds them to ``met``."""
        new = [s for s in structures(self.points[key]["accelerators"]) if s not in met]
        met.update(new)
        return sum(map(self.structure_costs.seconds, new), 0.0)

    def feasible(self, key: str) -> bool:
        if self.scores is not None:
            return self.loss(key) <= self.scores.max_score_loss
        return float(self.points[key]["psnr"]) >= self.min_psnr

    @property
    def rule(self) -> str:
        """What makes a point feasible here, in words."""
        if self.scores is not None:
            n = len(self.scores.baseline)
            return f"CLIP-score loss <= {100 * self.scores.max_score_loss:g}% on {n} prompts"
        return f"PSNR >= {self.min_psnr:g} dB"

    def loss(self, key: str) -> float:
        """The relative CLIP-score loss over every recorded search prompt."""
        return score_loss(self._scores().baseline, self.points[key]["scores"])

    def heldout_loss(self, key: str) -> float | None:
        scores = self._scores()
        if scores.heldout is None:
            return None
        return score_loss(scores.heldout, self.points[key]["heldout_scores"])

    def passes(self, key: str) -> bool | None:
        """Held-out confirmation's verdict: the loss on the held-out prompts keeps the budget."""
        held = self.heldout_loss(key)
        return None if held is None else held <= self._scores().max_score_loss

    def constraint(self, key: str, prompts: int | None = None) -> tuple[str, float]:
        """The constraint the study's trial sets (name, value), on its first ``prompts`` scores:
        ``Objective._record``'s score loss less the budget; unscored, the PSNR shortfall."""
        if self.scores is None:
            return "psnr_shortfall", max(self.min_psnr - float(self.points[key]["psnr"]), -1e3)
        scores = self.points[key]["scores"][:prompts]
        return "score_loss", loss_bound(self.scores.baseline, scores, 0.0)[0] - (
            self.scores.max_score_loss
        )

    def stop_after(self, key: str) -> int | None:
        """After how many prompts the study stops this trial early (None: it measures all).

        ``Bench.measure`` asks ``Objective.over_budget`` after every batch but the last; here
        the same method judges the recorded scores, so the rule cannot drift from accelopt's.
        """
        scores = self._scores()
        if not scores.early_stop:  # 0: the study never stops a trial early
            return None
        found = self.points[key]["scores"]
        for start in range(0, len(found), scores.batch_size):
            stop = start + scores.batch_size
            if stop < len(found) and Objective.over_budget(self._judge, {"score": found[:stop]}):
                return stop
        return None

    @cached_property
    def _judge(self) -> Objective:
        """What ``Objective.over_budget`` reads of an Objective: the spec, prompts and baseline."""
        s = self._scores()
        spec = StudySpec(
            self.study, self.pipeline, self.scheduler, self.space.steps,
            prompts=PromptSpec(count=len(s.baseline), batch_size=s.batch_size),
            max_score_loss=s.max_score_loss, early_stop=s.early_stop,
        )  # fmt: skip
        bench = SimpleNamespace(spec=spec, prompts=[""] * len(s.baseline))
        judge = SimpleNamespace(bench=bench, baseline_scores=s.baseline, bounds=spec.bounds())
        judge._per_prompt = partial(Objective._per_prompt, judge)  # the score loss per prompt
        return cast(Objective, judge)

    def _scores(self) -> Scores:
        if self.scores is None:
            raise ValueError(f"{self.study}: {NO_SCORES}")
        return self.scores

    def warm_start(self, study: optuna.Study) -> list[warmstart.Start]:
        """Enqueue into ``study`` what accelopt's warm start would, and return it.

        Each neighbouring landscape is a study of an in-memory storage (its spec's pipeline,
        scheduler and steps; one trial: its best feasible configuration), so
        ``accelopt.study.warmstart.warm_start`` picks the neighbours and translates their bests.
        """
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.InMemoryStorage()
        for n in self.neighbours:
            other = optuna.create_study(storage=storage, study_name=n["study"])
            other.set_user_attr("spec", {k: n[k] for k in ("pipeline", "scheduler", "steps")})
            attrs = {"accelerators": n["accelerators"], "speedup": n["speedup"], "feasible": True}
            other.add_trial(optuna.trial.create_trial(value=n["speedup"], user_attrs=attrs))
        spec = StudySpec(self.study, self.pipeline, self.scheduler, self.space.steps)
        return warmstart.warm_start(study, storage, spec, self.space)

    @cached_property
    def warm_starts(self) -> list[warmstart.Start]:
        """What a warm start enqueues here (empty: no neighbour fits)."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return self.warm_start(optuna.create_study(direction="maximize"))

    def speedup(self, key: str) -> float:
        return float(self.points[key]["speedup"])

    @property
    def best(self) -> str:
        """The fastest feasible candidate (ties: the first key)."""
        feasible = [k for k in self.candidates if self.feasible(k)]
        if not feasible:
            raise ValueError(f"{self.study}: no configuration has {self.rule}")
        return max(feasible, key=self.speedup)

    @property
    def target(self) -> float:
        return TARGET * self.speedup(self.best)

    def hits(self, key: str) -> bool:
        return self.feasible(key) and self.speedup(key) >= self.target

    @property
    def full_cost(self) -> float:
        """Measuring every candidate, and building every structure once."""
        met: set[tuple[Any, ...]] = set()
        built = sum(self.build(k, met) for k in self.candidates)
        return sum(self.cost(k) for k in self.candidates) + built


def _scaled(point: dict[str, Any], factor: float) -> dict[str, Any]:
    """``point`` run ``factor`` times as fast as recorded (slower, for a factor under 1)."""
    return {**point, "speedup": float(point["speedup"]) * factor,
            "time_per_image": float(point["time_per_image"]) / factor}  # fmt: skip


def searched_space(record: dict[str, Any]) -> Space:
    """The study's space (off values first, as the record keeps it) cut to DeepCache x ToMe."""
    params = {
        k: Param(tuple(v)) for k, v in record["space"].items() if k.split(".")[0] in SEARCHED
    }
    return Space(params, int(record["steps"]), optional=True)


NO_SCORES = (
    "its landscape has no per-prompt CLIP scores (record them with "
    "python -m bench.landscape measure --heldout N, for a study with a trained scorer such as "
    "ToySD-DDIM-20)"
)


def neighbour_best(record: dict[str, Any], tome_factor: float = 1.0) -> dict[str, Any] | None:
    """A landscape as a warm start sees a neighbouring study: its pipeline, scheduler, steps and
    best feasible configuration in the replayed space, by its own rule (None: none feasible)."""
    try:
        other = Replay.of(record, tome_factor=tome_factor)
        best = other.best
    except ValueError:
        return None
    return {
        "study": record["study"],
        "pipeline": record.get("pipeline", record["study"]),
        "scheduler": record.get("scheduler", ""),
        "steps": int(record["steps"]),
        "accelerators": other.points[best]["accelerators"],
        "speedup": other.speedup(best),
        "rule": other.rule,
    }


# --- strategies: each yields its trials in order, lazily (the run stops at the target) -----------


def _done(replay: Replay, key: str, stopped: bool = False) -> optuna.trial.FrozenTrial:
    """A measured point as the finished trial ``dominating_trial`` reads; a stopped one is
    never feasible."""
    return optuna.trial.create_trial(
        value=replay.speedup(key),
        user_attrs={
            "accelerators": replay.points[key]["accelerators"],
            "feasible": replay.feasible(key) and not stopped,
            "speedup": replay.speedup(key),
        },
    )


def _skip(replay: Replay, key: str, done: Sequence[optuna.trial.FrozenTrial]) -> str:
    """Why the study would not measure ``key`` now ("" if it would): its Objective's rules."""
    if key not in replay.points:
        return "unrecorded"
    configs = replay.points[key]["accelerators"]
    if not configs:
        return "off"
    found = dominating_trial(configs, done)
    if found is None:
        return ""
    return "repeat" if found[1].startswith("same configuration") else "dominated"


def grid(replay: Replay, seed: int) -> Iterator[Step]:
    """The seed system: every grid point in ``GridOrder``'s seeded order, with dominance skip."""
    done: list[optuna.trial.FrozenTrial] = []
    for params in GridOrder(replay.space.points(), seed).points:
        key = recorded.config_key(replay.space.configs(params))
        why = _skip(replay, key, done)
        if not why:
            done.append(_done(replay, key))
        yield Step(key, not why, why)


def uniform(replay: Replay, seed: int) -> Iterator[Step]:
    """Uniform random over the recorded configurations, without repeats, no dominance skip."""
    order = list(replay.candidates)
    random.Random(seed).shuffle(order)
    for key in order:
        yield Step(key, True)


LOSABLE = ("", "unrecorded")  # the lost rule judges what the Objective would measure


def tpe(
    replay: Replay,
    seed: int,
    max_asks: int | None = None,
    *,
    early: bool = False,
    warm: bool = False,
    cost: bool = False,
) -> Iterator[Step]:
    """The study's TPE, ask/tell: the loss over budget (or PSNR shortfall) as the constraint,
    skips pruned at no cost; ``early``: trials stop early as the study's do (``stop_after``);
    ``warm``: the neighbours' best configurations enqueued first (``Replay.warm_start``);
    ``cost``: each accelerator probed alone at its fastest first (``warmstart.probe``), and
    configurations with one that lost there pruned at no cost (``lost_accelerator``)."""
    why_not = unavailable(replay, "tpe" + "+early" * early + "+warm" * warm + "+cost" * cost)
    if why_not:
        raise ValueError(why_not)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=TrialSeededTPE(seed * SEED_STRIDE))
    if warm:
        replay.warm_start(study)
    if cost:  # after the warm start, as accelopt.study.loop does it
        warmstart.probe(study, replay.space)
    left = set(replay.candidates)
    asks = max_asks if max_asks is not None else ASKS_PER_POINT * replay.space.size
    done: list[optuna.trial.FrozenTrial] = []
    judged = -1  # how many trials were done when ``left`` was last judged
    for _ in range(asks):
        if not left:
            return
        if cost and judged != len(done):  # nothing left to measure: the search is over
            judged = len(done)
            if all(_skip(replay, k, done) for k in left):
                return
        trial = study.ask()
        configs = replay.space.configs(replay.space.suggest(trial))
        key = recorded.config_key(configs)
        why = _skip(replay, key, done)
        # The Objective prunes a lost accelerator's configuration before measuring it, so an
        # unrecorded one is pruned too.
        lost = lost_accelerator(configs, done, replay.space) if cost and why in LOSABLE else None
        if lost is not None:
            why = "lost"
            trial.set_user_attr("lost", lost[0])
            trial.set_user_attr("skipped", lost[1])
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            left -= {k for k in left if lost[0] in replay.points[k]["accelerators"]}
            judged = -1
        elif why == "unrecorded":  # the study would have measured it; we cannot: it never happened
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif why:
            trial.set_user_attr("skipped", why)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            p = replay.points[key]
            stop = replay.stop_after(key) if early else None
            trial.set_constraint(*replay.constraint(key, stop))
            trial.set_user_attr("accelerators", p["accelerators"])
            trial.set_user_attr("feasible", replay.feasible(key) and stop is None)
            trial.set_user_attr("speedup", replay.speedup(key))
            left.discard(key)
            if stop is not None:  # pruned with its numbers, as the Objective does: no answer
                trial.set_user_attr("stopped_early", stop)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                done.append(_done(replay, key, stopped=True))  # a repeat would stop again
                yield Step(key, True, "stopped", stop / len(p["scores"]))
                continue
            study.tell(trial, replay.speedup(key))
            done.append(_done(replay, key))
        yield Step(key, not why, why)


Strategy = Callable[[Replay, int], Iterator[Step]]
STRATEGIES: dict[str, Strategy] = {
    "grid": grid,
    "random": uniform,
    "tpe": tpe,
    "tpe+early": partial(tpe, early=True),
    "tpe+warm": partial(tpe, warm=True),
    "tpe+early+warm": partial(tpe, early=True, warm=True),
    "tpe+cost": partial(tpe, cost=True),
}


def unavailable(replay: Replay, name: str) -> str | None:
    """Why strategy ``name`` cannot run on this landscape; None if it can."""
    if "+early" in name and replay.scores is None:
        return f"{name}: {replay.study}: {NO_SCORES}"
    if "+warm" in name and not replay.warm_starts:
        found = ", ".join(n["study"] for n in replay.neighbours) or "none"
        return (
            f"{name}: {replay.study}: no neighbouring landscape to start from (a neighbour has "
            f"the same pipeline, or the same steps and scheduler, and a feasible point; "
            f"landscapes with a feasible point: {found}; see --neighbours)"
        )
    return None


# --- running and summarising ------------------------------------------------------------------


def run(replay: Replay, strategy: Strategy, seed: int) -> dict[str, Any]:
    """One seed of one strategy: GPU time until it holds a target point (or all it measured),
    and what its study would export then (``exported``). ``spent``: what it paid until it
    stopped, reached or not; ``structure_seconds``: the part that built structures."""
    whys = ("measured", "stopped", "off", "repeat", "dominated", "unrecorded", "lost")
    counts = dict.fromkeys(whys, 0)
    cost, built, done = 0.0, 0.0, []  # done: the finished trials' configurations, in order
    met: set[tuple[Any, ...]] = set()  # the structures built so far: free from now on
    for step in strategy(replay, seed):
        counts["measured" if step.measured else step.why] += 1
        if not step.measured:
            continue
        new = replay.build(step.key, met)  # a trial stopped early has built them too
        cost += replay.cost(step.key) * step.fraction + new
        built += new
        if step.why == "stopped":
            counts["stopped"] += 1
            continue
        done.append(step.key)
        if replay.hits(step.key):
            return {"seed": seed, "cost": cost, "reached": True, "found": step.key, **counts,
                    "spent": cost, "structure_seconds": built,
                    **exported(replay, done)}  # fmt: skip
    return {"seed": seed, "cost": replay.full_cost, "reached": False, "found": None, **counts,
            "spent": cost, "structure_seconds": built, **exported(replay, done)}  # fmt: skip


def exported(replay: Replay, done: Sequence[str]) -> dict[str, Any]:
    """What a study that finished the trials ``done`` would export, and whether it holds.

    ``exported``: its fastest feasible configuration (``answer_speedup``: its speedup);
    ``confirmed``: accelopt's export after held-out confirmation (of the ``TOP_K`` fastest
    feasible configurations, the fastest that keeps the budget on the held-out prompts; None:
    none does, nothing is exported).
    ``passes`` and ``passes_confirmed`` say whether the export keeps the budget on the
    held-out prompts (None: the landscape has no held-out scores).
    """
    ranked = sorted(
        dict.fromkeys(k for k in done if replay.feasible(k)), key=lambda k: -replay.speedup(k)
    )
    export = ranked[0] if ranked else None
    answer = None if export is None else replay.speedup(export)
    if replay.scores is None or replay.scores.heldout is None:
        return {"exported": export, "answer_speedup": answer, "passes": None, "confirmed": None,
                "passes_confirmed": None}  # fmt: skip
    confirmed = next((k for k in ranked[:TOP_K] if replay.passes(k)), None)
    return {
        "exported": export,
        "answer_speedup": answer,
        "passes": export is not None and bool(replay.passes(export)),
        "confirmed": confirmed,
        "passes_confirmed": confirmed is not None,
    }


def _median(values: Sequence[float | None]) -> float | None:
    """The median of those found (None: none found)."""
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def _rate(verdicts: Sequence[bool | None]) -> float | None:
    return None if any(v is None for v in verdicts) else statistics.fmean(map(bool, verdicts))


def replay(
    rec: Replay, seeds: Sequence[int], strategies: Sequence[str] = tuple(STRATEGIES)
) -> dict[str, Any]:
    """Every strategy over ``seeds``: a plain record (the table is drawn from it)."""
    best = rec.best
    results: dict[str, Any] = {}
    for name in strategies:
        runs = [run(rec, STRATEGIES[name], s) for s in seeds]
        costs = [r["cost"] for r in runs]
        results[name] = {
            "mean": statistics.fmean(costs),
            "median": statistics.median(costs),
            "reached": sum(r["reached"] for r in runs) / len(runs),
            "mean_measured": statistics.fmean(r["measured"] for r in runs),
            "mean_stopped": statistics.fmean(r["stopped"] for r in runs),
            "mean_unrecorded": statistics.fmean(r["unrecorded"] for r in runs),
            "mean_lost": statistics.fmean(r["lost"] for r in runs),
            "median_spent": statistics.median(r["spent"] for r in runs),
            "mean_structure_seconds": statistics.fmean(r["structure_seconds"] for r in runs),
            "median_answer": _median([r["answer_speedup"] for r in runs]),
            "pass_rate": _rate([r["passes"] for r in runs]),
            "pass_rate_confirmed": _rate([r["passes_confirmed"] for r in runs]),
            "runs": runs,
        }
    if "grid" in results:
        for r in results.values():
            r["ratio_to_grid"] = r["mean"] / results["grid"]["mean"]
    s, configs = rec.scores, rec.space.configs
    return {
        "study": rec.study,
        "min_psnr": None if s else rec.min_psnr,
        "speed_only": s is None and rec.min_psnr <= 0,
        "feasibility": rec.rule,
        "scores": None
        if s is None
        else {
            "prompts": len(s.baseline),
            "heldout_prompts": None if s.heldout is None else len(s.heldout),
            "max_score_loss": s.max_score_loss,
            "batch_size": s.batch_size,
            "early_stop": s.early_stop,
        },
        "target_fraction": TARGET,
        "structure_costs": asdict(rec.structure_costs),
        "structure_note": TOME_ASSUMED if rec.structure_costs.tome else None,
        "tome_factor": rec.tome_factor,
        "best": {
            "accelerators": rec.points[best]["accelerators"],
            "speedup": rec.speedup(best),
            "psnr": rec.points[best]["psnr"],
            **(
                {"score_loss": rec.loss(best), "heldout_score_loss": rec.heldout_loss(best)}
                if s
                else {}
            ),
        },
        "warm_start": [
            {"source": w.source, "accelerators": configs(w.params), "speedup_there": w.speedup}
            for w in rec.warm_starts
        ],
        "unavailable": {n: why for n in STRATEGIES if (why := unavailable(rec, n))},
        "probes": probes(rec),
        "target_speedup": rec.target,
        "candidates": len(rec.candidates),
        "feasible": sum(rec.feasible(k) for k in rec.candidates),
        "hits": sum(rec.hits(k) for k in rec.candidates),
        "missing": rec.missing,
        "full_cost": rec.full_cost,
        "images_per_point": rec.images_per_point,
        "warmup_calls": rec.warmup_calls,
        "seeds": list(seeds),
        "strategies": results,
    }


def probes(rec: Replay) -> dict[str, dict[str, Any]]:
    """What ``tpe+cost`` probes first: each accelerator alone at its fastest, as recorded
    (``speedup`` None: the record lacks it)."""
    found = {}
    for name in dict.fromkeys(k.split(".", 1)[0] for k in rec.space.params):
        configs = rec.space.configs(rec.space.fastest(name))
        key = recorded.config_key(configs)
        speedup = rec.speedup(key) if key in rec.points else None
        found[name] = {"accelerators": configs, "speedup": speedup}
    return found


def markdown(result: dict[str, Any], command: str = "") -> str:
    r = result
    c = r.get("scores")
    if c:
        feasibility = (
            f"{r['feasibility']} (the study's budget, its trained scorer), "
            f"{c['heldout_prompts'] or 'no'} held-out prompts recorded"
        )
    elif r["speed_only"]:
        feasibility = "speed only (`--min-psnr 0`: every point feasible; "
        feasibility += "random-weight fidelity is flat here)"
    else:
        feasibility = f"PSNR >= {r['min_psnr']:g} dB (stands in for the 2% CLIP-loss budget)"
    best = f"PSNR {r['best']['psnr']:.1f}"
    if "score_loss" in r["best"]:
        best = f"loss {100 * r['best']['score_loss']:.2f}%"
        if r["best"]["heldout_score_loss"] is not None:
            best += f", held-out {100 * r['best']['heldout_score_loss']:.2f}%"
    lines = [
        f"### {r['study']}: GPU time to {100 * r['target_fraction']:g}% of the best feasible "
        f"speedup ({len(r['seeds'])} seeds)",
        "",
        f"- space: DeepCache x ToMe, T-GATE off: {r['candidates']} recorded configurations "
        f"({r['feasible']} feasible, {r['hits']} at the target); measuring all costs "
        f"{r['full_cost']:.1f} s",
        f"- feasible: {feasibility}",
        f"- best feasible: {r['best']['speedup']:.2f}x, {_short(r['best']['accelerators'])} "
        f"({best}); target {r['target_speedup']:.2f}x",
    ]
    if c and c["early_stop"]:
        lines.append(
            f"- early stop (tpe+early): after each batch of {c['batch_size']} prompts from the "
            f"second on, a trial whose loss is over budget with {100 * c['early_stop']:g}% "
            "confidence stops (`Objective.over_budget`) and costs the share it generated"
        )
    for w in r.get("warm_start", []):
        lines.append(
            f"- warm start (tpe+warm): {_short(w['accelerators'])} from {w['source']} "
            f"({w['speedup_there']:.2f}x there; "
            f"accelopt.study.warmstart's neighbours and translate)"
        )
    for why in r.get("unavailable", {}).values():
        lines.append(f"- not replayed: {why}")
    costs = StructureCosts(**r.get("structure_costs", {}))
    if costs:
        lines.append(
            f"- structures: a trial also pays each structure it is the first in its run to meet: "
            f"DeepCache {costs.deepcache:g} s once + {costs.branch:g} s per branch id, ToMe "
            f"{costs.tome:g} s per (ratio, max_downsample), T-GATE {costs.tgate:g} s once"
            + (f" (**{TOME_ASSUMED}**)" if costs.tome else "")
        )
    if r.get("tome_factor", 1.0) != 1.0:
        lines.append(
            f"- ToMe in graph mode: every configuration with ToMe runs at {r['tome_factor']:g}x "
            "its recorded speedup (`--tome-factor`; ToMe 0.5 under cuda-graphs ran 0.66x the "
            "plain pipeline on SD1.5 at batch 1)"
        )
    cost_aware = "tpe+cost" in r["strategies"]
    if cost_aware:
        found = ", ".join(
            f"{_short(p['accelerators'])} "
            + ("unrecorded" if p["speedup"] is None else f"{p['speedup']:.2f}x")
            for p in r["probes"].values()
        )
        lines.append(
            f"- tpe+cost: first each accelerator alone at its fastest ({found}); one slower than "
            "the plain pipeline there is searched no further (`warmstart.probe`, "
            "`lost_accelerator`)"
        )
    if c and c["heldout_prompts"]:
        lines.append(
            "- held-out pass: the export when a run stops (its fastest feasible configuration) "
            f"keeps the budget on the {c['heldout_prompts']} held-out prompts; confirmed: "
            f"accelopt's export after re-scoring its top {TOP_K} there (none passing: nothing)"
        )
    if r["missing"]:
        lines.append(
            f"- partial record: {len(r['missing'])} configurations of the space are missing; "
            "strategies skip them at no cost (TPE's proposals of them count as failed trials)"
        )
    if command:
        lines.append(f"- command: `{command}`")
    extra = " unrecorded dropped (mean) |" if r["missing"] else ""
    stops = any("early" in name for name in r["strategies"])
    held = bool(c and c["heldout_prompts"])
    extra += " stopped early (mean) |" * stops
    extra += " held-out pass | held-out pass, confirmed |" * held
    paid = bool(costs) or cost_aware
    extra += (
        " median GPU s spent | structure s (mean) | pruned as lost (mean) | answer (median) |"
        * paid
    )
    lines += [
        "",
        "| strategy | mean GPU s | median GPU s | ratio to grid (mean) | reached | "
        f"trials measured (mean) |{extra}",
        "|---|---|---|---|---|---|" + "---|" * extra.count("|"),
    ]
    for name, s in r["strategies"].items():
        ratio = f"{s['ratio_to_grid']:.2f}" if "ratio_to_grid" in s else "-"
        lines.append(
            f"| {name} | {s['mean']:.1f} | {s['median']:.1f} | {ratio} | "
            f"{100 * s['reached']:.0f}% | {s['mean_measured']:.1f} |"
            + (f" {s['mean_unrecorded']:.1f} |" if r["missing"] else "")
            + (f" {s['mean_stopped']:.1f} |" if stops else "")
            + (f" {_percent(s['pass_rate'])} | {_percent(s['pass_rate_confirmed'])} |" * held)
            + (
                f" {s['median_spent']:.1f} | {s['mean_structure_seconds']:.1f} | "
                f"{s['mean_lost']:.1f} | {_speedup(s['median_answer'])} |"
            )
            * paid
        )
    return "\n".join(lines) + "\n"


def _speedup(speedup: float | None) -> str:
    return "-" if speedup is None else f"{speedup:.2f}x"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.0f}%"


def _short(configs: dict[str, dict[str, Any]]) -> str:
    """``{"deepcache": {"cache_interval": 4, "cache_branch_id": 0}}`` -> ``deepcache 4/0``."""
    return " + ".join(f"{n} " + "/".join(f"{v:g}" for v in c.values()) for n, c in configs.items())


# --- command line -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("landscape", type=Path, help="a recorded landscape, bench/landscapes/*.json")
    p.add_argument("--min-psnr", type=float, default=MIN_PSNR, help="dB; 0: speed only")
    p.add_argument("--seeds", type=int, default=20, help="seeds 0 .. N-1 per strategy")
    p.add_argument(
        "--strategies",
        help=f"of {', '.join(STRATEGIES)} (default: every one the landscape allows)",
    )
    p.add_argument("--warmup-calls", type=int, default=0, help="untimed calls charged per trial")
    p.add_argument(
        "--structure-seconds",
        type=float,
        help="GPU s of every new structure whose family's own option is not given (0: no "
        "structure costs, the model before issue 33; default: each family's measured figure)",
    )
    for name, what in (
        ("deepcache", "DeepCache's first structure, once (measured: 7 s for 3/0 less a branch)"),
        ("branch", "each DeepCache branch id (measured: 3/1 after 3/0)"),
        ("tome", "each ToMe (ratio, max_downsample): ASSUMED, not measured"),
        ("tgate", "T-GATE, once (measured before its fix; T-GATE is off in the replay)"),
    ):
        default = getattr(MEASURED, name)
        p.add_argument(
            f"--{name}-seconds", type=float, help=f"GPU s of {what} (default {default:g})"
        )
    p.add_argument(
        "--tome-factor",
        type=float,
        default=1.0,
        help="run every configuration with ToMe at this times its recorded speedup (0.66: ToMe "
        "0.5 under cuda-graphs, SD1.5 batch 1; default 1: as recorded, eagerly)",
    )
    p.add_argument("--max-score-loss", type=float, help="scored landscapes (default: the study's)")
    p.add_argument(
        "--neighbours",
        nargs="*",
        type=Path,
        help="landscapes a warm start may start from (default: bench/landscapes/*.json and "
        "those beside LANDSCAPE; none given: no warm start)",
    )
    p.add_argument("--out", type=Path, help="write replay-<study>.json and .md here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    names = [s for s in (args.strategies or ",".join(STRATEGIES)).split(",") if s]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names or args.seeds < 1 or args.warmup_calls < 0:
        raise SystemExit(
            f"--strategies of {', '.join(STRATEGIES)} (got {args.strategies!r}); "
            "--seeds >= 1; --warmup-calls >= 0"
        )
    costs = structure_costs(args)
    if min(asdict(costs).values()) < 0 or not args.tome_factor > 0:
        raise SystemExit("structure seconds must be >= 0 and --tome-factor > 0")
    command = _lib.command("replay", argv)
    record = recorded.load(args.landscape)
    if args.neighbours is None:
        found = [*LANDSCAPES.glob("*.json"), *args.landscape.parent.glob("*.json")]
        paths = sorted({path.resolve() for path in found})
        neighbours = [n for n in map(_landscape_or_none, paths) if n is not None]
    else:
        neighbours = [recorded.load(path) for path in args.neighbours]
    rec = Replay.of(
        record,
        args.min_psnr,
        args.warmup_calls,
        args.max_score_loss,
        neighbours=neighbours,
        structure_costs=costs,
        tome_factor=args.tome_factor,
    )
    refused = [why for n in names if (why := unavailable(rec, n))]
    if args.strategies is None:  # the default: every strategy this landscape allows
        names = [n for n in names if not unavailable(rec, n)]
    elif refused:
        raise SystemExit(refused[0])
    result = {"command": command, **replay(rec, range(args.seeds), names)}
    table = markdown(result, command)
    print(table, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"replay-{rec.study}"
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{stem}.md").write_text(table)
    return 0


def structure_costs(args: argparse.Namespace) -> StructureCosts:
    """Each family's own option, else ``--structure-seconds``, else its ``MEASURED`` figure."""
    chosen = {}
    for name, measured in asdict(MEASURED).items():
        own = getattr(args, f"{name}_seconds")
        chosen[name] = own if own is not None else (
            measured if args.structure_seconds is None else args.structure_seconds
        )  # fmt: skip
    return StructureCosts(**chosen)


def _landscape_or_none(path: Path) -> dict[str, Any] | None:
    """A landscape file's record; None for other JSON (a replay's output beside it)."""
    try:
        return recorded.load(path)
    except (ValueError, OSError):  # json.JSONDecodeError is a ValueError
        return None


if __name__ == "__main__":
    sys.exit(main())
