"""The measuring instrument: a loaded pipeline with its prompts, seeds and scorers.

``Bench`` holds what every trial of a study shares (the pipeline, prompts, seeds, scorer and the
plain pipeline's images) and measures one configuration: its time, each image's CLIP score and
its fidelity to the baseline image of the same prompt and seed (PSNR, SSIM, CLIP image
similarity, LPIPS when asked for), under an execution mode. ``Bench.load`` builds one from a
spec; the objective, held-out confirmation, the report and bench/ measure with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from accelopt import accelerators, execution
from accelopt._types import Pipeline
from accelopt.measure.constraints import mean_of
from accelopt.measure.metrics import ClipScorer, psnr, ssim
from accelopt.measure.timing import Paired, peak_memory, reset_peak_memory, timed
from accelopt.progress import Progress
from accelopt.prompts import load_prompts
from accelopt.spec import StudySpec

__all__ = ["FIDELITY", "SSIM_WINDOW", "Bench", "Check", "Measurement"]

# Per-prompt values so far ("score" and each fidelity metric) -> why to stop, or None.
Check = Callable[[Mapping[str, list[float]]], "str | None"]
FIDELITY = ("psnr", "ssim", "clip_image", "lpips")  # measured against the baseline images
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
    # Told after it, with its seconds: (what, seconds compiling and capturing).
    on_compiled: Callable[[str, float], None] | None = None
    lpips: Callable[[torch.Tensor, torch.Tensor], list[float]] | None = None  # when measured
    # Told after every generation call: (what: "warm-up", "generating" or "timing pairs",
    # calls done, calls in all), so a long measurement shows progress.
    on_batch: Callable[[str, int, int], None] | None = None
    prompts: list[str] = field(init=False)
    # The plain pipeline's images of every prompt (``set_reference``): fidelity compares with them.
    reference: torch.Tensor | None = field(init=False, default=None)

    @classmethod
    def load(
        cls,
        spec: StudySpec,
        device: str | None = None,
        weights: str = "pretrained",
        log: Callable[[str], None] = lambda s: None,
        progress: Progress | None = None,
    ) -> Bench:
        """The pipeline, scheduler, prompts and scorers a study of ``spec`` measures with.

        ``weights="random"``: the architecture with random weights (speed only), and no
        pretrained scorer either: nothing can be downloaded for them.

        >>> bench = Bench.load(load_spec("TinySD-DDIM-10"))  # doctest: +SKIP
        """
        from accelopt.measure.metrics import Lpips
        from accelopt.pipelines import TINY_PIPELINES, load_pipeline, model_info
        from accelopt.pipelines.schedulers import set_scheduler

        info = model_info(spec.pipeline)
        tiny = info is not None and info.name in TINY_PIPELINES
        log(f"{spec.name}: loading {spec.pipeline} ({'random' if tiny else weights} weights) ...")
        progress = progress or Progress(enabled=False)
        phase = progress.phase(f"{spec.name}: loading {spec.pipeline}", announce=False)
        # upstream's loading and download bars only where our own bars show
        with progress.upstream(), phase as loading:
            pipe = load_pipeline(spec.pipeline, weights=weights, dtype=spec.dtype, device=device)  # type: ignore[arg-type]
            set_scheduler(pipe, spec.scheduler)
            loading.tell("the CLIP scorer")
            pretrained = "" if weights == "random" else spec.metric.pretrained
            scorer = ClipScorer(spec.metric.model, pretrained, pipe.device)
            lpips = None
            if spec.measures_lpips:  # the user's weights or none: never downloaded, never random
                net = spec.metric.lpips or "alex"
                lpips = Lpips(net, spec.metric.lpips_weights or None, pipe.device)
        return cls(spec, pipe, scorer, pipe.device, lpips=lpips)

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

    def _run(self) -> AbstractContextManager[execution.Compiled]:
        """``execution.run`` of the bench's pipeline under its mode, telling its callbacks."""
        return execution.run(self.pipe, self.mode, self.on_compile, on_compiled=self.on_compiled)

    def time_call(self) -> float:
        """Seconds per image of one call on the timing subset, under the bench's execution mode
        (its graphs were made by the measurement before)."""
        with self._run():
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
        with self._run() as compiled:
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
