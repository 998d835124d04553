"""One trial: apply -> warm up -> generate the prompts (timed) -> score -> remove.

``Objective`` turns a measurement of the study's ``Bench`` (``accelopt.trial.bench``) into an
Optuna trial: speedup to maximise, each of the study's bounds (``accelopt.measure.constraints``)
a constraint of its own, every metric a user attribute. In a pareto study one metric is the
second objective instead, and the single-objective shortcuts are off: no dominance skip, no
early stop.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import torch

from accelopt import accelerators, execution
from accelopt.accelerators import schedules
from accelopt.errors import AccelOptError
from accelopt.measure.constraints import Bound
from accelopt.measure.environment import device_name
from accelopt.measure.metrics import loss_bound, prompt_losses
from accelopt.measure.timing import Paired, median
from accelopt.trial.bench import SSIM_WINDOW, Bench, Measurement
from accelopt.trial.space import Space, dominating_trial, lost_accelerator

__all__ = ["Objective"]

BASELINE_EVERY = 10  # re-time the baseline after this many trials, so drift shows in speedups
# Which stage measured a trial (its ``stage`` attribute). There is one: every trial is measured
# on the kernels it deploys with (``execution.kernels_for``: regional under cuda-graphs, as the
# generated scripts run them), against the fastest plain pipeline, so no later stage re-ranks.
STAGE = "search"


class Objective:
    """Optuna objective for one study: maximise speedup, each bound a constraint.

    The baseline's scores come from the study (measured once, by the first worker); its time is
    measured by every worker at start and again every ``BASELINE_EVERY`` trials, and speedups use
    the median of those timings, so clock drift over a long study shows instead of hiding. Its
    images are each worker's own (the first baseline it measures): fidelity compares images
    made on the same device under the same mode.
    """

    def __init__(
        self,
        bench: Bench,
        space: Space,
        baseline_scores: list[float],
        mode_baselines: dict[str, float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.bench = bench
        self.clock = clock  # times the trial and its pairs (tests inject their own)
        self.space = space
        self.baseline_scores = baseline_scores
        self.baseline_times: list[float] = []
        self.trials_since_baseline = 0
        # The plain pipeline's seconds per image under each execution mode measured at the
        # study's start: speedups are against the fastest of them, and eager's is shown too.
        self.mode_baselines = dict(mode_baselines or {})
        self._calls: schedules.Calls | None = None  # the scheduler's calls, read once
        self._branches: tuple[int, ...] = ()
        self._schedules: dict[str, tuple[Any, ...]] = {}

    @property
    def bounds(self) -> tuple[Bound, ...]:
        """The bounds that are constraints: all of the spec's, but a pareto study's objective."""
        spec = self.bench.spec
        return tuple(
            b for b in spec.bounds() if not (self.pareto and b.name == spec.pareto_metric)
        )

    def measure_baseline(self) -> Measurement:
        """Measure the plain pipeline; its time joins the baseline timings. The first one's
        images become the bench's reference images."""
        bench = self.bench
        accelerators.remove(bench.pipe)
        first = bench.reference is None
        m = bench.measure(keep_images=first)
        if first:
            bench.set_reference(m.images)
            self._check_measured(m.images[:1])
        self.baseline_times.append(m.time_per_image)
        self.trials_since_baseline = 0
        return m

    def _check_measured(self, image: torch.Tensor) -> None:
        """Refuse a bound (or a pareto objective) on a metric this bench does not measure,
        before any trial runs: SSIM on images smaller than its window, LPIPS not loaded."""
        spec = self.bench.spec
        measured = {"score_loss", *self.bench.score(image, 0, 1)}
        wanted = [b.name for b in spec.bounds()] + [spec.pareto_metric] * self.pareto
        missing = next((n for n in wanted if n not in measured), None)
        if missing is not None:
            why = {"ssim": f"images under {SSIM_WINDOW} px have none",
                   "lpips": "its network is not loaded"}.get(missing, "not measured")  # fmt: skip
            raise AccelOptError(f"study {spec.name}: cannot measure {missing} ({why}); drop it")

    def time_baseline(self) -> float:
        return self.measure_baseline().time_per_image

    @property
    def baseline_time(self) -> float:
        """The plain pipeline under this study's mode: the median of its timings so far."""
        return median(self.baseline_times)

    @property
    def reference_time(self) -> float:
        """The fastest plain pipeline: this mode's running median or another mode's."""
        others = [t for m, t in self.mode_baselines.items() if m != self.bench.mode]
        return min([self.baseline_time, *others])

    @property
    def pareto(self) -> bool:
        return self.bench.spec.objective == "pareto"

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        if self.trials_since_baseline >= BASELINE_EVERY:
            self.time_baseline()
        self.trials_since_baseline += 1
        started = self.clock()
        params = self.space.suggest(trial)
        configs = self.space.configs(params)
        trial.set_user_attr("accelerators", configs)
        if not configs:
            trial.set_user_attr("skipped", "no accelerator on: that is the baseline")
            raise optuna.TrialPruned("no accelerator on")
        # A trial stopped early was measured too: the same prompts and seeds would stop it again.
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = [
            t
            for t in trial.study.get_trials(deepcopy=False, states=finished)
            if t.state == optuna.trial.TrialState.COMPLETE or "stopped_early" in t.user_attrs
        ]
        trial.set_user_attr("schedule", schedules.digest(self.schedule_of(configs)))
        # A less aggressive configuration may lose less: on a frontier it counts.
        found = dominating_trial(
            configs, done, dominance=not self.pareto, schedule_of=self.schedule_of
        )
        if found is not None:
            trial.set_user_attr("skipped", found[1])
            raise optuna.TrialPruned(found[1])
        lost = lost_accelerator(configs, done, self.space)
        if lost is not None:  # nothing to learn, and its new structures would cost compiles
            trial.set_user_attr("lost", lost[0])
            trial.set_user_attr("skipped", lost[1])
            raise optuna.TrialPruned(lost[1])

        pipe = self.bench.pipe
        # Over the budget is no reason to stop a pareto trial: its loss is an objective.
        check = self.over_budget if self.bench.spec.early_stop and not self.pareto else None
        paired, pairing, pair_compiling = None, 0.0, 0.0
        if len(self.space.groups) > 1:  # what the other groups keep for later trials only grows
            released = execution.release(pipe, keep=self.space.group_of(params))
            if released:
                trial.set_user_attr("released", list(released))
        # What this trial compiles and captures, the timing pairs' too (their batch may be a
        # shape the quality pass never ran): the denoiser's record before and after.
        compiled = execution.compile_stats(pipe)
        spent, known = compiled.seconds, set(compiled.costs)
        try:
            with accelerators.apply(pipe, configs, steps=self.bench.spec.steps):
                m = self.bench.measure(check)
            if not m.stopped and self.bench.spec.timing.pairs:
                pairing, before = self.clock(), compiled.seconds
                paired = self.bench.pairs(configs, self.bench.spec.timing.pairs)
                pairing = self.clock() - pairing
                pair_compiling = compiled.seconds - before
        finally:
            accelerators.remove(pipe)  # also when apply or generation raised
            if self.bench.device.type == "cuda":
                torch.cuda.empty_cache()
        m = dataclasses.replace(m, pair_seconds=pairing - pair_compiling,
                                compile_seconds=compiled.seconds - spent)  # fmt: skip
        new = execution.by_structure(c for k, c in compiled.costs.items() if k not in known)
        speedup, loss = self._record(trial, m, self.clock() - started, paired, new)
        if m.stopped:  # its numbers and its cost are recorded; it cannot be the answer
            raise optuna.TrialPruned(m.stopped)
        return (speedup, loss) if self.pareto else speedup

    def schedule_of(self, configs: Mapping[str, Mapping[str, Any]]) -> tuple[Any, ...]:
        """What ``configs`` computes at every UNet call (``accelopt.accelerators.schedules``):
        equal schedules are equal images, so the second is never measured. Kept per
        configuration: each trial compares itself with every finished one."""
        key = json.dumps(configs, sort_keys=True)
        if key not in self._schedules:
            spec = self.bench.spec
            if self._calls is None:
                self._calls = schedules.Calls.of(self.bench.pipe.scheduler, spec.steps)
                self._branches = accelerators.PipeTraits.of(self.bench.pipe).branches
            built = {n: accelerators.get(n).config(knobs) for n, knobs in configs.items()}
            self._schedules[key] = schedules.schedule(
                built, self._calls, guided=spec.guidance > 1, branches=self._branches
            )
        return self._schedules[key]

    def over_budget(self, values: Mapping[str, list[float]]) -> str | None:
        """Why to stop a trial now: one of its bounds is broken with the spec's confidence,
        judged on two batches or more (one batch is too few prompts to be sure)."""
        spec = self.bench.spec
        measured = len(values["score"])
        if measured < 2 * spec.prompts.batch_size:
            return None
        z = statistics.NormalDist().inv_cdf(spec.early_stop)
        for bound in self.bounds:
            per_prompt = self._per_prompt(bound.name, values)
            broken = bound.broken(per_prompt, z) if per_prompt else None
            if broken is None:
                continue
            estimate, best_case = broken
            show = bound.metric.show
            return (
                f"stopped after {measured} of {len(self.bench.prompts)} prompts: "
                f"{bound.metric.label} {show(estimate)}, breaking {bound.describe()} with "
                f"{100 * spec.early_stop:g}% confidence (at best {show(best_case)})"
            )
        return None

    def _per_prompt(self, metric: str, values: Mapping[str, list[float]]) -> list[float]:
        """Each prompt's value of ``metric``; their mean is the trial's value."""
        if metric == "score_loss":
            return prompt_losses(self.baseline_scores, values["score"])
        return list(values.get(metric, []))

    def _record(
        self,
        trial: optuna.Trial,
        m: Measurement,
        wall: float,
        paired: Paired | None = None,
        new_structures: list[dict[str, Any]] | None = None,
    ) -> tuple[float, float]:
        """Set the trial's constraints and user attributes; ``new_structures`` are the
        structures it met first, with their cost (``execution.by_structure``)."""
        spec = self.bench.spec
        unpaired = self.reference_time / m.time_per_image
        # Paired: the median ratio against this mode's plain pipeline in alternated calls,
        # scaled to the fastest plain pipeline (1 when this mode's is the fastest).
        scale = self.reference_time / self.baseline_time
        speedup = unpaired if paired is None else scale * paired.speedup
        # The time per image shown beside the speedup is the one it came from: the pairs'
        # candidate calls when paired (the quality pass's, timed minutes from the baseline's,
        # is kept under its own name), the quality pass's when not.
        batch = min(spec.prompts.batch_size, len(self.bench.prompts))
        timing: dict[str, Any] = {"time_per_image": m.time_per_image, "speedup_pairs": 0}
        if paired is not None:
            batch = self.bench.timing_prompts
            timing = {"time_per_image": median(paired.candidate),
                      "paired_baseline_time_per_image": median(paired.baseline),
                      "speedup_pairs": len(paired.ratios)}  # fmt: skip
        timing["timing_batch_size"] = batch
        # Every metric's mean over the prompts measured (the score loss = score_loss when all).
        metrics = {"score_loss": loss_bound(self.baseline_scores, m.scores, 0.0)[0], **m.means()}
        violations = {b.name: b.violation(metrics[b.name]) for b in self.bounds}
        for name, violation in violations.items():
            trial.set_constraint(name, violation)
        attrs: dict[str, Any] = {
            **m.summary(),
            "quality_pass_time_per_image": m.time_per_image,
            **timing,
            "prompts_measured": len(m.scores),
            "speedup": speedup,
            "score": sum(m.scores) / len(m.scores),
            **metrics,
            # mirrored: optuna-dashboard does not show constraints (the worst bound's)
            "constraint": max(violations.values(), default=0.0),
            # pareto: within the study's own bounds, the point codegen answers by default
            "feasible": all(b.holds(metrics.get(b.name)) for b in spec.bounds()) and not m.stopped,
            "baseline_time_per_image": self.baseline_time,
            "execution": self.bench.mode,
            "kernels": execution.kernels_for(self.bench.mode, accelerated=True),
            "stage": STAGE,
            "reference_time_per_image": self.reference_time,  # the fastest plain pipeline
            "speedup_vs_mode_baseline": speedup / scale,
            "device": device_name(self.bench.device),
            "trial_seconds": wall,
            "new_structures": new_structures or [],
            # compiling and capturing (compile_seconds) over the trial's seconds
            "compile_share": m.compile_seconds / wall if wall > 0 else 0.0,
            "overhead_seconds": wall
            - m.generation_seconds
            - m.warmup_seconds
            - m.scoring_seconds
            - m.compile_seconds
            - m.pair_seconds,
        }
        if len(self.bounds) > 1:
            attrs["constraints"] = violations
        if paired is not None:
            attrs.update(speedup_unpaired=unpaired, pairs=paired.record())
        if paired is not None and len(paired.ratios) > 1:  # one pair has no interval
            low, high, level = paired.interval()
            attrs.update(speedup_interval=[scale * low, scale * high], speedup_level=level)
        # this mode's own running median, where the study runs eagerly
        eager = {**self.mode_baselines, self.bench.mode: self.baseline_time}.get("eager")
        if eager is not None:  # eager's plain time over this trial's time, paired when it is
            attrs["speedup_vs_eager"] = eager / self.baseline_time * speedup / scale
        if m.stopped:
            attrs["stopped_early"] = m.stopped
        if not violations:  # a pareto study whose one bound is its objective
            del attrs["constraint"]
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return speedup, metrics[spec.pareto_metric] if self.pareto else metrics["score_loss"]
