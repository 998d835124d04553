"""How things read on a terminal: one module for every line the CLI prints about trials,
frontiers, exports and stops. Stored strings pass through ``accelopt.errors.printable`` (a
storage anyone can write to may hold escape sequences) and every interval through
``accelopt.measure.timing.interval_text``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accelopt.errors import printable

if TYPE_CHECKING:
    from collections.abc import Sequence

    import optuna
    from optuna.trial import FrozenTrial

    from accelopt.export import Exported, Withheld
    from accelopt.spec import StudySpec

__all__ = [
    "compile_cost",
    "describe",
    "export_lines",
    "frontier_line",
    "interrupted",
    "never_measured",
    "not_exported",
    "quality",
    "random_scorer",
    "speedup_text",
    "stopped_trials",
    "under_load",
]


def speedup_text(a: dict[str, Any]) -> str:
    """``2.00x (1.50x-3.00x, 75% interval over 3 pairs)``: a trial's speedup and its interval."""
    from accelopt.measure.timing import interval_text

    # trials recorded before the count was have it in their pairs
    pairs = a.get("speedup_pairs") or len((a.get("pairs") or {}).get("ratios") or [])
    interval = a.get("speedup_interval")
    shown = interval_text(interval if isinstance(interval, list) else None,
                          a.get("speedup_level"), pairs)  # fmt: skip
    return f"{a['speedup']:.2f}x{shown}"


def quality(measured: dict[str, Any]) -> str:
    """Every quality metric measured: ``CLIP score loss 1.20%, PSNR 31.4 dB, SSIM 0.912``."""
    from accelopt.measure.constraints import METRICS, quality_text

    return quality_text({k: measured[k] for k in METRICS
                         if isinstance(measured.get(k), int | float)})  # fmt: skip


def describe(trial: FrozenTrial) -> str:
    """Two lines about a trial: its knobs, then speed (under which mode; its time per image
    from the same timed calls as its speedup, with their batch size) and quality."""
    from accelopt.measure.timing import time_text
    from accelopt.study.results import config_text

    a = trial.user_attrs
    knobs = printable(config_text(a["accelerators"]), 400)
    mode = printable(a.get("execution", "eager"), 20)
    eager = a.get("speedup_vs_eager")
    beside = f" ({eager:.2f}x against eager)" if eager is not None and mode != "eager" else ""
    return (
        f"trial {trial.number}: {knobs}\n  speedup {speedup_text(a)}{beside} "
        f"under {mode}, {time_text(a)}, {quality(a)}"
    )


def frontier_line(study: optuna.Study, hint: bool = True) -> str:
    """One line about a pareto study's frontier (empty for any other study)."""
    from accelopt.measure.constraints import METRICS
    from accelopt.study.results import frontier, is_pareto, pareto_metric

    if not is_pareto(study):
        return ""
    metric = METRICS[pareto_metric(study)]
    front = frontier(study.trials, metric.name)
    if not front:
        return f"{study.study_name}: Pareto frontier: no completed trial yet"
    speedups = [t.user_attrs["speedup"] for t in front]
    values = sorted(t.user_attrs[metric.name] for t in front)
    line = (
        f"{study.study_name}: Pareto frontier of {len(front)} trials, {min(speedups):.2f}x-"
        f"{max(speedups):.2f}x at {metric.label} {metric.show(values[0])}-"
        f"{metric.show(values[-1])}"
    )
    return f"{line} (accelopt best --study {study.study_name} lists them)" if hint else line


def never_measured(study: optuna.Study, grid: bool) -> list[str]:
    """Lines naming the given configurations (grid points) whose trial failed, twice."""
    from accelopt.study.results import never_measured as missed_trials

    missed = missed_trials(study.trials)
    if not missed:
        return []
    what = "grid point" if grid else "configuration"
    plural = "" if len(missed) == 1 else "s"
    lines = [f"{study.study_name}: {len(missed)} {what}{plural} never measured (failed, and so "
             f"did the retry):"]  # fmt: skip
    for t in missed:
        point = ", ".join(f"{k}={v}" for k, v in sorted(t.system_attrs["fixed_params"].items()))
        why = t.user_attrs.get("failed", "failed")
        lines.append(printable(f"  trial {t.number}: {point} ({why})", 300))
    return lines


def not_exported(study: optuna.Study, best: FrozenTrial | None, written: list[int] | None) -> str:
    """After ``run --export``: a line when the search's best is not what export wrote (held-out
    confirmation failed it, or its speed was undecidable), so the last line read is not taken
    for the stored answer; empty otherwise."""
    from accelopt.study.confirm import confirmations, describe, judgement

    if written is None or best is None or best.number in written:
        return ""
    confirmed = (confirmations(study) or {}).get(best.number)
    why = f": held-out {describe(confirmed)}, {judgement(confirmed)}" if confirmed else ""
    if confirmed and confirmed.get("passed"):  # passed, and another passed better
        why = (f": held-out {describe(confirmed)} passes, but export ranks by the held-out "
               f"lower bound")  # fmt: skip
    stored = ", ".join(f"trial {n}" for n in written) or "nothing"
    return f"  not exported{why}; the store holds {stored} for this study"


def _withheld_line(study: str, w: Withheld, threshold: float) -> str:
    """Why an undecidable trial was not exported, with the numbers that say so."""
    from accelopt.study.confirm import describe

    shown = describe(w.confirmation) if w.confirmation else speedup_text(w.trial.user_attrs)
    return (f"{study}: trial {w.trial.number} not exported: its speedup {shown} is "
            f"undecidable: the interval straddles {threshold:g}x, so this machine's noise "
            f"hides whether it is faster; re-run on a quieter machine, or pass --force to "
            f"export it anyway")  # fmt: skip


def export_lines(result: Exported) -> list[str]:
    """What an export says (on stderr): frontier unconfirmed, the trials withheld (the first
    three), then what was written where, or why nothing was."""
    from accelopt.export import ranked_by

    lines = []
    if result.unconfirmed_frontier:
        # Confirmation judges the answers of one budget; a frontier answers every budget.
        lines.append(f"{result.study}: held-out confirmation is skipped for a pareto study: its "
                     f"frontier is exported as searched")  # fmt: skip
    lines += [_withheld_line(result.study, w, result.threshold) for w in result.withheld[:3]]
    if not result.entries:
        return [*lines, f"{result.study}: nothing to export: {result.reason}"]
    if result.created is not None:
        lines.append(f"created folder {printable(str(result.created), 300)}/ for the params store")
    for key, entry in result.entries.items():
        shown = printable(key)
        if key in result.left_out:
            lines.append(f"left out {shown}: the seed layout has no slot for a time requirement "
                         f"or a random ToMe partition")  # fmt: skip
            continue
        if "frontier" in entry:  # searched, never confirmed: no choice to explain
            lines.append(
                f"exported {shown} (a frontier of "
                f"{len(entry['frontier'])}) -> {result.store} ({result.layout} layout)"
            )
            continue
        lines.append(f"exported {shown} -> {result.store} ({result.layout} "
                     f"layout): trial {entry['study']['trial']}, {ranked_by(entry)}")  # fmt: skip
    return lines


def stopped_trials(trials: Sequence[FrozenTrial]) -> str:
    """``1 interrupted, 2 failed``: the trials that ended without a result, each way apart (a
    trial stopped by Ctrl-C or SIGTERM is no failure: its slot is given back); empty if none."""
    from accelopt.study.results import ENDINGS, endings

    counted = endings(trials)
    shown = [f"{counted[k]} {ENDINGS[k]}" for k in ("interrupted", "failed") if k in counted]
    return ", ".join(shown)


def compile_cost(study: optuna.Study) -> str:
    """What a run's end line adds about compiling (``accelopt.study.results.compile_cost``):
    ``; compiling and capturing took 212 s of 431 s (49%)``; empty when nothing compiled."""
    from accelopt.study.results import compile_cost

    cost = compile_cost(study)
    if cost["compile_seconds"] <= 0:
        return ""
    return (f"; compiling and capturing took {cost['compile_seconds']:.0f} s of "
            f"{cost['seconds']:.0f} s ({100 * cost['share']:.0f}%)")  # fmt: skip


def under_load(study: optuna.Study) -> str:
    """The line an answer measured under load ends with (``accelopt.measure.load``): the first
    warning's numbers and how many more the study keeps; empty for a study measured on a quiet
    machine."""
    records = [r for r in study.user_attrs.get("load_warnings") or [] if isinstance(r, dict)]
    if not records:
        return ""
    more = len(records) - 1
    also = f" (and {more} more in its load_warnings)" if more else ""
    reason = printable(str(records[0].get("reason") or "no reason stored"), 300)
    return (f"{study.study_name}: its speedups were measured under load: {reason}{also}; "
            f"measure again on an idle machine to trust them")  # fmt: skip


def interrupted(name: str, finished: bool) -> str:
    """What a run stopped by Ctrl-C says: resume it, unless the study was finished by then."""
    if not finished:
        return "accelopt: interrupted; finished trials are stored, run again to resume"
    return (f"accelopt: interrupted, but study {name} was finished by then; nothing to resume "
            f"(accelopt best --study {name} shows its answer)")  # fmt: skip


def random_scorer(spec: StudySpec, weights: str) -> str:
    """What ``run`` says before a study on random weights whose only bound is the CLIP score
    loss: nothing can be downloaded for its scorer either, so that bound holds a random model's
    opinion; a fidelity bound to the plain images is what holds there. Empty otherwise."""
    if weights != "random" or len(spec.bounds()) > 1:
        return ""
    return (f"accelopt: {spec.name} on random weights scores its images with a random CLIP "
            f"model too, so the score loss bounds noise, not quality; add a fidelity bound to "
            f"the plain pipeline's images (--min-psnr 30, --min-ssim, --max-lpips) to bound "
            f"what the accelerators change")  # fmt: skip
