"""Export a study's answers into the params store: ``export`` is the one way in, for the CLI
(``accelopt export``, ``run --export``, ``sweep --export``) and the Python API alike.

``export`` confirms the top trials on held-out prompts first (``accelopt.study.confirm``: the
best of many noisy trials is biased upward), withholds a trial whose speed the timing pairs
could not tell from the baseline's (unless forced), and writes the entries in the chosen
layout; it returns what it wrote and why not (``Exported``), and prints nothing.

The best feasible trial is written under the study's targets (all applicable accelerators for
a study without a targets suffix). A study that searched which accelerators to use also writes,
for every set of accelerators it tried, the best feasible trial that used exactly that set.
"Best" is by the held-out confirmation's lower bound once the study is confirmed, never by the
search's speedup (``ranking_speed``; ``ranked_by`` says which figure chose an entry).

A pareto study writes the same entries, each with its frontier (``accelopt.params_store.file``):
every non-dominated completed trial for the study's entry, those with exactly that set for a
set's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt._files import os_problem
from accelopt._types import is_number
from accelopt.errors import AccelOptError, printable
from accelopt.measure.environment import package_versions
from accelopt.params_store.file import seed_key, seed_pipeline, seed_scheduler, write_entries
from accelopt.params_store.query import ranking_speed
from accelopt.storage import storage_label
from accelopt.study.confirm import TOP_K
from accelopt.study.results import Requirement, frontier, measured, plain_time

if TYPE_CHECKING:
    from accelopt.progress import Progress
    from accelopt.trial.bench import Bench

__all__ = [
    "Exported",
    "Withheld",
    "entries_for",
    "export",
    "ranked_by",
    "speed_verdict",
    "withheld",
]

# Our parameter names -> the seed system's (only T-GATE's warm_up differs).
SEED_PARAMS = {"warm_up": "warmup"}
MEASURED = ("speedup", "time_per_image", "score", "score_loss", "peak_memory", "device")
# Stored where the trial measured them: fidelity; the interval of a paired speedup (two pairs
# or more) and the pair count; the plain pipeline's time in the same pairs, the batch size the
# timed calls ran at, the quality pass's own time, and the speedup before it was scaled to the
# fastest plain pipeline (accelopt.trial.objective).
OPTIONAL = ("psnr", "ssim", "clip_image", "lpips", "speedup_interval", "speedup_level",
            "speedup_pairs", "paired_baseline_time_per_image", "timing_batch_size",
            "quality_pass_time_per_image", "speedup_vs_mode_baseline")  # fmt: skip


def _measured(attrs: dict[str, Any]) -> dict[str, Any]:
    """What an entry says was measured: speed and CLIP always, the rest where there was any
    (a trial timed in one pair before that stopped recording an interval: its pair count, not
    its degenerate interval)."""
    from accelopt.measure.timing import one_pair_read

    return one_pair_read({**{k: attrs.get(k) for k in MEASURED},
                          **{k: attrs[k] for k in OPTIONAL if k in attrs}})  # fmt: skip


def _execution(attrs: dict[str, Any], study: optuna.Study) -> dict[str, Any]:
    """The entry's ``execution``: the mode the trial ran under, every mode's plain baseline and
    its speedup over eager, numbers only where the storage holds positive finite ones (a
    journal may hold Infinity; a store holds JSON, and the entry check refuses the rest)."""
    stored = study.user_attrs.get("execution")
    baselines = stored.get("baselines") if isinstance(stored, dict) else None
    if not isinstance(baselines, dict):
        baselines = {}
    vs_eager = attrs.get("speedup_vs_eager")
    return {
        "mode": attrs.get("execution", "eager"),
        "plain_baselines": {str(m): t for m, t in baselines.items() if _positive(t)},
        "speedup_vs_eager": vs_eager if _positive(vs_eager) else None,
    }


def _positive(value: object) -> bool:
    return is_number(value) and value > 0


def _under_load(study: optuna.Study) -> dict[str, Any]:
    """``under_load``: the warnings of a machine busy while the study measured, with their
    numbers (``accelopt.measure.load``); nothing for a study measured on a quiet machine."""
    found = [r for r in study.user_attrs.get("load_warnings") or [] if isinstance(r, dict)]
    return {"under_load": found} if found else {}


def speed_verdict(trial: FrozenTrial, confirmed: dict[int, dict[str, Any]] | None,
                  threshold: float = 1.0) -> str:  # fmt: skip
    """Whether a trial is faster than ``threshold``: by its held-out confirmation when the study
    was confirmed, else by its own paired interval; ``faster`` for a trial timed before pairs
    (nothing to judge it by but its speedup), or one timed in a single pair (its one ratio
    against ``threshold``: one pair has no interval)."""
    if confirmed is not None:
        return str((confirmed.get(trial.number) or {}).get("speed") or "unconfirmed")
    from accelopt.measure.timing import verdict

    interval = trial.user_attrs.get("speedup_interval")
    if interval:
        low, high = interval
        return verdict(low, high, threshold)
    if trial.user_attrs.get("speedup_pairs") == 1:
        speedup = trial.user_attrs["speedup"]
        return verdict(speedup, speedup, threshold)
    return "faster"


def withheld(study: optuna.Study, requirement: Requirement | None = None) -> list[FrozenTrial]:
    """Feasible trials whose speed the pairs could not tell from the baseline's (or the
    requirement's): what export leaves out unless forced, best first."""
    from accelopt.study.confirm import confirmations

    confirmed = None if (study.user_attrs.get("spec") or {}).get("objective") == "pareto" else (
        confirmations(study))  # fmt: skip
    threshold = (requirement.speedup if requirement else None) or 1.0
    found = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if measured(t) and t.user_attrs["feasible"]
             and speed_verdict(t, confirmed, threshold) == "undecidable"
             and not (confirmed or {}).get(t.number, {}).get("failed")]  # fmt: skip
    return sorted(found, key=lambda t: _ranking(t, confirmed), reverse=True)


def _ranking(
    trial: FrozenTrial, confirmed: dict[int, dict[str, Any]] | None
) -> tuple[float, float]:
    """What export ranks a trial by (``accelopt.params_store.query.ranking_speed``): its
    held-out lower bound once confirmed, the search's speedup only to break a tie."""
    a = trial.user_attrs
    return ranking_speed(a, (confirmed or {}).get(trial.number))[0], a["speedup"]


def ranked_by(entry: dict[str, Any]) -> str:
    """Which figure chose an entry's trial among the study's others, with its value::

    ``ranked by its held-out speedup's lower bound: 2.36x (2.06x-2.55x, 98% interval over 7
    pairs)``
    """
    from accelopt.measure.timing import interval_text
    from accelopt.study.confirm import describe

    heldout, m = entry.get("heldout"), entry["measured"]
    requirement = entry.get("requirement") or {}
    if not heldout and (requirement.get("req_speedup") or requirement.get("req_time")):
        return "the first to meet the requirement (not confirmed on held-out prompts)"
    figure, what = ranking_speed(m, heldout)
    if heldout:
        return f"ranked by its {what}: {describe(heldout)}"
    shown = interval_text(m.get("speedup_interval"), m.get("speedup_level"),
                          m.get("speedup_pairs"))  # fmt: skip
    return f"ranked by its {what}: {figure:.2f}x{shown}"


def _bounds(spec: dict[str, Any]) -> dict[str, float]:
    """The study's fidelity bounds (``[constraints]``), none for studies stored before them."""
    stored = spec.get("constraints") or {}
    return {k: float(v) for k, v in stored.items() if v is not None}


def _entry(
    study: optuna.Study,
    trial: FrozenTrial,
    targets: list[str],
    requirement: Requirement,
    storage: str,
) -> tuple[str, dict[str, Any]]:
    spec = study.user_attrs["spec"]
    a = trial.user_attrs
    accelerators: dict[str, dict[str, Any]] = a["accelerators"]
    key = seed_key(
        spec["pipeline"],
        spec["scheduler"],
        spec["steps"],
        targets,
        spec["max_score_loss"],
        requirement.speedup,
        requirement.time_per_image,
        _bounds(spec),
    )
    entry = {
        "key": key,
        "pipeline": seed_pipeline(spec["pipeline"]),
        "model": spec["pipeline"],
        "scheduler": spec["scheduler"],
        "seed_scheduler": seed_scheduler(spec["scheduler"]),
        "steps": spec["steps"],
        "targets": sorted(targets),
        "requirement": {
            "req_speedup": requirement.speedup,
            "max_score_loss": spec["max_score_loss"],
            "req_time": requirement.time_per_image,
            **_bounds(spec),
        },
        "accelerators": accelerators,
        "params": _flat(accelerators),
        "generation": {
            "resolution": spec["resolution"],
            "guidance": spec["guidance"],
            "dtype": spec["dtype"],
            "prompt_set": (spec.get("prompts") or {}).get("set"),  # the scripts' example prompt
        },
        "measured": {**_measured(a), **_under_load(study)},
        "baseline": {
            "time_per_image": plain_time(a),
            "scores": study.user_attrs.get("baseline_scores"),
        },
        # The mode the trial ran under and every mode's plain baseline (accelopt.execution);
        # entries from before modes existed were measured eagerly.
        "execution": _execution(a, study),
        # the same configuration again on held-out prompts and fresh seeds (accelopt.study.confirm)
        "heldout": (study.user_attrs.get("confirmations") or {}).get(str(trial.number)),
        "versions": study.user_attrs.get("versions") or package_versions(),
        "study": {
            "name": study.study_name,
            "storage": storage_label(storage),
            "trial": trial.number,
        },
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return key, entry


def _flat(accelerators: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The knobs flat, under the seed's names."""
    return {SEED_PARAMS.get(k, k): v for knobs in accelerators.values() for k, v in knobs.items()}


def _point(trial: FrozenTrial, heldout: dict[str, Any] | None) -> dict[str, Any]:
    """One trial of a frontier, as the store keeps it."""
    a = trial.user_attrs
    return {
        "trial": trial.number,
        "accelerators": a["accelerators"],
        "params": _flat(a["accelerators"]),
        "measured": _measured(a),
        "baseline": {"time_per_image": plain_time(a)},
        "heldout": heldout,
    }


def _frontier_entries(
    study: optuna.Study, storage: str, chosen: list[tuple[FrozenTrial, list[str]]]
) -> dict[str, dict[str, Any]]:
    """A pareto study's entries, each with the frontier of the trials it answers for: all of
    them for the first (the study's own), those with exactly its accelerators for a set's."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if measured(t)]  # fmt: skip
    heldout = study.user_attrs.get("confirmations") or {}
    entries: dict[str, dict[str, Any]] = {}
    for i, (trial, targets) in enumerate(chosen):
        key, entry = _entry(study, trial, targets, Requirement(), storage)
        if key in entries:  # the set of every accelerator searched: the study's entry has it
            continue
        used = sorted(targets)
        members = [t for t in complete if i == 0 or sorted(t.user_attrs["accelerators"]) == used]
        entry["objective"] = "pareto"
        entry["pareto_metric"] = study.user_attrs["spec"].get("pareto_metric", "score_loss")
        front = frontier(members, entry["pareto_metric"])
        entry["frontier"] = [_point(t, heldout.get(str(t.number))) for t in front]
        entries[key] = entry
    return entries


def entries_for(
    study: optuna.Study, storage: str, requirement: Requirement | None = None, force: bool = False
) -> dict[str, dict[str, Any]]:
    """The store entries a study answers (empty when no trial is feasible, or none is surely
    faster than the baseline: ``withheld`` lists those the noise left undecided, and ``force``
    exports them too)."""
    from accelopt.study.confirm import confirmations

    requirement = requirement or Requirement()
    spec = study.user_attrs.get("spec")
    if spec is None:
        raise AccelOptError(f"study {study.study_name} was not made by accelopt run (no spec)")
    pareto = spec.get("objective") == "pareto"
    if pareto and requirement.active:
        raise AccelOptError(
            f"study {study.study_name} is a pareto study: its export is the whole frontier; "
            f"leave out --req-speedup/--req-time and ask codegen for the point instead"
        )
    # A frontier is exported as searched: held-out confirmation judges one budget's answers.
    confirmed = None if pareto else confirmations(study)

    threshold = requirement.speedup or 1.0

    def exportable(t: FrozenTrial) -> bool:
        """Once a study is confirmed, only what passed on the held-out prompts is exported;
        otherwise only what its own pairs show faster. ``force`` lets an undecidable speed
        through, never a failed bound."""
        if confirmed is not None and (confirmed.get(t.number) or {}).get("failed"):
            return False
        if confirmed is not None and (confirmed.get(t.number) or {}).get("passed"):
            return True
        verdict = speed_verdict(t, confirmed, threshold)
        return verdict == "faster" or (force and verdict == "undecidable")

    if requirement.active:
        meeting = [t for t in study.trials if measured(t) and requirement.met_by(t)
                   and exportable(t)]  # fmt: skip
        if confirmed is not None:  # among those confirmed: the best on held-out prompts
            meeting.sort(key=lambda t: _ranking(t, confirmed), reverse=True)
        met = meeting[0] if meeting else None  # unconfirmed: the first, as the search stopped
        chosen = [] if met is None else [(met, sorted(met.user_attrs["accelerators"]))]
    else:
        # Best first by the held-out figure once confirmed (the search's best is biased up).
        ranked = sorted(
            (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if measured(t) and t.user_attrs["feasible"] and exportable(t)),
            key=lambda t: _ranking(t, confirmed), reverse=True,
        )  # fmt: skip
        best = ranked[0] if ranked else None
        searched = spec["targets"] or _searched(study)
        chosen = [] if best is None else [(best, searched)]
        if spec["targets"] is None:  # also the best of every set of accelerators tried
            by_set: dict[tuple[str, ...], FrozenTrial] = {}
            for t in ranked:
                used = tuple(sorted(t.user_attrs["accelerators"]))
                if used not in by_set:  # ranked: the first of a set is its best
                    by_set[used] = t
            chosen += [(t, list(used)) for used, t in sorted(by_set.items())]
    if pareto:
        return _checked(_frontier_entries(study, storage, chosen))
    entries: dict[str, dict[str, Any]] = {}
    for t, targets in chosen:
        key, entry = _entry(study, t, targets, requirement, storage)
        # The set of every accelerator searched has the study's key: its best overall trial
        # answers it, even when that trial used fewer accelerators than its set's best did.
        entries.setdefault(key, entry)
    return _checked(entries)


def _checked(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``entries``, each passing the check every reader applies (``accelopt.params_store.check``):
    what export writes, codegen must be able to use."""
    from accelopt.params_store.check import check_entry

    for key, entry in entries.items():
        check_entry(key, entry)
    return entries


def _searched(study: optuna.Study) -> list[str]:
    """The accelerators a study searched: those its trials drew knobs for (``plan``, a space's
    choice of group, is no knob), and any a trial used (the targets of its key must hold its
    accelerators: ``check_entry``)."""
    names = {k.split(".")[0] for t in study.trials for k in t.params if "." in k}
    used = {n for t in study.trials if isinstance(a := t.user_attrs.get("accelerators"), dict)
            for n in a}  # fmt: skip
    return sorted(names | used)


@dataclass(frozen=True)
class Withheld:
    """A feasible trial left out because its speed is undecidable: its interval straddles
    ``Exported.threshold``. ``confirmation`` is its held-out record, None if never confirmed."""

    trial: FrozenTrial
    confirmation: dict[str, Any] | None


@dataclass(frozen=True)
class Exported:
    """What ``export`` did: the entries it wrote, what it left out and why.

    ``entries`` is every entry the study answers; those keyed in ``left_out`` were not written
    (the seed layout has no slot for them). ``withheld`` lists undecidable trials, best first.
    ``reason`` says why nothing was written when ``entries`` is empty.
    """

    study: str
    store: Path
    layout: str
    entries: dict[str, dict[str, Any]]
    left_out: tuple[str, ...] = ()
    withheld: tuple[Withheld, ...] = ()
    threshold: float = 1.0
    unconfirmed_frontier: bool = False  # confirmation was asked for, but a frontier is exported
    reason: str = ""
    created: Path | None = None  # the store's folder, where this export made it

    @property
    def written(self) -> dict[str, dict[str, Any]]:
        """The entries in the store now."""
        return {k: e for k, e in self.entries.items() if k not in self.left_out}

    @property
    def trials(self) -> list[int]:
        """The numbers of the trials the written entries hold (frontier points included)."""
        kept = self.written.values()
        return sorted({e["study"]["trial"] for e in kept}
                      | {p["trial"] for e in kept for p in e.get("frontier", [])})  # fmt: skip

    @property
    def refused(self) -> bool:
        """Nothing written because the noise left every answer undecidable (the CLI exits 1)."""
        return not self.entries and bool(self.withheld)


def export(
    study: optuna.Study,
    storage: str | None,
    store: str | Path | None = None,
    *,
    requirement: Requirement | None = None,
    top_k: int = TOP_K,
    layout: str = "accelopt",
    force: bool = False,
    device: str | None = None,
    weights: str = "pretrained",
    bench: Bench | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Exported:
    """Confirm, withhold, write: the study's answers into the params store ``store`` (None:
    $ACCELOPT_STORE or search_params.json), in ``layout`` ("accelopt" or "seed").

    The top ``top_k`` trials are measured again on held-out prompts first (0: not at all; a
    pareto study is exported as searched), with ``bench`` or one loaded on ``device`` with
    ``weights``; ``log`` is told what confirmation finds. A trial whose speedup is undecidable
    is withheld unless ``force``; a failed bound never is written.

    >>> result = export(study, "sqlite:///accelopt.db", "params.json")  # doctest: +SKIP
    >>> result.trials, [w.trial.number for w in result.withheld]  # doctest: +SKIP
    ([3], [5])
    """
    from accelopt.params_store.file import store_path
    from accelopt.params_store.seed_layout import LAYOUTS, write_seed
    from accelopt.storage import storage_url
    from accelopt.study.confirm import confirmations
    from accelopt.study.results import is_pareto

    if top_k < 0:
        raise AccelOptError(f"top_k must be 0 (no confirmation) or more, got {top_k}")
    if layout not in LAYOUTS:
        raise AccelOptError(f"unknown store layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    requirement = requirement or Requirement()
    path = store_path(store)
    shown = _check_store(path)  # before confirming: a path no write can take fails at once
    pareto = is_pareto(study)
    if top_k and not pareto:
        _confirm(study, requirement, top_k, bench, device, weights, progress, log)
    url = storage_url(storage)
    entries = entries_for(study, url, requirement, force)
    confirmed = confirmations(study) or {}
    undecided = () if force else tuple(
        Withheld(t, confirmed.get(t.number)) for t in withheld(study, requirement))  # fmt: skip
    feasible = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if t.user_attrs.get("feasible"))  # fmt: skip
    reason = "none is feasible"
    if confirmed:
        reason = "none passed held-out confirmation"
    elif feasible:  # feasible, but its own pairs timed it no faster than the plain pipeline
        reason = (
            f"none of its {feasible} feasible trial{'s' if feasible != 1 else ''} timed "
            f"faster than {requirement.speedup or 1.0:g}x the plain pipeline in its pairs"
        )
    if undecided:
        reason = "no feasible configuration is surely faster than the plain pipeline"
    left_out: list[str] = []
    created = _missing_folder(path) if entries else None  # the write makes it
    try:
        if entries and layout == "seed":
            left_out = write_seed(path, entries)
        elif entries:
            write_entries(path, entries)
    except OSError as err:  # what the check before could not foresee (a full disk)
        raise AccelOptError(f"cannot write {shown}: {os_problem(err)}") from None
    return Exported(study.study_name, path, layout, entries, tuple(left_out), undecided,
                    requirement.speedup or 1.0, bool(top_k) and pareto,
                    "" if entries else reason, created)  # fmt: skip


def _check_store(path: Path) -> str:
    """How errors name the store at ``path``, once refused in one line if no write could
    take it there (a folder, a FIFO, a name too long, a path through a file or a link loop);
    its lock file (``PATH.lock``) too."""
    from accelopt._files import check_output

    shown = f"--store {printable(str(path), 200)}"
    check_output(path, shown, force=True)
    check_output(Path(f"{path}.lock"), f"{shown}'s lock file", force=True)
    return shown


def _missing_folder(path: Path) -> Path | None:
    """The outermost folder above ``path`` that does not exist yet (as ``path`` names it),
    None if all do."""
    missing = None
    for folder in path.parents:
        if folder.exists():
            break
        missing = folder
    return missing


def _confirm(
    study: optuna.Study,
    requirement: Requirement,
    top_k: int,
    bench: Bench | None,
    device: str | None,
    weights: str,
    progress: Progress | None,
    log: Callable[[str], None],
) -> None:
    """Measure the top ``top_k`` trials not confirmed yet again on the held-out prompts, the
    way the search timed them."""
    from accelopt.progress import Progress, follow
    from accelopt.study.confirm import confirm, pending
    from accelopt.study.prepare import spec_of, study_mode
    from accelopt.trial.bench import Bench

    if not pending(study, top_k, requirement):
        return  # nothing to load a pipeline for
    progress = progress or Progress(enabled=False)
    if bench is None:
        bench = Bench.load(spec_of(study), device, weights, log, progress)
    bench.mode = study_mode(study) or "eager"  # re-timed the way the search timed it
    with progress.phase(f"{study.study_name}: held-out confirmation") as confirming:
        follow(bench, confirming)  # confirm's held-out bench tells what this one is told
        confirm(study, bench, top_k, log=log, requirement=requirement)
