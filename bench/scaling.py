"""Trials per hour with one worker against N workers on the same machine (one GPU each).

    python bench/scaling.py --study SD1.5-DDIM-20 --n-trials 24 --workers 1 2 --out $OUT

Each run is an ordinary ``accelopt run --workers K --random-weights`` on its own journal file
under --out, so both search the same study from scratch with the same seed. Throughput is read
back from the stored trials: trials (and measured trials: COMPLETE, not skipped) over the span
from the first trial's start to the last trial's end, which leaves out the one-off start
(loading the model, two baseline passes per worker); the whole command's wall time is reported
beside it. Writes scaling.json and scaling.md to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from accelopt.study import open_storage


def run(study: str, workers: int, n_trials: int, out: Path, cpu: bool) -> dict[str, Any]:
    journal = out / f"scaling-w{workers}.journal"
    gpus = ",".join(str(i) for i in range(workers))
    where = ["--workers", str(workers), "--device", "cpu"] if cpu else ["--gpus", gpus]
    command = [sys.executable, "-m", "accelopt", "run", "--study", study, "--random-weights",
               "--n-trials", str(n_trials), "--storage", str(journal), *where,
               "--quiet"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    storage, _ = open_storage(str(journal))
    trials = optuna.load_study(study_name=study, storage=storage).trials
    finished = [t for t in trials if t.datetime_complete is not None]
    first = min(t.datetime_start for t in finished if t.datetime_start is not None)
    span = (max(t.datetime_complete for t in finished) - first).total_seconds()  # type: ignore[type-var]
    measured = [t for t in trials if t.state == TrialState.COMPLETE]
    per_worker: dict[int, int] = {}
    for t in finished:
        pid = t.user_attrs["owner"]["pid"]
        per_worker[pid] = per_worker.get(pid, 0) + 1
    return {
        "workers": workers,
        "command": " ".join(command[1:]).replace(str(out), "$OUT"),
        "trials": len(finished),
        "measured": len(measured),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "span_seconds": span,
        "wall_seconds": wall,
        "trials_per_hour": 3600 * len(finished) / span,
        "measured_per_hour": 3600 * len(measured) / span,
        "trials_per_worker": sorted(per_worker.values()),
        "generation_seconds": sum(t.user_attrs.get("generation_seconds", 0) for t in measured),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="SD1.5-DDIM-20")
    parser.add_argument("--n-trials", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu", action="store_true", help="smoke test: workers on the CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    rows = [run(args.study, k, args.n_trials, args.out, args.cpu) for k in args.workers]
    one = rows[0]
    for r in rows:
        r["speedup_trials"] = r["trials_per_hour"] / one["trials_per_hour"]
        r["speedup_measured"] = r["measured_per_hour"] / one["measured_per_hour"]
        r["speedup_wall"] = one["wall_seconds"] / r["wall_seconds"]
    record = {
        "study": args.study,
        "n_trials": args.n_trials,
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(0),
        "gpus": 0 if args.cpu else torch.cuda.device_count(),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {"torch": torch.__version__, "optuna": optuna.__version__},
        "rows": rows,
    }
    (args.out / "scaling.json").write_text(json.dumps(record, indent=2))
    lines = [
        "| workers | trials (measured) | per worker | span s | trials/hour | measured/hour "
        "| vs 1 worker (trials, measured) | command wall s (vs 1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['trials']} ({r['measured']}) | {r['trials_per_worker']} "
            f"| {r['span_seconds']:.1f} | {r['trials_per_hour']:.0f} "
            f"| {r['measured_per_hour']:.0f} | {r['speedup_trials']:.2f}x, "
            f"{r['speedup_measured']:.2f}x | {r['wall_seconds']:.1f} ({r['speedup_wall']:.2f}x) |"
        )
    (args.out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
