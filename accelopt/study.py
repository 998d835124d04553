"""Run a study: the run loop, from its spec and baseline through its trials to the answer.

A study is resumable: its spec, baseline scores and every finished trial live in Optuna storage
(``accelopt.storage``: a SQLite file in the working directory unless told otherwise); running
it again continues where it stopped and a finished study answers at once. Which trial a worker
starts next is ``accelopt.workers``'; what the trials answer, ``accelopt.results``'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt import warmstart
from accelopt.constraints import METRICS
from accelopt.errors import AccelOptError, printable
from accelopt.export import package_versions
from accelopt.progress import Progress, follow
from accelopt.results import DONE, Requirement, best_trial
from accelopt.search import Space
from accelopt.spec import (
    ConstraintSpec,
    MetricSpec,
    PromptSpec,
    SamplerSpec,
    StudySpec,
    TimingSpec,
    canonical_name,
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
from accelopt.workers import WAIT, GridOrder, Slots, TrialSeededTPE, take_trial

__all__ = [
    "Outcome",
    "check_requirement",
    "directions",
    "is_finished",
    "load_bench",
    "outcome_of",
    "prepare_study",
    "run_study",
    "run_trial",
    "spec_of",
]

# Spec fields that define what a stored study measured; changing one needs a new study.
IDENTITY = (
    "pipeline",
    "scheduler",
    "steps",
    "targets",
    "resolution",
    "guidance",
    "dtype",
    "prompts",
    "metric",
    "sampler",
    "max_score_loss",
    "warmup",
    "objective",
    "execution",
    "constraints",
    "pareto_metric",
    "timing",
)
# What a stored spec record without a key meant: studies stored before the key existed.
# (A table stored without a newer field of its own gets the field's default: ``_filled``.)
LEGACY = {"objective": "speedup", "execution": "eager"}
_TABLES = {"prompts": PromptSpec, "metric": MetricSpec, "sampler": SamplerSpec,
           "constraints": ConstraintSpec, "timing": TimingSpec}  # fmt: skip
AA_WARN = 0.10  # an A/A spread above this is worth a warning
POLL_SECONDS = 2.0  # how often a worker with nothing to start looks again
WAIT_NOTICE = 30.0  # say why a worker waits once it has waited this long


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the best (or requirement-meeting) trial, and whether it answers."""

    study: optuna.Study
    best: FrozenTrial | None
    ran: int
    already_finished: bool
    requirement: Requirement
    met: bool

    @property
    def exit_code(self) -> int:
        return 1 if self.requirement.active and not self.met else 0


def _spec_record(spec: StudySpec) -> dict[str, Any]:
    data = dataclasses.asdict(spec)
    return json.loads(json.dumps({k: data[k] for k in IDENTITY}))


def spec_of(study: optuna.Study) -> StudySpec:
    """The spec a stored study was run with (as far as it defines what was measured)."""
    record = dict(study.user_attrs.get("spec") or {})
    if not record:
        raise AccelOptError(f"study {study.study_name} was not made by accelopt run (no spec)")
    for key, cls in _TABLES.items():
        if key in record:
            record[key] = cls(**record[key])
    if record["targets"] is not None:
        record["targets"] = tuple(record["targets"])
    return StudySpec(name=study.study_name, source="stored study", **record)


def directions(spec: StudySpec) -> list[Literal["maximize", "minimize"]]:
    """Optuna's directions for a study: speedup up; for a pareto study, its second metric too
    (score loss down, PSNR up ...)."""
    if spec.objective != "pareto":
        return ["maximize"]
    return ["maximize", "maximize" if METRICS[spec.pareto_metric].higher_is_better else "minimize"]


def check_requirement(spec: StudySpec, requirement: Requirement) -> None:
    """A pareto study keeps its whole frontier: it never stops at a requirement."""
    if spec.objective == "pareto" and requirement.active:
        raise AccelOptError(
            f"study {spec.name} is a pareto study: it keeps the whole frontier and does not stop "
            f"at {requirement.describe()}; run it without --req-speedup/--req-time and ask "
            f"codegen for the point (--req-speedup, --max-score-loss, --req-time)"
        )


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
) -> Outcome:
    """Run (or resume) a study until its trial budget, its grid, a requirement or a timeout.

    ``n_trials`` is the study's total budget (default: the spec's, or the whole grid for the grid
    sampler); trials already finished count towards it. Any number of processes may run the
    same study on shared storage at once (``accelopt.workers``): the budget stays the total.
    A new study first tries its neighbours' best configurations (``accelopt.warmstart``).
    SQLite serves one such process: a second one on the same file is refused (``sole_writer``).
    ``progress`` is the command's ``accelopt.progress.Progress`` (a bool: stderr's, on or off).
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

    bench = load_bench(spec, device, weights, log, progress)
    if spec.execution != "auto" or bench.device.type == "cuda":
        from accelopt import execution

        execution.use_cache_dir(_beside_storage(url) / ".accelopt-inductor")
    chosen = choose_mode(study, spec, bench, lock, log, progress)
    space = Space.build(bench.traits, spec.steps, spec.targets, bench.mode, spec.scheduler)
    space = space.adopt(study.get_trials(deepcopy=False))
    with lock():
        total = int(study.user_attrs.get("budget") or space.size)
        study.set_user_attr("budget", total)
        if warm_start:  # a new study's first worker only
            starts = warmstart.warm_start(study, backend, spec, space)
            if starts:
                log(f"{spec.name}: {warmstart.summary(starts)}")
    grid = GridOrder(space.grid(), spec.sampler.seed) if spec.sampler.name == "grid" else None

    from accelopt.objective import Objective

    log(f"{spec.name}: timing the baseline twice on {bench.device} under {bench.mode} (an A/A "
        f"check) ...")  # fmt: skip
    objective = Objective(bench, space, [], chosen.get("baselines"))
    with progress.phase(f"{spec.name}: baseline timing", 2, "measurements",
                        announce=False) as timing:  # fmt: skip
        follow(bench, timing)
        first = objective.time_baseline()
        timing.advance()
        second = objective.measure_baseline()
        timing.advance()
    spread = abs(first - second.time_per_image) / objective.baseline_time
    with lock():  # the first worker of a study fixes every worker's reference scores
        if not study.user_attrs.get("baseline_scores"):
            study.set_user_attr("baseline_scores", second.scores)
            study.set_user_attr("baseline_time_per_image", second.time_per_image)
        objective.baseline_scores = study.user_attrs["baseline_scores"]
        checks = study.user_attrs.get("aa_checks", [])
        study.set_user_attr("aa_checks", [*checks, {"spread": spread,
                                                    "device": bench.device.type}])  # fmt: skip
    if spread > AA_WARN:
        log(f"{spec.name}: warning: two baseline timings differ by {100 * spread:.0f}%; this "
            f"machine is noisy now and speedups will be too")  # fmt: skip
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
    return outcome_of(study, ran, False, requirement)


def _beside_storage(url: str) -> Path:
    """The folder a storage lives in: a journal file's or SQLite file's, else this one."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).resolve().parent
    if "://" not in url:
        return Path(url).resolve().parent
    return Path.cwd()


def adopt_old_spelling(
    storage: optuna.storages.BaseStorage, name: str, log: Callable[[str], None]
) -> None:
    """Before names were canonical (``accelopt.spec.canonical_name``), ``toysd-ddim-20`` made a
    study of its own. When the storage has no study ``name`` but exactly one under another
    spelling of it, copy that one to ``name`` (the old one stays), so that run resumes it
    rather than starting afresh; with several spellings, say so and leave them."""
    names = optuna.get_all_study_names(storage)
    if name in names:
        return
    old = sorted(s for s in names if canonical_name(s) == name)
    if len(old) == 1:
        optuna.copy_study(from_study_name=old[0], from_storage=storage, to_storage=storage,
                          to_study_name=name)  # fmt: skip
        log(f"{name}: resuming the study stored as {printable(old[0], 120)} (an older spelling "
            f"of this name): copied to {name}; the old one is kept as it was")  # fmt: skip
    elif old:
        shown = ", ".join(printable(s, 120) for s in old)
        log(f"{name}: warning: starting a new study; {len(old)} studies are stored under older "
            f"spellings of this name ({shown}) and stay as they are")  # fmt: skip


def prepare_study(
    storage: optuna.storages.BaseStorage, url: str, spec: StudySpec, n_trials: int | None
) -> optuna.Study:
    """Create or load the study, check it measures what ``spec`` says, record its budget.

    Call under the study's lock: several workers may start at once.
    """
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=directions(spec),  # an existing study keeps its own: checked below
        load_if_exists=True,
        # Multi-objective TPE for a pareto study; grid points are handed out, not sampled.
        sampler=TrialSeededTPE(spec.sampler.seed),
    )
    record = _spec_record(spec)
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", record)
    elif not _same_study(_filled(stored), record, study_mode(study)):
        stored = _filled(stored)
        changed = next(k for k in IDENTITY if stored.get(k) != record[k])
        if changed == "execution":
            stored[changed] = study_mode(study) or stored[changed]
        raise AccelOptError(
            f"study {spec.name} in {storage_label(url)} was run with {changed}="
            f"{stored.get(changed)!r}, not {record[changed]!r}; use another --storage or "
            f"study name to measure something else"
        )
    if [d.name.lower() for d in study.directions] != directions(spec):
        raise AccelOptError(
            f"study {spec.name} in {storage_label(url)} has {len(study.directions)} "
            f"objective(s), not the {len(directions(spec))} of objective={spec.objective!r}; "
            f"use another --storage or study name"
        )
    study.set_user_attr("versions", package_versions())
    if n_trials is not None:
        study.set_user_attr("budget", n_trials)
    elif "budget" not in study.user_attrs and spec.sampler.name != "grid":
        study.set_user_attr("budget", spec.n_trials)
    return study


def _filled(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored spec record as this version writes it: keys and table fields added since it was
    stored get what studies did before them (no fidelity bound, no LPIPS)."""
    filled = {**LEGACY, **stored}
    for key, cls in _TABLES.items():
        defaults = json.loads(json.dumps(dataclasses.asdict(cls())))
        filled[key] = {**defaults, **(stored.get(key) or {})}
    filled.setdefault("pareto_metric", "score_loss")
    return filled


def _same_study(stored: dict[str, Any], record: dict[str, Any], mode: str | None) -> bool:
    """Whether ``record`` measures what the stored spec did. "auto" asks for whichever mode
    the study chose (old studies chose eager); a named mode must be the one it runs."""
    rest = [k for k in IDENTITY if k != "execution"]
    if any(stored.get(k) != record[k] for k in rest):
        return False
    asked = record["execution"]
    return asked == "auto" or asked == (mode or stored["execution"])


def study_mode(study: optuna.Study) -> str | None:
    """The execution mode a study's trials run under, once its first worker chose it; studies
    stored before execution modes existed ran eagerly."""
    chosen = study.user_attrs.get("execution")
    if isinstance(chosen, dict) and chosen.get("mode") is not None:
        return str(chosen["mode"])  # execution.run refuses a mode it does not know
    spec = study.user_attrs.get("spec") or {}
    return "eager" if "execution" not in spec and spec else None


def choose_mode(
    study: optuna.Study,
    spec: StudySpec,
    bench: Any,
    lock: Callable[[], contextlib.AbstractContextManager[None]],
    log: Callable[[str], None],
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The study's execution mode and each mode's plain baseline (seconds per image).

    The first worker times the plain pipeline under every mode worth measuring here
    (``execution.modes_to_measure``: all of them on CUDA), keeps the fastest under "auto" or
    the mode the spec names, and stores both; later workers and restarts read them.
    """
    from accelopt import accelerators, execution
    from accelopt.timing import device_name

    stored = study.user_attrs.get("execution")
    if not isinstance(stored, dict) or "mode" not in stored:
        stored = None
    if stored is None and study_mode(study) == "eager":  # a study older than modes
        stored = {"mode": "eager", "baselines": {}, "device": None}
    if stored is None:  # run_study checked a named mode against the device and targets
        device = str(bench.device)
        measured: dict[str, float] = {}
        compile_seconds: dict[str, float] = {}
        accelerators.remove(bench.pipe)
        modes = execution.modes_to_measure(spec.execution, device)
        # One mode to choose from: the A/A timings that follow are its baseline.
        for mode in modes if len(modes) > 1 else ():
            log(f"{spec.name}: timing the plain pipeline under {mode}"
                f"{' (compiling first: minutes)' if mode != 'eager' else ''} ...")  # fmt: skip
            bench.mode = mode
            with (progress or Progress(enabled=False)).phase(
                f"{spec.name}: plain pipeline under {mode}", announce=False
            ) as timing:
                follow(bench, timing)
                m = bench.measure()
            measured[mode] = m.time_per_image
            compile_seconds[mode] = m.compile_seconds
        if spec.execution != "auto":
            chosen = spec.execution
        else:
            chosen = min(measured, key=measured.__getitem__) if measured else modes[0]
        record = {"mode": chosen, "baselines": measured, "compile_seconds": compile_seconds,
                  "device": device_name(bench.device)}  # fmt: skip
        with lock():
            if study.user_attrs.get("execution") is None:
                study.set_user_attr("execution", record)
            stored = study.user_attrs["execution"]
        if measured:
            shown = ", ".join(f"{m} {t:.4f}" for m, t in measured.items())
            log(f"{spec.name}: plain pipeline, s/image: {shown}; trials run under "
                f"{stored['mode']}")  # fmt: skip
    bench.mode = stored["mode"]
    return dict(stored)


def is_finished(study: optuna.Study, requirement: Requirement) -> bool:
    """Nothing left to run: a requirement met, or the budget spent and nothing queued."""
    total = study.user_attrs.get("budget")
    trials = study.get_trials(deepcopy=False)
    if requirement.active and any(requirement.met_by(t) for t in trials):
        return True
    slots = Slots.of(trials)
    return total is not None and slots.used >= total and not (slots.waiting or slots.running)


def load_bench(
    spec: StudySpec,
    device: str | None,
    weights: str,
    log: Callable[[str], None],
    progress: Progress | None = None,
) -> Any:
    """The pipeline, scheduler, prompts and CLIP scorer a study measures with."""
    from accelopt.metrics import ClipScorer
    from accelopt.objective import Bench
    from accelopt.pipelines import load_pipeline, model_info
    from accelopt.schedulers import set_scheduler

    info = model_info(spec.pipeline)
    from accelopt.testing.tiny import TINY_PIPELINES

    tiny = info is not None and info.name in TINY_PIPELINES
    log(f"{spec.name}: loading {spec.pipeline} ({'random' if tiny else weights} weights) ...")
    progress = progress or Progress(enabled=False)
    with progress.phase(f"{spec.name}: loading {spec.pipeline}", announce=False) as loading:
        pipe = load_pipeline(spec.pipeline, weights=weights, dtype=spec.dtype, device=device)  # type: ignore[arg-type]
        set_scheduler(pipe, spec.scheduler)
        loading.tell("the CLIP scorer")
        # Random weights have no pretrained scorer either: nothing can be downloaded for them.
        pretrained = "" if weights == "random" else spec.metric.pretrained
        scorer = ClipScorer(spec.metric.model, pretrained, pipe.device)
    lpips = None
    if spec.measures_lpips:  # the user's weights or none: never downloaded, never random
        from accelopt.metrics import Lpips

        lpips = Lpips(spec.metric.lpips or "alex", spec.metric.lpips_weights or None, pipe.device)
    return Bench(spec, pipe, scorer, pipe.device, lpips=lpips)


def _work(
    study: optuna.Study,
    objective: Any,
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
                    run_trial(study, trial, objective, log)
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
    study: optuna.Study, trial: optuna.Trial, objective: Any, log: Callable[[str], None]
) -> FrozenTrial:
    """Run one trial and tell the study how it ended; the caller keeps its heartbeat
    (``take_trial`` starts it).

    A failed trial (OOM, upstream error) is FAIL, queued again once with the same parameters
    (its grid point is measured yet: the failure may have been passing, and a retry that fails
    too is not queued again), and the study goes on. A storage error or Ctrl-C ends the trial as
    FAIL and is raised as itself: the storage is what broke, or the user wants out. Unlike
    ``Study.optimize``, no storage error turns into "Should not reach".
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
    frozen = study.tell(trial, value, state=state)
    if state == TrialState.FAIL:
        again = ("queued again once" if retry(study, frozen)
                 else "a retry itself: not queued again")  # fmt: skip
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
