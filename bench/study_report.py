"""Summarise a stored study: trials by state, best feasible speedup, per-trial overhead.

    python bench/study_report.py --study SD1.5-DDIM-20 --storage sqlite:///gpu.db

Overhead is a trial's wall time minus its warm-up, timed generation and scoring: what the study
machinery itself costs per trial.
"""

from __future__ import annotations

import argparse
import statistics

import optuna
from optuna.trial import TrialState

from accelopt.study import best_trial, open_storage


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", required=True)
    args = parser.parse_args()
    storage, _ = open_storage(args.storage)
    study = optuna.load_study(study_name=args.study, storage=storage)
    states = {s.name: sum(t.state == s for t in study.trials) for s in TrialState}
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    print(f"study {args.study}: {len(study.trials)} trials, {states}")
    print(f"baseline {study.user_attrs.get('baseline_time_per_image', float('nan')):.4f} s/image")
    if done:
        a = [t.user_attrs for t in done]
        over = [x["overhead_seconds"] for x in a]
        ratio = [
            x["trial_seconds"]
            / (x["generation_seconds"] + x["warmup_seconds"] + x["scoring_seconds"])
            for x in a
        ]
        print(
            f"overhead per trial: median {statistics.median(over):.3f} s "
            f"(min {min(over):.3f}, max {max(over):.3f}); trial time / (generation + scoring): "
            f"median {statistics.median(ratio):.3f}"
        )
        print(f"feasible: {sum(x['feasible'] for x in a)} of {len(a)}; device {a[0]['device']}")
        # The whole loop, not only the objective: from the first trial's start to the last
        # one's end (taking trials under the lock, skipped trials, telling the storage)
        # over the time spent generating, warming up and scoring.
        finished = [t for t in study.trials if t.datetime_complete and t.datetime_start]
        span = max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)  # type: ignore[type-var,operator]
        work = sum(
            t.user_attrs.get(k, 0.0)
            for t in finished
            for k in ("generation_seconds", "warmup_seconds", "scoring_seconds")
        )
        print(
            f"study span / (generation + warm-up + scoring) over {len(finished)} trials: "
            f"{span.total_seconds():.2f} s / {work:.2f} s = {span.total_seconds() / work:.3f}"
        )
    best = best_trial(study)
    if best is None:
        print("best: no feasible trial")
    else:
        b = best.user_attrs
        print(
            f"best: trial {best.number} {b['accelerators']} speedup {b['speedup']:.2f}x, "
            f"{b['time_per_image']:.4f} s/image, score loss {100 * b['score_loss']:.2f}%, "
            f"peak memory {b['peak_memory']}"
        )
    for t in study.trials:
        a = t.user_attrs
        shown = f"{a['speedup']:.2f}x loss {100 * a['score_loss']:+.2f}%" if "speedup" in a else ""
        print(
            f"  #{t.number:<3} {t.state.name:8} {shown:24} {a.get('skipped', '')} "
            f"{a.get('accelerators', '')}"
        )


if __name__ == "__main__":
    main()
