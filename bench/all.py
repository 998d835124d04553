"""The GPU benchmarks in one device call: the suites at once on disjoint GPUs, then the tables.

On the lent GPU machine, with the carried wheels (``../shared/tools/gpu-wheels.sh .whl``):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site:$PWD && \\
        python -m bench.all --out $OUT

``--suite all`` (the default) runs three suites, each on GPUs of its own:

- speed: ``bench/speed.py`` on each of ``--pipes`` (default the five full-size architectures):
  every accelerator and combination against the plain pipeline, alternated, median of
  ``--repeats`` pairs with min-max, spread and peak memory, accelopt against the raw upstream
  calls, and A/A; rows in order of importance (published settings, raw twins, combinations,
  then our ranges' ends), so a budget that runs out costs the least telling ones;
- study: one ``accelopt run`` of ``--study`` (SD1.5-DDIM-20, 32 trials, random weights) on one
  GPU, summarised by ``bench/study_report.py``: per-trial overhead, trial wall / (generation +
  warm-up + scoring), and the study's span over that work;
- scaling: the same study from scratch with two workers on two GPUs (``bench/scaling.py``);
  the study's run is its one-worker row, so it needs the study.

Each process runs on its GPUs' own CPU cores (``taskset``, one equal run of cores per GPU)
with as many threads: a pipeline at batch 1 is bound by launching kernels, so a neighbour on
the same cores slows it (``bench/noise.py`` measured it; docs/BENCHMARKS.md has the numbers).

``plan`` (a pure function: GPU count and budget in, tasks out) places them by estimated seconds
and prints what it skipped; ``--suite speed|study|scaling`` plans one of them. Every task has
its own hard stop, which leaves room for what follows it on its GPUs, and the whole call ends
within ``--time-budget`` seconds of this script's start; a suite cut short is marked partial.

``--suite landscapes`` measures the recorded landscapes instead (``bench/landscape.py``, one
shard per GPU, SD1.5-DDIM-20 then SDXL-DDIM-25): a full device call by itself (486 s on two
H200s), so never part of ``all``; its results are already in bench/landscapes/. ``--studies
ToySD-DDIM-20`` records the toy study's landscape with per-prompt CLIP scores on 32 search and
32 held-out prompts (``SCORED``), for the replay's early stopping and held-out pass rates.

Writes, under --out: ``results.json`` (every suite's record, the plan, card, date, command and
package versions), ``tables.md`` (``bench/tables.py``: the tables in docs/BENCHMARKS.md's
layouts), ``all.log`` (nvidia-smi and every process's output), ``journals/`` (the studies'
Optuna journals) and, for landscapes, ``landscapes/<study>.json``.

CPU smoke test of the same path (under a minute on two cores): ``python -m bench.all --device
cpu --pipes TinySD TinyPixArt --repeats 1 --workers 2 --out /tmp/bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import _lib, landscape_records, scaling, speed, study_report, tables

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `python -m bench.x` runs from it
SUITES = ("all", "speed", "study", "scaling", "landscapes")
# Seconds, all in, from this script's start: a device call is at most 10 minutes, and the
# wheels' install and the machine's start take 30-60 s of them before this script runs.
TIME_BUDGET = {"landscapes": 500.0}
DEFAULT_BUDGET = 520.0
FINISH_SECONDS = 15  # kept back from the budget for merging, rendering and writing
GRACE_SECONDS = 20  # after SIGTERM, how long a process gets to write what it has
IMPORT_SECONDS = 10  # a process's imports, before its own clock starts
# The study and the scaling run: SD1.5-DDIM-20 at 32 trials on one H200 took 111 s with one
# worker and 82 s with two (2026-11-28), each ~45 s of it before the first trial (pipeline and
# CLIP built, two baseline passes).
STUDY, TRIALS = "SD1.5-DDIM-20", 32
CPU_STUDY, CPU_TRIALS = "TinySD-DDIM-10", 2
ESTIMATE = {"study": 120.0, "scaling": 90.0}
STUDY_START = 60  # seconds before a study's first trial: not part of its --timeout
MIN_SECONDS = {"speed": speed.MIN_SHARE, "study": 60, "scaling": 60}
# Images per landscape point (one batch). SD1.5 at 512 px is launch-bound at batch 1, so a
# second image costs little; SDXL at 1024 px is not, and one image keeps its landscape in time.
STUDIES = {"SD1.5-DDIM-20": 2, "SDXL-DDIM-25": 1}
# Studies with a trained scorer: search and held-out prompts per point, each split in one call,
# scored (landscape.py --heldout). ToySD at 64 px: two calls of ~0.3-0.6 s a point on an H200,
# so its 475 points take ~140-290 s per GPU on two, plus ~30 s of start and warm-up.
SCORED = {"ToySD-DDIM-20": 32}


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One suite's work on some GPUs: where, when it is planned, and when it must stop."""

    suite: str  # "speed", "study" or "scaling"
    gpus: tuple[int, ...]  # positions among the GPUs this call uses
    start: float  # planned start, seconds from the call's start (by the estimates)
    estimate: float  # planned seconds
    end: float  # hard stop, seconds from the call's start
    after: tuple[int, ...] = ()  # positions in Plan.tasks of the tasks that must end first
    pipes: tuple[str, ...] = ()  # speed: the pipes, most important first


@dataclass(frozen=True)
class Plan:
    gpus: int
    budget: float
    tasks: tuple[Task, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # "speed SD2.1", "study" ... -> why

    def unplanned_pipes(self) -> list[str]:
        return [what.split(" ", 1)[1] for what in self.skipped if what.startswith("speed ")]


def suites_of(choice: str) -> tuple[str, ...]:
    """``--suite`` -> the suites to plan (scaling's one-worker row is the study's run)."""
    return {"all": ("speed", "study", "scaling"), "scaling": ("study", "scaling")}.get(
        choice, (choice,)
    )


def plan(
    gpus: int,
    budget: float = DEFAULT_BUDGET,
    suites: Sequence[str] = ("speed", "study", "scaling"),
    pipes: Sequence[str] = tuple(speed.ESTIMATE),
    estimate: Mapping[str, float] = speed.ESTIMATE,
) -> Plan:
    """Place the suites on ``gpus`` GPUs within ``budget`` seconds, by estimated seconds.

    In order of importance, each on the least loaded GPUs if it fits before ``budget`` less the
    finish and grace seconds: each speed pipe (in ``pipes`` order; one speed.py process per GPU
    runs that GPU's pipes), then the study, then scaling (the two least loaded GPUs). In time,
    the study and the scaling run first on their GPUs, then the speed pipes. What does not fit
    is skipped, with why. Each task's hard stop leaves the estimates of what follows it on its
    GPUs.

    >>> [(t.suite, t.gpus, t.pipes) for t in plan(1, 520, ["speed"], ["SD1.5"]).tasks]
    [('speed', (0,), ('SD1.5',))]
    """
    capacity = budget - FINISH_SECONDS - GRACE_SECONDS
    load = [0.0] * gpus
    lanes: list[list[str]] = [[] for _ in range(gpus)]
    skipped: dict[str, str] = {}

    def least(count: int = 1) -> list[int]:
        return sorted(range(gpus), key=lambda k: (load[k], k))[:count]

    def busy() -> str:
        return f"GPUs planned to {', '.join(f'{x:.0f}' for x in load)} of {capacity:.0f} s"

    def cost(pipe: str) -> float:
        return estimate.get(pipe, float(speed.MIN_SHARE))

    for pipe in pipes if "speed" in suites else ():
        [k] = least()
        if load[k] + cost(pipe) > capacity:
            skipped[f"speed {pipe}"] = f"~{cost(pipe):.0f} s does not fit ({busy()})"
            continue
        lanes[k].append(pipe)
        load[k] += cost(pipe)
    study = None
    if "study" in suites:
        [k] = least()
        if load[k] + ESTIMATE["study"] <= capacity:
            study, load[k] = k, load[k] + ESTIMATE["study"]
        else:
            skipped["study"] = f"~{ESTIMATE['study']:.0f} s does not fit ({busy()})"
    pair: tuple[int, ...] = ()
    if "scaling" in suites:
        both = tuple(sorted(least(2)))
        wait = ESTIMATE["study"] if study in both else 0.0  # it starts once the study is done
        needed = [load[k] + ESTIMATE["scaling"] + (0.0 if k == study else wait) for k in both]
        if gpus < 2 or study is None:
            skipped["scaling"] = "needs two GPUs and the study (its one-worker row)"
        elif max(needed) > capacity:
            skipped["scaling"] = f"~{ESTIMATE['scaling']:.0f} s does not fit ({busy()})"
        else:
            pair = both
            for k, seconds in zip(pair, needed, strict=True):
                load[k] = seconds

    # (suite, gpus, estimate, pipes) in time order on every GPU: the study and the scaling run
    # first, at once where the GPUs allow (so both see the same machine), then the speed pipes.
    work: list[tuple[str, tuple[int, ...], float, tuple[str, ...]]] = []
    if study is not None:
        work.append(("study", (study,), ESTIMATE["study"], ()))
    if pair:
        work.append(("scaling", pair, ESTIMATE["scaling"], ()))
    work += [("speed", (k,), float(sum(map(cost, mine))), tuple(mine))
             for k, mine in enumerate(lanes) if mine]  # fmt: skip
    free = [0.0] * gpus  # when each GPU is planned to be free
    tasks = []
    for i, (suite, on, seconds, names) in enumerate(work):
        begin = max(free[k] for k in on)
        for k in on:
            free[k] = begin + seconds
        after = tuple(j for j, w in enumerate(work[:i]) if set(w[1]) & set(on))
        tail = max(sum(w[2] for w in work[i + 1 :] if k in w[1]) for k in on)
        tasks.append(Task(suite, on, begin, seconds, capacity - tail, after, names))
    return Plan(gpus, budget, tuple(tasks), skipped)


def describe_plan(p: Plan) -> list[str]:
    """One line per GPU (what runs there, in order, with its estimate and hard stop), then
    one per skipped suite or pipe."""
    lines = []
    for k in range(p.gpus):
        mine = [t for t in p.tasks if k in t.gpus]
        steps = []
        for t in mine:
            what = t.suite + (f" {', '.join(t.pipes)}" if t.pipes else "")
            if len(t.gpus) > 1:
                what += " on GPUs " + " and ".join(map(str, t.gpus))
            steps.append(f"{what} (~{t.estimate:.0f} s, stop by {t.end:.0f} s)")
        lines.append(f"GPU {k}: {', then '.join(steps) or 'idle'}")
    return lines + [f"skipped: {what}: {why}" for what, why in p.skipped.items()]


# --- running it -------------------------------------------------------------------------------


@dataclass
class Call:
    """What every task of one call shares: options, clock, folders, GPUs and outcomes."""

    args: argparse.Namespace
    started: float
    work: Path  # scratch: logs and the speed processes' files
    out: Path
    names: list[str]  # CUDA_VISIBLE_DEVICES names of the GPUs, by position (empty: CPU)
    outcomes: dict[int, dict[str, Any]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cpu(self) -> bool:
        return not self.names

    def env(self, gpus: Sequence[int]) -> dict[str, str] | None:
        """The environment of a process that may use only ``gpus``, and its share of the CPU
        cores: processes that build models at once must not oversubscribe them."""
        if self.cpu:
            return None
        share = len(cores_of(gpus, len(self.names)))
        return {"OMP_NUM_THREADS": str(share), **os.environ,
                "CUDA_VISIBLE_DEVICES": ",".join(self.names[k] for k in gpus)}  # fmt: skip

    def pinned(self, command: list[str], gpus: Sequence[int]) -> list[str]:
        """``command`` run on its GPUs' own cores (``taskset``), where there is a GPU and a
        taskset: a pipeline at batch 1 is bound by launching kernels, and unpinned neighbours
        doubled the time of a UNet step on an H200 of a four-GPU machine (bench/noise.py,
        2026-11-28: 24-50 ms unpinned, 22-24 ms pinned, the GPU's own 11.9 ms throughout)."""
        taskset = shutil.which("taskset")
        if self.cpu or taskset is None:
            return command
        return [taskset, "-c", ",".join(map(str, cores_of(gpus, len(self.names)))), *command]

    def note(self, line: str) -> None:
        """Print a line of progress (from any task's thread) and keep it for the results."""
        line = f"[{time.monotonic() - self.started:5.0f} s] {line}"
        with self.lock:
            print(line, flush=True)
            self.lines.append(line)


def cores_of(gpus: Sequence[int], count: int, available: Sequence[int] | None = None) -> list[int]:
    """The CPU cores of ``gpus`` (positions among ``count`` GPUs): ``available`` (default: the
    cores this process may use) split into ``count`` equal runs, one per GPU, at least one
    core each (shared where there are fewer cores than GPUs).

    >>> cores_of([1], 4, range(16)), cores_of([0, 1], 2, range(5)), cores_of([3], 4, range(2))
    ([4, 5, 6, 7], [0, 1, 2, 3], [1])
    """
    cores = sorted(os.sched_getaffinity(0) if available is None else available)
    share = max(1, len(cores) // count)
    runs = [cores[k * share : (k + 1) * share] or [cores[k % len(cores)]] for k in gpus]
    return sorted({c for run in runs for c in run})


def gpu_names(count: int) -> list[str]:
    """The names CUDA_VISIBLE_DEVICES gives the first ``count`` usable GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",") if visible else [str(i) for i in range(count)]
    return names[:count]


def spawn(command: list[str], env: dict[str, str] | None, log_path: Path, left: float) -> int:
    """Run a process, its output appended to its log; SIGTERM it at ``left`` seconds.

    It gets a session of its own so the signal also reaches what it started (accelopt's
    workers), and is killed ``GRACE_SECONDS`` later if it has not written what it has.
    """
    with log_path.open("a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=ROOT, start_new_session=True)  # fmt: skip
        try:
            return proc.wait(timeout=max(left, 1))  # it stops itself before that, unless stuck
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # it writes what it has, marked partial
            try:
                return proc.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait()


def run_speed(i: int, task: Task, call: Call, left: float) -> dict[str, Any]:
    """bench/speed.py on the task's GPU, its pipes one after the other."""
    out = call.work / f"speed-{i}"
    command = [
        sys.executable, "-m", "bench.speed", "--pipes", *task.pipes, "--repeats",
        str(call.args.repeats), "--time-budget", f"{max(left - IMPORT_SECONDS, 1):.0f}",
        "--out", str(out),
    ]  # fmt: skip
    if call.args.device:
        command += ["--device", call.args.device]
    rc = spawn(
        call.pinned(command, task.gpus), call.env(task.gpus), call.work / f"task-{i}.log", left
    )
    path = out / "speed.json"
    return {"rc": rc, "record": json.loads(path.read_text()) if path.exists() else None}


def run_study(i: int, task: Task, call: Call, left: float) -> dict[str, Any]:
    """The study on one GPU (or the CPU), then its summary and its one-worker scaling row."""
    return _study_run(i, task, call, left, workers=1)


def run_scaling(i: int, task: Task, call: Call, left: float) -> dict[str, Any]:
    """The same study from scratch with one worker per GPU of the task."""
    return _study_run(i, task, call, left, workers=len(task.gpus))


def _study_run(i: int, task: Task, call: Call, left: float, workers: int) -> dict[str, Any]:
    study = call.args.study
    journal = call.out / "journals" / f"{study}-w{workers}.journal"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.unlink(missing_ok=True)  # a fresh study: a stored one would only be resumed
    # accelopt sets each worker's CUDA_VISIBLE_DEVICES to its --gpus name, so several workers get
    # the real names; a single worker runs in accelopt's own process, which sees its GPU as 0.
    gpus: list[str] | None = None
    if not call.cpu:
        gpus = [call.names[k] for k in task.gpus] if workers > 1 else ["0"]
    timeout = max(left - STUDY_START, 10)
    command = scaling.command(study, workers, call.args.trials, journal, gpus, timeout)
    began = time.monotonic()
    rc = spawn(
        call.pinned(command, task.gpus), call.env(task.gpus), call.work / f"task-{i}.log", left
    )
    for lock in journal.parent.glob(f"{journal.name}.*"):  # the storage's lock: not a result
        lock.unlink()
    row = scaling.throughput(journal, study, workers)
    row.update(wall_seconds=time.monotonic() - began, rc=rc,
               command=shlex.join(command[1:]).replace(str(call.out), "$OUT"))  # fmt: skip
    outcome: dict[str, Any] = {"rc": rc, "row": row}
    if task.suite == "study":
        outcome["summary"] = study_report.summarize(study_report.load(study, str(journal)))
    return outcome


RUNNERS: dict[str, Callable[[int, Task, Call, float], dict[str, Any]]] = {
    "speed": run_speed,
    "study": run_study,
    "scaling": run_scaling,
}


def run_task(i: int, task: Task, call: Call, done: list[threading.Event]) -> None:
    """Wait for the tasks before it on its GPUs, then run it until its hard stop."""
    try:
        for j in task.after:
            done[j].wait()
        left = call.started + task.end - time.monotonic()
        name = f"task {i} ({task.suite} {' '.join(task.pipes)} on {task.gpus})"
        if left < MIN_SECONDS[task.suite]:
            call.outcomes[i] = {"skipped": f"time budget: {left:.0f} s left at its start"}
            call.note(f"{name}: skipped, {left:.0f} s left")
            return
        call.note(f"{name}: started, {left:.0f} s to its stop")
        try:
            call.outcomes[i] = RUNNERS[task.suite](i, task, call, left)
        except Exception as err:  # one suite's failure must not cost the others theirs
            call.outcomes[i] = {"error": f"{type(err).__name__}: {err}"}
        outcome = call.outcomes[i]
        call.note(f"{name}: {outcome.get('error') or 'exit ' + str(outcome['rc'])}")
    finally:
        done[i].set()


def execute(p: Plan, call: Call) -> None:
    """Every task of the plan in a thread of its own; returns when all have ended."""
    done = [threading.Event() for _ in p.tasks]
    threads = [threading.Thread(target=run_task, args=(i, t, call, done))
               for i, t in enumerate(p.tasks)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- the records ------------------------------------------------------------------------------


def speed_record(p: Plan, call: Call, command: str) -> dict[str, Any] | None:
    """The speed processes' records merged; pipes not measured say why, and make it partial."""
    planned = [(i, t) for i, t in enumerate(p.tasks) if t.suite == "speed"]
    records = [call.outcomes[i]["record"] for i, _ in planned
               if (call.outcomes.get(i) or {}).get("record")]  # fmt: skip
    if not records and not planned and not p.unplanned_pipes():
        return None
    if records:
        merged = speed.merge(records, command)
    else:
        merged = {"command": command, "partial": True, "processes": [], "pipes": {}}
    for i, task in planned:
        outcome = call.outcomes.get(i) or {}
        why = outcome.get("skipped") or outcome.get("error") or "its process wrote nothing"
        for pipe in task.pipes:
            merged["pipes"].setdefault(pipe, {"partial": True, "error": why})
    for pipe in p.unplanned_pipes():
        merged["pipes"][pipe] = {
            "partial": True,
            "error": f"not planned: {p.skipped[f'speed {pipe}']}",
        }
    merged["partial"] = merged["partial"] or any(
        r.get("partial", True) for r in merged["pipes"].values()
    )
    return merged


def study_record(p: Plan, call: Call) -> dict[str, Any] | None:
    outcome = _outcome(p, call, "study")
    if outcome is None:
        return None
    if "summary" not in outcome:
        return {"study": call.args.study, "partial": True, **outcome}
    summary = outcome["summary"]
    return {**summary, "n_trials": call.args.trials, "command": outcome["row"]["command"],
            "partial": summary["finished"] < call.args.trials}  # fmt: skip


def scaling_record(p: Plan, call: Call, card: str) -> dict[str, Any] | None:
    """bench/scaling.py's record: the study's run (one worker) against the scaling run."""
    outcome = _outcome(p, call, "scaling")
    if outcome is None:
        return None
    rows = [o["row"] for o in (_outcome(p, call, "study"), outcome) if o and "row" in o]
    record = {"study": call.args.study, "n_trials": call.args.trials, "device": card,
              "gpus": len(p.tasks[_index(p, "scaling")].gpus), "date": time.strftime("%Y-%m-%d"),
              "rows": [], "partial": True}  # fmt: skip
    if len(rows) < 2:
        why = outcome.get("error") or outcome.get("skipped") or "the study has no one-worker row"
        return {**record, "error": why}
    scaling.compare(rows)
    complete = all(r["trials"] >= call.args.trials for r in rows)
    return {**record, "rows": rows, "partial": not complete}


def _index(p: Plan, suite: str) -> int:
    return next(i for i, t in enumerate(p.tasks) if t.suite == suite)


def _outcome(p: Plan, call: Call, suite: str) -> dict[str, Any] | None:
    if not any(t.suite == suite for t in p.tasks):
        return None
    return call.outcomes.get(_index(p, suite), {"error": "did not run"})


def environment(args: argparse.Namespace, smi: str) -> dict[str, Any]:
    """Card, date, package versions: what every results file says first."""
    rows = [line.split(", ") for line in smi.splitlines()[1:] if ", " in line]
    names = sorted({r[1] for r in rows if len(r) > 1})
    card = f"{len(rows)}x {names[0]}" if len(names) == 1 else ", ".join(names)
    if args.device == "cpu":
        card = f"cpu ({_lib.machine()})"
    return {"card": card or "unknown", **_lib.header("date", "python", "versions"),
            "nvidia_smi": smi}  # fmt: skip


def nvidia_smi() -> str:
    query = "index,name,driver_version,memory.total,clocks.max.sm,temperature.gpu,power.limit"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi: {err}"
    return done.stdout.strip() or done.stderr.strip()


def finish(call: Call, results: dict[str, Any], smi: str) -> int:
    """results.json, tables.md (rendered from it) and all.log; drop the scratch; exit code."""
    results["wall_seconds"] = time.monotonic() - call.started
    results["runs"] = call.lines
    (call.out / "results.json").write_text(json.dumps(results, indent=2))
    text = tables.render(results, call.out)
    (call.out / "tables.md").write_text(text)
    with (call.out / "all.log").open("w") as log:
        log.write(smi + "\n\n" + "\n".join(call.lines) + "\n\n")
        for path in sorted(call.work.glob("*.log")):
            log.write(f"===== {path.name}\n{path.read_text()}\n")
    shutil.rmtree(call.work)
    print(text)
    return 1 if results["partial"] else 0


def suites(args: argparse.Namespace, call: Call, head: dict[str, Any]) -> dict[str, Any]:
    """Plan, run and record speed, study and scaling."""
    p = plan(len(call.names) or args.workers or 1, args.time_budget, suites_of(args.suite),
             args.pipes)  # fmt: skip
    for line in describe_plan(p):
        call.note(f"plan: {line}")
    execute(p, call)
    found = {
        "speed": speed_record(p, call, head["command"]),
        "study": study_record(p, call),
        "scaling": scaling_record(p, call, head["card"]),
    }
    records = {k: v for k, v in found.items() if v is not None}
    planned = {
        "gpus": p.gpus,
        "budget": p.budget,
        "summary": describe_plan(p),
        "tasks": [asdict(t) for t in p.tasks],
        "skipped": p.skipped,
    }
    partial = bool(p.skipped) or any(r.get("partial", True) for r in records.values())
    return {**head, "plan": planned, "partial": partial, "suites": records}


# --- landscapes -------------------------------------------------------------------------------


def run_shards(k: int, n: int, call: Call, deadline: float) -> None:
    """Shard k/n of every study, one study after the other, on one GPU."""
    args = call.args
    for study in args.studies:
        left = deadline - time.monotonic()
        if left < 30:
            call.note(f"{study} {k}/{n}: skipped, {left:.0f} s left")
            continue
        command = [
            sys.executable, "-m", "bench.landscape", "measure", "--study", study,
            "--prompts", str(SCORED.get(study) or STUDIES.get(study, 1)), "--shard", f"{k}/{n}",
            "--time-budget", f"{left:.0f}", "--out", str(call.work),
        ]  # fmt: skip
        if study in SCORED:
            command += ["--heldout", str(SCORED[study])]
        if args.device:
            command += ["--device", args.device]
        if args.points:
            command += ["--points", str(args.points)]
        started = time.monotonic()
        rc = spawn(
            call.pinned(command, [k - 1]), call.env([k - 1]), call.work / f"shard-{k}.log", left
        )
        call.note(f"{study} {k}/{n}: exit {rc} after {time.monotonic() - started:.0f} s")


def landscapes(args: argparse.Namespace, call: Call, head: dict[str, Any]) -> dict[str, Any]:
    """One landscape.py process per GPU for each study in turn, then the shards merged."""
    n = len(call.names) or args.workers or 1
    deadline = call.started + args.time_budget - FINISH_SECONDS - GRACE_SECONDS
    call.note(f"landscapes: {n} shards each of {', '.join(args.studies)}")
    threads = [threading.Thread(target=run_shards, args=(k, n, call, deadline))
               for k in range(1, n + 1)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (call.out / "landscapes").mkdir(parents=True, exist_ok=True)
    files, problems = [], []
    for study in args.studies:
        shards = sorted(call.work.glob(f"{study}.shard-*-of-{n}.json"))
        records = [landscape_records.load(path) for path in shards]
        target = call.out / "landscapes" / f"{study}.json"
        if not records:
            problems.append(f"{study}: no shard wrote a file (see all.log)")
            continue
        try:
            merged = landscape_records.merge(records, head["command"])
        except ValueError as err:  # keep the raw shards rather than lose the run
            target.with_suffix(".shards.json").write_text(json.dumps(records))
            problems.append(f"{study}: merge failed ({err}); shards kept as they are")
            continue
        landscape_records.write_json(target, merged)
        files.append(str(target.relative_to(call.out)))
        if merged["partial"]:
            problems.append(f"{study}: partial")
    record = {"files": files, "problems": problems, "partial": bool(problems)}
    return {**head, "partial": record["partial"], "suites": {"landscapes": record}}


# --- command line -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--suite", choices=SUITES, default="all")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--time-budget", type=float,
                   help=f"seconds, all in (default {DEFAULT_BUDGET:.0f}; landscapes "
                   f"{TIME_BUDGET['landscapes']:.0f})")  # fmt: skip
    p.add_argument("--workers", type=int, help="GPUs to use (default: all); CPU: processes")
    p.add_argument("--device", help="cuda (default when there is a GPU) or cpu")
    p.add_argument("--pipes", nargs="+", default=list(speed.ESTIMATE),
                   help="speed: most important first")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5, help="speed: pairs per configuration")
    p.add_argument("--study", help=f"study and scaling (default {STUDY}; CPU {CPU_STUDY})")
    p.add_argument("--trials", type=int,
                   help=f"study and scaling (default {TRIALS}; CPU {CPU_TRIALS})")  # fmt: skip
    p.add_argument("--studies", nargs="+", default=list(STUDIES), help="landscapes")
    p.add_argument("--points", type=int, help="landscapes smoke test: this many per study")
    return p


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    cpu = args.device == "cpu"
    args.time_budget = args.time_budget or TIME_BUDGET.get(args.suite, DEFAULT_BUDGET)
    args.study = args.study or (CPU_STUDY if cpu else STUDY)
    args.trials = args.trials or (CPU_TRIALS if cpu else TRIALS)
    count = 0 if cpu else min(args.workers or gpu_count(), gpu_count())
    if not cpu and count < 1:
        print("no GPU found; pass --device cpu --workers N for a smoke test", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    call = Call(args, started, Path(tempfile.mkdtemp(prefix="bench-")), args.out.resolve(),
                gpu_names(count))  # fmt: skip
    smi = "(cpu run)" if cpu else nvidia_smi()
    print(smi, flush=True)
    head = {"kind": "accelopt bench", **_lib.header("command", script="all", argv=argv),
            "suite": args.suite, "time_budget": args.time_budget,
            **environment(args, smi)}  # fmt: skip
    run = landscapes if args.suite == "landscapes" else suites
    return finish(call, run(args, call, head), smi)


if __name__ == "__main__":
    sys.exit(main())
