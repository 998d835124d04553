"""Export a study's answers into the params store.

The best feasible trial is written under the study's targets (all applicable accelerators for
a study without a targets suffix). A study that searched which accelerators to use also writes,
for every set of accelerators it tried, the best feasible trial that used exactly that set.

A pareto study writes the same entries, each with its frontier (``accelopt.params_store.file``):
every
non-dominated completed trial for the study's entry, those with exactly that set for a set's.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt.errors import AccelOptError
from accelopt.measure.environment import package_versions
from accelopt.params_store.file import seed_key, seed_pipeline, seed_scheduler, write_entries
from accelopt.storage import storage_label
from accelopt.study.results import Requirement, frontier

__all__ = ["entries_for", "export_study", "speed_verdict", "withheld"]

# Our parameter names -> the seed system's (only T-GATE's warm_up differs).
SEED_PARAMS = {"warm_up": "warmup"}
MEASURED = ("speedup", "time_per_image", "score", "score_loss", "peak_memory", "device")
# Stored where the trial measured them: fidelity, and the interval of a paired speedup.
OPTIONAL = ("psnr", "ssim", "clip_image", "lpips", "speedup_interval", "speedup_level")


def _measured(attrs: dict[str, Any]) -> dict[str, Any]:
    """What an entry says was measured: speed and CLIP always, the rest where there was any."""
    return {**{k: attrs.get(k) for k in MEASURED},
            **{k: attrs[k] for k in OPTIONAL if k in attrs}}  # fmt: skip


def speed_verdict(trial: FrozenTrial, confirmed: dict[int, dict[str, Any]] | None,
                  threshold: float = 1.0) -> str:  # fmt: skip
    """Whether a trial is faster than ``threshold``: by its held-out confirmation when the study
    was confirmed, else by its own paired interval; ``faster`` for a trial timed before pairs
    (nothing to judge it by but its speedup)."""
    if confirmed is not None:
        return str((confirmed.get(trial.number) or {}).get("speed") or "unconfirmed")
    interval = trial.user_attrs.get("speedup_interval")
    if not interval:
        return "faster"
    from accelopt.measure.timing import verdict

    low, high = interval
    return verdict(low, high, threshold)


def withheld(study: optuna.Study, requirement: Requirement | None = None) -> list[FrozenTrial]:
    """Feasible trials whose speed the pairs could not tell from the baseline's (or the
    requirement's): what export leaves out unless forced, best first."""
    from accelopt.study.confirm import confirmations

    confirmed = None if (study.user_attrs.get("spec") or {}).get("objective") == "pareto" else (
        confirmations(study))  # fmt: skip
    threshold = (requirement.speedup if requirement else None) or 1.0
    found = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if t.user_attrs.get("feasible")
             and speed_verdict(t, confirmed, threshold) == "undecidable"
             and not (confirmed or {}).get(t.number, {}).get("failed")]  # fmt: skip
    return sorted(found, key=lambda t: -t.user_attrs["speedup"])


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
        "measured": _measured(a),
        "baseline": {
            "time_per_image": a.get("baseline_time_per_image"),
            "scores": study.user_attrs.get("baseline_scores"),
        },
        # The mode the trial ran under and every mode's plain baseline (accelopt.execution);
        # entries from before modes existed were measured eagerly.
        "execution": {
            "mode": a.get("execution", "eager"),
            "plain_baselines": (study.user_attrs.get("execution") or {}).get("baselines", {}),
            "speedup_vs_eager": a.get("speedup_vs_eager"),
        },
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
        "baseline": {"time_per_image": a.get("baseline_time_per_image")},
        "heldout": heldout,
    }


def _frontier_entries(
    study: optuna.Study, storage: str, chosen: list[tuple[FrozenTrial, list[str]]]
) -> dict[str, dict[str, Any]]:
    """A pareto study's entries, each with the frontier of the trials it answers for: all of
    them for the first (the study's own), those with exactly its accelerators for a set's."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
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
        met = next((t for t in study.trials if requirement.met_by(t) and exportable(t)), None)
        chosen = [] if met is None else [(met, sorted(met.user_attrs["accelerators"]))]
    else:
        ranked = sorted(
            (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if t.user_attrs.get("feasible") and exportable(t)),
            key=lambda t: -t.user_attrs["speedup"],
        )  # fmt: skip
        best = ranked[0] if ranked else None
        searched = spec["targets"] or _searched(study)
        chosen = [] if best is None else [(best, searched)]
        if spec["targets"] is None:  # also the best of every set of accelerators tried
            by_set: dict[tuple[str, ...], FrozenTrial] = {}
            for t in ranked:
                used = tuple(sorted(t.user_attrs["accelerators"]))
                if (
                    used not in by_set
                    or t.user_attrs["speedup"] > by_set[used].user_attrs["speedup"]
                ):
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
    what
    export writes, codegen must be able to use."""
    from accelopt.params_store.check import check_entry

    for key, entry in entries.items():
        check_entry(key, entry)
    return entries


def _searched(study: optuna.Study) -> list[str]:
    names = {k.split(".")[0] for t in study.trials for k in t.params}
    return sorted(names)


def export_study(
    study: optuna.Study,
    storage: str,
    store: Path,
    requirement: Requirement | None = None,
    force: bool = False,
) -> dict[str, dict[str, Any]]:
    """Write a study's entries into ``store``; returns them (nothing written when empty)."""
    entries = entries_for(study, storage, requirement, force)
    if entries:
        write_entries(store, entries)
    return entries
