"""Trials per hour with one worker against N workers on the same machine (one GPU each).

    python -m bench.scaling --study SD1.5-DDIM-20 --n-trials 24 --workers 1 2 --out $OUT

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from accelopt.storage import open_storage
from bench import _lib, tables


def command(
    study: str,
    workers: int,
    n_trials: int,
    journal: Path,
    gpus: Sequence[str] | None,
    timeout: float | None = None,
) -> list[str]:
    """``accelopt run`` of ``study`` from scratch on ``journal``: one worker per GPU named in
    ``gpus`` (accelopt's ``--gpus``: each worker gets ``CUDA_VISIBLE_DEVICES`` set to its name),
    or ``workers`` on the CPU when ``gpus`` is None."""
    where = ["--workers", str(workers), "--device", "cpu"] if gpus is None else [
        "--gpus", ",".join(gpus)]  # fmt: skip
    limit = [] if timeout is None else ["--timeout", f"{timeout:.0f}"]
    return [sys.executable, "-m", "accelopt", "run", "--study", study, "--random-weights",
            "--n-trials", str(n_trials), "--storage", str(journal), *where, *limit,
            "--quiet"]  # fmt: skip


def throughput(journal: Path, study: str, workers: int) -> dict[str, Any]:
    """Trials and measured trials per hour over the stored trials' span, read from ``journal``."""
    storage, _ = open_storage(str(journal))
    trials = optuna.load_study(study_name=study, storage=storage).trials
    finished = [t for t in trials if t.datetime_complete is not None]
    if not finished:
        raise ValueError(f"{journal}: no finished trial of {study}")
    first = min(t.datetime_start for t in finished if t.datetime_start is not None)
    span = (max(t.datetime_complete for t in finished) - first).total_seconds()  # type: ignore[type-var,operator]
    measured = [t for t in trials if t.state == TrialState.COMPLETE]
    per_worker: dict[int, int] = {}
    for t in finished:
        pid = t.user_attrs["owner"]["pid"]
        per_worker[pid] = per_worker.get(pid, 0) + 1
    return {
        "workers": workers,
        "trials": len(finished),
        "measured": len(measured),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "span_seconds": span,
        "trials_per_hour": 3600 * len(finished) / span,
        "measured_per_hour": 3600 * len(measured) / span,
        "trials_per_worker": sorted(per_worker.values()),
        "generation_seconds": sum(t.user_attrs.get("generation_seconds", 0) for t in measured),
    }


def run(study: str, workers: int, n_trials: int, out: Path, cpu: bool) -> dict[str, Any]:
    journal = out / f"scaling-w{workers}.journal"
    gpus = None if cpu else [str(i) for i in range(workers)]
    argv = command(study, workers, n_trials, journal, gpus)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-4000:]}")
    return {**throughput(journal, study, workers), "wall_seconds": wall,
            "command": " ".join(argv[1:]).replace(str(out), "$OUT")}  # fmt: skip


def compare(rows: list[dict[str, Any]]) -> None:
    """Each row against the first (one worker): trials, measured trials and wall time."""
    one = rows[0]
    for r in rows:
        r["speedup_trials"] = r["trials_per_hour"] / one["trials_per_hour"]
        r["speedup_measured"] = r["measured_per_hour"] / one["measured_per_hour"]
        r["speedup_wall"] = one["wall_seconds"] / r["wall_seconds"]


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
    compare(rows)
    record = {
        "study": args.study,
        "n_trials": args.n_trials,
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(0),
        "gpus": 0 if args.cpu else torch.cuda.device_count(),
        **_lib.header("date", versions=("torch", "optuna")),
        "rows": rows,
    }
    (args.out / "scaling.json").write_text(json.dumps(record, indent=2))
    lines = tables.scaling_table(record)
    (args.out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
