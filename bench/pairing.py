"""What paired timing costs a trial, and how wide its interval is, on this machine.

    python -m bench.pairing --study SD1.5-DDIM-20-deepcache --execution cuda-graphs \\
        --random-weights --pairs 3 7 --out $OUT
    python -m bench.pairing --study ToySD-DDIM-20-deepcache --pairs 3 7 --out bench/results/pairing

A trial (``accelopt.trial.objective.Objective``) generates the study's prompts once for quality and
then times ``[timing] pairs`` alternated calls of the plain pipeline and its configuration on one
batch. Here a few DeepCache configurations (one compiled structure pair: branch 0) are run as
trials of an in-memory study for each pair count, after the study's A/A baseline, exactly as
``accelopt run`` runs them; per trial it records the seconds of its quality pass, of its pairs
(their calls), of the whole trial, the pairs' share of it, the median ratio and its interval.
The pairs' share is the cost; the interval's width (relative to the median) is what it buys.
Writes pairing-STUDY.json to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import _lib

CONFIGS = [{"deepcache.cache_interval": i, "deepcache.cache_branch_id": 0} for i in (2, 3, 5)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    from accelopt.spec import TimingSpec, load_spec
    from accelopt.trial.bench import Bench
    from accelopt.trial.objective import Objective
    from accelopt.trial.space import Space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(args.study)
    weights = "random" if args.random_weights else "pretrained"
    bench = Bench.load(spec, args.device, weights, lambda s: print(s, file=sys.stderr))
    bench.mode = args.execution
    space = Space.build(bench.traits, spec.steps, ("deepcache",), bench.mode, spec.scheduler)
    rows = []
    for pairs in args.pairs:
        bench.spec = spec.replace(timing=TimingSpec(pairs=pairs))
        objective = Objective(bench, space, [])
        objective.baseline_scores = objective.measure_baseline().scores
        objective.time_baseline()
        study = optuna.create_study(direction="maximize")
        for params in CONFIGS:
            study.enqueue_trial(params)
        started = time.perf_counter()
        study.optimize(objective, n_trials=len(CONFIGS))
        for t in study.trials:
            a = t.user_attrs
            if "pairs" not in a:
                continue
            p = a["pairs"]
            paired = bench.timing_prompts * (sum(p["baseline"]) + sum(p["candidate"]))
            # one pair has no interval: its one ratio, at level 0
            low, high = a.get("speedup_interval") or (a["speedup"], a["speedup"])
            rows.append({
                "pairs": pairs, "trial": t.number, "params": t.params,
                "quality_pass_seconds": a["generation_seconds"] + a["warmup_seconds"],
                "pair_seconds": paired, "trial_seconds": a["trial_seconds"],
                "pair_share": paired / a["trial_seconds"], "speedup": a["speedup"],
                "interval": [low, high], "level": a.get("speedup_level", 0.0),
                "relative_width": (high - low) / a["speedup"],
                "unpaired": a["speedup_unpaired"], "compile_seconds": a["compile_seconds"],
            })  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)
        print(f"pairs={pairs}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return {
        "study": args.study, "execution": bench.mode, **_lib.header("device", device=bench.device),
        "prompts": spec.prompts.count, "batch_size": spec.prompts.batch_size,
        "timing_prompts": bench.timing_prompts,
        **_lib.header("date", "command", script="pairing"), "rows": rows,
    }  # fmt: skip


def table(record: dict[str, Any]) -> str:
    """Markdown: per pair count, the median share of trial time in pairs and interval width."""
    lines = [
        f"{record['study']} under {record['execution']} on {record['device']} "
        f"({record['prompts']} prompts, pairs on {record['timing_prompts']}):",
        "",
        "| pairs | trials | pairs' share of a trial | interval width / speedup | level |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for pairs in sorted({r["pairs"] for r in record["rows"]}):
        rows = [r for r in record["rows"] if r["pairs"] == pairs]
        share = statistics.median(r["pair_share"] for r in rows)
        width = statistics.median(r["relative_width"] for r in rows)
        lines.append(f"| {pairs} | {len(rows)} | {100 * share:.0f}% | {100 * width:.1f}% | "
                     f"{100 * rows[0]['level']:.1f}% |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="ToySD-DDIM-20-deepcache")
    parser.add_argument("--execution", default="eager")
    parser.add_argument("--device")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--pairs", type=int, nargs="+", default=[3, 7])
    parser.add_argument("--out", type=Path, default=Path("bench/results/pairing"))
    args = parser.parse_args(argv)
    record = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"pairing-{args.study}-{record['execution']}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(table(record))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
