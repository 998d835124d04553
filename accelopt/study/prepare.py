"""Before the trials: a study created or resumed, checked against its spec, and the execution
mode it runs under.

Every worker of a study passes through here under the study's lock; the first one records the
spec, the budget and the mode, later ones (and restarts) read them and are refused when they
would measure something else.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import optuna

from accelopt.errors import AccelOptError, printable
from accelopt.measure.constraints import METRICS
from accelopt.measure.environment import package_versions
from accelopt.progress import Progress, follow
from accelopt.spec import (
    IDENTITY,
    StudySpec,
    canonical_name,
    filled_record,
    record_of,
    spec_from_record,
)
from accelopt.storage import open_storage, retry_owed, storage_label
from accelopt.study.results import Requirement
from accelopt.study.workers import Slots, TrialSeededTPE
from accelopt.trial.bench import Bench

__all__ = [
    "adopt_old_spelling",
    "calibrate",
    "check_requirement",
    "choose_mode",
    "directions",
    "is_finished",
    "metric_names",
    "open_study",
    "pick_mode",
    "prepare_study",
    "spec_of",
    "study_mode",
]


def spec_of(study: optuna.Study) -> StudySpec:
    """The spec a stored study was run with (as far as it defines what was measured)."""
    record = study.user_attrs.get("spec") or {}
    if not record:
        raise AccelOptError(f"study {study.study_name} was not made by accelopt run (no spec)")
    return spec_from_record(study.study_name, record)


def directions(spec: StudySpec) -> list[Literal["maximize", "minimize"]]:
    """Optuna's directions for a study: speedup up; for a pareto study, its second metric too
    (score loss down, PSNR up ...)."""
    if spec.objective != "pareto":
        return ["maximize"]
    return ["maximize", "maximize" if METRICS[spec.pareto_metric].higher_is_better else "minimize"]


def metric_names(spec: StudySpec) -> list[str]:
    """The objectives' names, as optuna-dashboard labels its axes (else "Objective 0"):
    ``["speedup"]``, or a pareto study's ``["speedup", "score_loss"]`` (its second metric)."""
    return ["speedup"] if spec.objective != "pareto" else ["speedup", spec.pareto_metric]


def check_requirement(spec: StudySpec, requirement: Requirement) -> None:
    """A pareto study keeps its whole frontier: it never stops at a requirement."""
    if spec.objective == "pareto" and requirement.active:
        raise AccelOptError(
            f"study {spec.name} is a pareto study: it keeps the whole frontier and does not stop "
            f"at {requirement.describe()}; run it without --req-speedup/--req-time and ask "
            f"codegen for the point (--req-speedup, --max-score-loss, --req-time)"
        )


def adopt_old_spelling(
    storage: optuna.storages.BaseStorage, name: str, log: Callable[[str], None]
) -> None:
    """Before names were canonical (``accelopt.spec.canonical_name``), ``toysd-ddim-20`` made a
    study of its own. When the storage has no study ``name`` but exactly one under another
    spelling of it, copy that one to ``name`` (the old one stays), so that run resumes it
    rather than starting afresh; with several spellings, say so and leave them."""
    if name in optuna.get_all_study_names(storage):
        return
    old = older_spellings(storage, name)
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
    record = record_of(spec)
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", record)
    elif not _same_study(filled_record(stored), record, study_mode(study)):
        stored = filled_record(stored)
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
    if study.metric_names != metric_names(spec):  # a study stored before they were set too
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(spec))
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
    bench: Bench,
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
    from accelopt.measure.environment import device_name

    stored = study.user_attrs.get("execution")
    if not isinstance(stored, dict) or "mode" not in stored:
        stored = None
    if stored is None and study_mode(study) == "eager":  # a study older than modes
        stored = {"mode": "eager", "baselines": {}, "device": None}
    if stored is None:  # run_study checked a named mode against the device and targets
        device = str(bench.device)
        measured: dict[str, float] = {}
        compile_seconds: dict[str, float] = {}
        seconds: dict[str, float] = {}  # each mode's timing, its compiling included
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
                started = time.perf_counter()
                m = bench.measure()
                seconds[mode] = time.perf_counter() - started
            measured[mode] = m.time_per_image
            compile_seconds[mode] = m.compile_seconds
        chosen = pick_mode(spec.execution, measured, spec.targets or (), default=modes[0])
        fastest = min(measured, key=measured.__getitem__) if measured else chosen
        if spec.execution == "auto" and chosen != fastest:
            refused = [n for n in spec.targets or () if n not in execution.allowed(fastest, [n])]
            log(f"{spec.name}: {fastest} is the fastest plain pipeline but cannot run "
                f"{'+'.join(refused)}; trials run under {chosen}, speedups stay against "
                f"{fastest}")  # fmt: skip
        record = {"mode": chosen, "baselines": measured, "compile_seconds": compile_seconds,
                  "seconds": seconds, "device": device_name(bench.device)}  # fmt: skip
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


def pick_mode(
    requested: str, measured: Mapping[str, float], targets: Iterable[str], default: str
) -> str:
    """The mode a study runs under: the one its spec names, or under "auto" the fastest plain
    pipeline among the modes that can run every one of ``targets`` (``execution.REFUSED``), so
    that a study of a method refused under the fastest mode runs under the next, against the
    fastest baseline still, instead of stopping. ``default`` when nothing was measured.

    >>> pick_mode("auto", {"eager": 3.0, "compile": 2.0, "cuda-graphs": 1.0}, ["dbcache"], "eager")
    'cuda-graphs'
    """
    from accelopt import execution

    if requested != "auto":
        return requested
    names = list(targets)
    usable = {m: t for m, t in measured.items() if len(execution.allowed(m, names)) == len(names)}
    return min(usable or measured, key=measured.__getitem__) if measured else default


def calibrate(
    study: optuna.Study,
    bench: Bench,
    names: tuple[str, ...],
    lock: Callable[[], contextlib.AbstractContextManager[None]],
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """The calibrated knobs (``Accelerator.calibrated``) of the accelerators in ``names`` that
    have some, by accelerator: MagCache's ratios for this pipeline, scheduler and steps.

    The first worker measures them once, eagerly, on the plain pipeline generating the study's
    first batch of prompts (its seeds, guidance and resolution), and stores them in the study's
    ``calibration`` user attribute (JSON: lists of floats); later workers and restarts read
    them, so every trial of the study applies the same values.
    """
    from accelopt import accelerators

    wanted = [n for n in names if accelerators.get(n).calibrated]
    stored = study.user_attrs.get("calibration") or {}
    missing = [n for n in wanted if n not in stored]
    if missing:
        accelerators.remove(bench.pipe)
        batch = min(bench.spec.prompts.batch_size, len(bench.prompts))
        made = {}
        for name in missing:
            log(f"{bench.spec.name}: calibrating {name} on the plain pipeline ({batch} "
                f"prompt{'s' if batch != 1 else ''}) ...")  # fmt: skip
            made[name] = accelerators.get(name).calibrate(
                bench.pipe, lambda: bench.generate(0, batch)
            )
        with lock():
            stored = study.user_attrs.get("calibration") or {}
            study.set_user_attr("calibration", {**made, **stored})  # the first one stored wins
            stored = study.user_attrs["calibration"]
    return {n: dict(stored[n]) for n in wanted}


def is_finished(study: optuna.Study, requirement: Requirement) -> bool:
    """Nothing left to run: a requirement met, or the budget spent and nothing queued (nor
    owed a retry: the next run queues it)."""
    total = study.user_attrs.get("budget")
    trials = study.get_trials(deepcopy=False)
    if requirement.active and any(requirement.met_by(t) for t in trials):
        return True
    slots = Slots.of(trials)
    busy = slots.waiting or slots.running or retry_owed(trials)
    return total is not None and slots.used >= total and not busy


def open_study(storage: str | None, name: str) -> optuna.Study:
    """The stored study ``name`` names: by its canonical name (``accelopt.spec``), else as
    typed, else under the one other spelling a storage made before names were canonical holds.
    ``storage`` is a URL or path (None: the default)."""
    backend, url = open_storage(storage)
    canonical = canonical_name(name)
    for candidate in dict.fromkeys((canonical, name)):
        try:
            return optuna.load_study(study_name=candidate, storage=backend)
        except KeyError:
            pass
    spellings = older_spellings(backend, canonical)
    if len(spellings) == 1:
        return optuna.load_study(study_name=spellings[0], storage=backend)
    if spellings:
        shown = ", ".join(printable(s, 120) for s in spellings)
        raise AccelOptError(f"study {canonical} is stored under {len(spellings)} spellings in "
                            f"{storage_label(url)} ({shown}); pass --study with one of them "
                            f"exactly")  # fmt: skip
    raise AccelOptError(
        f"no study {canonical!r} in {storage_label(url)}; run it first or pass --storage"
    )


def older_spellings(storage: optuna.storages.BaseStorage, name: str) -> list[str]:
    """The studies stored under another spelling of the canonical ``name``."""
    return sorted(s for s in optuna.get_all_study_names(storage)
                  if s != name and canonical_name(s) == name)  # fmt: skip
