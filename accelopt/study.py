"""Run a study: storage, sampler, baseline, trials, stopping rules and the answer.

A study is resumable: its spec, baseline scores and every finished trial live in Optuna storage
(a SQLite file in the working directory unless told otherwise); running it again continues
where it stopped and a finished study answers at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt.errors import AccelOptError
from accelopt.spec import StudySpec

__all__ = [
    "DEFAULT_STORAGE",
    "Outcome",
    "Requirement",
    "best_trial",
    "load_bench",
    "open_storage",
    "run_study",
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
)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
AA_WARN = 0.10  # an A/A spread above this is worth a warning


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


def storage_url(url: str | None) -> str:
    """The storage a command means: ``url``, else $ACCELOPT_STORAGE, else ``DEFAULT_STORAGE``."""
    return url or os.environ.get("ACCELOPT_STORAGE") or DEFAULT_STORAGE


def open_storage(url: str | None) -> tuple[optuna.storages.BaseStorage, str]:
    """``url``, else $ACCELOPT_STORAGE, else a SQLite file here. A plain path is a journal file."""
    url = storage_url(url)
    if "://" in url:
        try:
            # pre-ping: a connection a database dropped during an idle hour is replaced, not
            # reported as an error in the middle of a study.
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}), url
        except Exception as err:
            raise AccelOptError(f"cannot open storage {storage_label(url)}: {err}") from None
    from optuna.storages.journal import JournalFileBackend

    repair_journal(Path(url))
    return optuna.storages.JournalStorage(JournalFileBackend(url)), url


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
    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner") or {}
        if owner.get("host") != host or _alive(int(owner.get("pid", -1))):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "failed", "its worker process is gone")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if "retry_of" not in t.user_attrs:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        recovered.append(t.number)
    return recovered


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
) -> Outcome:
    """Run (or resume) a study until its trial budget, its grid, a requirement or a timeout.

    ``n_trials`` is the study's total budget (default: the spec's, or the whole grid for the grid
    sampler); trials already finished count towards it.
    """
    from accelopt.search import Space

    requirement = requirement or Requirement()
    backend, url = open_storage(storage)
    study = optuna.create_study(
        study_name=spec.name,
        storage=backend,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=spec.sampler.seed),  # replaced below for grid
    )
    record = _spec_record(spec)
    stored = study.user_attrs.get("spec")
    from accelopt.export import package_versions

    study.set_user_attr("versions", package_versions())
    if stored is None:
        study.set_user_attr("spec", record)
    elif stored != record:
        changed = next(k for k in IDENTITY if stored.get(k) != record[k])
        raise AccelOptError(
            f"study {spec.name} in {storage_label(url)} was run with {changed}="
            f"{stored.get(changed)!r}, not {record[changed]!r}; use another --storage or "
            f"study name to measure something else"
        )

    stale = recover_stale_trials(study)
    if stale:
        log(f"{spec.name}: trials {stale} were left RUNNING by a process that is gone: "
            f"marked FAIL and queued again once")  # fmt: skip

    # The space needs the pipeline's layout; a finished study must not load a model to say so.
    total = (
        n_trials
        or study.user_attrs.get("budget")
        or (None if spec.sampler.name == "grid" else spec.n_trials)
    )
    finished = _finished(study, total, requirement)
    if finished:
        return _outcome(study, 0, True, requirement)

    bench = load_bench(spec, device, weights, log)
    space = Space.build(bench.traits, spec.steps, spec.targets)
    if total is None:
        total = space.size
    study.set_user_attr("budget", total)
    if spec.sampler.name == "grid":
        study.sampler = optuna.samplers.GridSampler(space.grid(), seed=spec.sampler.seed)

    from accelopt.objective import Objective

    log(f"{spec.name}: timing the baseline twice on {bench.device} (an A/A check) ...")
    objective = Objective(bench, space, study.user_attrs.get("baseline_scores", []))
    first = objective.time_baseline()
    second = objective.measure_baseline()
    if not objective.baseline_scores:  # the first worker of a study fixes the reference scores
        study.set_user_attr("baseline_scores", second.scores)
        study.set_user_attr("baseline_time_per_image", second.time_per_image)
        objective.baseline_scores = second.scores
    spread = abs(first - second.time_per_image) / objective.baseline_time
    checks = [
        *study.user_attrs.get("aa_checks", []),
        {"spread": spread, "device": bench.device.type},
    ]
    study.set_user_attr("aa_checks", checks)
    if spread > AA_WARN:
        log(f"{spec.name}: warning: two baseline timings differ by {100 * spread:.0f}%; this "
            f"machine is noisy now and speedups will be too")  # fmt: skip
    remaining = total - _counted(study)
    log(
        f"{spec.name}: baseline {objective.baseline_time:.3f} s/image (A/A spread "
        f"{100 * spread:.1f}%); "
        f"{remaining} of {total} trials to run ({storage_label(url)})"
    )
    ran = _optimize(study, objective, remaining, timeout, requirement, progress)
    return _outcome(study, ran, False, requirement)


def _finished(study: optuna.Study, total: int | None, requirement: Requirement) -> bool:
    if requirement.active and any(requirement.met_by(t) for t in study.trials):
        return True
    return total is not None and _counted(study) >= total


def load_bench(
    spec: StudySpec, device: str | None, weights: str, log: Callable[[str], None]
) -> Any:
    """The pipeline, scheduler, prompts and CLIP scorer a study measures with."""
    from accelopt.metrics import ClipScorer
    from accelopt.objective import Bench
    from accelopt.pipelines import load_pipeline, model_info
    from accelopt.schedulers import set_scheduler

    info = model_info(spec.pipeline)
    tiny = info is not None and info.hub_id is None
    log(f"{spec.name}: loading {spec.pipeline} ({'random' if tiny else weights} weights) ...")
    pipe = load_pipeline(spec.pipeline, weights=weights, dtype=spec.dtype, device=device)  # type: ignore[arg-type]
    set_scheduler(pipe, spec.scheduler)
    # Random weights have no pretrained scorer either: nothing can be downloaded for them.
    pretrained = "" if weights == "random" else spec.metric.pretrained
    scorer = ClipScorer(spec.metric.model, pretrained, pipe.device)
    return Bench(spec, pipe, scorer, pipe.device)


def _optimize(
    study: optuna.Study,
    objective: Any,
    remaining: int,
    timeout: float | None,
    requirement: Requirement,
    progress: bool,
) -> int:
    from tqdm.auto import tqdm

    bar = tqdm(total=remaining, desc=study.study_name, unit="trial", disable=not progress)
    ran = 0

    def after(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        best = best_trial(study)
        bar.set_postfix_str(
            f"best {best.user_attrs['speedup']:.2f}x" if best else "no feasible yet"
        )
        bar.update()
        if requirement.met_by(trial):
            study.stop()

    try:
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=timeout,
            callbacks=[after],
            catch=(Exception,),  # a failed trial (OOM, upstream error) is FAIL; the study goes on
        )
    finally:
        bar.close()
    return ran


def _outcome(study: optuna.Study, ran: int, already: bool, req: Requirement) -> Outcome:
    met = next((t for t in study.trials if req.met_by(t)), None) if req.active else None
    best = met if req.active else best_trial(study)
    return Outcome(study, best, ran, already, req, met is not None)
