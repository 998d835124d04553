"""Run a study: the run loop, from its spec and baseline through its trials to the answer.

A study is resumable: its spec, baseline scores and every finished trial live in Optuna storage
(``accelopt.storage``: a SQLite file in the working directory unless told otherwise); running
it again continues where it stopped and a finished study answers at once. Which trial a worker
starts next is ``accelopt.study.workers``'; what the trials answer, ``accelopt.study.results``'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt.measure import load
from accelopt.measure.environment import device_name
from accelopt.progress import Progress, follow
from accelopt.spec import (
    StudySpec,
)
from accelopt.storage import (
    HEARTBEAT,
    is_storage_error,
    open_storage,
    recover,
    retry,
    sole_writer,
    storage_label,
    storage_lock,
    storage_url,
)
from accelopt.study import warmstart
from accelopt.study.prepare import (
    adopt_old_spelling,
    calibrate,
    check_requirement,
    choose_mode,
    is_finished,
    prepare_study,
)
from accelopt.study.results import DONE, Requirement, best_trial, compile_cost
from accelopt.study.workers import WAIT, GridOrder, Slots, take_trial
from accelopt.trial.bench import Bench
from accelopt.trial.objective import Objective
from accelopt.trial.space import Space

__all__ = ["Outcome", "outcome_of", "run_study", "run_trial"]

AA_WARN = 0.10  # an A/A spread above this is worth a warning
POLL_SECONDS = 2.0  # how often a worker with nothing to start looks again
WAIT_NOTICE = 30.0  # say why a worker waits once it has waited this long


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the best (or requirement-meeting) trial, and whether it answers.
    ``bench``: what measured the trials here (None where none was loaded), so that an export
    right after confirms on the same pipeline, its graphs and its buffers instead of loading a
    second one beside them; the outcome holds it, and the pipeline, while it lives."""

    study: optuna.Study
    best: FrozenTrial | None
    ran: int
    already_finished: bool
    requirement: Requirement
    met: bool
    bench: Bench | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.requirement.active and not self.met else 0


def _counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE))


def run_study(
    spec: StudySpec,
    *,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    requirement: Requirement | None = None,
    device: str | None = None,
    weights: str = "pretrained",
    progress: bool | Progress = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    heartbeat: int = HEARTBEAT,
    warm_start: bool = True,
    bench: Bench | None = None,
    workers_here: int = 1,
    cpu_probe: Callable[[], Callable[[], load.CpuReading]] = lambda: load.CpuProbe().read,
) -> Outcome:
    """Run (or resume) a study until its trial budget, its grid, a requirement or a timeout.

    ``n_trials`` is the study's total budget (default: the spec's, or the whole grid for the grid
    sampler); trials already finished count towards it. Any number of processes may run the
    same study on shared storage at once (``accelopt.study.workers``): the budget stays the total.
    A new study first tries its neighbours' best configurations (``accelopt.study.warmstart``).
    SQLite serves one such process: a second one on the same file is refused (``sole_writer``).
    ``progress`` is the command's ``accelopt.progress.Progress`` (a bool: stderr's, on or off).
    ``bench`` measures instead of one loaded for ``spec`` (``Bench.load``): tests pass their own.
    ``workers_here``: the workers of this study running on this host (``--workers N``), which
    share its cores: torch gets at most its share of threads (``load.threads_for``).
    ``cpu_probe`` starts measuring the process's share of the cores and returns what reads it
    (``load.CpuProbe``): on a CPU a starved baseline timing is warned about and stored in the
    study's ``load_warnings``; tests pass their own numbers.
    """
    requirement = requirement or Requirement()
    if not isinstance(progress, Progress):
        progress = Progress(enabled=progress)
    check_requirement(spec, requirement)
    if spec.execution != "auto":  # before a study is made that nothing could run
        from accelopt import execution
        from accelopt.pipelines import resolve_device

        execution.check(spec.execution, spec.targets or (), str(resolve_device(device)))
    with sole_writer(storage_url(storage)):
        return _run_study(
            spec,
            storage=storage,
            n_trials=n_trials,
            timeout=timeout,
            requirement=requirement,
            device=device,
            weights=weights,
            progress=progress,
            log=log,
            heartbeat=heartbeat,
            warm_start=warm_start,
            bench=bench,
            workers_here=workers_here,
            cpu_probe=cpu_probe,
        )


def _run_study(
    spec: StudySpec,
    *,
    storage: str | None,
    n_trials: int | None,
    timeout: float | None,
    requirement: Requirement,
    device: str | None,
    weights: str,
    progress: Progress,
    log: Callable[[str], None],
    heartbeat: int,
    warm_start: bool,
    bench: Bench | None,
    workers_here: int,
    cpu_probe: Callable[[], Callable[[], load.CpuReading]],
) -> Outcome:
    backend, url = open_storage(storage, heartbeat=heartbeat)

    def lock() -> contextlib.AbstractContextManager[None]:
        return storage_lock(backend, url, spec.name)

    with lock():
        adopt_old_spelling(backend, spec.name, log)
        study = prepare_study(backend, url, spec, n_trials)
        recover(study, log)

    # The space needs the pipeline's layout; a finished study must not load a model to say so.
    if is_finished(study, requirement):
        return outcome_of(study, 0, True, requirement)

    _share_cores(spec.name, workers_here, log)
    if bench is None:
        bench = Bench.load(spec, device, weights, log, progress)
    if spec.execution != "auto" or bench.device.type == "cuda":
        from accelopt import execution

        execution.use_cache_dir()
    chosen = choose_mode(study, spec, bench, lock, log, progress)
    space = Space.build(bench.traits, spec.steps, spec.targets, bench.mode, spec.scheduler)
    space = space.adopt(study.get_trials(deepcopy=False))
    calibration = calibrate(study, bench, space.names, lock, log)
    if calibration:  # measured once per study: every trial's config carries the same values
        space = dataclasses.replace(space, calibration=calibration)
    with lock():
        total = int(study.user_attrs.get("budget") or space.size)
        study.set_user_attr("budget", total)
        if warm_start:  # a new study's first worker only
            _queue_first(study, backend, spec, space, bench.mode, log)
    grid = GridOrder(space.points(), spec.sampler.seed) if spec.sampler.name == "grid" else None

    log(f"{spec.name}: timing the baseline twice on {bench.device} under {bench.mode} (an A/A "
        f"check) ...")  # fmt: skip
    objective = Objective(bench, space, [], chosen.get("baselines"))
    spread = _time_baseline(study, objective, lock, log, progress, cpu_probe)
    remaining = total - Slots.of(study.get_trials(deepcopy=False)).used
    eager = chosen.get("baselines", {}).get("eager")
    beside = f", eager {eager:.3f}" if eager is not None and bench.mode != "eager" else ""
    log(
        f"{spec.name}: baseline {objective.baseline_time:.3f} s/image under {bench.mode}"
        f"{beside} (A/A spread {100 * spread:.1f}%); speedups are against the fastest plain "
        f"pipeline, {objective.reference_time:.3f} s/image; "
        f"{max(remaining, 0)} of {total} trials to run ({storage_label(url)})"
    )
    ran = _work(study, objective, total, grid, lock, timeout, requirement, progress, log)
    with lock():  # all its workers' so far: the last to end stores the whole study's
        study.set_user_attr("compile_cost", compile_cost(study))
    return dataclasses.replace(outcome_of(study, ran, False, requirement), bench=bench)


def _queue_first(
    study: optuna.Study,
    backend: optuna.storages.BaseStorage,
    spec: StudySpec,
    space: Space,
    mode: str,
    log: Callable[[str], None],
) -> None:
    """What a new study measures first, queued under its lock: its neighbours' answers (warm
    start); where a new structure costs a compile, each accelerator alone at its fastest, to
    learn which can win; in a space of groups, each family alone at its mildest."""
    starts = warmstart.warm_start(study, backend, spec, space)
    if starts:
        log(f"{spec.name}: {warmstart.summary(starts)}")
    if spec.sampler.name == "grid":  # the grid walks every point in its own order
        return
    probed = warmstart.probe(study, space) if mode != "eager" else []
    if probed:
        log(f"{spec.name}: first {', '.join(probed)}, each alone at its fastest: one slower "
            f"than the plain pipeline is searched no further")  # fmt: skip
    held = warmstart.footholds(study, space)
    if held:
        log(f"{spec.name}: early, {', '.join(held)}, each alone at its mildest: a feasible "
            f"point per family for the search to improve on")  # fmt: skip


def _time_baseline(
    study: optuna.Study,
    objective: Objective,
    lock: Callable[[], contextlib.AbstractContextManager[None]],
    log: Callable[[str], None],
    progress: Progress,
    cpu_probe: Callable[[], Callable[[], load.CpuReading]],
) -> float:
    """Time the plain pipeline twice (the A/A check; the first worker's second timing fixes the
    study's reference scores), judge the machine's load meanwhile, and warn; returns the two
    timings' spread."""
    bench, spec = objective.bench, objective.bench.spec
    # A CPU's share is judged; a GPU's timing is not the host's (its drift is, below and later).
    read_share = cpu_probe() if bench.device.type == "cpu" else None
    with progress.phase(f"{spec.name}: baseline timing", 2, "measurements",
                        announce=False) as timing:  # fmt: skip
        follow(bench, timing)
        first = objective.time_baseline()
        timing.advance()
        second = objective.measure_baseline()
        timing.advance()
    share = read_share() if read_share is not None else None
    spread = abs(first - second.time_per_image) / objective.baseline_time
    here = device_name(bench.device)
    with lock():  # the first worker of a study fixes every worker's reference scores
        stored = study.user_attrs.get("baseline_time_per_image")
        if not study.user_attrs.get("baseline_scores"):
            study.set_user_attr("baseline_scores", second.scores)
            study.set_user_attr("baseline_time_per_image", second.time_per_image)
            study.set_user_attr("baseline_device", here)
        objective.baseline_scores = study.user_attrs["baseline_scores"]
        checks = study.user_attrs.get("aa_checks", [])
        study.set_user_attr("aa_checks", [*checks, {"spread": spread,
                                                    "device": bench.device.type}])  # fmt: skip
        # A resumed study on the same device (its threads included) times what it timed before.
        drift = None
        if study.user_attrs.get("baseline_device") == here and isinstance(stored, float):
            first_here = f"this study's first timing on {here}"
            drift = load.Drift(stored, objective.baseline_time, first_here)
    if spread > AA_WARN:
        log(f"{spec.name}: warning: two baseline timings differ by {100 * spread:.0f}%; this "
            f"machine is noisy now and speedups will be too")  # fmt: skip
    if share is not None and share.loaded:
        _note_load(study, lock, log, share.record())
    if drift is not None and drift.far:
        _note_load(study, lock, log, drift.record())
    return spread


def _share_cores(name: str, workers_here: int, log: Callable[[str], None]) -> None:
    """Give torch at most this worker's share of the host's cores (``load.threads_for``)."""
    import torch

    cores, current = load.usable_cores(), torch.get_num_threads()
    threads = load.threads_for(cores, workers_here, current)
    if threads < current:
        torch.set_num_threads(threads)
        log(f"{name}: {workers_here} worker{'s' if workers_here != 1 else ''} on {cores} "
            f"cores: {threads} torch thread{'s' if threads != 1 else ''} each")  # fmt: skip


def _note_load(
    study: optuna.Study,
    lock: Callable[[], contextlib.AbstractContextManager[None]],
    log: Callable[[str], None],
    record: dict[str, Any],
) -> None:
    """Warn about a loaded machine with the numbers and keep them in the study's
    ``load_warnings`` (one record per warning, naming its worker), which the study's answer,
    ``best --json`` and its store entries repeat."""
    log(load.warning(study.study_name, record))
    record = {**record, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    with lock():
        study.set_user_attr("load_warnings", [*study.user_attrs.get("load_warnings", []), record])


def _drifted(
    study: optuna.Study,
    start: float,
    now: float,
    lock: Callable[[], contextlib.AbstractContextManager[None]],
    log: Callable[[str], None],
) -> None:
    """Warn when the baseline re-timed (``BASELINE_EVERY`` trials) is far off this worker's
    start (``load.DRIFT``): the load changed under the study, on a CPU or a GPU alike."""
    drift = load.Drift(start, now, "its timing at this worker's start")
    if drift.far:
        _note_load(study, lock, log, drift.record())


def _work(
    study: optuna.Study,
    objective: Objective,
    total: int,
    grid: Any,
    lock: Callable[[], contextlib.AbstractContextManager[None]],
    timeout: float | None,
    requirement: Requirement,
    progress: Progress,
    log: Callable[[str], None],
) -> int:
    """Take trials until the study is done; returns how many this process ran. The trials'
    phase notes each trial's batches and timing pairs (a bar's postfix, or throttled lines)."""

    def done() -> int:
        return _counted(study)

    def met(trials: Sequence[FrozenTrial]) -> bool:
        return requirement.active and any(requirement.met_by(t) for t in trials)

    deadline = None if timeout is None else time.monotonic() + timeout
    ran, waited = 0, 0.0
    shown, running = "", -1  # the best so far; the trial running

    def lead() -> str:  # before each of a trial's notes: "best 1.52x; trial 3: "
        return f"{shown}; trial {running}: " if shown else f"trial {running}: "

    start, timed = objective.baseline_time, len(objective.baseline_times)
    with progress.phase(f"{study.study_name}: trials", total, "trials",
                        initial=done()) as bar:  # fmt: skip
        follow(objective.bench, bar, lead)
        while deadline is None or time.monotonic() < deadline:
            trial: optuna.Trial | object | None = None
            try:
                # The heartbeat starts under the lock (take_trial) and beats until the trial ends.
                with contextlib.ExitStack() as beating:
                    with lock():
                        recover(study, log)
                        trial = take_trial(study, total, grid, met, beating)
                    if trial is None:
                        break
                    if trial is WAIT:
                        if waited <= WAIT_NOTICE < waited + POLL_SECONDS:
                            log(f"{study.study_name}: the budget is taken; waiting for trials "
                                f"still running elsewhere (one may fail and be queued "
                                f"again)")  # fmt: skip
                        waited += POLL_SECONDS
                        time.sleep(POLL_SECONDS)
                        continue
                    waited = 0.0
                    assert isinstance(trial, optuna.Trial)
                    running = trial.number
                    run_trial(study, trial, objective, log, lock)
                    if len(objective.baseline_times) > timed:  # re-timed before this trial
                        timed = len(objective.baseline_times)
                        _drifted(study, start, objective.baseline_times[-1], lock, log)
            except KeyboardInterrupt:  # also between ask and the objective: give it back
                if isinstance(trial, optuna.Trial):
                    _abandon(study, trial, "interrupted")
                raise
            ran += 1
            best = best_trial(study)
            shown = f"best {best.user_attrs['speedup']:.2f}x" if best else "no feasible yet"
            bar.update(done(), shown)
    return ran


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Objective,
    log: Callable[[str], None],
    lock: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
) -> FrozenTrial:
    """Run one trial and tell the study how it ended; the caller keeps its heartbeat
    (``take_trial`` starts it).

    A failed trial (OOM, upstream error) is FAIL, queued again once with the same parameters
    (its grid point is measured yet: the failure may have been passing, and a retry that fails
    too is not queued again), and the study goes on. Both under ``lock`` (the study's): another
    worker's recovery never sees the FAIL without its retry, and queues the retry itself only
    where this process died in between (``storage.retry_owed``). A storage error or Ctrl-C
    ends the trial as FAIL and is raised as itself: the storage is what broke, or the user
    wants out; after a storage error the next recovery queues the trial again (Ctrl-C gives
    its slot back instead). Unlike ``Study.optimize``, no storage error turns into "Should not
    reach".
    """
    value, state, failure = None, TrialState.COMPLETE, ""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except KeyboardInterrupt:
        _abandon(study, trial, "interrupted")
        raise
    except Exception as err:
        if is_storage_error(err):
            _abandon(study, trial, "storage error")
            raise
        state, failure = TrialState.FAIL, f"{type(err).__name__}: {err}"
        with contextlib.suppress(Exception):
            trial.set_user_attr("failed", failure)
    if state != TrialState.FAIL:
        return study.tell(trial, value, state=state)
    with lock():
        frozen = study.tell(trial, value, state=state)
        queued = retry(study, frozen)
    again = "queued again once" if queued else "a retry itself: not queued again"
    log(f"{study.study_name}: trial {trial.number} failed: {failure}; {again}")
    return frozen


def _abandon(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    """FAIL a trial that is being left; if even that fails, stale recovery finds it later."""
    with contextlib.suppress(Exception):
        if why == "interrupted":  # gives its slot back: Ctrl-C and a restart lose nothing
            trial.set_user_attr("interrupted", True)
        trial.set_user_attr("failed", why)
        study.tell(trial, state=TrialState.FAIL)


def outcome_of(study: optuna.Study, ran: int, already: bool, req: Requirement) -> Outcome:
    """How a run ended, read from the study."""
    met = next((t for t in study.trials if req.met_by(t)), None) if req.active else None
    best = met if req.active else best_trial(study)
    return Outcome(study, best, ran, already, req, met is not None)
