"""Does export's interval hold on a loaded machine? A study beside a CPU burner, then the exported
configuration re-measured (issue 20).

    python -m bench.loaded --out bench/results/loaded              # 3 runs x {loaded, idle}
    python -m bench.loaded --table bench/results/loaded/*.json    # the records' tables, as one

Each run makes a fresh study in a temporary folder through the real CLI, ``accelopt run --study
STUDY --device cpu --export --store S`` (its own journal file and params store), in one of two
regimes, interleaved run by run so that the other load on a shared machine hits both alike:

- ``loaded``: ``--burners`` busy-loop processes (``python -c "while True: pass"``, one core each
  at most, no torch) spin through the study and through the re-measurement;
- ``idle``: no burner (the machine's other load, if any, stays: each run records the 1-minute
  load average at its start and end).

It records what export did: the entry written (the study's own, the fastest: its search speedup
and interval, its held-out speedup, interval and level), or the refusal (exit 1, "undecidable",
with the withheld trial's interval), or nothing written (no configuration held its bounds).
Then it re-measures that configuration (the exported one, or the best withheld one) in
``--pairs`` alternated pairs with accelopt's own ``Bench.pairs`` on the study's pipeline and
timing prompts, in this process, after one untimed warm-up call of each; ``--stopped`` also
re-measures a loaded run's configuration once its burners are stopped. The judgement per
re-measurement: ``covers`` (the exported held-out interval holds the re-measured median),
``misses`` (it does not), ``refused`` (export wrote nothing: the noise left it undecidable),
``nothing`` (no configuration was feasible).

The cost of pairing comes from the study's trials: each keeps its pairs' seconds per image
(``pairs``) beside ``generation_seconds``, ``warmup_seconds``, ``scoring_seconds`` and
``trial_seconds``; a pair times ``Bench.timing_prompts`` images per call.

Runs stop being started once ``--budget`` seconds have passed. Writes ``NAME-DATE.json`` under
``--out`` (``--name``, default ``loaded-cpu``) and prints the tables docs/BENCHMARKS.md shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import _lib

Record = dict[str, Any]
REGIMES = ("loaded", "idle")
BURNER = "while True: pass"
# What the record keeps of each measured trial: its speed and where its time went.
TRIAL_ATTRS = ("accelerators", "speedup", "speedup_interval", "trial_seconds",
               "generation_seconds", "warmup_seconds", "scoring_seconds", "pairs")  # fmt: skip


# --- pure: judgements, costs, tables ----------------------------------------------------------


def judge(interval: Sequence[float] | None, remeasured: float, exported: bool) -> str:
    """``covers`` when ``interval`` holds ``remeasured``, ``misses`` when not, ``refused`` when
    export wrote nothing (there is no interval to hold it).

    >>> judge([1.2, 1.9], 1.5, True), judge([1.2, 1.9], 1.1, True), judge(None, 1.1, False)
    ('covers', 'misses', 'refused')
    """
    if not exported:
        return "refused"
    if not interval:
        raise ValueError("an exported entry without a held-out interval")
    low, high = interval
    return "covers" if low <= remeasured <= high else "misses"


def classify(rc: int, stderr: str, entries: Mapping[str, Any]) -> str:
    """What ``accelopt run --export`` did: ``exported`` (entries written), ``refused`` (exit 1:
    every feasible answer undecidable), ``nothing`` (exit 0, nothing written: none held its
    bounds); anything else is the study failing, and raises.

    >>> classify(0, "", {"k": {}}), classify(1, "... is undecidable: ...", {}), classify(0, "", {})
    ('exported', 'refused', 'nothing')
    """
    if rc == 0:
        return "exported" if entries else "nothing"
    if rc == 1 and not entries and "undecidable" in stderr:
        return "refused"
    raise RuntimeError(f"accelopt run failed (exit {rc}):\n{stderr[-3000:]}")


def pair_cost(trials: Sequence[Mapping[str, Any]], images_per_call: int) -> Record:
    """Where the trials' time went: their pairs' seconds (both sides, ``images_per_call`` images
    per call) against their whole time; trials without pairs (skipped, stopped early) do not
    count.

    >>> c = pair_cost([{"pairs": {"baseline": [1.0], "candidate": [0.5]}, "trial_seconds": 10.0,
    ...                 "generation_seconds": 2.0, "warmup_seconds": 1.0,
    ...                 "scoring_seconds": 0.5}], 4)
    >>> c["pair_seconds"], c["share"], c["quality_seconds"]
    (6.0, 0.6, 3.0)
    """
    timed = [t for t in trials if t.get("pairs") and "trial_seconds" in t]
    pair = sum(images_per_call * (sum(t["pairs"]["baseline"]) + sum(t["pairs"]["candidate"]))
               for t in timed)  # fmt: skip
    total = sum(float(t["trial_seconds"]) for t in timed)
    return {
        "trials": len(timed),
        "pairs_per_trial": sorted({len(t["pairs"]["baseline"]) for t in timed}),
        "images_per_call": images_per_call,
        "pair_seconds": pair,
        "quality_seconds": sum(t["generation_seconds"] + t["warmup_seconds"] for t in timed),
        "scoring_seconds": sum(t["scoring_seconds"] for t in timed),
        "trial_seconds": total,
        "share": pair / total if total else None,
    }


def _speed(s: float | None, interval: Sequence[float] | None = None, level: float | None = None,
           pairs: int | None = None) -> str:  # fmt: skip
    """``1.61x (1.49-1.77, 75%, 3 pairs)``; ``-`` for nothing."""
    if s is None:
        return "-"
    if not interval:
        return f"{s:.2f}x"
    extra = "".join(
        [f", {100 * level:.0f}%" if level is not None else "", f", {pairs}" if pairs else ""]
    )
    return f"{s:.2f}x ({interval[0]:.2f}-{interval[1]:.2f}{extra})"


def _load(run: Record, key: str) -> str:
    return "-".join(f"{x:.1f}" for x in run.get(key) or []) or "-"


def table(record: Record) -> list[str]:
    """One row per re-measurement: the run, its regime, what export did with its intervals, the
    re-measured median and the judgement; then the tally."""
    lines = [
        "| run | burners: study / re-measure | load (1 min) | study | export | trial's speedup "
        "(interval) | held-out speedup (interval, level, pairs) | re-measured (interval, level, "
        "pairs) | judgement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        e = run["export"]
        study_burners = run["burners"] if run["regime"] == "loaded" else 0
        heldout = e.get("heldout") or {}
        trial = _speed(e.get("speedup"), e.get("speedup_interval"))
        held = _speed(heldout.get("speedup"), heldout.get("interval"), heldout.get("level"),
                      len(heldout.get("speedups") or []))  # fmt: skip
        for m in run["remeasured"] or [None]:
            again = "-" if m is None else _speed(m["speedup"], m["interval"], m["level"],
                                                 len(m["ratios"]))  # fmt: skip
            burners = "-" if m is None else str(m["burners"])
            lines.append(
                f"| {run['run']} | {study_burners} / {burners} | {_load(run, 'load')} | "
                f"{run['study_seconds']:.0f} s | {e['outcome']} | {trial} | {held} | {again} | "
                f"{'-' if m is None else m['judgement']} |"
            )
    return lines


def tally(record: Record) -> str:
    """How often export wrote, and how often what it wrote held under the load it was measured
    under (the study's burners kept): ``6 runs: exported 5, ...; of 6 re-measurements of an
    exported entry under the study's own load, its held-out interval covers 6 and misses 0 (the
    trial's own interval from the search: covers 2); with the burners stopped: covers 1 of 3``.
    A re-measurement after the burners stopped asks another question (is a speedup measured
    under load the one without it?), so it is counted apart."""
    runs = record["runs"]
    outcomes = [r["export"]["outcome"] for r in runs]

    def same(r: Record, m: Record) -> bool:
        return m["burners"] == (r["burners"] if r["regime"] == "loaded" else 0)

    exported = [(r, m) for r in runs if r["export"]["outcome"] == "exported"
                for m in r["remeasured"]]  # fmt: skip
    kept = [m for r, m in exported if same(r, m)]
    stopped = [m for r, m in exported if not same(r, m)]
    judged = [m["judgement"] for m in kept]
    searched = [m.get("trial_interval_covers") for m in kept]
    text = (
        f"{len(runs)} runs: exported {outcomes.count('exported')}, refused "
        f"{outcomes.count('refused')}, nothing feasible {outcomes.count('nothing')}; of "
        f"{len(kept)} re-measurements of an exported entry under the study's own load, its "
        f"held-out interval covers {judged.count('covers')} and misses {judged.count('misses')} "
        f"(the trial's own interval from the search: covers {searched.count('covers')})"
    )
    if stopped:
        covers = [m["judgement"] for m in stopped].count("covers")
        text += f"; with the burners stopped: covers {covers} of {len(stopped)}"
    return text


def cost_table(record: Record) -> list[str]:
    """One row per run: what its trials spent in pairs against their whole time."""
    lines = [
        "| run | regime | trials timed | pairs per trial x images per call | pairs | quality "
        "pass + warm-up | scoring | trial time | pairs' share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        c = run["pair_cost"]
        share = "-" if c["share"] is None else f"{100 * c['share']:.0f}%"
        per = "/".join(str(n) for n in c["pairs_per_trial"]) or "-"
        lines.append(
            f"| {run['run']} | {run['regime']} | {c['trials']} | {per} x {c['images_per_call']}"
            f" | {c['pair_seconds']:.0f} s | {c['quality_seconds']:.0f} s | "
            f"{c['scoring_seconds']:.1f} s | {c['trial_seconds']:.0f} s | {share} |"
        )
    by = {
        regime: [r["pair_cost"] for r in record["runs"] if r["regime"] == regime]
        for regime in REGIMES
    }
    for regime, costs in by.items():
        total = sum(c["trial_seconds"] for c in costs)
        if total:
            pair = sum(c["pair_seconds"] for c in costs)
            lines.append(f"| all | {regime} | {sum(c['trials'] for c in costs)} | | {pair:.0f} s"
                         f" | | | {total:.0f} s | {100 * pair / total:.0f}% |")  # fmt: skip
    return lines


def merge(records: Sequence[Record]) -> Record:
    """One record of several invocations' runs, in order, numbered again within each regime
    (each invocation numbers its own from 1)."""
    runs, seen = [], {regime: 0 for regime in REGIMES}
    for record in records:
        for run in record["runs"]:
            seen[run["regime"]] += 1
            runs.append({**run, "run": seen[run["regime"]]})
    return {"runs": runs}


def markdown(record: Record) -> str:
    return "\n".join([*table(record), "", tally(record), "", *cost_table(record)])


# --- measuring --------------------------------------------------------------------------------


def start_burners(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(n)]


def stop_burners(burners: list[subprocess.Popen[bytes]]) -> None:
    for p in burners:
        p.terminate()
    for p in burners:
        p.wait()
    burners.clear()


def _log(text: str) -> None:
    print(f"[loaded {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_study(args: argparse.Namespace, work: Path, seed: int | None) -> Record:
    """``accelopt run ... --export`` in ``work`` (the sampler's ``seed``, None: the spec's);
    its exit code, wall time and output."""
    command = [sys.executable, "-m", "accelopt", "run", "--study", args.study, "--device", "cpu",
               "--storage", str(work / "journal.log"), "--export", "--store",
               str(work / "store.json"), "--quiet", "--top-k", str(args.top_k)]  # fmt: skip
    if args.n_trials:
        command += ["--n-trials", str(args.n_trials)]
    if seed is not None:
        command += ["--seed", str(seed)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    took = time.perf_counter() - started
    return {"command": command[2:], "rc": done.returncode, "seconds": took,
            "stdout": done.stdout, "stderr": done.stderr}  # fmt: skip


def export_record(study: Any, outcome: str, entries: Mapping[str, Any]) -> Record:
    """The configuration to re-measure and what export said of it: the fastest entry written
    (the study's own), or the best trial the noise withheld."""
    from accelopt.export import withheld
    from accelopt.study.confirm import confirmations

    if outcome == "exported":
        entry = max(entries.values(), key=lambda e: e["measured"]["speedup"])
        m = entry["measured"]
        return {"outcome": outcome, "trial": entry["study"]["trial"],
                "accelerators": entry["accelerators"], "speedup": m["speedup"],
                "speedup_interval": m.get("speedup_interval"),
                "speedup_level": m.get("speedup_level"), "heldout": entry["heldout"],
                "entries": len(entries)}  # fmt: skip
    kept = withheld(study) if outcome == "refused" else []
    if not kept:
        return {"outcome": outcome, "accelerators": None, "entries": 0}
    t = kept[0]
    return {"outcome": outcome, "trial": t.number, "accelerators": t.user_attrs["accelerators"],
            "speedup": t.user_attrs["speedup"],
            "speedup_interval": t.user_attrs.get("speedup_interval"),
            "speedup_level": t.user_attrs.get("speedup_level"),
            "heldout": (confirmations(study) or {}).get(t.number), "entries": 0}  # fmt: skip


def remeasure(bench: Any, configs: Mapping[str, Any], pairs: int, burners: int) -> Record:
    """``pairs`` alternated pairs of the plain pipeline and ``configs``, after one untimed call
    of each (the trials measured theirs after a warm-up too)."""
    from accelopt import accelerators

    bench.time_call()
    with accelerators.apply(bench.pipe, configs, steps=bench.spec.steps):
        bench.time_call()
    accelerators.remove(bench.pipe)
    load = [os.getloadavg()[0]]
    started = time.perf_counter()
    paired = bench.pairs(configs, pairs)
    low, high, level = paired.interval()
    return {"burners": burners, "pairs": pairs, "speedup": paired.speedup,
            "interval": [low, high], "level": level, "ratios": paired.ratios,
            "baseline": paired.baseline, "candidate": paired.candidate,
            "seconds": time.perf_counter() - started,
            "load": [*load, os.getloadavg()[0]]}  # fmt: skip


def one_run(args: argparse.Namespace, number: int, regime: str) -> Record:
    import optuna

    from accelopt.params_store.file import read_store
    from accelopt.spec import load_spec
    from accelopt.storage import open_storage
    from accelopt.study.prepare import spec_of, study_mode
    from accelopt.trial.bench import Bench

    name = load_spec(args.study).name
    burners = start_burners(args.burners) if regime == "loaded" else []
    count = len(burners)
    try:
        with tempfile.TemporaryDirectory(prefix="accelopt-loaded-") as folder:
            work = Path(folder)
            load = [os.getloadavg()[0]]
            _log(f"run {number} ({regime}, {count} burners): {args.study} ...")
            ran = run_study(args, work, number if args.vary_seed else None)
            load.append(os.getloadavg()[0])
            entries = read_store(work / "store.json")
            outcome = classify(ran["rc"], ran["stderr"], entries)
            backend, _ = open_storage(str(work / "journal.log"))
            study = optuna.load_study(study_name=name, storage=backend)
            spec = spec_of(study)
            export = export_record(study, outcome, entries)
            _log(f"run {number}: {outcome} after {ran['seconds']:.0f} s")
            images = min(spec.timing.prompts or spec.prompts.batch_size, spec.prompts.count)
            cost = pair_cost([t.user_attrs for t in study.trials], images)
            measured = []
            if export["accelerators"]:
                bench = Bench.load(spec, "cpu", "pretrained", _log)
                bench.mode = study_mode(study) or "eager"
                stages = [count] + ([0] if count and args.stopped else [])
                for stage in stages:
                    if stage == 0:
                        stop_burners(burners)
                    m = remeasure(bench, export["accelerators"], args.pairs, stage)
                    held = (export.get("heldout") or {}).get("interval")
                    m["judgement"] = judge(held, m["speedup"], outcome == "exported")
                    m["trial_interval_covers"] = judge(
                        export.get("speedup_interval"), m["speedup"], True
                    ) if export.get("speedup_interval") else None  # fmt: skip
                    _log(f"run {number}: re-measured {m['speedup']:.2f}x with {stage} burners "
                         f"({m['judgement']})")  # fmt: skip
                    measured.append(m)
            load.append(os.getloadavg()[0])
            trials = [{k: t.user_attrs.get(k) for k in TRIAL_ATTRS}
                      for t in study.trials if "trial_seconds" in t.user_attrs]  # fmt: skip
    finally:
        stop_burners(burners)
    return {"run": number, "regime": regime, "burners": count, "study": name,
            "seed": number if args.vary_seed else None,
            "study_seconds": ran["seconds"], "rc": ran["rc"], "load": load,
            "stderr_tail": ran["stderr"].splitlines()[-12:],
            "stdout_tail": ran["stdout"].splitlines()[-6:], "export": export,
            "remeasured": measured, "pair_cost": cost,
            "trials": trials}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--study", default="TinySD-DDIM-10", help="e.g. TinySD-DDIM-10, ToySD-DDIM-20")
    p.add_argument("--runs", type=int, default=3, help="runs of each regime")
    p.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES))
    p.add_argument("--burners", type=int, default=2, help="busy-loop processes when loaded")
    p.add_argument("--pairs", type=int, default=7, help="pairs of each re-measurement")
    p.add_argument("--stopped", action="store_true",
                   help="also re-measure a loaded run once its burners are stopped")  # fmt: skip
    p.add_argument("--n-trials", type=int, default=0, help="the study's trials (0: its spec's)")
    p.add_argument("--vary-seed", action="store_true",
                   help="run N's sampler seed is N (both regimes alike), not the spec's: other "
                        "configurations from run to run")  # fmt: skip
    p.add_argument("--top-k", type=int, default=3, help="held-out confirmations (accelopt's -k)")
    p.add_argument("--budget", type=float, default=900, help="start no run after SECONDS")
    p.add_argument("--out", type=Path, help="folder for the record (JSON)")
    p.add_argument("--name", default="loaded-cpu", help="the record's file: NAME-DATE.json")
    p.add_argument("--table", type=Path, nargs="+", metavar="RECORD",
                   help="print these records' markdown tables instead of measuring")  # fmt: skip
    args = p.parse_args(argv)
    if args.table:
        print(markdown(merge([json.loads(path.read_text()) for path in args.table])))
        return 0
    if args.out is None:
        p.error("--out is required to measure")
    if args.top_k < 1:
        p.error("--top-k must be at least 1: export's held-out interval is what is judged")
    import torch

    started = time.perf_counter()
    record: Record = {
        **_lib.header("date", "machine", "python", "torch"),
        "torch_threads": torch.get_num_threads(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "runs": [],
        "skipped": [],
    }
    plan = [(i + 1, regime) for i in range(args.runs) for regime in args.regimes]
    for number, regime in plan:
        if time.perf_counter() - started > args.budget:
            record["skipped"].append({"run": number, "regime": regime})
            continue
        record["runs"].append(one_run(args, number, regime))
    record["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}-{record['date']}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    _log(f"wrote {path} ({record['seconds']:.0f} s; skipped {len(record['skipped'])} runs)")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
