"""One trial: apply -> warm up -> generate the prompts (timed) -> CLIP score -> remove.

``Bench`` holds what every trial of a study shares (the pipeline, prompts, seeds and scorer) and
measures one configuration; ``Objective`` turns a measurement into an Optuna trial: speedup to
maximise, relative score loss as a constraint, everything else as user attributes. In a pareto
study the score loss is a second objective instead (to minimise), and the single-objective
shortcuts are off: no dominance skip, no early stop.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import optuna
import torch

from accelopt import accelerators, execution, schedules
from accelopt._types import Pipeline
from accelopt.metrics import ClipScorer, loss_bound
from accelopt.prompts import load_prompts
from accelopt.search import Space, dominating_trial
from accelopt.spec import StudySpec
from accelopt.timing import device_name, median, peak_memory, reset_peak_memory, timed

__all__ = ["Bench", "Measurement", "Objective"]

Check = Callable[[list[float]], "str | None"]  # scores so far -> why to stop, or None
BASELINE_EVERY = 10  # re-time the baseline after this many trials, so drift shows in speedups


@dataclass(frozen=True)
class Measurement:
    """What one generation of the prompt set cost and how it scored."""

    time_per_image: float
    generation_seconds: float
    warmup_seconds: float
    scoring_seconds: float
    scores: list[float]  # one per prompt measured: all of them unless stopped early
    peak_memory: int | None
    stopped: str | None = None  # why generation stopped before the last prompt
    compile_seconds: float = 0.0  # compiling and capturing graphs (not in warmup_seconds)


@dataclass
class Bench:
    """A loaded pipeline with its prompts, seeds and scorer: measures configurations."""

    spec: StudySpec
    pipe: Pipeline
    scorer: ClipScorer
    device: torch.device
    mode: str = "eager"  # the execution mode every generation runs under (accelopt.execution)
    # Told what is compiling before a generation compiles or captures a graph (progress bars).
    on_compile: Callable[[str], None] | None = None
    prompts: list[str] = field(init=False)

    def __post_init__(self) -> None:
        p = self.spec.prompts
        chosen = load_prompts(p.split, p.count, p.set)
        self.prompts = [p.text for p in chosen]
        self.traits = accelerators.PipeTraits.of(self.pipe)

    def generate(self, start: int, stop: int) -> torch.Tensor:
        """Images (B, 3, H, W in [0, 1]) for prompts start..stop, each with its own seed."""
        from accelopt.pipelines import call_defaults

        seed = self.spec.prompts.seed
        size = {"height": self.spec.resolution, "width": self.spec.resolution}
        out = accelerators.generate(
            self.pipe,
            prompt=self.prompts[start:stop],
            num_inference_steps=self.spec.steps,
            guidance_scale=self.spec.guidance,
            generator=[torch.Generator().manual_seed(seed + i) for i in range(start, stop)],
            output_type="pt",
            **(size if self.spec.resolution else {}),
            **call_defaults(self.pipe),
        )
        return out.images

    def measure(self, check: Check | None = None) -> Measurement:
        """Generate every prompt in batches (timed), after warm-up calls, scoring each batch,
        under the bench's execution mode (a graph missing for a batch is made in warm-up).

        ``check(scores so far)`` may stop the measurement after a batch by returning why.
        """
        with execution.run(self.pipe, self.mode, self.on_compile) as compiled:
            spent = compiled.seconds
            m = self._measure(check, compiled)
        return dataclasses.replace(m, compile_seconds=compiled.seconds - spent)

    def _measure(self, check: Check | None, compiled: execution.Compiled) -> Measurement:
        batches = [
            (start, min(start + self.spec.prompts.batch_size, len(self.prompts)))
            for start in range(0, len(self.prompts), self.spec.prompts.batch_size)
        ]
        # Every distinct batch size needs its own graphs: warm each up, the first ``warmup``
        # times (under eager one warm-up call of the first batch, as before).
        sizes = {stop - start: (start, stop) for start, stop in reversed(batches)}
        warm = [batches[0]] * max(self.spec.warmup, self.mode != "eager")
        if self.mode != "eager":
            warm += [b for n, b in sizes.items() if n != batches[0][1] - batches[0][0]]
        spent = compiled.seconds
        warmup = sum(timed(partial(self.generate, *b), self.device)[1] for b in warm)
        warmup -= compiled.seconds - spent
        reset_peak_memory(self.device)
        scores: list[float] = []
        seconds = scoring = 0.0
        stopped = None
        for start, stop in batches:
            images, took = timed(partial(self.generate, start, stop), self.device)
            seconds += took
            score = partial(self.scorer, images, self.prompts[start:stop])
            batch, took = timed(score, self.device)
            scoring += took
            scores += batch
            stopped = check(scores) if check is not None and stop < len(self.prompts) else None
            if stopped:
                break
        return Measurement(
            time_per_image=seconds / len(scores),
            generation_seconds=seconds,
            warmup_seconds=warmup,
            scoring_seconds=scoring,
            scores=scores,
            peak_memory=peak_memory(self.device),
            stopped=stopped,
        )


class Objective:
    """Optuna objective for one study: maximise speedup, score loss as a constraint.

    The baseline's scores come from the study (measured once, by the first worker); its time is
    measured by every worker at start and again every ``BASELINE_EVERY`` trials, and speedups use
    the median of those timings, so clock drift over a long study shows instead of hiding.
    """

    def __init__(
        self,
        bench: Bench,
        space: Space,
        baseline_scores: list[float],
        mode_baselines: dict[str, float] | None = None,
    ) -> None:
        self.bench = bench
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

    def measure_baseline(self) -> Measurement:
        """Measure the plain pipeline; its time joins the baseline timings."""
        accelerators.remove(self.bench.pipe)
        m = self.bench.measure()
        self.baseline_times.append(m.time_per_image)
        self.trials_since_baseline = 0
        return m

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
        started = time.perf_counter()
        configs = self.space.configs(self.space.suggest(trial))
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

        pipe = self.bench.pipe
        # Over the budget is no reason to stop a pareto trial: its loss is an objective.
        check = self.over_budget if self.bench.spec.early_stop and not self.pareto else None
        try:
            with accelerators.apply(pipe, configs, steps=self.bench.spec.steps):
                m = self.bench.measure(check)
        finally:
            accelerators.remove(pipe)  # also when apply or generation raised
            if self.bench.device.type == "cuda":
                torch.cuda.empty_cache()
        speedup, loss = self._record(trial, m, time.perf_counter() - started)
        if m.stopped:  # its numbers and its cost are recorded; it cannot be the answer
            raise optuna.TrialPruned(m.stopped)
        return (speedup, loss) if self.pareto else speedup

    def schedule_of(self, configs: Mapping[str, Mapping[str, Any]]) -> tuple[Any, ...]:
        """What ``configs`` computes at every UNet call (``accelopt.schedules``): equal
        schedules are equal images, so the second is never measured. Kept per configuration:
        each trial compares itself with every finished one."""
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

    def over_budget(self, scores: list[float]) -> str | None:
        """Why to stop a trial now: its score loss is over the budget with the spec's confidence,
        judged on two batches or more (one batch is too few prompts to be sure)."""
        if len(scores) < 2 * self.bench.spec.prompts.batch_size:
            return None
        spec = self.bench.spec
        z = statistics.NormalDist().inv_cdf(spec.early_stop)
        estimate, lower = loss_bound(self.baseline_scores, scores, z)
        if lower <= spec.max_score_loss:
            return None
        return (
            f"stopped after {len(scores)} of {len(self.bench.prompts)} prompts: score loss "
            f"{100 * estimate:.2f}%, over {100 * spec.max_score_loss:g}% with "
            f"{100 * spec.early_stop:g}% confidence (lower bound {100 * lower:.2f}%)"
        )

    def _record(self, trial: optuna.Trial, m: Measurement, wall: float) -> tuple[float, float]:
        speedup = self.reference_time / m.time_per_image
        loss = loss_bound(self.baseline_scores, m.scores, 0.0)[0]  # = score_loss when complete
        limit = self.bench.spec.max_score_loss
        if not self.pareto:  # a pareto study's loss is an objective, not a constraint
            trial.set_constraint("score_loss", loss - limit)
        attrs: dict[str, Any] = {
            **{k: v for k, v in asdict(m).items() if k not in ("scores", "stopped")},
            "prompts_measured": len(m.scores),
            "speedup": speedup,
            "score": sum(m.scores) / len(m.scores),
            "score_loss": loss,
            "constraint": loss - limit,  # mirrored: optuna-dashboard does not show constraints
            # pareto: within the study's own budget, the point codegen answers by default
            "feasible": loss <= limit and not m.stopped,
            "baseline_time_per_image": self.baseline_time,
            "execution": self.bench.mode,
            "reference_time_per_image": self.reference_time,  # the fastest plain pipeline
            "speedup_vs_mode_baseline": self.baseline_time / m.time_per_image,
            "device": device_name(self.bench.device),
            "trial_seconds": wall,
            "overhead_seconds": wall
            - m.generation_seconds
            - m.warmup_seconds
            - m.scoring_seconds
            - m.compile_seconds,
        }
        eager = (
            self.baseline_time if self.bench.mode == "eager" else self.mode_baselines.get("eager")
        )
        if eager is not None:
            attrs["speedup_vs_eager"] = eager / m.time_per_image
        if m.stopped:
            attrs["stopped_early"] = m.stopped
        if self.pareto:  # no constraint to mirror
            del attrs["constraint"]
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return speedup, loss
