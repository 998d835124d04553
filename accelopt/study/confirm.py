"""Held-out confirmation: measure a study's top answers again on prompts the search never saw.

The best of many noisy trials is biased upward: a configuration that looked best on the search
prompts can miss the quality budget on the next ones. Before a study's answer is exported, its
``k`` fastest feasible configurations are generated again on the held-out prompts with fresh
seeds, scored against the plain pipeline's images of those prompts and seeds, and re-timed in
at least ``MIN_PAIRS`` pairs alternated with the baseline (``accelopt.measure.timing.Paired``).

A confirmation can fail twice over: a bound that does not hold on the held-out prompts, or a
speed the pairs cannot tell from the baseline's. Its ``speed`` is ``faster`` when the whole
interval of the median ratio lies above 1 (or above a ``--req-speedup``), ``slower`` when it
lies at or below, and ``undecidable`` when the noise straddles it. Export then takes the best
one that passed, never one that failed, and an undecidable one only when forced
(``accelopt.export``).

A pareto study is not confirmed before export (``accelopt export`` says so): passing is judged
against one budget, and its frontier answers every budget. Confirmations stored anyway are
attached to the frontier's points, and filter nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt import accelerators, execution
from accelopt.measure.constraints import quality_text
from accelopt.measure.metrics import score_loss
from accelopt.measure.timing import interval_text
from accelopt.trial.bench import Bench
from accelopt.trial.space import PLAN

__all__ = [
    "SEED_OFFSET",
    "TOP_K",
    "Confirmation",
    "candidates",
    "confirm",
    "confirmations",
    "describe",
    "judgement",
    "pending",
]

TOP_K = 3
# Alternated pairs a confirmation re-times at least (the spec's, if more). Their range is the
# interval export decides on (98% for the median of the pairs' distribution); under steady
# noise it holds the median of 7 fresh pairs 93% of the time, against 64% for the range of 3
# (by ranks; docs/BENCHMARKS.md "Export's interval on a loaded 2-core CPU" measures it).
MIN_PAIRS = 7
SEED_OFFSET = 1_000_003  # held-out prompt i gets seed + SEED_OFFSET + i: never a search seed


@dataclass(frozen=True)
class Confirmation:
    """One configuration measured again on the held-out prompts."""

    trial: int
    passed: bool  # every bound held on the held-out prompts and the speed is "faster"
    score_loss: float
    speedup: float  # the median of the alternated pairs' ratios
    speedups: list[float]  # each pair's ratio
    prompts: int
    seed: int
    # Each fidelity metric's mean on the held-out prompts, against their baseline images.
    fidelity: dict[str, float] = dataclasses.field(default_factory=dict)
    failed: list[str] = dataclasses.field(default_factory=list)  # the bounds that did not hold
    interval: list[float] = dataclasses.field(default_factory=list)  # [low, high] of the speedup
    level: float = 0.0  # the probability the interval covers the median ratio
    speed: str = ""  # "faster", "undecidable" or "slower" than the threshold, by the interval
    threshold: float = 1.0  # what the speed was judged against: 1 or the required speedup


def candidates(study: optuna.Study, k: int = TOP_K, requirement: Any = None) -> list[FrozenTrial]:
    """The ``k`` fastest feasible completed trials, one per configuration; with a requirement
    (``accelopt.study.loop.Requirement``), the first ``k`` trials that meet it."""
    feasible = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.user_attrs.get("feasible")]  # fmt: skip
    if requirement is not None and requirement.active:
        ordered = [t for t in feasible if requirement.met_by(t)]
    else:
        ordered = sorted(feasible, key=lambda t: -t.user_attrs["speedup"])
    chosen: list[FrozenTrial] = []
    for t in ordered:
        if all(t.user_attrs["accelerators"] != c.user_attrs["accelerators"] for c in chosen):
            chosen.append(t)
    return chosen[:k]


def confirm(
    study: optuna.Study,
    bench: Bench,
    k: int = TOP_K,
    pairs: int = 1,
    log: Callable[[str], None] = lambda s: None,
    requirement: Any = None,
) -> list[Confirmation]:
    """Confirm those of the top ``k`` configurations of ``study`` not confirmed yet, with
    ``bench`` (the study's pipeline); adds them to the study's ``confirmations`` and returns
    them. A study resumed after an export thus confirms only its new leaders. Each is re-timed
    in ``max(pairs, MIN_PAIRS, the spec's timing.pairs)`` alternated pairs."""
    todo = pending(study, k, requirement)
    if not todo:
        return []

    spec = bench.spec
    prompts = dataclasses.replace(
        spec.prompts, split="heldout", seed=spec.prompts.seed + SEED_OFFSET
    )
    heldout = Bench(
        spec.replace(prompts=prompts),
        bench.pipe,
        bench.scorer,
        bench.device,
        bench.mode,
        lpips=bench.lpips,
        on_compile=bench.on_compile,
        on_compiled=bench.on_compiled,
        on_batch=bench.on_batch,
    )
    pairs = max(pairs, MIN_PAIRS, spec.timing.pairs)
    speed = getattr(requirement, "speedup", None) or 1.0
    accelerators.remove(heldout.pipe)
    reference = heldout.measure(keep_images=True)
    heldout.set_reference(reference.images)
    results = []
    for trial in todo:
        configs = trial.user_attrs["accelerators"]
        if PLAN in trial.params:  # a study of groups: as its trials did (``Objective``)
            execution.release(heldout.pipe, keep=accelerators.parse_targets(trial.params[PLAN]))
        try:
            with accelerators.apply(heldout.pipe, configs, steps=spec.steps):
                m = heldout.measure()
        finally:
            accelerators.remove(heldout.pipe)
        paired = heldout.pairs(configs, pairs)  # A, B, B, A ...: drift hits both alike
        low, high, level = paired.interval()
        metrics = {"score_loss": score_loss(reference.scores, m.scores), **m.means()}
        failed = [b.describe() for b in spec.bounds() if not b.holds(metrics.get(b.name))]
        verdict = paired.verdict(speed)
        result = Confirmation(
            trial=trial.number,
            passed=not failed and verdict == "faster",
            score_loss=metrics["score_loss"],
            speedup=paired.speedup,
            speedups=paired.ratios,
            prompts=len(m.scores),
            seed=prompts.seed,
            fidelity={k: v for k, v in metrics.items() if k != "score_loss"},
            failed=failed,
            interval=[low, high],
            level=level,
            speed=verdict,
            threshold=speed,
        )
        shown = quality_text(metrics)
        log(f"{study.study_name}: trial {trial.number} on {result.prompts} held-out prompts: "
            f"{describe(result)}, {shown} -> {judgement(result)}")  # fmt: skip
        results.append(result)
    stored = study.user_attrs.get("confirmations") or {}
    stored.update({str(r.trial): dataclasses.asdict(r) for r in results})
    study.set_user_attr("confirmations", stored)
    return results


def describe(c: Confirmation | dict[str, Any]) -> str:
    """``1.52x (1.31x-1.60x, 98% interval over 7 pairs)``: a confirmation's speed."""
    r = c if isinstance(c, dict) else dataclasses.asdict(c)
    pairs = len(r.get("speedups") or [])
    return f"{r['speedup']:.2f}x" + interval_text(r.get("interval"), r.get("level"), pairs)


def judgement(c: Confirmation | dict[str, Any]) -> str:
    """``passes``, or why not: the bounds that failed, or a speed the pairs could not tell."""
    r = c if isinstance(c, dict) else dataclasses.asdict(c)
    if r["passed"]:
        return "passes"
    why = list(r.get("failed") or [])
    threshold = r.get("threshold", 1.0)
    if r.get("speed") == "undecidable":
        why.append(f"UNDECIDABLE: the interval straddles {threshold:g}x (noise)")
    elif r.get("speed") == "slower":
        why.append(f"not faster than {threshold:g}x")
    return "FAILS " + "; ".join(why)


def pending(study: optuna.Study, k: int = TOP_K, requirement: Any = None) -> list[FrozenTrial]:
    """The top ``k`` candidates that have no held-out confirmation yet."""
    done = confirmations(study) or {}
    return [t for t in candidates(study, k, requirement) if t.number not in done]


def confirmations(study: optuna.Study) -> dict[int, dict[str, Any]] | None:
    """Stored confirmations by trial number; None when the study was never confirmed."""
    stored = study.user_attrs.get("confirmations")
    return None if stored is None else {int(n): c for n, c in stored.items()}
