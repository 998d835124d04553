"""Held-out confirmation: a configuration that fails on unseen prompts is never exported."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.cli import main
from accelopt.export import entries_for
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.prompts import load_prompts
from accelopt.spec import PromptSpec, load_spec, record_of
from accelopt.storage import open_storage
from accelopt.study.confirm import (
    MIN_PAIRS,
    SEED_OFFSET,
    candidates,
    confirm,
    confirmations,
    pending,
)
from accelopt.testing.scorers import PixelEmbeddings
from accelopt.trial.bench import Bench

# Confirmation's timed pairs come from the ``timings`` fixture (a steady 2x): these tests are
# about quality, and must not depend on this machine's load.
pytestmark = pytest.mark.usefixtures("timings")

SPEC = load_spec("TinySD-DDIM-10-deepcache").replace(
    warmup=0, prompts=PromptSpec(count=4, batch_size=2)
)
# Search speedups, and the score each configuration gets on the held-out prompts (plain: 10).
SEARCH = {5: 3.0, 3: 2.0, 2: 1.5}
HELDOUT = {5: 5.0, 3: 9.9, 2: 10.0}  # interval 5 loses 50% on unseen prompts; 3 loses 1%


class Scorer(PixelEmbeddings):
    def __init__(self, pipe: Pipeline) -> None:
        self.pipe, self.prompts, self.seen = pipe, [], set()

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        self.prompts += prompts
        active = accelerators.active(self.pipe)
        if active is None:
            return [10.0] * len(prompts)
        interval = active.configs["deepcache"].cache_interval
        self.seen.add(interval)
        return [HELDOUT[interval]] * len(prompts)


class Flat(PixelEmbeddings):
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        return [10.0] * len(prompts)


def _study(tmp_path: Path) -> tuple[optuna.Study, str]:
    url = str(tmp_path / "studies.journal")
    study = optuna.create_study(study_name=SPEC.name, storage=open_storage(url)[0],
                                direction="maximize")  # fmt: skip
    study.set_user_attr("spec", record_of(SPEC))
    for interval, speedup in SEARCH.items():
        configs = {"deepcache": {"cache_interval": interval, "cache_branch_id": 0}}
        attrs: dict[str, Any] = {"accelerators": configs, "speedup": speedup, "feasible": True,
                                 "score_loss": 0.0, "time_per_image": 1 / speedup}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(value=speedup, user_attrs=attrs))
    return study, url


@pytest.fixture
def bench(tiny: Callable[[str], Pipeline]) -> Bench:
    pipe = tiny("TinySD")
    set_scheduler(pipe, SPEC.scheduler)
    return Bench(SPEC, pipe, Scorer(pipe), torch.device("cpu"))  # type: ignore[arg-type]


def test_the_best_that_fails_held_out_is_never_exported(tmp_path: Path, bench: Bench) -> None:
    study, url = _study(tmp_path)
    assert (
        next(iter(entries_for(study, url).values()))["accelerators"]["deepcache"]["cache_interval"]
        == 5
    )  # unconfirmed: the search's best
    results = confirm(study, bench, k=2)
    assert [(r.trial, r.passed) for r in results] == [(0, False), (1, True)]
    assert results[0].score_loss == 0.5 and results[1].score_loss == pytest.approx(0.01)
    assert bench.scorer.seen == {5, 3}  # type: ignore[attr-defined]  # only the top two ran
    assert all(len(r.speedups) == MIN_PAIRS and r.speedup == 2.0 for r in results)  # steady
    (entry,) = entries_for(study, url).values()
    assert entry["accelerators"]["deepcache"]["cache_interval"] == 3
    assert entry["heldout"]["passed"] and entry["heldout"]["score_loss"] == pytest.approx(0.01)
    assert entry["measured"]["speedup"] == 2.0  # the search's numbers beside the held-out ones


def test_held_out_means_other_prompts_and_fresh_seeds(tmp_path: Path, bench: Bench) -> None:
    study, _ = _study(tmp_path)
    (result,) = confirm(study, bench, k=1)
    heldout = {p.text for p in load_prompts("heldout")}
    search = {p.text for p in load_prompts(SPEC.prompts.split)}
    scored = bench.scorer.prompts  # type: ignore[attr-defined]
    assert scored and set(scored) <= heldout and not set(scored) & search
    assert result.seed == SPEC.prompts.seed + SEED_OFFSET and result.prompts == 4
    assert confirmations(study) == {0: {**result.__dict__}}


def test_when_every_candidate_fails_nothing_is_exported(tmp_path: Path, bench: Bench) -> None:
    study, url = _study(tmp_path)
    HELDOUT[3], HELDOUT[2] = 5.0, 5.0
    try:
        confirm(study, bench, k=3)
    finally:
        HELDOUT[3], HELDOUT[2] = 9.9, 10.0
    assert entries_for(study, url) == {}
    assert [t.number for t in candidates(study, 3)] == [0, 1, 2]


def test_export_confirms_first_and_says_why_nothing_was_written(
    tmp_path: Path, bench: Bench, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _, url = _study(tmp_path)
    monkeypatch.setattr(Bench, "load", staticmethod(lambda *args: bench))
    store = tmp_path / "store.json"
    argv = ["export", "--study", SPEC.name, "--storage", url, "--store", str(store)]
    assert main([*argv, "--top-k", "1"]) == 0
    err = capsys.readouterr().err
    assert "trial 0 on 4 held-out prompts" in err and "FAILS" in err
    assert "nothing to export: none passed held-out confirmation" in err
    assert not store.exists()
    assert main([*argv, "--top-k", "-1"]) == 2
    assert "--top-k must be 0" in capsys.readouterr().err


def test_a_resumed_study_confirms_only_its_new_leaders(tmp_path: Path, bench: Bench) -> None:
    study, url = _study(tmp_path)
    assert [r.trial for r in confirm(study, bench, k=2)] == [0, 1]
    configs = {"deepcache": {"cache_interval": 2, "cache_branch_id": 0}}
    attrs = {"accelerators": configs, "speedup": 9.0, "feasible": True, "score_loss": 0.0,
             "time_per_image": 0.1}  # fmt: skip
    study.add_trial(optuna.trial.create_trial(value=9.0, user_attrs=attrs))  # a new leader
    bench.scorer.seen.clear()  # type: ignore[attr-defined]
    assert [t.number for t in pending(study, 2)] == [3]
    assert [r.trial for r in confirm(study, bench, k=2)] == [3]
    assert bench.scorer.seen == {2}  # type: ignore[attr-defined]  # only the new one ran
    assert sorted(confirmations(study) or {}) == [0, 1, 3]
    (entry,) = entries_for(study, url).values()
    assert entry["study"]["trial"] == 3 and entry["heldout"]["passed"]


def test_run_export_says_when_the_searchs_best_is_not_what_it_stored(
    tmp_path: Path, bench: Bench, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _, url = _study(tmp_path)
    (tmp_path / "studies").mkdir()  # SPEC as a spec file, so that run finds the stored study's
    (tmp_path / "studies" / f"{SPEC.name}.toml").write_text(
        'pipeline = "TinySD"\nscheduler = "DDIM"\nsteps = 10\ntargets = ["deepcache"]\n'
        "warmup = 0\n[prompts]\ncount = 4\nbatch_size = 2\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Bench, "load", staticmethod(lambda *args: bench))
    store = tmp_path / "store.json"
    argv = ["run", "--study", SPEC.name, "--storage", url, "--n-trials", "3", "--quiet",
            "--export", "--store", str(store), "--top-k", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "finished already (3 trials)" in out and "best trial 0:" in out  # the search's best
    assert ("  not exported: held-out 2.00x (2.00x-2.00x, 98% interval over 7 pairs), FAILS "
            "CLIP score loss <= 2%; the store holds trial 1 for this study") in out  # fmt: skip
    (entry,) = json.loads(store.read_text())["entries"].values()
    assert entry["study"]["trial"] == 1


def test_candidates_of_another_group_release_what_the_one_before_kept(
    tmp_path: Path, tiny: Callable[[str], Pipeline]
) -> None:
    """In a study of groups each candidate first releases what the other groups' methods keep
    (as the search's trials do): after TaylorSeer's candidate and PAB's, only PAB's remain."""
    from optuna.distributions import CategoricalDistribution

    from accelopt import execution

    spec = load_spec("TinyPixArt-DDIM-10").replace(
        warmup=0, prompts=PromptSpec(count=2, batch_size=2)
    )
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, spec.scheduler)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("spec", record_of(spec))
    plans = {"taylorseer": {"cache_interval": 2, "max_order": 1, "disable_cache_before_step": 1},
             "pab": {"spatial_attention_block_skip_range": 2}}  # fmt: skip
    for (plan, knobs), speedup in zip(plans.items(), (2.0, 1.5), strict=True):
        attrs = {"accelerators": {plan: knobs}, "speedup": speedup, "feasible": True,
                 "score_loss": 0.0, "time_per_image": 1 / speedup}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(
            value=speedup, params={"plan": plan}, user_attrs=attrs,
            distributions={"plan": CategoricalDistribution(list(plans))},
        ))  # fmt: skip
    bench = Bench(spec, pipe, Flat(), torch.device("cpu"))  # type: ignore[arg-type]
    assert [r.trial for r in confirm(study, bench, k=2)] == [0, 1]
    assert execution.release(pipe, keep=("pab",)) == ()  # TaylorSeer's went before PAB's ran
