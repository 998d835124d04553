"""bench/all.py: the plan for 1, 2 and 4 GPUs, hard stops, and one call on the CPU.

The plans are pure (GPU count and budget in, tasks out), checked exactly at the default 520 s
against speed.ESTIMATE and the study's estimates. The CPU call runs every suite of the GPU call
on tiny pipelines: files, records and tables, no timing thresholds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_bench_tables  # beside this file: its table parser

from bench import all as bench_all  # "all" alone would shadow the builtin

ROOT = Path(__file__).resolve().parents[2]

Task = bench_all.Task
PIPES = ("SDXL", "SD2.1", "SD1.5", "PixArt-alpha", "PixArt-Sigma")
LAST = 520 - bench_all.FINISH_SECONDS - bench_all.GRACE_SECONDS  # 485: every task stops by then


def test_the_estimates_the_plans_below_rest_on() -> None:
    assert dict(bench_all.speed.ESTIMATE) == dict(zip(PIPES, (370, 165, 125, 70, 70), strict=True))
    assert bench_all.ESTIMATE == {"study": 120.0, "scaling": 90.0}
    assert bench_all.DEFAULT_BUDGET == 520 and LAST == 485


def test_four_gpus_run_every_suite_at_once() -> None:
    plan = bench_all.plan(4)
    assert plan.tasks == (
        Task("study", (2,), 0.0, 120.0, 360.0),
        Task("scaling", (1, 3), 0.0, 90.0, 320.0),
        Task("speed", (0,), 0.0, 370.0, 485.0, (), ("SDXL",)),
        Task("speed", (1,), 90.0, 165.0, 485.0, (1,), ("SD2.1",)),
        Task("speed", (2,), 120.0, 125.0, 485.0, (0,), ("SD1.5",)),
        Task("speed", (3,), 90.0, 140.0, 485.0, (1,), ("PixArt-alpha", "PixArt-Sigma")),
    )
    assert plan.skipped == {}
    assert bench_all.describe_plan(plan) == [
        "GPU 0: speed SDXL (~370 s, stop by 485 s)",
        "GPU 1: scaling on GPUs 1 and 3 (~90 s, stop by 320 s), then speed SD2.1 (~165 s, stop "
        "by 485 s)",
        "GPU 2: study (~120 s, stop by 360 s), then speed SD1.5 (~125 s, stop by 485 s)",
        "GPU 3: scaling on GPUs 1 and 3 (~90 s, stop by 320 s), then speed PixArt-alpha, "
        "PixArt-Sigma (~140 s, stop by 485 s)",
    ]


def test_two_gpus_run_the_speed_suite_and_say_what_they_skip() -> None:
    plan = bench_all.plan(2)
    assert plan.tasks == (
        Task("speed", (0,), 0.0, 370.0, 485.0, (), ("SDXL",)),
        Task(
            "speed",
            (1,),
            0.0,
            430.0,
            485.0,
            (),
            ("SD2.1", "SD1.5", "PixArt-alpha", "PixArt-Sigma"),
        ),
    )
    assert plan.skipped == {
        "study": "~120 s does not fit (GPUs planned to 370, 430 of 485 s)",
        "scaling": "needs two GPUs and the study (its one-worker row)",
    }


def test_one_gpu_runs_what_fits_of_the_speed_suite() -> None:
    plan = bench_all.plan(1)
    assert plan.tasks == (Task("speed", (0,), 0.0, 440.0, 485.0, (), ("SDXL", "PixArt-alpha")),)
    assert plan.skipped == {
        "speed SD2.1": "~165 s does not fit (GPUs planned to 370 of 485 s)",
        "speed SD1.5": "~125 s does not fit (GPUs planned to 370 of 485 s)",
        "speed PixArt-Sigma": "~70 s does not fit (GPUs planned to 440 of 485 s)",
        "study": "~120 s does not fit (GPUs planned to 440 of 485 s)",
        "scaling": "needs two GPUs and the study (its one-worker row)",
    }
    assert plan.unplanned_pipes() == ["SD2.1", "SD1.5", "PixArt-Sigma"]


def test_two_gpus_run_the_study_and_scaling_one_after_the_other() -> None:
    plan = bench_all.plan(2, suites=bench_all.suites_of("scaling"))
    assert plan.tasks == (
        Task("study", (0,), 0.0, 120.0, 395.0),
        Task("scaling", (0, 1), 120.0, 90.0, 485.0, (0,)),
    )
    assert bench_all.suites_of("all") == ("speed", "study", "scaling")
    assert bench_all.suites_of("speed") == ("speed",)


@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("budget", [200.0, 520.0, 900.0])
def test_tasks_on_a_gpu_never_overlap_and_stop_in_time(gpus: int, budget: float) -> None:
    plan = bench_all.plan(gpus, budget)
    last = budget - bench_all.FINISH_SECONDS - bench_all.GRACE_SECONDS
    for i, task in enumerate(plan.tasks):
        assert task.start + task.estimate <= task.end <= last
        for j in task.after:  # what comes before it on its GPUs, planned to end before it starts
            before = plan.tasks[j]
            assert set(before.gpus) & set(task.gpus)
            assert before.start + before.estimate <= task.start and before.end <= task.end
        others = [t for t in plan.tasks[:i] if set(t.gpus) & set(task.gpus)]
        assert {plan.tasks.index(t) for t in others} == set(task.after)
    planned = [p for t in plan.tasks for p in t.pipes]
    assert sorted(planned + plan.unplanned_pipes()) == sorted(
        PIPES
    )  # each pipe planned once or skipped


@pytest.mark.parametrize("gpus, cores", [(4, 64), (2, 32), (4, 6), (4, 2)])
def test_each_gpu_gets_cores_of_its_own(gpus: int, cores: int) -> None:
    runs = [bench_all.cores_of([k], gpus, range(cores)) for k in range(gpus)]
    share = max(1, cores // gpus)
    assert all(len(r) == share for r in runs)
    if cores >= gpus:  # disjoint, in order, the remainder unused
        assert [c for r in runs for c in r] == list(range(share * gpus))
    else:  # fewer cores than GPUs: shared, never none
        assert runs == [[0], [1], [0], [1]]
    assert bench_all.cores_of([0, gpus - 1], gpus, range(cores)) == sorted({*runs[0], *runs[-1]})


def test_processes_are_pinned_to_their_gpus_cores_where_there_is_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = bench_all.parser().parse_args(["--out", str(tmp_path)])
    on_gpus = bench_all.Call(args, 0.0, tmp_path, tmp_path, ["0", "1", "2", "3"])
    monkeypatch.setattr(bench_all.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(bench_all.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert on_gpus.pinned(["python3", "x.py"], [1, 3]) == [
        "/usr/bin/taskset", "-c", "2,3,6,7", "python3", "x.py"]  # fmt: skip
    env = on_gpus.env([1, 3])
    assert env is not None and env["CUDA_VISIBLE_DEVICES"] == "1,3"
    on_cpu = bench_all.Call(args, 0.0, tmp_path, tmp_path, [])
    assert on_cpu.pinned(["python3", "x.py"], [0]) == ["python3", "x.py"]
    monkeypatch.setattr(bench_all.shutil, "which", lambda name: None)  # no taskset: run unpinned
    assert on_gpus.pinned(["python3", "x.py"], [0]) == ["python3", "x.py"]


def test_a_process_past_its_stop_is_terminated_with_what_it_started(tmp_path: Path) -> None:
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
    child += "'import time; time.sleep(60)']); print('started', flush=True); time.sleep(60)"
    started = time.monotonic()
    rc = bench_all.spawn([sys.executable, "-c", child], None, tmp_path / "log", 3)
    assert rc == -signal.SIGTERM
    assert time.monotonic() - started < 20
    assert "started" in (tmp_path / "log").read_text()
    time.sleep(0.5)  # the grandchild's exit
    done = subprocess.run(["pgrep", "-f", "time.sleep\\(60\\)"], capture_output=True, text=True)
    assert done.stdout == ""  # the grandchild got the signal too: no sleeper is left


def test_a_budget_too_small_for_anything_still_writes_partial_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _call(["TinyPixArt", "TinySD"], "--time-budget", "40", "--out", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["partial"] is True and results["plan"]["tasks"] == []
    assert list(results["plan"]["skipped"]) == ["speed TinyPixArt", "speed TinySD", "study",
                                                "scaling"]  # fmt: skip
    assert (
        "## What each accelerator gives (alternated A/B) (partial)"
        in (out / "tables.md").read_text()
    )


def test_one_call_on_the_cpu_runs_every_suite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _call(["TinyPixArt"], "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    journals = [f"journals/TinySD-DDIM-10-w{k}.journal" for k in (1, 2)]
    assert files == ["all.log", *journals, "results.json", "tables.md"]
    results = json.loads((out / "results.json").read_text())
    assert results["partial"] is False and results["card"].startswith("cpu")
    assert results["command"].startswith("python -m bench.all --device cpu --pipes TinyPixArt")
    assert results["versions"]["torch"] and results["versions"]["optuna"]
    assert [t["suite"] for t in results["plan"]["tasks"]] == ["study", "scaling", "speed"]
    suites = results["suites"]
    assert list(suites) == ["speed", "study", "scaling"]
    assert list(suites["speed"]["pipes"]) == ["TinyPixArt"]
    assert suites["study"]["trials"] == suites["study"]["n_trials"] == 2
    assert [r["workers"] for r in suites["scaling"]["rows"]] == [1, 2]
    assert [r["trials"] for r in suites["scaling"]["rows"]] == [2, 2]
    found = test_bench_tables.parse((out / "tables.md").read_text())
    assert [len(rows) for _, rows in found] == [4, 1, 2]  # TinyPixArt's rows, study, scaling


def _call(pipes: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bench.all", "--device", "cpu", "--pipes"]
    command += [*pipes, "--repeats", "1", "--workers", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
