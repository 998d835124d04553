"""Speed of each accelerator and combination against the plain pipeline, alternated, on a GPU.

    python -m bench.speed --pipes SD1.5 SDXL --repeats 5 --time-budget 400 --out $OUT

Full-size architectures with random fp16 weights (no download exists here): timing is real,
images are not. Each configuration is timed ``repeats`` times, each time right after a timing
of the plain pipeline (A, B, A, B, ...), so clock drift hits both; the speedup is the median of
the per-pair ratios and the spread is (max - min) / median of the configuration's times. Also:
an A/A pair (the baseline against itself) and, for the single accelerators, accelopt's apply
against the raw upstream calls. The configurations are those ``accelerators.applicable`` allows
on each pipeline (PixArt: T-GATE only); the rest are listed as skipped, with the reason.

``--time-budget`` splits the seconds among the pipes by their estimated cost and skips a
configuration that would overrun its pipe's share (the most telling ones run first, the ends of
our ranges last); SIGTERM stops at once. Either way the files say ``partial``. Writes speed.json
(after every configuration) and speed.md to --out. ``python -m bench.all --suite speed`` runs one
process per GPU and merges them.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import signal
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from accelopt import accelerators
from accelopt.accelerators import PipeTraits
from accelopt.measure import timing
from accelopt.pipelines import call_defaults, model_info
from bench import _lib
from bench.tables import describe  # labels and the markdown
from bench.tables import speed_markdown as markdown


@dataclass(frozen=True)
class Setting:
    steps: int
    scheduler: str
    guidance: float


# Each family's usual sampling: DDIM for the UNets, DPM-Solver++ (what PixArt ships) for PixArt.
SETTINGS = {
    "SD1.5": Setting(20, "DDIM", 7.0),
    "SD2.1": Setting(25, "DDIM", 7.0),
    "SDXL": Setting(25, "DDIM", 7.0),
    "PixArt-alpha": Setting(20, "DPM-Solver++", 4.5),
    "PixArt-Sigma": Setting(20, "DPM-Solver++", 4.5),
    "TinySD": Setting(10, "DDIM", 7.0),
    "TinySDXL": Setting(10, "DDIM", 7.0),
    "TinyPixArt": Setting(20, "DPM-Solver++", 4.5),
}
# Seconds one pipe takes on one H200 at 5 repeats, building included, from the 2026-11-28
# evening run through bench/all.py (every row measured): the timed pairs came to SDXL 301 s,
# SD2.1 138 s, SD1.5 101 s and PixArt-alpha 39 s; the walls were 370 s for SDXL alone and 353 s
# for the other three on one GPU, so building and warm-ups cost ~70 s for SDXL and ~25 s for
# each of the others (PixArt-Sigma: as PixArt-alpha). Used to plan GPUs and share budgets
# (bench/all.py), never to judge a result.
ESTIMATE = {"SDXL": 370, "SD2.1": 165, "SD1.5": 125, "PixArt-alpha": 70, "PixArt-Sigma": 70}
MIN_SHARE = 20  # seconds: less than this cannot build a pipe and time a row
PROMPT = "a photograph of a lighthouse at dusk"
AA = "A/A: baseline against itself"
PUBLISHED_TGATE = {
    # T-GATE's README: SD and SDXL at 25 steps; PixArt-Alpha at 25 steps.
    "unet": {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2},
    "pixart": {"gate_step": 15, "sp_interval": 3, "fi_interval": 1, "warm_up": 2},
}
Configs = dict[str, dict[str, Any]]
Applied = tuple[Callable[..., Any], Callable[[], None]]


@dataclass(frozen=True)
class Candidate:
    label: str
    kind: str  # "accelopt" or "raw" (the single accelerator through upstream's own calls)
    configs: Configs


class Stop(Exception):
    """SIGTERM: stop measuring, write what there is, marked partial."""


_stopping: list[bool] = []  # set by SIGTERM: libraries may wrap the Stop it raises


def _on_sigterm(signum: int, frame: object) -> None:
    _stopping.append(True)
    raise Stop


def candidates(traits: PipeTraits, steps: int) -> tuple[list[Candidate], dict[str, str]]:
    """Published settings, raw upstream twins, combinations, then the ends of our ranges.

    Returns the candidates in the order they run and what is skipped (label -> why).
    """
    usable = accelerators.applicable(traits)
    spaces = {n: accelerators.ACCELERATORS[n].space(traits, steps) for n in usable}
    published: Configs = {}
    ends: list[Configs] = []
    if "deepcache" in spaces:
        interval = spaces["deepcache"]["cache_interval"].values
        branch = spaces["deepcache"]["cache_branch_id"].values
        published["deepcache"] = {"cache_interval": 3, "cache_branch_id": 0}
        ends.append({"deepcache": {"cache_interval": interval[-1], "cache_branch_id": 0}})
        ends.append({"deepcache": {"cache_interval": interval[0], "cache_branch_id": branch[-1]}})
    if "tgate" in spaces:
        space = {k: p.values for k, p in spaces["tgate"].items()}
        published["tgate"] = PUBLISHED_TGATE["unet" if traits.has_unet else "pixart"]
        ends.append(
            {
                "tgate": {
                    "gate_step": space["gate_step"][0],
                    "sp_interval": space["sp_interval"][-1],
                    "fi_interval": space["fi_interval"][-1],
                    "warm_up": space["warm_up"][0],
                }
            }
        )
    if "tome" in spaces:
        ratio = spaces["tome"]["ratio"].values
        downsample = spaces["tome"]["max_downsample"].values  # the first one that merges
        published["tome"] = {"ratio": 0.5, "max_downsample": downsample[0]}
        ends.append({"tome": {"ratio": ratio[-1], "max_downsample": downsample[-1]}})  # slowest

    def ordered(names: Sequence[str]) -> list[str]:
        return [n for n in accelerators.ORDER if n in names]

    singles = [{n: published[n]} for n in ordered(list(published))]
    out = [Candidate(f"{describe(c)} (published)", "accelopt", c) for c in singles]
    out += [Candidate(f"raw upstream: {describe(c)} (published)", "raw", c) for c in singles]
    skipped: dict[str, str] = {}
    rank = {n: i for i, n in enumerate(accelerators.ORDER)}
    for names in sorted(accelerators.PLANS, key=lambda s: (len(s), sorted(rank[n] for n in s))):
        missing = ordered([n for n in names if n not in usable])
        if missing:
            skipped[" + ".join(ordered(list(names)))] = (
                f"{', '.join(missing)} cannot accelerate a {traits.family} pipeline "
                f"(accelerators.applicable: {', '.join(usable) or 'none'})"
            )
        elif len(names) > 1:
            combo = {n: published[n] for n in ordered(list(names))}
            label = "all three" if len(names) == 3 else describe(combo)
            out.append(Candidate(label, "accelopt", combo))
    out += [Candidate(f"{describe(c)} (range end)", "accelopt", c) for c in ends]
    return out, skipped


def raw_upstream(pipe: Any, name: str, params: dict[str, Any]) -> Applied:
    """The same single accelerator applied with upstream's own calls, as its README shows.

    Undoing (not timed) calls upstream's undo where there is one, then puts the pipeline back
    exactly as it was (what accelopt's remove does), so the next baseline runs the plain one.
    """
    from accelopt.accelerators._snapshot import Snapshot

    before = Snapshot.take(pipe)
    call: Callable[..., Any]
    upstream_undo: Callable[[], Any] = lambda: None  # noqa: E731
    if name == "deepcache":
        from DeepCache import DeepCacheSDHelper

        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(**params)
        helper.enable()

        def cached(**kw: Any) -> Any:
            helper.disable()  # the helper counts steps across calls
            helper.enable()
            return pipe(**kw)

        call, upstream_undo = cached, helper.disable
    elif name == "tome":
        import tomesd

        tomesd.apply_patch(pipe, use_rand=False, **params)
        call, upstream_undo = pipe, lambda: tomesd.remove_patch(pipe)
    elif name == "tgate":
        import tgate

        from accelopt.pipelines import family_of

        getattr(tgate, TGATE_LOADERS[family_of(pipe)])(pipe)  # upstream has no undo

        def gated(**kw: Any) -> Any:
            return pipe.tgate(**kw, **params)

        call = gated
    else:
        raise ValueError(name)

    def undo() -> None:
        upstream_undo()
        before.restore(pipe)
        assert before.matches(pipe), f"raw {name} not undone exactly"

    return call, undo


# Upstream T-GATE's forked pipeline call, installed per family (accelopt's own runs in hooks).
TGATE_LOADERS = {
    "sd": "TgateSDLoader",
    "sdxl": "TgateSDXLLoader",
    "pixart-alpha": "TgatePixArtAlphaLoader",
    "pixart-sigma": "TgatePixArtSigmaLoader",
}


VERSIONS = ("torch", "diffusers", "transformers", "DeepCache", "tgate", "tomesd")


def bench_pipe(
    name: str, repeats: int, device: str, deadline: float, result: dict[str, Any], save: Any
) -> None:
    """Fill ``result`` (one pipe's record) row by row, calling ``save()`` after each."""
    setting = SETTINGS[name]
    info = model_info(name)
    assert info is not None, name
    dtype = "fp16" if device != "cpu" else None
    pipe = _lib.pipeline(name, setting.scheduler, dtype=dtype, device=device, quiet=False)
    where = pipe.device
    steps, size = setting.steps, info.resolution
    traits = PipeTraits.of(pipe)
    rows: dict[str, Any] = {}
    todo, skipped = candidates(traits, steps)
    result.update(steps=steps, resolution=size, scheduler=setting.scheduler,
                  guidance=setting.guidance, family=traits.family, partial=True, rows=rows,
                  skipped=skipped)  # fmt: skip
    kwargs = dict(prompt=[PROMPT], num_inference_steps=steps, guidance_scale=setting.guidance,
                  height=size, width=size, output_type="np", **call_defaults(pipe))  # fmt: skip

    def timed(call: Callable[..., Any]) -> float:
        return timing.timed(lambda: call(**kwargs, generator=torch.Generator().manual_seed(0)),
                            where)[1]  # fmt: skip

    base_s = max(timed(pipe) for _ in range(2))  # warm-up: kernels, allocator

    def pairs(row: Candidate | None, apply: Callable[[], Applied]) -> None:
        nonlocal base_s
        label = row.label if row else AA
        if time.monotonic() + (2 * repeats + 1) * base_s > deadline:
            skipped[label] = "time budget: not started"
            return
        # The baseline is the plain pipeline: patches go on right before each candidate timing
        # and come off right after it (not timed), so A and B alternate for real.
        call, undo = apply()
        first = timed(call)  # warm-up of this configuration
        undo()
        if time.monotonic() + repeats * (base_s + first) > deadline:
            skipped[label] = f"time budget: stopped after its warm-up ({first:.2f} s)"
            return
        base, cand, peak = [], [], None
        for _ in range(repeats):
            base.append(timed(pipe))
            call, undo = apply()
            timing.reset_peak_memory(where)
            cand.append(timed(call))
            used = timing.peak_memory(where)
            peak = None if used is None else max(peak or 0, used)
            undo()
        ratios = [b / c for b, c in zip(base, cand, strict=True)]
        med = statistics.median(cand)
        base_s = statistics.median(base)
        rows[label] = {
            "kind": row.kind if row else "aa",
            "accelerators": row.configs if row else {},
            "speedup": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "seconds": med,
            "baseline_seconds": base_s,
            "spread": (max(cand) - min(cand)) / med,
            "peak_gib": None if peak is None else peak / 2**30,
            "pairs": [[b, c] for b, c in zip(base, cand, strict=True)],
        }
        r = rows[label]
        print(f"{name:12} {label:46} {r['speedup']:.2f}x ({r['speedup_min']:.2f}-"
              f"{r['speedup_max']:.2f}) spread {100 * r['spread']:.1f}% {med:.3f} s",
              flush=True)  # fmt: skip
        save()

    def accelopt_apply(configs: Configs) -> Callable[[], Applied]:
        def apply() -> Applied:
            acc = accelerators.apply(pipe, configs, steps=steps)
            return acc, acc.remove

        return apply

    try:
        pairs(None, lambda: (pipe, lambda: None))
        for row in todo:
            if row.kind == "raw":
                [(single, params)] = row.configs.items()
                pairs(row, lambda single=single, params=params: raw_upstream(pipe, single, params))
            else:
                pairs(row, accelopt_apply(row.configs))
        result["partial"] = any(why.startswith("time budget") for why in skipped.values())
    finally:
        accelerators.remove(pipe)


def write(out: Path, result: Mapping[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "speed.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "speed.json")
    (out / "speed.md").write_text(markdown(result))


def merge(records: Sequence[Mapping[str, Any]], command: str = "") -> dict[str, Any]:
    """One record from several processes' (one per GPU): their pipes side by side."""
    if not records:
        raise ValueError("no records to merge")
    merged = {k: v for k, v in records[0].items() if k not in ("pipes", "command", "gpu")}
    merged.update(
        command=command,
        partial=any(r["partial"] for r in records),
        processes=[{"command": r["command"], "pipes": list(r["pipes"])} for r in records],
        pipes={name: p for r in records for name, p in r["pipes"].items()},
    )
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pipes", nargs="+", default=list(ESTIMATE), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--time-budget", type=float, help="seconds for all pipes, building too")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    deadline = started + (math.inf if args.time_budget is None else args.time_budget)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    result: dict[str, Any] = {
        **_lib.header(
            "card",
            "date",
            "versions",
            "command",
            device=args.device,
            versions=VERSIONS,
            script="speed",
            argv=argv_list,
        ),
        "repeats": args.repeats,
        "time_budget": args.time_budget,
        "partial": True,
        "pipes": {},
    }

    def save() -> None:
        write(args.out, result)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for i, name in enumerate(args.pipes):
            # A share of the time left, by estimated cost: what one pipe leaves goes to the next.
            weights = [ESTIMATE.get(p, 1) for p in args.pipes[i:]]
            share = (deadline - time.monotonic()) * weights[0] / sum(weights)
            record: dict[str, Any] = {}
            result["pipes"][name] = record
            if share < MIN_SHARE:
                record.update(partial=True, error=f"time budget: {share:.0f} s left")
                continue
            try:
                bench_pipe(name, args.repeats, args.device, time.monotonic() + share, record, save)
            except Stop:
                raise
            except Exception as err:  # one pipe's failure must not cost the others' rows
                if _stopping:  # a Stop that diffusers' lazy import wrapped in its own error
                    raise Stop from err
                record.update(partial=True, error=f"{type(err).__name__}: {err}")
                print(f"{name}: {record['error']}", flush=True)
            save()
            gc.collect()  # the pipe is gone with bench_pipe's frame: free its memory now
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        result["partial"] = any(p.get("partial", True) for p in result["pipes"].values())
    except Stop:
        print("SIGTERM: writing what there is, marked partial", flush=True)
        for record in result["pipes"].values():
            record["partial"] = True
            if not record.get("rows"):
                record.setdefault("error", "stopped by SIGTERM before any row")
    finally:
        signal.signal(signal.SIGTERM, previous)
    save()
    print(markdown(result))
    return 0 if not result["partial"] else 1


if __name__ == "__main__":
    sys.exit(main())
