"""Run a study: storage, sampler, baseline, trials, stopping rules and the answer.

A study is resumable: its spec, baseline scores and every finished trial live in Optuna storage
(a SQLite file in the working directory unless told otherwise); running it again continues
where it stopped and a finished study answers at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt.errors import AccelOptError
from accelopt.spec import StudySpec
from accelopt.workers import Slots

__all__ = [
    "DEFAULT_STORAGE",
    "Outcome",
    "Requirement",
    "best_trial",
    "check_requirement",
    "directions",
    "frontier",
    "is_finished",
    "is_pareto",
    "load_bench",
    "open_storage",
    "outcome_of",
    "prepare_study",
    "recover",
    "run_study",
    "run_trial",
    "spec_of",
    "storage_label",
    "storage_url",
]

DEFAULT_STORAGE = "sqlite:///accelopt.db"
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
)
# What a stored spec record without a key meant: studies stored before the key existed.
LEGACY = {"objective": "speedup", "execution": "eager"}
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
AA_WARN = 0.10  # an A/A spread above this is worth a warning
HEARTBEAT = 30  # seconds between heartbeats of a database worker; stale after twice that
POLL_SECONDS = 2.0  # how often a worker with nothing to start looks again
WAIT_NOTICE = 30.0  # say why a worker waits once it has waited this long


@dataclass(frozen=True)
class Requirement:
    """The seed system's modes: stop at the first feasible trial reaching a speedup or a time."""

    speedup: float | None = None
    time_per_image: float | None = None

    def met_by(self, trial: FrozenTrial) -> bool:
        a = trial.user_attrs
        if trial.state != TrialState.COMPLETE or not a.get("feasible"):
            return False
        if self.speedup is not None:
            return bool(a["speedup"] >= self.speedup)
        if self.time_per_image is not None:
            return bool(a["time_per_image"] <= self.time_per_image)
        return False

    @property
    def active(self) -> bool:
        return self.speedup is not None or self.time_per_image is not None

    def describe(self) -> str:
        if self.speedup is not None:
            return f"speedup >= {self.speedup:g}x"
        return f"time per image <= {self.time_per_image:g} s"


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


def storage_label(url: str) -> str:
    """A storage URL fit for logs and files: the password replaced by ***."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: show only its scheme
        return url.split("://", 1)[0] + "://***"


def storage_url(url: str | None, default: str = DEFAULT_STORAGE) -> str:
    """The storage a command means: ``url``, else $ACCELOPT_STORAGE, else ``default``."""
    return url or os.environ.get("ACCELOPT_STORAGE") or default


def open_storage(
    url: str | None, *, heartbeat: int = HEARTBEAT
) -> tuple[optuna.storages.BaseStorage, str]:
    """``url``, else $ACCELOPT_STORAGE, else a SQLite file here. A plain path is a journal file.

    A database server (PostgreSQL) keeps a heartbeat of every running trial: a trial whose
    worker stops beating for ``2 * heartbeat`` seconds is failed and queued again once. A
    password is best left out of the URL: PostgreSQL reads $PGPASSWORD or ~/.pgpass.
    """
    url = storage_url(url)
    if "://" in url:
        try:
            return _open_database(url, heartbeat), url
        except Exception as err:
            raise AccelOptError(f"cannot open storage {storage_label(url)}: {err}") from None
    from optuna.storages.journal import JournalFileBackend

    repair_journal(Path(url))
    return optuna.storages.JournalStorage(JournalFileBackend(url)), url


def _open_database(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    from accelopt.workers import retry_once

    # pre-ping: a connection a database dropped during an idle hour is replaced, not reported
    # as an error in the middle of a study.
    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    if url.startswith("sqlite"):  # one worker on one host: owners are checked by process id
        return optuna.storages.RDBStorage(url, **kwargs)
    kwargs.update(heartbeat_interval=heartbeat, heartbeat_stale_trial_callback=retry_once)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if not url.startswith("postgresql"):
            return optuna.storages.RDBStorage(url, **kwargs)
        # Workers starting together on a new database would all create its tables at once.
        import sqlalchemy

        from accelopt.workers import lock_key

        engine = sqlalchemy.create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": lock_key("accelopt schema")})  # fmt: skip
                return optuna.storages.RDBStorage(url, **kwargs)
        finally:
            engine.dispose()


def repair_journal(path: Path) -> Path | None:
    """Cut a half-written last line (a writer killed mid-write) off a journal file.

    Optuna refuses a journal whose last line is incomplete once anything is appended after it.
    The whole file is first copied to ``<name>.broken-<time>``; returns that copy, or None when
    the file was whole.
    """
    if not path.is_file():
        return None
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    if not lines:
        return None
    try:
        whole = lines[-1].endswith(b"\n") and isinstance(json.loads(lines[-1]), dict)
    except ValueError:
        whole = False
    if whole:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.broken-{stamp}")
    backup.write_bytes(data)
    tmp = path.with_name(f".{path.name}.repair")
    tmp.write_bytes(b"".join(lines[:-1]))
    os.replace(tmp, path)
    print(f"accelopt: warning: {path} ended in a half-written line; cut it off (the whole "
          f"file is kept as {backup})", file=sys.stderr)  # fmt: skip
    return backup


def recover_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose owner process on this host is gone as FAIL; queue each again
    once with the same parameters. Returns the numbers of the trials recovered."""
    from accelopt.workers import retry_once

    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner") or {}
        if owner.get("host") != host or _alive(int(owner.get("pid", -1))):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "failed", "its worker process is gone")
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            retry_once(study, study._storage.get_trial(t._trial_id))
            recovered.append(t.number)
    return recovered


def recover(study: optuna.Study, log: Callable[[str], None]) -> None:
    """FAIL and queue again the trials of dead workers: by heartbeat where the storage keeps
    them (databases), else by the owner's process id (journal files and SQLite: one host)."""
    from accelopt.workers import fail_stale_trials

    if fail_stale_trials(study):
        return
    stale = recover_stale_trials(study)
    if stale:
        log(f"{study.study_name}: trials {stale} were left RUNNING by a process that is gone: "
            f"marked FAIL and queued again once")  # fmt: skip


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spec_record(spec: StudySpec) -> dict[str, Any]:
    data = dataclasses.asdict(spec)
    return json.loads(json.dumps({k: data[k] for k in IDENTITY}))


def spec_of(study: optuna.Study) -> StudySpec:
    """The spec a stored study was run with (as far as it defines what was measured)."""
    from accelopt.spec import MetricSpec, PromptSpec, SamplerSpec

    record = dict(study.user_attrs.get("spec") or {})
    if not record:
        raise AccelOptError(f"study {study.study_name} was not made by accelopt run (no spec)")
    tables = {"prompts": PromptSpec, "metric": MetricSpec, "sampler": SamplerSpec}
    for key, cls in tables.items():
        record[key] = cls(**record[key])
    if record["targets"] is not None:
        record["targets"] = tuple(record["targets"])
    return StudySpec(name=study.study_name, source="stored study", **record)


def directions(spec: StudySpec) -> list[Literal["maximize", "minimize"]]:
    """Optuna's directions for a study: speedup up; for a pareto study, score loss down too."""
    return ["maximize", "minimize"] if spec.objective == "pareto" else ["maximize"]


def is_pareto(study: optuna.Study) -> bool:
    """Whether a stored study searched speedup and score loss together."""
    return bool((study.user_attrs.get("spec") or {}).get("objective") == "pareto")


def frontier(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The completed trials no other completed trial beats on both speedup and score loss,
    fastest first (a pareto study's ``best_trials``; ``trials`` may be any subset)."""
    from accelopt.store import non_dominated

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    front = non_dominated(done, lambda t: (t.user_attrs["speedup"], t.user_attrs["score_loss"]))
    return sorted(front, key=lambda t: (-t.user_attrs["speedup"], t.number))


def check_requirement(spec: StudySpec, requirement: Requirement) -> None:
    """A pareto study keeps its whole frontier: it never stops at a requirement."""
    if spec.objective == "pareto" and requirement.active:
        raise AccelOptError(
            f"study {spec.name} is a pareto study: it keeps the whole frontier and does not stop "
            f"at {requirement.describe()}; run it without --req-speedup/--req-time and ask "
            f"codegen for the point (--req-speedup, --max-score-loss, --req-time)"
        )


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The feasible completed trial with the highest speedup, or None."""
    feasible = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.user_attrs.get("feasible")]  # fmt: skip
    return max(feasible, key=lambda t: t.user_attrs["speedup"], default=None)


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
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    heartbeat: int = HEARTBEAT,
    warm_start: bool = True,
) -> Outcome:
    """Run (or resume) a study until its trial budget, its grid, a requirement or a timeout.

    ``n_trials`` is the study's total budget (default: the spec's, or the whole grid for the grid
    sampler); trials already finished count towards it. Any number of processes may run the
    same study on shared storage at once (``accelopt.workers``): the budget stays the total.
    A new study first tries its neighbours' best configurations (``accelopt.warmstart``).
    """
    from accelopt.search import Space
    from accelopt.workers import GridOrder, storage_lock

    requirement = requirement or Requirement()
    check_requirement(spec, requirement)
    if spec.execution != "auto":  # before a study is made that nothing could run
        from accelopt import execution
        from accelopt.pipelines import resolve_device

        execution.check(spec.execution, spec.targets or (), str(resolve_device(device)))
    backend, url = open_storage(storage, heartbeat=heartbeat)

    def lock() -> contextlib.AbstractContextManager[None]:
        return storage_lock(backend, url, spec.name)

    with lock():
        study = prepare_study(backend, url, spec, n_trials)
        recover(study, log)

    # The space needs the pipeline's layout; a finished study must not load a model to say so.
    if is_finished(study, requirement):
        return outcome_of(study, 0, True, requirement)

    bench = load_bench(spec, device, weights, log)
    if spec.execution != "auto" or bench.device.type == "cuda":
        from accelopt import execution

        execution.use_cache_dir(_beside_storage(url) / ".accelopt-inductor")
    chosen = choose_mode(study, spec, bench, lock, log)
    space = Space.build(bench.traits, spec.steps, spec.targets, bench.mode, spec.scheduler)
    space = space.adopt(study.get_trials(deepcopy=False))
    with lock():
        total = int(study.user_attrs.get("budget") or space.size)
        study.set_user_attr("budget", total)
        if warm_start:  # a new study's first worker only
            from accelopt import warmstart

            starts = warmstart.warm_start(study, backend, spec, space)
            if starts:
                log(f"{spec.name}: {warmstart.summary(starts)}")
    grid = GridOrder(space.grid(), spec.sampler.seed) if spec.sampler.name == "grid" else None

    from accelopt.objective import Objective

    log(f"{spec.name}: timing the baseline twice on {bench.device} under {bench.mode} (an A/A "
        f"check) ...")  # fmt: skip
    objective = Objective(bench, space, [], chosen.get("baselines"))
    first = objective.time_baseline()
    second = objective.measure_baseline()
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


def prepare_study(
    storage: optuna.storages.BaseStorage, url: str, spec: StudySpec, n_trials: int | None
) -> optuna.Study:
    """Create or load the study, check it measures what ``spec`` says, record its budget.

    Call under the study's lock: several workers may start at once.
    """
    from accelopt.export import package_versions
    from accelopt.workers import TrialSeededTPE

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
    elif not _same_study({**LEGACY, **stored}, record, study_mode(study)):
        stored = {**LEGACY, **stored}
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
    spec: StudySpec, device: str | None, weights: str, log: Callable[[str], None]
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
    pipe = load_pipeline(spec.pipeline, weights=weights, dtype=spec.dtype, device=device)  # type: ignore[arg-type]
    set_scheduler(pipe, spec.scheduler)
    # Random weights have no pretrained scorer either: nothing can be downloaded for them.
    pretrained = "" if weights == "random" else spec.metric.pretrained
    scorer = ClipScorer(spec.metric.model, pretrained, pipe.device)
    return Bench(spec, pipe, scorer, pipe.device)


def _work(
    study: optuna.Study,
    objective: Any,
    total: int,
    grid: Any,
    lock: Callable[[], contextlib.AbstractContextManager[None]],
    timeout: float | None,
    requirement: Requirement,
    progress: bool,
    log: Callable[[str], None],
) -> int:
    """Take trials until the study is done; returns how many this process ran."""
    from tqdm.auto import tqdm

    from accelopt.workers import WAIT, take_trial

    def done() -> int:
        return _counted(study)

    def met(trials: Sequence[FrozenTrial]) -> bool:
        return requirement.active and any(requirement.met_by(t) for t in trials)

    bar = tqdm(total=total, initial=done(), desc=study.study_name, unit="trial",
               disable=not progress)  # fmt: skip

    def compiling(what: str) -> None:  # a new graph takes a minute or more: say so
        bar.set_postfix_str(f"compiling {what} ...")

    objective.bench.on_compile = compiling
    deadline = None if timeout is None else time.monotonic() + timeout
    ran, waited = 0, 0.0
    try:
        while deadline is None or time.monotonic() < deadline:
            with lock():
                recover(study, log)
                trial = take_trial(study, total, grid, met)
            if trial is None:
                break
            if trial is WAIT:
                if waited <= WAIT_NOTICE < waited + POLL_SECONDS:
                    log(f"{study.study_name}: the budget is taken; waiting for trials still "
                        f"running elsewhere (one may fail and be queued again)")  # fmt: skip
                waited += POLL_SECONDS
                time.sleep(POLL_SECONDS)
                continue
            waited = 0.0
            assert isinstance(trial, optuna.Trial)
            run_trial(study, trial, objective, log)
            ran += 1
            best = best_trial(study)
            bar.set_postfix_str(f"best {best.user_attrs['speedup']:.2f}x" if best
                                else "no feasible yet")  # fmt: skip
            bar.n = done()
            bar.refresh()
    finally:
        bar.close()
    return ran


def run_trial(
    study: optuna.Study, trial: optuna.Trial, objective: Any, log: Callable[[str], None]
) -> FrozenTrial:
    """Run one trial and tell the study how it ended.

    A failed trial (OOM, upstream error) is FAIL and the study goes on. A storage error or
    Ctrl-C ends the trial as FAIL and is raised as itself: the storage is what broke, or the
    user wants out. Unlike ``Study.optimize``, no storage error turns into "Should not reach".
    """
    from accelopt.workers import heartbeat

    value, state = None, TrialState.COMPLETE
    with heartbeat(study, trial):
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
            state = TrialState.FAIL
            log(f"{study.study_name}: trial {trial.number} failed: {type(err).__name__}: {err}")
            with contextlib.suppress(Exception):
                trial.set_user_attr("failed", f"{type(err).__name__}: {err}")
    return study.tell(trial, value, state=state)


def _abandon(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    """FAIL a trial that is being left; if even that fails, stale recovery finds it later."""
    with contextlib.suppress(Exception):
        if why == "interrupted":  # gives its slot back: Ctrl-C and a restart lose nothing
            trial.set_user_attr("interrupted", True)
        trial.set_user_attr("failed", why)
        study.tell(trial, state=TrialState.FAIL)


def is_storage_error(err: BaseException) -> bool:
    """Errors of the storage itself (a database gone, a lost connection)."""
    import sqlalchemy.exc

    return isinstance(err, optuna.exceptions.StorageInternalError | sqlalchemy.exc.SQLAlchemyError)


def outcome_of(study: optuna.Study, ran: int, already: bool, req: Requirement) -> Outcome:
    """How a run ended, read from the study."""
    met = next((t for t in study.trials if req.met_by(t)), None) if req.active else None
    best = met if req.active else best_trial(study)
    return Outcome(study, best, ran, already, req, met is not None)
