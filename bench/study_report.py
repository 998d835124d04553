"""Summarise a stored study: trials by state, best feasible speedup, per-trial overhead.

    python -m bench.study_report --study SD1.5-DDIM-20 --storage sqlite:///gpu.db

Overhead is a trial's wall time minus its warm-up, timed generation and scoring: what the study
machinery itself costs per trial. The study's span (first trial's start to last trial's end)
over all its generation, warm-up and scoring is the whole loop's cost. ``summarize`` gives
these as a plain record (``bench/all.py`` stores it; ``bench/tables.py`` renders its table).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import optuna
from optuna.trial import TrialState

from accelopt.storage import open_storage
from accelopt.study.results import best_trial

WORK = ("generation_seconds", "warmup_seconds", "scoring_seconds")


def summarize(study: optuna.Study) -> dict[str, Any]:
    """The numbers of a stored study: counts, best feasible trial, medians, overhead, span."""
    states = {s.name: sum(t.state == s for t in study.trials) for s in TrialState}
    done = [t.user_attrs for t in study.trials if t.state == TrialState.COMPLETE]
    finished = [t for t in study.trials if t.datetime_complete and t.datetime_start]
    record: dict[str, Any] = {
        "study": study.study_name,
        "trials": len(study.trials),
        "states": states,
        "measured": len(done),
        "feasible": sum(a["feasible"] for a in done),
        "baseline_seconds": study.user_attrs.get("baseline_time_per_image"),
        "device": done[0]["device"] if done else None,
        "finished": len(finished),
        "best": None,
    }
    if done:
        record["median"] = {
            "trial": statistics.median(a["trial_seconds"] for a in done),
            **{k.split("_")[0]: statistics.median(a[k] for a in done) for k in WORK},
        }
        over = [a["overhead_seconds"] for a in done]
        record["overhead"] = {"median": statistics.median(over), "min": min(over),
                              "max": max(over)}  # fmt: skip
        record["ratio_median"] = statistics.median(
            a["trial_seconds"] / sum(a[k] for k in WORK) for a in done
        )
    if finished:
        # The whole loop, not only the objective: taking trials under the lock, skipped
        # trials, telling the storage, baseline re-timings.
        first = min(t.datetime_start for t in finished)  # type: ignore[type-var]
        last = max(t.datetime_complete for t in finished)  # type: ignore[type-var]
        record["span_seconds"] = (last - first).total_seconds()  # type: ignore[operator]
        record["work_seconds"] = sum(t.user_attrs.get(k, 0.0) for t in finished for k in WORK)
    best = best_trial(study)
    if best is not None:
        b = best.user_attrs
        record["best"] = {"number": best.number, "accelerators": b["accelerators"],
                          "speedup": b["speedup"], "time_per_image": b["time_per_image"],
                          "score_loss": b["score_loss"],
                          "peak_memory": b["peak_memory"]}  # fmt: skip
    return record


def report(study: optuna.Study) -> list[str]:
    """The summary as lines of text, then one line per trial."""
    s = summarize(study)
    lines = [f"study {s['study']}: {s['trials']} trials, {s['states']}",
             f"baseline {s['baseline_seconds'] or float('nan'):.4f} s/image"]  # fmt: skip
    if s["measured"]:
        o = s["overhead"]
        lines += [
            f"overhead per trial: median {o['median']:.3f} s (min {o['min']:.3f}, max "
            f"{o['max']:.3f}); trial time / (generation + scoring): median "
            f"{s['ratio_median']:.3f}",
            f"feasible: {s['feasible']} of {s['measured']}; device {s['device']}",
        ]
    if s.get("work_seconds"):
        span, work = s["span_seconds"], s["work_seconds"]
        lines.append(f"study span / (generation + warm-up + scoring) over {s['finished']} "
                     f"trials: {span:.2f} s / {work:.2f} s = {span / work:.3f}")  # fmt: skip
    b = s["best"]
    if b is None:
        lines.append("best: no feasible trial")
    else:
        lines.append(
            f"best: trial {b['number']} {b['accelerators']} speedup {b['speedup']:.2f}x, "
            f"{b['time_per_image']:.4f} s/image, score loss {100 * b['score_loss']:.2f}%, "
            f"peak memory {b['peak_memory']}"
        )
    for t in study.trials:
        a = t.user_attrs
        shown = f"{a['speedup']:.2f}x loss {100 * a['score_loss']:+.2f}%" if "speedup" in a else ""
        lines.append(f"  #{t.number:<3} {t.state.name:8} {shown:24} {a.get('skipped', '')} "
                     f"{a.get('accelerators', '')}")  # fmt: skip
    return lines


def load(study: str, storage: str) -> optuna.Study:
    backend, _ = open_storage(storage)
    return optuna.load_study(study_name=study, storage=backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", required=True)
    args = parser.parse_args()
    print("\n".join(report(load(args.study, args.storage))))


if __name__ == "__main__":
    main()
