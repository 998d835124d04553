"""Search strategies replayed offline on a recorded landscape: GPU time to a near-best point.

    python bench/replay.py bench/landscapes/SD1.5-DDIM-20.json --min-psnr 35 --seeds 20 --out DIR
    python bench/replay.py bench/landscapes/SDXL-DDIM-25.json --min-psnr 0 --seeds 20 --out DIR

A trial is answered from the record (``bench/landscapes/README.md``) instead of running the
pipeline. The space is the study's own Optuna parameters (``accelopt.search.Space``) cut to the
part every landscape records completely: DeepCache x ToMe, T-GATE off. A proposal whose
configuration the record lacks (SDXL's file is partial) is never invented: it is counted as
``unrecorded`` and dropped at no cost (TPE is told a failed trial: no information), and the
table says how many configurations are missing. Only recorded points set the target.

Cost model: a measured trial costs the GPU time the record spent generating its images,
``time_per_image * images_per_point``, times ``1 + --warmup-calls`` (default 0: the study's
warm-up is shared, not per trial). Skipped trials cost nothing: the plain pipeline (the
baseline, known before the search), a configuration already measured, one dominated by a
feasible measured one (``accelopt.search.dominating_trial``), and unrecorded ones. Baseline
re-timings, scoring and process start are left out: every strategy pays them alike.

Feasible: recorded PSNR >= ``--min-psnr`` (dB). It stands in for the study's 2% CLIP-loss budget,
since CLIP scores of random weights mean nothing. SDXL's random-weight PSNR is flat at ~14 dB
(docs/BENCHMARKS.md), so ``--min-psnr 0`` replays it for speed only, and the output says so.

Metric: the GPU time a strategy spends until it first holds a feasible point whose speedup is at
least ``TARGET`` (98%) of the best feasible speedup in the replayed space. A strategy that has not
got there when it runs out of points (TPE: after ``ASKS_PER_POINT`` asks per grid point) is
charged the cost of measuring every point and flagged; the table shows the fraction of seeds
that reached it. Speedups are the record's single timings (+-20%, docs/BENCHMARKS.md), so the
dominance skip can pass over a point that timed faster than the one that dominates it.

Strategies (``STRATEGIES``): ``grid``, the seed system (every grid point in a seeded order,
``accelopt.workers.GridOrder``, with the dominance skip); ``random``, uniform over the recorded
configurations without repeats; ``tpe``, the study's sampler (``TrialSeededTPE``) driven by
ask/tell with the study's parameters, the PSNR shortfall as its constraint, repeats and
dominated points pruned as ``accelopt.objective.Objective`` prunes them. Early stopping and
warm start (issue 7, parts 1-2) are not built yet; they join the table when they are.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import landscape as recorded  # bench/landscape.py, beside this file
import optuna

from accelopt.accelerators import Param
from accelopt.search import Space, dominating_trial
from accelopt.workers import GridOrder, TrialSeededTPE

__all__ = ["STRATEGIES", "Replay", "Step", "main", "markdown", "replay", "run"]

SEARCHED = ("deepcache", "tome")  # the accelerators every landscape records completely
TARGET = 0.98
MIN_PSNR = 35.0
ASKS_PER_POINT = 10  # TPE gives up after this many asks per grid point of the space
# TrialSeededTPE draws trial n from seed + n: seeds s and s + 1 would replay the same draws one
# trial apart. Replay seed s runs TrialSeededTPE(s * SEED_STRIDE), streams far apart.
SEED_STRIDE = 2**20


@dataclass(frozen=True)
class Step:
    """One trial of a strategy: a configuration (``config_key``), measured or skipped."""

    key: str
    measured: bool
    why: str = ""  # why it was skipped: "off", "repeat", "dominated", "unrecorded"


@dataclass
class Replay:
    """A landscape as the replay sees it: the searched space and the recorded answers."""

    study: str
    space: Space
    points: dict[str, dict[str, Any]]  # config_key -> recorded point, DeepCache x ToMe only
    min_psnr: float
    warmup_calls: int = 0
    images_per_point: int = 1
    missing: list[str] = field(default_factory=list)  # configurations the record lacks

    @classmethod
    def of(
        cls, record: dict[str, Any], min_psnr: float = MIN_PSNR, warmup_calls: int = 0
    ) -> Replay:
        space = searched_space(record)
        by_key = recorded.lookup(record)
        grid = GridOrder(space.grid(), 0).points
        keys = {recorded.config_key(space.configs(p)) for p in grid}
        points = {k: by_key[k] for k in sorted(keys) if k in by_key}
        for key, p in points.items():
            if p.get("error") or not p.get("time_per_image") or p.get("speedup") is None:
                raise ValueError(f"{record['study']}: point {key} has no measurement")
        return cls(
            study=record["study"],
            space=space,
            points=points,
            min_psnr=min_psnr,
            warmup_calls=warmup_calls,
            images_per_point=int(record["images_per_point"]),
            missing=sorted(keys - set(by_key)),
        )

    @property
    def candidates(self) -> list[str]:
        """Every recorded configuration with an accelerator on (the plain one is the baseline)."""
        return [k for k, p in self.points.items() if p["accelerators"]]

    def cost(self, key: str) -> float:
        p = self.points[key]
        return float(p["time_per_image"]) * self.images_per_point * (1 + self.warmup_calls)

    def feasible(self, key: str) -> bool:
        return float(self.points[key]["psnr"]) >= self.min_psnr

    def speedup(self, key: str) -> float:
        return float(self.points[key]["speedup"])

    @property
    def best(self) -> str:
        """The fastest feasible candidate (ties: the first key)."""
        feasible = [k for k in self.candidates if self.feasible(k)]
        if not feasible:
            raise ValueError(f"{self.study}: no configuration has PSNR >= {self.min_psnr} dB")
        return max(feasible, key=self.speedup)

    @property
    def target(self) -> float:
        return TARGET * self.speedup(self.best)

    def hits(self, key: str) -> bool:
        return self.feasible(key) and self.speedup(key) >= self.target

    @property
    def full_cost(self) -> float:
        return sum(self.cost(k) for k in self.candidates)


def searched_space(record: dict[str, Any]) -> Space:
    """The study's space (off values first, as the record keeps it) cut to DeepCache x ToMe."""
    params = {
        k: Param(tuple(v)) for k, v in record["space"].items() if k.split(".")[0] in SEARCHED
    }
    return Space(params, int(record["steps"]), optional=True)


# --- strategies: each yields its trials in order, lazily (the run stops at the target) -----------


def _done(replay: Replay, key: str) -> optuna.trial.FrozenTrial:
    """A measured point as the finished trial ``dominating_trial`` reads."""
    return optuna.trial.create_trial(
        value=replay.speedup(key),
        user_attrs={
            "accelerators": replay.points[key]["accelerators"],
            "feasible": replay.feasible(key),
            "speedup": replay.speedup(key),
        },
    )


def _skip(replay: Replay, key: str, done: Sequence[optuna.trial.FrozenTrial]) -> str:
    """Why the study would not measure ``key`` now ("" if it would): its Objective's rules."""
    if key not in replay.points:
        return "unrecorded"
    configs = replay.points[key]["accelerators"]
    if not configs:
        return "off"
    found = dominating_trial(configs, done)
    if found is None:
        return ""
    return "repeat" if found[1].startswith("same configuration") else "dominated"


def grid(replay: Replay, seed: int) -> Iterator[Step]:
    """The seed system: every grid point in ``GridOrder``'s seeded order, with dominance skip."""
    done: list[optuna.trial.FrozenTrial] = []
    for params in GridOrder(replay.space.grid(), seed).points:
        key = recorded.config_key(replay.space.configs(params))
        why = _skip(replay, key, done)
        if not why:
            done.append(_done(replay, key))
        yield Step(key, not why, why)


def uniform(replay: Replay, seed: int) -> Iterator[Step]:
    """Uniform random over the recorded configurations, without repeats, no dominance skip."""
    order = list(replay.candidates)
    random.Random(seed).shuffle(order)
    for key in order:
        yield Step(key, True)


def tpe(replay: Replay, seed: int, max_asks: int | None = None) -> Iterator[Step]:
    """The study's TPE, ask/tell: PSNR shortfall as the constraint, skips pruned at no cost."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=TrialSeededTPE(seed * SEED_STRIDE))
    left = set(replay.candidates)
    asks = max_asks if max_asks is not None else ASKS_PER_POINT * replay.space.size
    done: list[optuna.trial.FrozenTrial] = []
    for _ in range(asks):
        if not left:
            return
        trial = study.ask()
        key = recorded.config_key(replay.space.configs(replay.space.suggest(trial)))
        why = _skip(replay, key, done)
        if why == "unrecorded":  # the study would have measured it; we cannot: it never happened
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif why:
            trial.set_user_attr("skipped", why)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            p = replay.points[key]
            trial.set_constraint("psnr_shortfall", max(replay.min_psnr - float(p["psnr"]), -1e3))
            trial.set_user_attr("accelerators", p["accelerators"])
            trial.set_user_attr("feasible", replay.feasible(key))
            trial.set_user_attr("speedup", replay.speedup(key))
            study.tell(trial, replay.speedup(key))
            done.append(_done(replay, key))
            left.discard(key)
        yield Step(key, not why, why)


Strategy = Callable[[Replay, int], Iterator[Step]]
# Issue 7 parts 1-2 add "tpe+early-stop" (a trial over budget stops after a batch of prompts,
# its partial cost counted; needs per-prompt fidelity, which the landscapes do not record yet)
# and "tpe+warm-start" (enqueue neighbouring studies' best first) here.
STRATEGIES: dict[str, Strategy] = {"grid": grid, "random": uniform, "tpe": tpe}


# --- running and summarising ------------------------------------------------------------------


def run(replay: Replay, strategy: Strategy, seed: int) -> dict[str, Any]:
    """One seed of one strategy: GPU time until it holds a target point (or all it measured)."""
    cost, counts = 0.0, {"measured": 0, "off": 0, "repeat": 0, "dominated": 0, "unrecorded": 0}
    for step in strategy(replay, seed):
        counts["measured" if step.measured else step.why] += 1
        if step.measured:
            cost += replay.cost(step.key)
            if replay.hits(step.key):
                return {"seed": seed, "cost": cost, "reached": True, "found": step.key, **counts}
    return {"seed": seed, "cost": replay.full_cost, "reached": False, "found": None, **counts}


def replay(
    rec: Replay, seeds: Sequence[int], strategies: Sequence[str] = tuple(STRATEGIES)
) -> dict[str, Any]:
    """Every strategy over ``seeds``: a plain record (the table is drawn from it)."""
    best = rec.best
    results: dict[str, Any] = {}
    for name in strategies:
        runs = [run(rec, STRATEGIES[name], s) for s in seeds]
        costs = [r["cost"] for r in runs]
        results[name] = {
            "mean": statistics.fmean(costs),
            "median": statistics.median(costs),
            "reached": sum(r["reached"] for r in runs) / len(runs),
            "mean_measured": statistics.fmean(r["measured"] for r in runs),
            "mean_unrecorded": statistics.fmean(r["unrecorded"] for r in runs),
            "runs": runs,
        }
    if "grid" in results:
        for r in results.values():
            r["ratio_to_grid"] = r["mean"] / results["grid"]["mean"]
    return {
        "study": rec.study,
        "min_psnr": rec.min_psnr,
        "speed_only": rec.min_psnr <= 0,
        "target_fraction": TARGET,
        "best": {
            "accelerators": rec.points[best]["accelerators"],
            "speedup": rec.speedup(best),
            "psnr": rec.points[best]["psnr"],
        },
        "target_speedup": rec.target,
        "candidates": len(rec.candidates),
        "feasible": sum(rec.feasible(k) for k in rec.candidates),
        "hits": sum(rec.hits(k) for k in rec.candidates),
        "missing": rec.missing,
        "full_cost": rec.full_cost,
        "images_per_point": rec.images_per_point,
        "warmup_calls": rec.warmup_calls,
        "seeds": list(seeds),
        "strategies": results,
    }


def markdown(result: dict[str, Any], command: str = "") -> str:
    r = result
    feasibility = (
        "speed only (`--min-psnr 0`: every point feasible; random-weight fidelity is flat here)"
        if r["speed_only"]
        else f"PSNR >= {r['min_psnr']:g} dB (stands in for the 2% CLIP-loss budget)"
    )
    lines = [
        f"### {r['study']}: GPU time to {100 * r['target_fraction']:g}% of the best feasible "
        f"speedup ({len(r['seeds'])} seeds)",
        "",
        f"- space: DeepCache x ToMe, T-GATE off: {r['candidates']} recorded configurations "
        f"({r['feasible']} feasible, {r['hits']} at the target); measuring all costs "
        f"{r['full_cost']:.1f} s",
        f"- feasible: {feasibility}",
        f"- best feasible: {r['best']['speedup']:.2f}x, {_short(r['best']['accelerators'])} "
        f"(PSNR {r['best']['psnr']:.1f}); target {r['target_speedup']:.2f}x",
    ]
    if r["missing"]:
        lines.append(
            f"- partial record: {len(r['missing'])} configurations of the space are missing; "
            "strategies skip them at no cost (TPE's proposals of them count as failed trials)"
        )
    if command:
        lines.append(f"- command: `{command}`")
    extra = " unrecorded dropped (mean) |" if r["missing"] else ""
    lines += [
        "",
        "| strategy | mean GPU s | median GPU s | ratio to grid (mean) | reached | "
        f"trials measured (mean) |{extra}",
        "|---|---|---|---|---|---|" + ("---|" if extra else ""),
    ]
    for name, s in r["strategies"].items():
        ratio = f"{s['ratio_to_grid']:.2f}" if "ratio_to_grid" in s else "-"
        lines.append(
            f"| {name} | {s['mean']:.1f} | {s['median']:.1f} | {ratio} | "
            f"{100 * s['reached']:.0f}% | {s['mean_measured']:.1f} |"
            + (f" {s['mean_unrecorded']:.1f} |" if extra else "")
        )
    return "\n".join(lines) + "\n"


def _short(configs: dict[str, dict[str, Any]]) -> str:
    """``{"deepcache": {"cache_interval": 4, "cache_branch_id": 0}}`` -> ``deepcache 4/0``."""
    return " + ".join(f"{n} " + "/".join(f"{v:g}" for v in c.values()) for n, c in configs.items())


# --- command line -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("landscape", type=Path, help="a recorded landscape, bench/landscapes/*.json")
    p.add_argument("--min-psnr", type=float, default=MIN_PSNR, help="dB; 0: speed only")
    p.add_argument("--seeds", type=int, default=20, help="seeds 0 .. N-1 per strategy")
    p.add_argument(
        "--strategies", default=",".join(STRATEGIES), help=f"of {', '.join(STRATEGIES)}"
    )
    p.add_argument("--warmup-calls", type=int, default=0, help="untimed calls charged per trial")
    p.add_argument("--out", type=Path, help="write replay-<study>.json and .md here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    names = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names or args.seeds < 1 or args.warmup_calls < 0:
        raise SystemExit(
            f"--strategies of {', '.join(STRATEGIES)} (got {args.strategies!r}); "
            "--seeds >= 1; --warmup-calls >= 0"
        )
    command = shlex.join(["python", "bench/replay.py", *argv])
    rec = Replay.of(recorded.load(args.landscape), args.min_psnr, args.warmup_calls)
    result = {"command": command, **replay(rec, range(args.seeds), names)}
    table = markdown(result, command)
    print(table, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"replay-{rec.study}"
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{stem}.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
