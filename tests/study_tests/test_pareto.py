"""Pareto studies: speedup and score loss searched together, the frontier exported and picked.

A real pareto study on TinySD (exact trial count, two directions, no single-objective
shortcuts), its export against Optuna's ``best_trials``, and codegen's four kinds of request on a
hand-built frontier where every answer is known.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.cli import main
from accelopt.codegen import read_header
from accelopt.errors import AccelOptError
from accelopt.export import entries_for
from accelopt.measure.pareto import non_dominated
from accelopt.params_store.file import read_store, seed_key, write_entries
from accelopt.params_store.query import Request, find_entry, why_missing
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.spec import PromptSpec, SamplerSpec, load_spec, record_of
from accelopt.storage import open_storage
from accelopt.study.loop import run_study
from accelopt.study.prepare import prepare_study
from accelopt.study.results import Requirement, best_trial, frontier
from accelopt.study.workers import TrialSeededTPE
from accelopt.testing import make_entry
from accelopt.testing.scorers import PixelEmbeddings
from accelopt.trial.bench import Bench
from accelopt.trial.objective import Objective
from accelopt.trial.space import Space, dominating_trial

quiet = {"progress": False, "log": lambda s: None}
NAME = "TinySD-DDIM-10"
BUDGET = 0.5  # the tiny CLIP's losses are a few percent: every trial within it


@pytest.fixture(scope="module")
def pareto(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str, int]:
    """A pareto study of TinySD that searched which accelerators to use; 8 trials."""
    storage = f"sqlite:///{tmp_path_factory.mktemp('pareto') / 'studies.db'}"
    spec = load_spec(NAME).replace(objective="pareto", max_score_loss=BUDGET)
    outcome = run_study(spec, storage=storage, n_trials=8, **quiet)
    return outcome.study, storage, outcome.ran


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


def _brute_front(trials: Sequence[FrozenTrial]) -> set[int]:
    """Trial numbers no other trial beats on both speedup and score loss (by hand)."""

    def beats(a: FrozenTrial, b: FrozenTrial) -> bool:
        sa, la = a.user_attrs["speedup"], a.user_attrs["score_loss"]
        sb, lb = b.user_attrs["speedup"], b.user_attrs["score_loss"]
        return sa >= sb and la <= lb and (sa, la) != (sb, lb)

    return {b.number for b in trials if not any(beats(a, b) for a in trials)}


# ---- the study -------------------------------------------------------------------------------


def test_a_pareto_study_runs_its_budget_with_two_objectives(
    pareto: tuple[optuna.Study, str, int],
) -> None:
    study, _, ran = pareto
    assert ran == 8 and len(study.trials) == 8
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert isinstance(study.sampler, TrialSeededTPE)  # multi-objective TPE, seeded per trial
    assert study.user_attrs["spec"]["objective"] == "pareto"
    complete = _complete(study)
    assert complete
    for t in complete:
        a = t.user_attrs
        assert t.values == [a["speedup"], a["score_loss"]]
        assert a["feasible"] == (a["score_loss"] <= BUDGET)
        # The loss is an objective: no constraint for the sampler or best_trials to filter by.
        assert not any(k.startswith("constraints") for k in t.system_attrs)
        assert "constraint" not in a and "stopped_early" not in a
        assert a["prompts_measured"] == 4
    for t in study.trials:  # the only skip left: no accelerator on (that is the baseline)
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["skipped"] == "no accelerator on: that is the baseline"


def test_frontier_is_optunas_best_trials(pareto: tuple[optuna.Study, str, int]) -> None:
    study, _, _ = pareto
    front = frontier(study.trials)
    assert {t.number for t in front} == {t.number for t in study.best_trials}
    assert {t.number for t in front} == _brute_front(_complete(study))
    speedups = [t.user_attrs["speedup"] for t in front]
    assert speedups == sorted(speedups, reverse=True)  # fastest first
    best = best_trial(study)  # the fastest within the budget is a frontier point
    assert best is not None and best.number in {t.number for t in front}


def test_non_dominated_keeps_ties_and_order() -> None:
    points = [(2.0, 0.01), (1.5, 0.02), (1.2, 0.0), (2.0, 0.01), (2.5, 0.05), (2.4, 0.05)]
    assert non_dominated(points, lambda p: p) == [(2.0, 0.01), (1.2, 0.0), (2.0, 0.01),
                                                  (2.5, 0.05)]  # fmt: skip
    assert non_dominated([], lambda p: p) == []


# ---- export ----------------------------------------------------------------------------------


def test_export_writes_the_frontier_into_the_store(
    pareto: tuple[optuna.Study, str, int], tmp_path: Path
) -> None:
    study, storage, _ = pareto
    entries = entries_for(study, storage)
    key = seed_key("TinySD", "DDIM", 10, ["deepcache", "tgate", "tome"], BUDGET)
    entry = entries[key]
    best = best_trial(study)
    assert best is not None
    assert entry["objective"] == "pareto" and entry["study"]["trial"] == best.number
    trials = {t.number: t for t in study.trials}
    front = [p["trial"] for p in entry["frontier"]]
    assert sorted(front) == sorted(t.number for t in study.best_trials)
    assert [trials[n].user_attrs["speedup"] for n in front] == sorted(
        (trials[n].user_attrs["speedup"] for n in front), reverse=True
    )
    for point in entry["frontier"]:
        a = trials[point["trial"]].user_attrs
        assert point["accelerators"] == a["accelerators"]
        flat = {k: v for knobs in a["accelerators"].values() for k, v in knobs.items()}
        if "warm_up" in flat:
            flat["warmup"] = flat.pop("warm_up")
        assert point["params"] == flat
        for k in ("speedup", "score_loss", "time_per_image", "score", "device"):
            assert point["measured"][k] == a[k]
        # the pairs' plain time when paired, so baseline over measured time is the speedup
        assert point["baseline"] == {"time_per_image": a["paired_baseline_time_per_image"]}
        assert point["heldout"] is None
    # A set's entry holds the frontier of the trials with exactly that set.
    for other in entries.values():
        if other is entry:
            continue
        used = sorted(other["accelerators"])
        same = [t for t in _complete(study) if sorted(t.user_attrs["accelerators"]) == used]
        assert {p["trial"] for p in other["frontier"]} == _brute_front(same)
    store = tmp_path / "store.json"
    write_entries(store, entries)
    assert json.loads(store.read_text())["version"] == 1  # additive: still version 1
    assert read_store(store) == json.loads(json.dumps(entries))


def test_cli_export_skips_confirmation_and_best_list_show_the_frontier(
    pareto: tuple[optuna.Study, str, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study, storage, _ = pareto

    def no_bench(*args: object) -> None:
        raise AssertionError("a pareto export loaded a pipeline to confirm")

    monkeypatch.setattr(Bench, "load", staticmethod(no_bench))
    store = tmp_path / "store.json"
    assert main(["export", "--study", NAME, "--storage", storage, "--store", str(store)]) == 0
    err = capsys.readouterr().err
    assert "held-out confirmation is skipped for a pareto study" in err
    n = len(study.best_trials)
    assert f"(a frontier of {n}) -> {store}" in err
    assert set(read_store(store)) == set(entries_for(study, storage))

    assert main(["best", "--study", NAME, "--storage", storage, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["objective"] == "pareto"
    assert [p["trial"] for p in shown["frontier"]] == [t.number for t in frontier(study.trials)]
    assert main(["best", "--study", NAME, "--storage", storage]) == 0
    assert f"Pareto frontier of {n} trials" in capsys.readouterr().out
    assert main(["list", "--storage", storage]) == 0
    assert f"Pareto frontier of {n}" in capsys.readouterr().out
    # A frontier answers every speed: exporting for one requirement makes no sense.
    argv = ["export", "--study", NAME, "--storage", storage, "--store", str(store)]
    assert main([*argv, "--req-speedup", "1.5"]) == 2
    assert "is a pareto study: its export is the whole frontier" in capsys.readouterr().err


def test_codegen_answers_from_the_exported_frontier(
    pareto: tuple[optuna.Study, str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study, storage, _ = pareto
    store = tmp_path / "store.json"
    write_entries(store, entries_for(study, storage))
    argv = ["codegen", "--pipe", "TinySD", "--sched", "DDIM", "--steps", "10", "--store",
            str(store), "--force"]  # fmt: skip
    front = [t for t in frontier(study.trials) if t.user_attrs["speedup"] > 1.0]
    least = min(front, key=lambda t: t.user_attrs["score_loss"])
    best = best_trial(study)
    assert best is not None
    for flags, chosen in (
        ([], best),
        (["--max-loss", repr(least.user_attrs["score_loss"])], least),
    ):
        out = tmp_path / "fast.py"
        assert main([*argv, *flags, "-o", str(out)]) == 0
        assert f"frontier point: trial {chosen.number}," in capsys.readouterr().out
        header = read_header(out.read_text())
        for name in ("deepcache", "tome", "tgate"):
            stored = chosen.user_attrs["accelerators"].get(name)
            assert (header[name.upper()] is None) == (stored is None)
            assert stored is None or stored.items() <= header[name.upper()].items()


# ---- codegen on a hand-built frontier -----------------------------------------------------------

# (speedup, score loss, seconds per image); trial i is point i, told apart by DeepCache's interval.
POINTS = [(0.9, 0.0, 1.11), (1.5, 0.001, 0.66), (2.0, 0.008, 0.5), (2.5, 0.015, 0.4),
          (3.0, 0.03, 0.33), (4.0, 0.08, 0.25)]  # fmt: skip
TG = {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2}


def _used(i: int) -> dict[str, dict[str, Any]]:
    used: dict[str, dict[str, Any]] = {
        "deepcache": {"cache_interval": i + 2, "cache_branch_id": 0}
    }
    return {**used, "tgate": TG} if i == 5 else used


def frontier_store(budget: float = 0.02) -> dict[str, dict[str, Any]]:
    """One pareto entry: its own answer is the fastest point within ``budget``."""
    own = max((i for i, p in enumerate(POINTS) if p[1] <= budget and p[0] > 1), default=0)
    s, loss, seconds = POINTS[own]
    entry = make_entry("SDXL", "DDIM", 25, _used(own), max_score_loss=budget, speedup=s,
                       score_loss=loss, time_per_image=seconds,
                       study_name="SDXL-DDIM-25")  # fmt: skip
    entry["objective"] = "pareto"
    entry["frontier"] = [
        {"trial": i, "accelerators": _used(i), "params": {},
         "measured": {"speedup": s, "time_per_image": t, "score": 30.0, "score_loss": loss,
                      "peak_memory": None, "device": "NVIDIA H200"},
         "baseline": {"time_per_image": 1.0}, "heldout": None}
        for i, (s, loss, t) in enumerate(POINTS)
    ]  # fmt: skip
    return {entry["key"]: entry}


def picked(request: Request, store: dict[str, dict[str, Any]] | None = None) -> int | None:
    found = find_entry(frontier_store() if store is None else store, request)
    return None if found is None else int(found["study"]["trial"])


def _request(**kw: Any) -> Request:
    return Request("SDXL", "DDIM", 25, **kw)


@pytest.mark.parametrize(
    ("budget", "trial"), [(0.02, 3), (0.01, 2), (0.05, 4), (0.001, 1), (0.1, 5), (0.0005, None)]
)
def test_no_request_takes_the_fastest_point_within_the_studys_own_budget(
    budget: float, trial: int | None
) -> None:
    assert picked(_request(), frontier_store(budget)) == trial


@pytest.mark.parametrize(
    ("req_speedup", "trial"),
    [(1.2, 1), (1.5, 1), (2.0, 2), (2.2, 3), (2.5, 3), (3.5, 5), (4.0, 5), (4.01, None)],
)
def test_min_speedup_takes_the_least_loss_point_that_fast(
    req_speedup: float, trial: int | None
) -> None:
    # 3.5x: trial 5 loses 8%, over the study's 2%: a speed request names no loss budget.
    assert picked(_request(req_speedup=req_speedup)) == trial


@pytest.mark.parametrize(
    ("max_score_loss", "trial"),
    [(0.0, None), (0.001, 1), (0.005, 1), (0.01, 2), (0.015, 3), (0.05, 4), (0.5, 5)],
)
def test_loss_budget_takes_the_fastest_point_within_it(
    max_score_loss: float, trial: int | None
) -> None:
    # 0.0: only trial 0 loses nothing, and it is slower than the plain pipeline.
    assert picked(_request(max_score_loss=max_score_loss)) == trial


@pytest.mark.parametrize(
    ("req_time", "trial"), [(2.0, 1), (0.66, 1), (0.5, 2), (0.45, 3), (0.3, 5), (0.2, None)]
)
def test_time_budget_takes_the_least_loss_point_that_quick(
    req_time: float, trial: int | None
) -> None:
    assert picked(_request(req_time=req_time)) == trial


@pytest.mark.parametrize(
    ("kw", "trial"),
    [
        ({"req_speedup": 2.2, "max_score_loss": 0.05}, 3),
        ({"req_speedup": 2.2, "max_score_loss": 0.01}, None),
        ({"req_time": 0.45, "req_speedup": 2.6}, 4),
        ({"targets": ("deepcache",)}, 3),
        ({"targets": ("deepcache", "tgate")}, None),  # its one point loses 8%
        ({"targets": ("deepcache", "tgate"), "max_score_loss": 0.1}, 5),
    ],
)
def test_requests_mix_and_targets_narrow_the_frontier(
    kw: dict[str, Any], trial: int | None
) -> None:
    assert picked(_request(**kw)) == trial


def test_other_entries_of_the_model_are_points_too() -> None:
    store = frontier_store()
    single = make_entry("SDXL", "DDIM", 25, {"tome": {"ratio": 0.5, "max_downsample": 2}},
                        speedup=3.5, score_loss=0.01, time_per_image=0.29,
                        study_name="another")  # fmt: skip
    store[single["key"]] = single
    found = find_entry(store, _request())
    assert found is not None and found["accelerators"] == single["accelerators"]
    assert picked(_request(req_speedup=3.6), store) == 5
    # Another model's frontier changes nothing for this one: ordinary entries answer as before.
    assert find_entry(frontier_store(), Request("SDXL", "DDIM", 50)) is None
    plain = {single["key"]: single}
    assert find_entry(plain, _request(req_speedup=3.0)) == single


def test_a_point_answers_as_an_entry_of_its_own() -> None:
    found = find_entry(frontier_store(), _request(req_speedup=3.5))
    assert found is not None and "frontier" not in found
    assert found["accelerators"] == _used(5)
    assert found["measured"]["speedup"] == 4.0 and found["baseline"]["time_per_image"] == 1.0
    assert found["study"] == {"name": "SDXL-DDIM-25", "storage": "sqlite:///accelopt.db",
                              "trial": 5}  # fmt: skip
    assert found["key"] == next(iter(frontier_store()))


@pytest.mark.parametrize(
    ("kw", "trial", "why"),
    [
        ({"req_speedup": 5.0}, 5, "the fastest"),
        ({"req_time": 0.2}, 5, "the quickest"),
        ({"max_score_loss": 0.0005}, 1, "the least loss"),
        ({"req_speedup": 2.2, "max_score_loss": 0.01}, 3, "the least loss among points this fast"),
    ],
)
def test_an_unmet_request_names_the_best_available_point(
    kw: dict[str, Any], trial: int, why: str
) -> None:
    message = why_missing(frontier_store(), _request(**kw))
    s, loss, seconds = POINTS[trial]
    assert message.startswith("no stored frontier point answers SDXL DDIM 25 steps, ")
    used = "deepcache+tgate" if trial == 5 else "deepcache"
    assert message.endswith(
        f"best available: SDXL-DDIM-25 trial {trial} ({used}): {s:.2f}x, "
        f"{seconds:.4g} s/image, score loss {100 * loss:.2f}% ({why})"
    )


@pytest.mark.parametrize(
    ("flags", "trial"),
    [
        ([], 3),
        (["--min-speedup", "2.2"], 3),
        (["--req-speedup", "3.5"], 5),
        (["--max-loss", "0.01"], 2),
        (["--max-score-loss", "0.05"], 4),
        (["--max-seconds", "0.5"], 2),
        (["--req-time", "0.3"], 5),
    ],
)
def test_cli_codegen_picks_the_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], trial: int
) -> None:
    store = tmp_path / "store.json"
    write_entries(store, frontier_store())
    out = tmp_path / "fast.py"
    argv = ["codegen", "--pipe", "SDXL", "--sched", "DDIM", "--steps", "25", "--store",
            str(store), *flags, "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert f"frontier point: trial {trial}, {POINTS[trial][0]:.2f}x" in capsys.readouterr().out
    assert read_header(out.read_text())["DEEPCACHE"] == _used(trial)["deepcache"]
    assert f"{POINTS[trial][0]:.2f}x the plain pipeline" in out.read_text()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--min-speedup", "5"], "trial 5 (deepcache+tgate): 4.00x"),
        (["--max-loss", "0.0005"], "trial 1 (deepcache): 1.50x"),
        (["--max-seconds", "0.2"], "trial 5 (deepcache+tgate): 4.00x"),
    ],
)
def test_cli_codegen_unmet_request_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    store = tmp_path / "store.json"
    write_entries(store, frontier_store())
    out = tmp_path / "x.py"
    argv = ["codegen", "--pipe", "SDXL", "--sched", "DDIM", "--steps", "25", "--store",
            str(store), *flags, "-o", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("accelopt: error: no stored frontier point answers")
    assert f"best available: SDXL-DDIM-25 {named}" in err
    assert not out.exists()


# ---- what pareto mode turns off ----------------------------------------------------------------


def _dc(interval: int, branch: int) -> dict[str, dict[str, Any]]:
    return {"deepcache": {"cache_interval": interval, "cache_branch_id": branch}}


def test_no_dominance_skip_in_pareto_mode() -> None:
    feasible = optuna.trial.create_trial(
        value=2.0, user_attrs={"accelerators": _dc(3, 0), "feasible": True, "speedup": 2.0}
    )
    assert dominating_trial(_dc(2, 1), [feasible]) is not None  # single objective: skipped
    assert dominating_trial(_dc(2, 1), [feasible], dominance=False) is None
    same = dominating_trial(_dc(3, 0), [feasible], dominance=False)  # never run twice, still
    assert same is not None and same[1].startswith("same configuration as trial")


@pytest.mark.usefixtures("timings")  # conftest's steady clock
def test_a_pareto_grid_runs_every_point(tmp_path: Path) -> None:
    spec = load_spec("TinySD-DDIM-10-deepcache").replace(
        objective="pareto", sampler=SamplerSpec("grid", 0), warmup=0,
        prompts=PromptSpec(count=1, batch_size=1),
    )  # fmt: skip
    # one prompt and a steady clock: what is asserted is which points ran, not their speed
    outcome = run_study(spec, storage=f"sqlite:///{tmp_path / 's.db'}", n_trials=12, **quiet)
    points = {tuple(sorted(t.params.items())) for t in outcome.study.trials}
    # 4 intervals x 3 branches (TinySD's branch 2 computes branch 1's images: left out), each
    # once; no dominance skip on a frontier, and no repeat left to skip.
    assert len(points) == 12
    states = [t.state for t in outcome.study.trials]
    assert states == [TrialState.COMPLETE] * 12


class OverBudget(PixelEmbeddings):
    """10 per plain image, 5 per accelerated one: a 50% loss, clear after two batches."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        return [10.0 if accelerators.active(self.pipe) is None else 5.0] * len(prompts)


@pytest.mark.parametrize("objective", ["speedup", "pareto"])
def test_early_stopping_is_off_in_pareto_mode(
    tiny: Callable[[str], Pipeline], objective: str
) -> None:
    spec = load_spec(NAME).replace(
        warmup=0, prompts=PromptSpec(count=8, batch_size=2), objective=objective
    )
    pipe = tiny("TinySD")
    set_scheduler(pipe, spec.scheduler)
    bench = Bench(spec, pipe, OverBudget(pipe), torch.device("cpu"))  # type: ignore[arg-type]
    objective_ = Objective(bench, Space.build(bench.traits, spec.steps, ("deepcache",)), [])
    objective_.baseline_scores = bench.measure().scores
    objective_.time_baseline()
    directions = ["maximize", "minimize"] if objective == "pareto" else ["maximize"]
    study = optuna.create_study(directions=directions)
    study.enqueue_trial({"deepcache.cache_interval": 3, "deepcache.cache_branch_id": 0})
    study.optimize(objective_, n_trials=1)
    (trial,) = study.trials
    if objective == "speedup":
        assert trial.state == TrialState.PRUNED and trial.user_attrs["prompts_measured"] == 4
        return
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["prompts_measured"] == 8
    assert trial.values == [trial.user_attrs["speedup"], pytest.approx(0.5)]
    assert not trial.user_attrs["feasible"] and "stopped_early" not in trial.user_attrs


# ---- identity, requirements, spec, warm start --------------------------------------------------


def test_objective_is_part_of_a_studys_identity(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec("TinySD-DDIM-10-deepcache")
    run_study(spec, storage=storage, n_trials=1, **quiet)
    with pytest.raises(AccelOptError, match=r"run with objective='speedup', not 'pareto'"):
        run_study(spec.replace(objective="pareto"), storage=storage, **quiet)

    backend, url = open_storage(str(tmp_path / "other.journal"))
    prepare_study(backend, url, spec.replace(objective="pareto"), 4)
    with pytest.raises(AccelOptError, match=r"run with objective='pareto', not 'speedup'"):
        prepare_study(backend, url, spec, 4)


def test_a_study_stored_before_objectives_is_a_speedup_study(tmp_path: Path) -> None:
    backend, url = open_storage(str(tmp_path / "s.journal"))
    spec = load_spec("TinySD-DDIM-10-deepcache")
    legacy = {k: v for k, v in record_of(spec).items() if k != "objective"}
    study = optuna.create_study(study_name=spec.name, storage=backend, direction="maximize")
    study.set_user_attr("spec", legacy)
    prepare_study(backend, url, spec, 4)  # resumes
    with pytest.raises(AccelOptError, match=r"objective='speedup', not 'pareto'"):
        prepare_study(backend, url, spec.replace(objective="pareto"), 4)
    # Two directions under a speedup record (made by hand): refused, never mixed.
    odd = optuna.create_study(study_name="odd", storage=backend, directions=["maximize"] * 2)
    odd.set_user_attr("spec", legacy)
    with pytest.raises(AccelOptError, match=r"has 2 objective\(s\), not the 1 of objective="):
        prepare_study(backend, url, spec.replace(name="odd"), 4)


def test_the_dashboard_reads_the_objectives_names(tmp_path: Path) -> None:
    import warnings

    backend, url = open_storage(str(tmp_path / "s.journal"))
    spec = load_spec("TinySD-DDIM-10-deepcache")
    old = optuna.create_study(study_name=spec.name, storage=backend, direction="maximize")
    old.set_user_attr("spec", record_of(spec))  # stored before names were set
    assert old.metric_names is None  # optuna-dashboard: "Objective 0"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_study(backend, url, spec, 4)  # its next run names it
    assert [w for w in caught if w.category is optuna.exceptions.ExperimentalWarning] == []
    assert optuna.load_study(study_name=spec.name, storage=backend).metric_names == ["speedup"]
    pareto = spec.replace(name="front", objective="pareto", pareto_metric="psnr")
    prepare_study(backend, url, pareto, 4)
    reloaded = optuna.load_study(study_name="front", storage=backend)
    assert reloaded.metric_names == ["speedup", "psnr"]


def test_a_worker_cannot_join_with_another_objective(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = str(tmp_path / "s.journal")
    backend, url = open_storage(journal)
    prepare_study(backend, url, load_spec("TinySD-DDIM-10-deepcache"), 4)
    argv = ["worker", "--study", "TinySD-DDIM-10-deepcache", "--storage", journal]
    assert main([*argv, "--objective", "pareto"]) == 2
    err = capsys.readouterr().err
    assert "is stored with objective='speedup', not 'pareto'" in err


def test_requirements_are_refused_for_a_pareto_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_spec(NAME).replace(objective="pareto")
    with pytest.raises(AccelOptError, match="is a pareto study: it keeps the whole frontier"):
        run_study(spec, storage=str(tmp_path / "s.journal"), requirement=Requirement(2.0))
    argv = ["run", "--study", NAME, "--objective", "pareto", "--storage",
            str(tmp_path / "s.journal"), "--req-time", "0.1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not stop at time per image <= 0.1 s" in err[0]


def test_spec_objective_is_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{NAME}.toml"
    path.write_text('objective = "pareto"\n')
    assert load_spec(path=path).objective == "pareto"
    assert load_spec(NAME).objective == "speedup"
    path.write_text('objective = "fastest"\n')
    with pytest.raises(AccelOptError, match=r"objective='fastest' is out of range; allowed: "
                                            r"speedup, pareto"):  # fmt: skip
        load_spec(path=path)
    path.write_text("objective = 2\n")
    with pytest.raises(AccelOptError, match="objective must be a string"):
        load_spec(path=path)
    with pytest.raises(SystemExit):
        main(["run", "--study", NAME, "--objective", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def test_a_pareto_study_warm_starts_from_its_neighbour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # Every trial feasible, whatever the tiny pipeline's noise images score.
    monkeypatch.setattr("accelopt.trial.objective.loss_bound", lambda b, s, z: (0.0, 0.0))
    common = ["--storage", "studies.journal", "--quiet"]
    assert main(["run", "--study", "TinySD-DDIM-10-deepcache", "--n-trials", "2", *common]) == 0
    assert main(["run", "--study", "TinySD-UniPC-10-deepcache", "--n-trials", "2", *common,
                 "--objective", "pareto"]) == 0  # fmt: skip
    storage = open_storage("studies.journal")[0]
    first = optuna.load_study(study_name="TinySD-DDIM-10-deepcache", storage=storage)
    second = optuna.load_study(study_name="TinySD-UniPC-10-deepcache", storage=storage)
    best = best_trial(first)
    assert best is not None
    assert second.trials[0].user_attrs["warm_start"] == "TinySD-DDIM-10-deepcache"
    assert second.trials[0].user_attrs["accelerators"] == best.user_attrs["accelerators"]
    assert second.trials[0].values == [second.trials[0].user_attrs["speedup"], 0.0]
    assert len(second.trials) == 2
