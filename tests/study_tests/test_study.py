"""Running studies end to end on the tiny pipelines: budgets, resume, grid, modes, failures."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.accelerators.schedules import Calls, does_at_least, schedule
from accelopt.errors import AccelOptError
from accelopt.measure import load
from accelopt.measure.load import CpuReading
from accelopt.measure.metrics import ClipScorer
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.spec import SamplerSpec, load_spec
from accelopt.storage import open_storage, storage_label
from accelopt.study.loop import run_study
from accelopt.study.prepare import pick_mode
from accelopt.study.results import Requirement, best_trial
from accelopt.testing import render, tiny_pipeline
from accelopt.trial.bench import Bench
from accelopt.trial.objective import Objective
from accelopt.trial.space import Space

quiet = {"progress": False, "log": lambda s: None}


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state.is_finished()]


def test_budget_resume_and_finished_study(storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec("TinySD-DDIM-10")
    first = run_study(spec, storage=storage, n_trials=3, **quiet)
    assert (first.ran, len(_finished(first.study))) == (3, 3)

    second = run_study(spec, storage=storage, n_trials=5, **quiet)
    assert (second.ran, len(_finished(second.study))) == (2, 5)
    assert [t.number for t in second.study.trials] == [0, 1, 2, 3, 4]  # nothing repeated

    # A finished study answers without loading a model.
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished study loaded its pipeline")

    monkeypatch.setattr(Bench, "load", staticmethod(no_model))
    third = run_study(spec, storage=storage, **quiet)
    assert third.already_finished and third.ran == 0 and third.exit_code == 0
    assert len(_finished(third.study)) == 5


def test_trials_record_constraint_and_best_is_feasible(storage: str) -> None:
    outcome = run_study(load_spec("TinySD-DDIM-10"), storage=storage, n_trials=6, **quiet)
    assert outcome.study.directions == [optuna.study.StudyDirection.MAXIMIZE]  # one objective
    assert outcome.study.user_attrs["spec"]["objective"] == "speedup"
    complete = [t for t in outcome.study.trials if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:
        a = t.user_attrs
        assert a["feasible"] == (a["score_loss"] <= 0.02)
        assert a["constraint"] == pytest.approx(a["score_loss"] - 0.02)
        assert t.system_attrs["constraints:score_loss"] == pytest.approx(a["constraint"])
        assert t.value == a["speedup"] == pytest.approx(a["pairs"]["speedup"])  # paired, CPU
        for key in ("speedup", "time_per_image", "score", "device", "trial_seconds"):
            assert key in a
        assert a["peak_memory"] is None  # CPU
        assert a["owner"]["pid"] > 0 and a["owner"]["host"]  # who ran it, for stale detection
        assert a["overhead_seconds"] >= 0
    feasible = [t for t in complete if t.user_attrs["feasible"]]
    best = best_trial(outcome.study)
    if feasible:
        assert best is not None and best.user_attrs["feasible"]
        assert best.user_attrs["speedup"] == max(t.user_attrs["speedup"] for t in feasible)
    else:
        assert best is None


def test_infeasible_trials_are_never_best() -> None:
    study = optuna.create_study(direction="maximize")
    for speedup, feasible in ((3.0, False), (1.5, True), (2.0, True), (9.0, False)):
        study.add_trial(
            optuna.trial.create_trial(
                value=speedup,
                user_attrs={"speedup": speedup, "feasible": feasible, "accelerators": {}},
            )
        )
    best = best_trial(study)
    assert best is not None and best.user_attrs["speedup"] == 2.0


def test_grid_visits_every_point_once_across_resume(storage: str) -> None:
    spec = load_spec("TinySD-DDIM-10-deepcache").replace(sampler=SamplerSpec("grid", 0))
    run_study(spec, storage=storage, n_trials=6, **quiet)
    outcome = run_study(spec, storage=storage, n_trials=12, **quiet)
    study = outcome.study
    points = [tuple(sorted(t.params.items())) for t in _finished(study)]
    # 4 intervals x 3 branches, each once: on TinySD's one-layer blocks branch 2 computes
    # branch 1's images, so the space leaves it out.
    assert len(points) == 12 == len(set(points))
    assert set(points) == {
        (("deepcache.cache_branch_id", b), ("deepcache.cache_interval", i))
        for i in (2, 3, 4, 5)
        for b in (0, 1, 3)
    }
    # Every skip is recorded and justified: an identical schedule or a dominated configuration.
    complete = {t.number: t for t in study.trials if t.state == TrialState.COMPLETE}
    schedules = [t.user_attrs["schedule"] for t in complete.values()]
    assert len(schedules) == len(set(schedules))  # nothing was measured twice
    for t in study.trials:
        if t.state != TrialState.PRUNED:
            continue
        reason = t.user_attrs["skipped"]
        other = complete[int(reason.split("trial ")[1].split()[0])]
        assert other.number < t.number
        if reason.endswith("(same schedule)"):
            assert t.user_attrs["schedule"] == other.user_attrs["schedule"]
            continue
        # Dominated: it computes all that a feasible trial computed (work, not knob order).
        assert other.user_attrs["feasible"]
        assert reason.endswith("computes all it computes")
        mine, theirs = (schedule_of(x.user_attrs["accelerators"]) for x in (t, other))
        assert does_at_least(mine, theirs)


def schedule_of(configs: dict[str, dict[str, int]]) -> tuple[object, ...]:
    """A TinySD DDIM-10 schedule, as the study computes it."""
    pipe = tiny_pipeline("TinySD")
    set_scheduler(pipe, "DDIM")
    built = {n: accelerators.get(n).config(v) for n, v in configs.items()}
    calls = Calls.of(pipe.scheduler, 10)
    return schedule(built, calls, branches=accelerators.PipeTraits.of(pipe).branches)


def test_requirement_stops_at_first_feasible_trial_that_meets_it(storage: str) -> None:
    spec = load_spec("TinySD-DDIM-10-deepcache").replace(max_score_loss=0.99)
    outcome = run_study(
        spec, storage=storage, n_trials=6, requirement=Requirement(speedup=0.001), **quiet
    )
    assert outcome.ran == 1 and outcome.met and outcome.exit_code == 0
    assert outcome.best is not None and outcome.best.number == 0
    again = run_study(spec, storage=storage, requirement=Requirement(speedup=0.001), **quiet)
    assert again.already_finished and again.exit_code == 0


@pytest.mark.parametrize(
    "requirement", [Requirement(speedup=1000.0), Requirement(time_per_image=1e-9)]
)
def test_unmet_requirement_runs_the_budget_and_exits_1(
    storage: str, requirement: Requirement
) -> None:
    spec = load_spec("TinySD-DDIM-10-deepcache")
    outcome = run_study(spec, storage=storage, n_trials=2, requirement=requirement, **quiet)
    assert outcome.ran == 2 and not outcome.met and outcome.exit_code == 1
    assert outcome.best is None


def test_a_study_cannot_silently_change_what_it_measures(storage: str, tmp_path: Path) -> None:
    run_study(load_spec("TinySD-DDIM-10"), storage=storage, n_trials=1, **quiet)
    changed = load_spec("TinySD-DDIM-10").replace(max_score_loss=0.05)
    with pytest.raises(AccelOptError, match=r"run with max_score_loss=0\.02, not 0\.05"):
        run_study(changed, storage=storage, **quiet)


def test_journal_file_storage(tmp_path: Path) -> None:
    journal = str(tmp_path / "studies.journal")
    run_study(load_spec("TinySD-DDIM-10"), storage=journal, n_trials=2, **quiet)
    outcome = run_study(load_spec("TinySD-DDIM-10"), storage=journal, n_trials=3, **quiet)
    assert outcome.ran == 1 and len(_finished(outcome.study)) == 3


def test_storage_label_hides_passwords() -> None:
    url = "postgresql+psycopg2://alice:s3cret@db.example:5432/optuna"
    assert "s3cret" not in storage_label(url)
    assert storage_label(url).startswith("postgresql+psycopg2://alice:***@db.example")
    assert storage_label("studies.journal") == "studies.journal"


# A failing trial: FAIL, patches removed, the study goes on, the pipeline is clean again.


@pytest.fixture
def bench(tiny: Callable[[str], Pipeline]) -> Bench:
    spec = load_spec("TinySD-DDIM-10").replace(warmup=0)
    pipe = tiny("TinySD")
    set_scheduler(pipe, spec.scheduler)
    scorer = ClipScorer(spec.metric.model, spec.metric.pretrained, torch.device("cpu"))
    return Bench(spec, pipe, scorer, torch.device("cpu"))


@pytest.mark.parametrize(
    "error", [RuntimeError("upstream broke"), torch.cuda.OutOfMemoryError("CUDA out of memory")]
)
def test_a_failing_trial_is_fail_and_the_study_goes_on(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    pipe = bench.pipe
    baseline = render(pipe, steps=4)
    space = Space.build(bench.traits, bench.spec.steps, ("deepcache",))
    objective = Objective(bench, space, bench.measure().scores)
    objective.time_baseline()
    measure, calls = bench.measure, []

    def flaky(check: object = None) -> object:
        calls.append(accelerators.active(pipe))
        if len(calls) == 2:
            raise error
        return measure()

    monkeypatch.setattr(bench, "measure", flaky)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for interval in (2, 3, 4):
        study.enqueue_trial({"deepcache.cache_interval": interval, "deepcache.cache_branch_id": 0})
    study.optimize(objective, n_trials=3, catch=(Exception,))

    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                               TrialState.COMPLETE]  # fmt: skip
    assert all(active is not None for active in calls)  # it failed with patches on
    assert accelerators.active(pipe) is None
    np.testing.assert_array_equal(render(pipe, steps=4), baseline)


# A loaded machine: a starved baseline timing, a resumed study's baseline far off the stored one.


def test_a_loaded_machine_is_warned_about_with_its_numbers_and_stored(
    bench: Bench, storage: str
) -> None:
    said: list[str] = []
    # timeout 0: each run times its baseline and runs no trial
    run = {"storage": storage, "bench": bench, "progress": False, "log": said.append,
           "n_trials": 1, "timeout": 0}  # fmt: skip
    loaded = CpuReading(load_average=3.94, cores=2, threads=2, cpu_share=0.48)
    study = run_study(bench.spec, cpu_probe=lambda: lambda: loaded, **run).study
    assert (
        "TinySD-DDIM-10: warning: this machine is loaded (load average 3.9 on 2 cores; this "
        "process got 48% of its 2 threads' CPU time during the baseline); speedups measured now "
        "are unreliable"
    ) in said
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert study.user_attrs["load_warnings"] == [{**loaded.record(), "worker": me}]

    # Resumed on the same device: its first baseline, stored, was ten times faster than now.
    said.clear()
    before = study.user_attrs["baseline_time_per_image"] / 10
    study.set_user_attr("baseline_time_per_image", before)
    idle = CpuReading(load_average=0.2, cores=2, threads=2, cpu_share=0.97)
    study = run_study(bench.spec, cpu_probe=lambda: lambda: idle, **run).study
    assert not any("this machine is loaded" in line for line in said)
    assert len(study.user_attrs["load_warnings"]) == 2  # the first run's and this one
    drift = study.user_attrs["load_warnings"][1]
    assert (drift["signal"], drift["before"], drift["worker"]) == ("baseline drift", before, me)
    assert drift["reason"].startswith(f"the baseline went from {before:.3f} to ")
    # torch's thread count: 1 under CI's parallel workers (tests/conftest.py), the cores alone
    assert re.search(r"x this study's first timing on cpu \(\d+ threads\)\)$", drift["reason"])
    assert load.warning("TinySD-DDIM-10", drift) in said


# Faults: a half-written journal line, a worker killed mid-trial.


def test_a_half_written_journal_line_is_cut_off_and_kept_aside(tmp_path: Path) -> None:
    journal = tmp_path / "studies.journal"
    run_study(load_spec("TinySD-DDIM-10-deepcache"), storage=str(journal), n_trials=2, **quiet)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 9, "state"')
    outcome = run_study(
        load_spec("TinySD-DDIM-10-deepcache"), storage=str(journal), n_trials=3, **quiet
    )
    assert outcome.ran == 1 and len(_finished(outcome.study)) == 3
    (backup,) = tmp_path.glob("studies.journal.broken-*")
    assert backup.read_bytes().startswith(whole) and backup.read_bytes() != whole
    assert journal.read_bytes().startswith(whole)  # appended to the repaired file


def test_a_trial_left_running_by_a_dead_worker_is_retried_once(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from accelopt.storage import recover_stale_trials

    storage = str(tmp_path / "studies.journal")
    spec = load_spec("TinySD-DDIM-10-deepcache")
    study = run_study(spec, storage=storage, n_trials=1, **quiet).study
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    params = {"deepcache.cache_interval": 5, "deepcache.cache_branch_id": 3}
    study.enqueue_trial(params)
    trial = study.ask()
    trial.suggest_int("deepcache.cache_interval", 2, 5)
    trial.suggest_categorical("deepcache.cache_branch_id", [0, 1, 3])  # the space's own kind
    trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": int(dead)})

    assert recover_stale_trials(study) == [trial.number]
    frozen = study.trials[trial.number]
    assert frozen.state == TrialState.FAIL
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.system_attrs["failed_trial"] == trial.number
    assert recover_stale_trials(study) == []  # nothing RUNNING any more

    # The dead trial gives its slot to its retry: a budget of 2 runs the retry and nothing else.
    outcome = run_study(spec, storage=storage, n_trials=2, **quiet)
    assert outcome.ran == 1
    retried = [
        t for t in outcome.study.trials if t.system_attrs.get("failed_trial") == trial.number
    ]
    assert [t.state for t in retried] == [TrialState.COMPLETE]
    assert retried[0].params == params


def test_database_connections_are_checked_before_use(storage: str) -> None:
    backend, url = open_storage(storage)
    assert url == storage
    assert backend.engine.pool._pre_ping  # type: ignore[attr-defined]


def test_a_study_stored_before_execution_modes_resumes_as_eager(storage: str) -> None:
    """Its stored spec has no execution key: it ran eagerly, and "auto" resumes it so."""
    spec = load_spec("TinySD-DDIM-10")
    first = run_study(spec, storage=storage, n_trials=2, **quiet)
    study = first.study
    chosen = study.user_attrs["execution"]  # one mode on a CPU: nothing else was timed
    assert (chosen["mode"], chosen["baselines"]) == ("eager", {})
    assert {t.user_attrs.get("execution") for t in _finished(study)} - {None} == {"eager"}
    # Rewrite it as a study from before modes: no execution key, no chosen mode.
    legacy = {k: v for k, v in study.user_attrs["spec"].items() if k != "execution"}
    study.set_user_attr("spec", legacy)
    study._storage.set_study_user_attr(study._study_id, "execution", None)
    second = run_study(spec, storage=storage, n_trials=3, **quiet)
    assert second.ran == 1
    last = max(_finished(second.study), key=lambda t: t.number)
    assert last.user_attrs.get("execution", "eager") == "eager"
    with pytest.raises(AccelOptError, match="was run with execution='eager', not 'compile'"):
        run_study(spec.replace(execution="compile"), storage=storage, n_trials=4, **quiet)


def test_a_failed_grid_point_is_retried_once_and_one_that_fails_twice_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a dead worker's trial was retried: a grid point whose trial raised was never
    measured, and nothing said so."""
    from accelopt.cli import main

    call, attempts = Objective.__call__, []

    def flaky(self: Objective, trial: optuna.Trial) -> float:
        fixed = trial.study._storage.get_trial_system_attrs(trial._trial_id)["fixed_params"]
        point = tuple(sorted(fixed.items()))
        attempts.append(point)
        order = list(dict.fromkeys(attempts))
        if point == order[0] and attempts.count(point) == 1:
            raise RuntimeError("a passing fault")
        if len(order) > 1 and point == order[1]:
            raise RuntimeError("every time")
        return call(self, trial)

    monkeypatch.setattr(Objective, "__call__", flaky)
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--study", "TinySD-DDIM-10-deepcache", "--sampler", "grid", "--n-trials", "4",
            "--storage", "studies.journal", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    first, second = list(dict.fromkeys(attempts))[:2]
    shown = ", ".join(f"{k}={v}" for k, v in second)
    lines = out.splitlines()
    assert lines[:3] == [
        "TinySD-DDIM-10-deepcache: ran 6 trials (3 in the study, 3 failed)",
        "TinySD-DDIM-10-deepcache: 1 grid point never measured (failed, and so did the retry):",
        f"  trial 3: {shown} (RuntimeError: every time)",
    ]
    assert "trial 0 failed: RuntimeError: a passing fault; queued again once" in err
    assert "trial 3 failed: RuntimeError: every time; a retry itself: not queued again" in err
    assert attempts.count(first) == 2 and attempts.count(second) == 2 and len(attempts) == 6
    backend, _ = open_storage("studies.journal")
    study = optuna.load_study(study_name="TinySD-DDIM-10-deepcache", storage=backend)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    points = [tuple(sorted(t.params.items())) for t in done]
    assert len(points) == 3 == len(set(points)) and first in points and second not in points
    assert main(argv) == 0  # a finished study says it again
    assert capsys.readouterr().out.splitlines()[1:3] == lines[1:3]


def test_auto_runs_a_study_under_the_fastest_mode_that_can_run_its_targets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An accelerator refused under cuda-graphs (execution.REFUSED; DBCache, as it once was):
    under "auto" its study runs under the next fastest mode, instead of picking cuda-graphs and
    stopping at the refusal."""
    from accelopt import execution

    monkeypatch.setitem(execution.REFUSED, ("cuda-graphs", "dbcache"), "a reason given here")
    measured = {"eager": 0.83, "compile": 0.78, "cuda-graphs": 0.75}
    assert pick_mode("auto", measured, ["dbcache"], "eager") == "compile"
    assert pick_mode("auto", measured, ["magcache"], "eager") == "cuda-graphs"
    assert pick_mode("auto", measured, [], "eager") == "cuda-graphs"
    assert pick_mode("auto", {}, ["dbcache"], "eager") == "eager"
    assert pick_mode("cuda-graphs", measured, ["dbcache"], "eager") == "cuda-graphs"  # checked


EVERY_PIXART = ("tgate", "magcache", "taylorseer", "fbcache", "dbcache")


@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_a_study_of_groups_tries_one_group_per_trial(storage: str, sampler: str) -> None:
    """TinyPixArt-DDIM-10 chooses T-GATE or one block cache per trial (``plan``): each trial
    draws its plan's knobs only and applies at most that accelerator. Under TPE the first five
    are the footholds, each family alone at its mildest; the grid walks its shuffled points
    and tries more than one plan too."""
    spec = load_spec("TinyPixArt-DDIM-10").replace(
        max_score_loss=0.99, sampler=SamplerSpec(sampler, 0)
    )
    study = run_study(spec, storage=storage, n_trials=8, progress=False, log=lambda _: None).study
    assert len(study.trials) == 8
    plans = set()
    for t in study.trials:
        plan = t.params["plan"]
        plans.add(plan)
        assert {k.split(".")[0] for k in t.params if k != "plan"} == {plan}
        assert set(t.user_attrs["accelerators"]) <= {plan}
    assert len(plans) > 1
    held = [t.user_attrs.get("foothold") for t in study.trials[:5]]
    assert held == (list(EVERY_PIXART) if sampler == "tpe" else [None] * 5)
