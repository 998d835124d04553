"""Early stopping inside a trial: stop one clearly over the quality budget, keep the others.
And what a trial records of its compiling: the structures it met first, their cost, its share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import optuna
import pytest
import torch
from optuna.trial import TrialState

from accelopt import accelerators, execution
from accelopt._types import Pipeline
from accelopt.measure.metrics import loss_bound, score_loss
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.spec import PromptSpec, StudySpec, TimingSpec, load_spec
from accelopt.testing.scorers import PixelEmbeddings
from accelopt.trial.bench import Bench, Check, Measurement
from accelopt.trial.objective import Objective
from accelopt.trial.space import Space


class FakeScorer(PixelEmbeddings):
    """10 per plain image; accelerated images get the next values of ``accelerated``."""

    def __init__(self, pipe: Pipeline, accelerated: Sequence[float]) -> None:
        self.pipe, self.accelerated, self.scored = pipe, list(accelerated), 0

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        assert len(images) == len(prompts)
        if accelerators.active(self.pipe) is None:
            return [10.0] * len(prompts)
        out = self.accelerated[self.scored : self.scored + len(prompts)]
        self.scored += len(prompts)
        return out


def _trial(
    tiny: Callable[[str], Pipeline],
    accelerated: Sequence[float],
    batch_size: int = 2,
    early_stop: float = 0.99,
) -> tuple[optuna.trial.FrozenTrial, FakeScorer]:
    spec = load_spec("TinySD-DDIM-10").replace(
        warmup=0, early_stop=early_stop, prompts=PromptSpec(count=8, batch_size=batch_size)
    )
    pipe = tiny("TinySD")
    set_scheduler(pipe, spec.scheduler)
    scorer = FakeScorer(pipe, accelerated)
    bench = Bench(spec, pipe, scorer, torch.device("cpu"))  # type: ignore[arg-type]
    space = Space.build(bench.traits, spec.steps, ("deepcache",))
    objective = Objective(bench, space, bench.measure().scores)
    objective.time_baseline()
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"deepcache.cache_interval": 3, "deepcache.cache_branch_id": 0})
    study.optimize(objective, n_trials=1)
    return study.trials[0], scorer


def test_a_trial_clearly_over_budget_stops_after_two_batches(
    tiny: Callable[[str], Pipeline],
) -> None:
    trial, scorer = _trial(tiny, [5.0] * 8)
    assert trial.state == TrialState.PRUNED
    a = trial.user_attrs
    assert scorer.scored == 4 and a["prompts_measured"] == 4  # half the prompts never generated
    assert a["stopped_early"] == (
        "stopped after 4 of 8 prompts: CLIP score loss 50.00%, breaking CLIP score loss <= 2% "
        "with 99% confidence (at best 50.00%)"
    )
    assert a["score_loss"] == 0.5 and not a["feasible"]
    assert a["trial_seconds"] > 0 and a["speedup"] > 0  # its cost and partial numbers are kept
    assert accelerators.active(scorer.pipe) is None


def test_a_configuration_stopped_early_is_not_measured_again(
    tiny: Callable[[str], Pipeline],
) -> None:
    spec = load_spec("TinySD-DDIM-10").replace(warmup=0, prompts=PromptSpec(count=8, batch_size=2))
    pipe = tiny("TinySD")
    set_scheduler(pipe, spec.scheduler)
    scorer = FakeScorer(pipe, [5.0] * 16)
    bench = Bench(spec, pipe, scorer, torch.device("cpu"))  # type: ignore[arg-type]
    space = Space.build(bench.traits, spec.steps, ("deepcache",))
    objective = Objective(bench, space, bench.measure().scores)
    objective.time_baseline()
    study = optuna.create_study(direction="maximize")
    for _ in range(2):
        study.enqueue_trial({"deepcache.cache_interval": 3, "deepcache.cache_branch_id": 0})
    study.optimize(objective, n_trials=2)
    first, second = study.trials
    assert "stopped_early" in first.user_attrs and scorer.scored == 4
    assert second.state == TrialState.PRUNED
    assert second.user_attrs["skipped"] == "same configuration as trial 0"


def test_a_trial_under_budget_measures_every_prompt(tiny: Callable[[str], Pipeline]) -> None:
    trial, scorer = _trial(tiny, [10.0] * 8)
    assert trial.state == TrialState.COMPLETE
    assert scorer.scored == 8 and trial.user_attrs["prompts_measured"] == 8
    assert trial.user_attrs["feasible"] and "stopped_early" not in trial.user_attrs


def test_a_noisy_trial_is_not_stopped_on_its_mean_alone(tiny: Callable[[str], Pipeline]) -> None:
    scores = [9.0, 10.2] * 4  # mean loss 4%, over the 2% budget, but not with 99% confidence
    early, lower = loss_bound([10.0] * 8, scores[:4], z=2.326)
    assert early > 0.02 >= lower
    trial, scorer = _trial(tiny, scores)
    assert trial.state == TrialState.COMPLETE and scorer.scored == 8
    assert trial.user_attrs["score_loss"] == pytest.approx(score_loss([10.0] * 8, scores))
    assert not trial.user_attrs["feasible"]  # over budget, measured in full


@pytest.mark.parametrize(("batch_size", "early_stop"), [(4, 0.99), (2, 0.0)])
def test_one_batch_or_early_stop_off_never_stops(
    tiny: Callable[[str], Pipeline], batch_size: int, early_stop: float
) -> None:
    trial, scorer = _trial(tiny, [5.0] * 8, batch_size=batch_size, early_stop=early_stop)
    assert trial.state == TrialState.COMPLETE and scorer.scored == 8
    assert trial.user_attrs["score_loss"] == 0.5 and not trial.user_attrs["feasible"]


def test_loss_bound_matches_score_loss_with_every_prompt() -> None:
    baseline, scores = [30.0, 32.0, 31.0], [29.0, 31.5, 30.0]
    estimate, lower = loss_bound(baseline, scores, z=2.0)
    assert estimate == pytest.approx(score_loss(baseline, scores), abs=1e-15)
    assert lower < estimate
    assert loss_bound(baseline, scores[:1], z=2.0)[1] == float("-inf")
    with pytest.raises(ValueError, match="between 1 and len"):
        loss_bound(baseline, [], z=2.0)


def _two_prompts_unpaired(tiny: Callable[[str], Pipeline]) -> tuple[StudySpec, Pipeline]:
    """TinySD-DDIM-10 on two prompts in one batch, no warm-up, no timing pairs."""
    spec = load_spec("TinySD-DDIM-10").replace(
        warmup=0, prompts=PromptSpec(count=2, batch_size=2), timing=TimingSpec(pairs=0)
    )
    pipe = tiny("TinySD")
    set_scheduler(pipe, spec.scheduler)
    return spec, pipe


class _Compiling(Bench):
    """An eager bench whose measurements "compile" each DeepCache branch they meet first, as
    ``execution`` records a compile: 7.5 s of 10 on the injected clock ``now``, 2.5 s when
    nothing is new."""

    now: list[float]

    def measure(self, check: Check | None = None, keep_images: bool = False) -> Measurement:
        m = super().measure(check, keep_images)
        acc = accelerators.active(self.pipe)
        record = execution.compile_stats(self.pipe)
        key = ("deepcache", acc.configs["deepcache"].cache_branch_id) if acc else None
        compiled = key is not None and key not in record.costs
        if compiled:
            record.costs[key] = execution.Cost(f"deepcache {key[1]} shallow", 7.5, 2)
            record.seconds += 7.5
        self.now[0] += 10.0 if compiled else 2.5
        return m


def test_a_trial_records_the_structures_it_met_first_with_their_cost_and_its_share(
    tiny: Callable[[str], Pipeline],
) -> None:
    spec, pipe = _two_prompts_unpaired(tiny)
    record = execution.compile_stats(pipe)
    record.costs.clear()  # the session's pipeline: what other tests made is not this test's
    # Feasible, then over the budget (so the last is not dominated by it), then feasible.
    scorer = FakeScorer(pipe, [10.0, 10.0, 0.0, 0.0, 10.0, 10.0])
    bench = _Compiling(spec, pipe, scorer, torch.device("cpu"))  # type: ignore[arg-type]
    bench.now = now = [0.0]
    space = Space.build(bench.traits, spec.steps, ("deepcache",))
    objective = Objective(bench, space, [10.0, 10.0], clock=lambda: now[0])
    objective.time_baseline()
    study = optuna.create_study(direction="maximize")
    for interval, branch in ((2, 1), (3, 0), (2, 0)):
        study.enqueue_trial({"deepcache.cache_interval": interval,
                             "deepcache.cache_branch_id": branch})  # fmt: skip
    study.optimize(objective, n_trials=3)
    attrs = [t.user_attrs for t in study.trials]
    assert [a["new_structures"] for a in attrs] == [
        [{"structure": "deepcache 1 shallow", "seconds": 7.5, "graphs": 2}],
        [{"structure": "deepcache 0 shallow", "seconds": 7.5, "graphs": 2}],
        [],  # branch 0's graphs were made by the trial before
    ]
    assert [a["compile_seconds"] for a in attrs] == [7.5, 7.5, 0.0]
    assert [a["trial_seconds"] for a in attrs] == [10.0, 10.0, 2.5]
    assert [a["compile_share"] for a in attrs] == [0.75, 0.75, 0.0]
    assert {(a["stage"], a["execution"], a["kernels"]) for a in attrs} == {
        ("search", "eager", "eager")
    }


class _Timed(Bench):
    """An eager bench whose seconds per image are injected per set of accelerators on
    (``seconds``; the plain pipeline 1.0); ``measured`` lists what it measured."""

    seconds: dict[frozenset[str], float]
    measured: list[frozenset[str]]

    def measure(self, check: Check | None = None, keep_images: bool = False) -> Measurement:
        m = super().measure(check, keep_images)
        acc = accelerators.active(self.pipe)
        on = frozenset(acc.names) if acc is not None else frozenset()
        self.measured.append(on)
        return dataclasses.replace(m, time_per_image=self.seconds.get(on, 1.0))


def test_an_accelerator_that_loses_alone_at_its_fastest_is_searched_no_further(
    tiny: Callable[[str], Pipeline],
) -> None:
    from accelopt.study.results import ENDINGS, ending
    from accelopt.study.warmstart import probe

    spec, pipe = _two_prompts_unpaired(tiny)
    bench = _Timed(spec, pipe, FakeScorer(pipe, [10.0] * 8), torch.device("cpu"))  # type: ignore[arg-type]
    bench.seconds = {frozenset({"deepcache"}): 0.5, frozenset({"tome"}): 1.5,
                     frozenset({"tgate"}): 0.8}  # fmt: skip
    bench.measured = []
    space = Space.build(bench.traits, spec.steps, None)
    objective = Objective(bench, space, [10.0, 10.0])
    objective.time_baseline()
    study = optuna.create_study(direction="maximize")
    assert probe(study, space) == ["deepcache", "tome", "tgate"]
    assert probe(study, space) == []  # once per study
    study.enqueue_trial({**space.fastest("deepcache"), "tome.ratio": 0.3})
    study.optimize(objective, n_trials=4)
    speedups = [t.user_attrs.get("speedup") for t in study.trials]
    assert speedups[:3] == [2.0, pytest.approx(1 / 1.5), 1.25]
    last = study.trials[3]
    assert last.state == TrialState.PRUNED and ending(last) == "lost"
    assert ENDINGS["lost"] == "skipped, its accelerator lost alone"
    assert last.user_attrs["skipped"].startswith("tome lost: alone at its fastest (ratio 0.75")
    # The probes were measured, then the baseline was not re-timed, and the lost one never ran.
    assert bench.measured[1:] == [frozenset({n}) for n in ("deepcache", "tome", "tgate")]


def test_a_trial_of_another_group_releases_what_the_groups_before_it_keep(
    tiny: Callable[[str], Pipeline],
) -> None:
    """In a space of groups (TinyPixArt: one method per plan) a measured trial first releases
    the buffers, and the graphs that read them, of every method outside its plan; it records
    which. Within a plan nothing is released: its next trial reuses them."""
    spec = load_spec("TinyPixArt-DDIM-10").replace(
        warmup=0, prompts=PromptSpec(count=2, batch_size=2), timing=TimingSpec(pairs=0)
    )
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, spec.scheduler)
    bench = Bench(spec, pipe, FakeScorer(pipe, [10.0] * 8), torch.device("cpu"))  # type: ignore[arg-type]
    space = Space.build(bench.traits, spec.steps, None)
    assert len(space.groups) > 2
    objective = Objective(bench, space, [10.0, 10.0])
    objective.time_baseline()
    study = optuna.create_study(direction="maximize")
    seer = {"plan": "taylorseer", "taylorseer.max_order": 1, "taylorseer.modules": "blocks",
            "taylorseer.disable_cache_before_step": 1}  # fmt: skip
    pab = {"plan": "pab", "pab.spatial_attention_block_skip_range": 2,
           "pab.cross_attention_block_skip_range": 1, "pab.timestep_skip_low": 100,
           "pab.timestep_skip_high": 800}  # fmt: skip
    trials = [seer | {"taylorseer.cache_interval": 2}, pab]
    trials += [seer | {"taylorseer.cache_interval": n} for n in (3, 4)]
    for params in trials:
        study.enqueue_trial(params)
    study.optimize(objective, n_trials=4)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert [t.user_attrs.get("released") for t in study.trials] == [
        None,
        ["taylorseer"],
        ["pab"],
        None,
    ]
