"""One trial: apply -> warm up -> generate the prompts (timed) -> score -> remove.

``Bench`` holds what every trial of a study shares (the pipeline, prompts, seeds, scorer and the
plain pipeline's images) and measures one configuration: its time, each image's CLIP score and
its fidelity to the baseline image of the same prompt and seed (PSNR, SSIM, CLIP image
similarity, LPIPS when asked for). ``Objective`` turns a measurement into an Optuna trial:
speedup to maximise, each of the study's bounds (``accelopt.constraints``) a constraint of its
own, every metric a user attribute. In a pareto study one metric is the second objective
instead, and the single-objective shortcuts are off: no dominance skip, no early stop.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import optuna
import torch

from accelopt import accelerators, execution, schedules
from accelopt._types import Pipeline
from accelopt.constraints import Bound, mean_of
from accelopt.errors import AccelOptError
from accelopt.metrics import ClipScorer, loss_bound, prompt_losses, psnr, ssim
from accelopt.prompts import load_prompts
from accelopt.search import Space, dominating_trial
from accelopt.spec import StudySpec
from accelopt.timing import (
    Paired,
    device_name,
    median,
    peak_memory,
    reset_peak_memory,
    timed,
)

__all__ = ["Bench", "Measurement", "Objective"]

# Per-prompt values so far ("score" and each fidelity metric) -> why to stop, or None.
Check = Callable[[Mapping[str, list[float]]], "str | None"]
FIDELITY = ("psnr", "ssim", "clip_image", "lpips")  # measured against the baseline images
BASELINE_EVERY = 10  # re-time the baseline after this many trials, so drift shows in speedups
SSIM_WINDOW = 11  # pixels: SSIM's Gaussian window; smaller images have no SSIM


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
    pair_seconds: float = 0.0  # the alternated pairs after the quality pass (Bench.pairs)
    # Per prompt, each fidelity metric against the bench's reference images (none without them).
    fidelity: dict[str, list[float]] = field(default_factory=dict)
    images: Any = field(default=None, repr=False)  # the images, when the caller kept them

    def summary(self) -> dict[str, Any]:
        """The plain numbers, for a trial's user attributes (no images, no per-prompt lists)."""
        skip = ("scores", "stopped", "fidelity", "images")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip}  # fmt: skip

    def means(self) -> dict[str, float]:
        """Each fidelity metric over the prompts measured (``constraints.mean_of``)."""
        return {k: mean_of(k, v) for k, v in self.fidelity.items() if v}


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
    lpips: Callable[[torch.Tensor, torch.Tensor], list[float]] | None = None  # when measured
    # Told after every generation call: (what: "warm-up", "generating" or "timing pairs",
    # calls done, calls in all), so a long measurement shows progress.
    on_batch: Callable[[str, int, int], None] | None = None
    prompts: list[str] = field(init=False)
    # The plain pipeline's images of every prompt (``set_reference``): fidelity compares with them.
    reference: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        p = self.spec.prompts
        chosen = load_prompts(p.split, p.count, p.set)
        self.prompts = [p.text for p in chosen]
        self.traits = accelerators.PipeTraits.of(self.pipe)
        self._reference_embeddings: torch.Tensor | None = None

    def set_reference(self, images: torch.Tensor) -> None:
        """Compare later measurements with ``images``, the plain pipeline's of every prompt."""
        if len(images) != len(self.prompts):
            raise ValueError(f"need {len(self.prompts)} reference images, got {len(images)}")
        self.reference = images
        self._reference_embeddings = self.scorer.embed_images(images)

    def score(self, images: torch.Tensor, start: int, stop: int) -> dict[str, list[float]]:
        """Per image of prompts start..stop: its CLIP ``score`` and, once there are reference
        images, its fidelity to them (``FIDELITY``; SSIM only where its window fits)."""
        out = {"score": list(self.scorer(images, self.prompts[start:stop]))}
        if self.reference is None or self._reference_embeddings is None:
            return out
        reference = self.reference[start:stop].to(images.device)
        out["psnr"] = psnr(images, reference)  # inf where unchanged: pooled by mean_of
        if min(images.shape[-2:]) >= SSIM_WINDOW:
            out["ssim"] = ssim(images, reference)
        # The scorer embeds the images once more for this (its score keeps no embeddings):
        # scoring time, never generation time.
        similarity = self.scorer.embed_images(images) * self._reference_embeddings[start:stop]
        out["clip_image"] = similarity.sum(dim=-1).clamp(-1.0, 1.0).tolist()
        if self.lpips is not None:
            out["lpips"] = self.lpips(images, reference)
        return out

    def _told(self, what: str, done: int, total: int) -> None:
        if self.on_batch is not None:
            self.on_batch(what, done, total)

    @property
    def timing_prompts(self) -> int:
        """How many prompts one timed call of a pair generates: the spec's timing subset, at
        most every prompt."""
        return min(self.spec.timing.prompts or self.spec.prompts.batch_size, len(self.prompts))

    def time_call(self) -> float:
        """Seconds per image of one call on the timing subset, under the bench's execution mode
        (its graphs were made by the measurement before)."""
        with execution.run(self.pipe, self.mode, self.on_compile):
            _, took = timed(partial(self.generate, 0, self.timing_prompts), self.device)
        return took / self.timing_prompts

    def pairs(self, configs: Mapping[str, Mapping[str, Any]], count: int) -> Paired:
        """``count`` pairs of timed calls on the timing subset, the plain pipeline's and the
        configuration's in alternation (plain first in even pairs, the candidate first in odd
        ones, so a steady drift favours neither). Leaves the pipeline plain."""
        plain, candidate = [], []
        for i in range(count):
            for first in (True, False) if i % 2 == 0 else (False, True):
                accelerators.remove(self.pipe)
                if first:
                    plain.append(self.time_call())
                else:
                    with accelerators.apply(self.pipe, configs, steps=self.spec.steps):
                        candidate.append(self.time_call())
            self._told("timing pairs", i + 1, count)
        accelerators.remove(self.pipe)
        return Paired(plain, candidate)

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

    def measure(self, check: Check | None = None, keep_images: bool = False) -> Measurement:
        """Generate every prompt in batches (timed), after warm-up calls, scoring each batch,
        under the bench's execution mode (a graph missing for a batch is made in warm-up).

        ``check(per-prompt values so far)`` may stop the measurement after a batch by returning
        why. ``keep_images`` keeps the images on the measurement (the baseline's, as reference).
        """
        with execution.run(self.pipe, self.mode, self.on_compile) as compiled:
            spent = compiled.seconds
            m = self._measure(check, compiled, keep_images)
        return dataclasses.replace(m, compile_seconds=compiled.seconds - spent)

    def _measure(
        self, check: Check | None, compiled: execution.Compiled, keep_images: bool
    ) -> Measurement:
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
        warmup = 0.0
        for i, b in enumerate(warm):
            warmup += timed(partial(self.generate, *b), self.device)[1]
            self._told("warm-up", i + 1, len(warm))
        warmup -= compiled.seconds - spent
        reset_peak_memory(self.device)
        values: dict[str, list[float]] = {}
        kept: list[torch.Tensor] = []
        seconds = scoring = 0.0
        stopped = None
        for i, (start, stop) in enumerate(batches):
            images, took = timed(partial(self.generate, start, stop), self.device)
            self._told("generating", i + 1, len(batches))
            seconds += took
            batch, took = timed(partial(self.score, images, start, stop), self.device)
            scoring += took
            for key, got in batch.items():
                values.setdefault(key, []).extend(got)
            if keep_images:
                kept.append(images)
            stopped = check(values) if check is not None and stop < len(self.prompts) else None
            if stopped:
                break
        scores = values.pop("score")
        return Measurement(
            time_per_image=seconds / len(scores),
            generation_seconds=seconds,
            warmup_seconds=warmup,
            scoring_seconds=scoring,
            scores=scores,
            peak_memory=peak_memory(self.device),
            stopped=stopped,
            fidelity=values,
            images=torch.cat(kept) if kept else None,
        )


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
        paired, pairing = None, 0.0
        try:
            with accelerators.apply(pipe, configs, steps=self.bench.spec.steps):
                m = self.bench.measure(check)
            if not m.stopped and self.bench.spec.timing.pairs:
                pairing = time.perf_counter()
                paired = self.bench.pairs(configs, self.bench.spec.timing.pairs)
                pairing = time.perf_counter() - pairing
        finally:
            accelerators.remove(pipe)  # also when apply or generation raised
            if self.bench.device.type == "cuda":
                torch.cuda.empty_cache()
        m = dataclasses.replace(m, pair_seconds=pairing)
        speedup, loss = self._record(trial, m, time.perf_counter() - started, paired)
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
        self, trial: optuna.Trial, m: Measurement, wall: float, paired: Paired | None = None
    ) -> tuple[float, float]:
        spec = self.bench.spec
        unpaired = self.reference_time / m.time_per_image
        # Paired: the median ratio against this mode's plain pipeline in alternated calls,
        # scaled to the fastest plain pipeline (1 when this mode's is the fastest).
        scale = self.reference_time / self.baseline_time
        speedup = unpaired if paired is None else scale * paired.speedup
        # Every metric's mean over the prompts measured (the score loss = score_loss when all).
        metrics = {"score_loss": loss_bound(self.baseline_scores, m.scores, 0.0)[0], **m.means()}
        violations = {b.name: b.violation(metrics[b.name]) for b in self.bounds}
        for name, violation in violations.items():
            trial.set_constraint(name, violation)
        attrs: dict[str, Any] = {
            **m.summary(),
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
            "reference_time_per_image": self.reference_time,  # the fastest plain pipeline
            "speedup_vs_mode_baseline": speedup / scale,
            "device": device_name(self.bench.device),
            "trial_seconds": wall,
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
            low, high, level = paired.interval()
            attrs.update(speedup_interval=[scale * low, scale * high], speedup_level=level,
                         speedup_unpaired=unpaired, pairs=paired.record())  # fmt: skip
        eager = (
            self.baseline_time if self.bench.mode == "eager" else self.mode_baselines.get("eager")
        )
        if eager is not None:  # eager's plain time over this trial's time, paired when it is
            attrs["speedup_vs_eager"] = eager / self.baseline_time * speedup / scale
        if m.stopped:
            attrs["stopped_early"] = m.stopped
        if not violations:  # a pareto study whose one bound is its objective
            del attrs["constraint"]
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return speedup, metrics[spec.pareto_metric] if self.pareto else metrics["score_loss"]
