"""Recorded landscapes: time and fidelity of every point of a study's search space, on a GPU.

    python -m bench.landscape measure --study SD1.5-DDIM-20 --prompts 2 --shard 1/2 --out DIR
    python -m bench.landscape merge DIR/SD1.5-DDIM-20.shard-*.json --out bench/landscapes
    python -m bench.landscape summary bench/landscapes/SD1.5-DDIM-20.json

This module measures (it needs torch and a pipeline); the file it writes, and everything that
reads one (merge, summary, fidelity tables, replay lookups), is ``bench.landscape_records``.

The points are the study's own search space (``Space.build(traits, steps, None)``, off values
included): every distinct configuration of the DeepCache x ToMe grid with T-GATE off (so every
single accelerator, every combination of the two, and the plain pipeline), plus a seeded random
sample of grid points with T-GATE on. Each point is applied and removed exactly as accelopt's
Objective does, timed (CUDA-synchronised, after a shared warm-up) on a few prompts in one batch,
and compared with the baseline images of the same seeds: PSNR and SSIM. The baseline is re-timed
every ``--baseline-every`` points; a point's speedup divides by the nearest re-timing of its own
shard (same GPU). Full-size architectures get random fp16 weights by default (no download exists
here): times are real, fidelity says how far an accelerator moves the output, not image quality.

``--shard K/N`` measures every N-th point of a seeded order, so shards partition the points and
each gets a fair mix of cheap and costly ones; the order also makes a partial run a uniform sample.
``--time-budget`` stops before the next point would overrun; the file then says ``partial``.
JSON floats: a PSNR of identical images is ``Infinity`` (Python's json reads it back as inf).

Scores (``--heldout N``, for a study whose CLIP scorer is trained: ToySD-DDIM-20's toy scorer):
each point also records the per-prompt CLIP scores of its ``--prompts`` search images
(``scores``) and of N held-out prompts generated with the point's accelerators still on
(``heldout_scores``: the held-out split, prompt i seeded ``seed + SEED_OFFSET + i``, as
``accelopt.study.confirm`` does), with ``score_loss`` and ``heldout_score_loss`` against the plain
pipeline's scores (top level: ``baseline_scores``, ``heldout_baseline_scores``), and the
study's ``max_score_loss``, ``early_stop`` and ``batch_size``, so a replay can stop trials early
exactly as the study would. ``--batch`` sets the prompts per call (default all of a split in
one call, the steadiest timing); each prompt has its own generator, so its image, hence its
score, does not depend on the call's batch (bit for bit on a CPU). Cost of ToySD-DDIM-20 with
``--prompts 32 --heldout 32``: two calls a point of ~0.3-0.6 s each on an H200, so its 375
points take ~140-290 s per GPU on two GPUs, plus ~30 s of start and warm-up.

    python -m bench.landscape measure --study ToySD-DDIM-20 --prompts 32 --heldout 32 --out DIR

Fidelity (``fidelity``, for a scored landscape): regenerate every point's images of both splits,
as ``measure`` made them but untimed, and add per-prompt PSNR, SSIM and CLIP-image similarity
against the plain pipeline's images of the same prompts and seeds, with the CLIP scores of the
same images and how far they are from the recorded ones (bench/landscapes/README.md). Several
processes can share one GPU (``--shard K/N``), then ``fidelity-merge`` joins their files; a
partial output (``--time-budget``) given back to ``fidelity`` resumes. ToySD-DDIM-20 on one H200,
four processes: ~130 s.

    python -m bench.landscape fidelity bench/landscapes/ToySD-DDIM-20.json --shard 1/4 --out DIR
    python -m bench.landscape fidelity-merge bench/landscapes/ToySD-DDIM-20.json \
        DIR/ToySD-DDIM-20.fidelity-*-of-4.json --out bench/landscapes
    python -m bench.tables --fidelity bench/landscapes/ToySD-DDIM-20.json
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from bench import _lib
from bench.landscape_records import (
    KIND,
    ORDER,
    SCHEMA,
    Point,
    Record,
    config_key,
    fidelity_info,
    load,
    markdown,
    merge,
    merge_fidelity,
    plan_name,
    point_fidelity,
    short,
    speedups,
    summarize,
    write_json,
)

MIN_POINTS = 300  # the issue asks for at least this many points per study
MIN_TGATE_SAMPLE = 50
VERSIONS = ("torch", "diffusers", "transformers", "DeepCache", "tgate", "tomesd", "optuna")


# --- the points -------------------------------------------------------------------------------


def plan(space: Any, tgate_sample: int | None = None, seed: int = 0) -> list[Point]:
    """Every distinct DeepCache x ToMe configuration (T-GATE off), then a T-GATE sample.

    ``space`` is an ``accelopt.trial.space.Space`` built with ``targets=None`` (so every
    accelerator
    has its off value). Each point has an ``index`` (its place in this list), the ``params`` of
    the first grid point that gives its configuration, and ``accelerators``, the configuration
    (``{}`` for the plain pipeline, always index 0). The T-GATE sample draws grid points with
    T-GATE on, uniformly with ``random.Random(seed)``, until it has ``tgate_sample`` distinct
    configurations (default: enough for ``MIN_POINTS`` in all, at least ``MIN_TGATE_SAMPLE``).
    """
    if not space.optional:
        raise ValueError("a landscape needs the search space with off values (targets=None)")
    grid: dict[str, list[Any]] = space.grid()
    points: list[Point] = []
    seen: set[str] = set()

    def add(params: dict[str, Any]) -> bool:
        configs = space.configs(params)
        key = config_key(configs)
        if key in seen:
            return False
        seen.add(key)
        points.append({"index": len(points), "params": params, "accelerators": configs})
        return True

    # ToMe's partition stays the fixed one: every recorded landscape predates the random one,
    # and replays compare against them (a random partition is a landscape of its own).
    if "tome.use_rand" in grid:
        grid["tome.use_rand"] = [False]
    # The grid with T-GATE (if the space has it) at its first values, gate_step being off.
    fixed = {k: v[0] for k, v in grid.items() if k.startswith("tgate.")}
    free = [k for k in grid if k not in fixed]
    for values in itertools.product(*(grid[k] for k in free)):
        add({**dict(zip(free, values, strict=True)), **fixed})
    if not fixed:
        return points
    on = {k: (v[1:] if k == "tgate.gate_step" else v) for k, v in grid.items()}
    size = math.prod(len(v) for v in on.values())
    wanted = tgate_sample if tgate_sample is not None else default_tgate_sample(len(points))
    if wanted > size:
        raise ValueError(
            f"a T-GATE sample of {wanted} exceeds the {size} grid points it draws from"
        )
    rng = random.Random(seed)
    target = len(points) + wanted
    for _ in range(100 * wanted):  # draws that repeat a configuration are dropped
        if len(points) == target:
            break
        add(_grid_point(on, rng.randrange(size)))
    else:
        raise ValueError(f"could not draw {wanted} distinct T-GATE configurations")
    return points


def default_tgate_sample(grid_points: int) -> int:
    return max(MIN_TGATE_SAMPLE, MIN_POINTS - grid_points)


def _grid_point(grid: Mapping[str, Sequence[Any]], number: int) -> dict[str, Any]:
    """The ``number``-th point of the product of ``grid``'s values (mixed radix, last fastest)."""
    params: dict[str, Any] = {}
    for key in reversed(list(grid)):
        number, digit = divmod(number, len(grid[key]))
        params[key] = grid[key][digit]
    return {k: params[k] for k in grid}


def select(points: Sequence[Point], count: int | None, seed: int = 0) -> list[Point]:
    """``count`` points: the plain pipeline and a seeded sample of the rest (all if None)."""
    if count is None or count >= len(points):
        return list(points)
    if count < 1:
        raise ValueError(f"--points must be at least 1; got {count}")
    rest = random.Random(seed).sample(range(1, len(points)), count - 1)
    return [points[0], *(points[i] for i in sorted(rest))]


def measurement_order(points: Sequence[Point], seed: int = 0) -> list[Point]:
    """A seeded permutation: drift and a time budget hit every kind of point alike."""
    ordered = list(points)
    random.Random(seed).shuffle(ordered)
    return ordered


def shard(ordered: Sequence[Point], k: int, n: int) -> list[Point]:
    """Shard ``k`` of ``n`` (1-based): every n-th point, so shards are disjoint and cover all."""
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: need 1 <= K <= N")
    return list(ordered[k - 1 :: n])


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N, e.g. 1/2; got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 1 <= K <= N")
    return k, n


# --- measuring --------------------------------------------------------------------------------


class Stop(BaseException):
    """SIGTERM: stop measuring, write what there is, marked partial."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Stop


def measure(args: argparse.Namespace) -> Path:
    """Measure one shard of one study's landscape; write ``<study>.shard-K-of-N.json``."""
    import torch

    from accelopt import accelerators
    from accelopt.accelerators import PipeTraits
    from accelopt.measure.metrics import TOY_CLIP, ClipScorer, psnr, score_loss, ssim
    from accelopt.measure.timing import timed
    from accelopt.pipelines import TOY_PIPELINES, load_pipeline, model_info
    from accelopt.pipelines.schedulers import set_scheduler
    from accelopt.spec import load_spec
    from accelopt.study.confirm import SEED_OFFSET
    from accelopt.trial.bench import Bench
    from accelopt.trial.space import Space

    name = args.study or f"{args.pipeline}-{args.scheduler}-{args.steps}"
    spec = load_spec(name)
    if spec.targets is not None:
        raise SystemExit(
            f"{name}: a landscape covers the whole space; name a study without targets"
        )
    if args.resolution:
        spec = spec.replace(resolution=args.resolution)
    scoring = args.heldout > 0
    if scoring and not (spec.metric.model == TOY_CLIP or spec.metric.pretrained):
        raise SystemExit(
            f"{name}: --heldout records CLIP scores, and its scorer {spec.metric.model} has "
            "random weights here; name a study with a trained scorer, e.g. ToySD-DDIM-20"
        )
    n_images = args.prompts
    per_call = min(args.batch or n_images, n_images)
    study_batch = spec.prompts.batch_size  # the study's: a replay's early stop judges by it
    spec = spec.replace(prompts=replace(spec.prompts, count=n_images, batch_size=per_call))
    k, n = args.shard
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = args.dtype or (spec.dtype if device.type == "cuda" else None)
    info = model_info(spec.pipeline)
    toy = info is not None and info.name in TOY_PIPELINES  # trained here, shipped with accelopt
    tiny = info is not None and info.hub_id is None and not toy  # always random weights
    weights = args.weights or ("pretrained" if toy else "random")
    started = args.started
    log = _logger(f"{name} {k}/{n}", started)

    log(f"building {spec.pipeline} ({weights} weights, {dtype or 'default dtype'}) ...")
    pipe = load_pipeline(spec.pipeline, weights=weights, dtype=dtype, device=str(device))
    set_scheduler(pipe, spec.scheduler)
    scorer = ClipScorer(spec.metric.model, spec.metric.pretrained, device) if scoring else None
    bench = Bench(spec, pipe, scorer, device)  # scorer None: no scores (never asked for)
    held = None
    if scoring:  # the held-out prompts and seeds of accelopt.study.confirm
        prompts = replace(spec.prompts, split="heldout", count=args.heldout,
                          seed=spec.prompts.seed + SEED_OFFSET)  # fmt: skip
        held = Bench(spec.replace(prompts=prompts), pipe, scorer, device)
    space = Space.build(PipeTraits.of(pipe), spec.steps, None)
    everything = plan(space, args.tgate_sample, args.seed)
    chosen = select(everything, args.points, args.seed)
    mine = shard(measurement_order(chosen, args.seed), k, n)
    n_grid = sum("tgate" not in p["accelerators"] for p in everything)
    out_path = args.out / f"{name}.shard-{k}-of-{n}.json"
    record: Record = {
        "schema": SCHEMA,
        "kind": KIND,
        "study": name,
        "pipeline": info.name if info else spec.pipeline,
        "scheduler": spec.scheduler,
        "steps": spec.steps,
        "resolution": spec.resolution,
        "guidance": spec.guidance,
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "weights": "random" if tiny else weights,
        "prompts": bench.prompts,
        "seeds": [spec.prompts.seed + i for i in range(n_images)],
        "images_per_point": n_images,
        "images_per_call": per_call,
        "repeats": args.repeats,
        "warmup_per_point": args.warmup,
        "baseline_every": args.baseline_every,
        **(
            {
                "scorer": spec.metric.model,
                "max_score_loss": spec.max_score_loss,
                "early_stop": spec.early_stop,
                "batch_size": study_batch,
                "heldout_prompts": held.prompts,
                "heldout_seeds": [held.spec.prompts.seed + i for i in range(args.heldout)],
                "baseline_scores": None,  # set once the plain pipeline's images are made
                "heldout_baseline_scores": None,
            }
            if held is not None
            else {}
        ),
        **_lib.header("device", device=device),
        **_environment(),
        **_lib.header("date", date=_lib.MOMENT),
        "command": args.command_line,
        "space": space.grid(),
        "plan": {
            "seed": args.seed,
            "points": len(everything),
            "grid_points": n_grid,
            "tgate_sample": len(everything) - n_grid,
            "selected": None if len(chosen) == len(everything) else len(chosen),
            # Every configuration of these is measured (with T-GATE off); T-GATE is sampled.
            "complete": [a for a in ORDER[:2] if any(q.startswith(f"{a}.") for q in space.params)],
        },
        "shards": [],
        "partial": True,
        "baselines": [],
        "points": [],
    }
    shard_info: Record = {
        "shard": k,
        "of": n,
        "planned": [p["index"] for p in mine],
        "device": record["device"],
        "host": socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "command": record["command"],
        "time_budget": args.time_budget,
        "stopped": None,
        "wall_seconds": None,
    }
    record["shards"] = [shard_info]
    args.out.mkdir(parents=True, exist_ok=True)

    def generate(of: Any = bench) -> torch.Tensor:
        """Every prompt of ``of`` (the search or held-out prompts), ``per_call`` a call."""
        count = len(of.prompts)
        return torch.cat(
            [of.generate(s, min(s + per_call, count)) for s in range(0, count, per_call)]
        )

    slowest = 0.0

    def timed_call(of: Any = bench) -> tuple[torch.Tensor, float]:
        nonlocal slowest
        images, seconds = timed(lambda: generate(of), device)
        slowest = max(slowest, seconds)
        return images, seconds

    def score(images: torch.Tensor, of: Any) -> list[float]:
        return [round(s, 4) for s in of.scorer(images, of.prompts)]

    def scores(images: torch.Tensor) -> dict[str, Any]:
        """The search images' scores, then the held-out prompts' with the same accelerators."""
        assert held is not None
        held_images, seconds = timed_call(held)
        row: dict[str, Any] = {"scores": score(images, bench)}
        row["heldout_scores"] = score(held_images, held)
        row["score_loss"] = round(score_loss(record["baseline_scores"], row["scores"]), 6)
        row["heldout_score_loss"] = round(
            score_loss(record["heldout_baseline_scores"], row["heldout_scores"]), 6
        )
        row["heldout_time_per_image"] = round(seconds / len(held.prompts), 6)
        return row

    def fidelity(images: torch.Tensor) -> dict[str, float]:
        return {
            "psnr": round(statistics.fmean(psnr(images, reference)), 4),
            "ssim": round(statistics.fmean(ssim(images, reference)), 6),
        }

    def time_baseline(seq: int) -> None:
        accelerators.remove(pipe)
        images, seconds = timed_call()
        record["baselines"].append({
            "shard": k, "seq": seq, "elapsed": round(time.monotonic() - started, 2),
            "time_per_image": round(seconds / n_images, 6), **fidelity(images),
        })  # fmt: skip

    def write(partial: bool) -> None:
        record["partial"] = partial
        shard_info["wall_seconds"] = round(time.monotonic() - started, 1)
        speedups(record["points"], record["baselines"])
        write_json(out_path, record)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    stopped: str | None = None
    try:
        log(f"{len(mine)} of {len(chosen)} points ({len(everything)} planned); warming up ...")
        for _ in range(2):
            timed_call()
        reference, _ = timed_call()
        if held is not None:
            record["baseline_scores"] = score(reference, bench)
            record["heldout_baseline_scores"] = score(timed_call(held)[0], held)
        # One untimed call of each combination this shard has: first-use costs stay out.
        firsts = {plan_name(p["accelerators"]): p["accelerators"] for p in reversed(mine)}
        for plan_of, configs in firsts.items():
            try:
                if configs:
                    with accelerators.apply(pipe, configs, steps=spec.steps):
                        generate()
            except Exception as err:  # its points will record the error; the others can run
                log(f"warm-up of {plan_of} failed: {type(err).__name__}: {err}")
            finally:
                accelerators.remove(pipe)
        slowest = 0.0  # the warm-up is slower than anything measured later
        budget = math.inf if args.time_budget is None else args.time_budget
        for seq, point in enumerate(mine):
            due = seq % args.baseline_every == 0
            last = seq == len(mine) - 1  # the closing baseline follows it
            calls = args.repeats + args.warmup + due + last + (held is not None)
            if time.monotonic() - started + slowest * calls > budget:
                stopped = f"time budget: stopped before point {seq} of {len(mine)}"
                break
            if due:
                time_baseline(seq)
                if seq:
                    write(partial=True)  # a checkpoint, in case the process is killed
            extra = scores if held is not None else None
            row = _measure_point(point, pipe, spec.steps, args, timed_call, fidelity, extra)
            row.update(shard=k, seq=seq, elapsed=round(time.monotonic() - started, 2))
            record["points"].append(row)
            log(_describe(row, len(mine)))
        else:
            time_baseline(len(mine))
    except (Stop, KeyboardInterrupt):
        stopped = "interrupted"
        accelerators.remove(pipe)
    finally:
        signal.signal(signal.SIGTERM, previous)
    shard_info["stopped"] = stopped
    write(partial=stopped is not None)
    log(f"wrote {out_path} ({len(record['points'])} points{', partial' if stopped else ''})")
    return out_path


def _measure_point(
    point: Point,
    pipe: Any,
    steps: int,
    args: argparse.Namespace,
    timed_call: Callable[[], tuple[Any, float]],
    fidelity: Callable[[Any], dict[str, float]],
    extra: Callable[[Any], dict[str, Any]] | None = None,
) -> Point:
    """Apply, (warm up), time ``repeats`` generations, compare, remove: as the Objective does.

    ``extra(images)``, if given, adds fields while the accelerators are still on (the scores).
    """
    import torch

    from accelopt import accelerators
    from accelopt.measure.timing import peak_memory, reset_peak_memory

    device = pipe.device
    row: Point = {k: point[k] for k in ("index", "params", "accelerators")}
    configs = point["accelerators"]
    try:
        if configs:
            accelerators.apply(pipe, configs, steps=steps)
        for _ in range(args.warmup):
            timed_call()
        reset_peak_memory(device)
        times, images = [], None
        for _ in range(args.repeats):
            out, seconds = timed_call()
            images = images if images is not None else out
            times.append(seconds)
        row["peak_memory"] = peak_memory(device)
        row["time_per_image"] = round(statistics.median(times) / args.prompts, 6)
        if args.repeats > 1:
            row["times"] = [round(t, 6) for t in times]
        row.update(fidelity(images))
        if extra is not None:
            row.update(extra(images))
    except Exception as err:  # one failing point must not cost the whole run
        row.update(time_per_image=None, psnr=None, ssim=None, peak_memory=None)
        row["error"] = f"{type(err).__name__}: {err}"[:500]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    finally:
        accelerators.remove(pipe)  # also when apply or generation raised
    return row


def _describe(row: Point, total: int) -> str:
    configs = row["accelerators"]
    what = " ".join(
        f"{n}:" + "/".join(str(v) for v in configs[n].values()) for n in ORDER if n in configs
    )
    if row.get("error"):
        return f"[{row['seq'] + 1}/{total}] {what or 'off'}: {row['error']}"
    losses = ""
    if row.get("score_loss") is not None:
        held = 100 * row["heldout_score_loss"]
        losses = f" loss {100 * row['score_loss']:.2f}% (held-out {held:.2f}%)"
    return (
        f"[{row['seq'] + 1}/{total}] {what or 'off':60} {row['time_per_image']:.4f} s/image "
        f"PSNR {row['psnr']:.2f} SSIM {row['ssim']:.4f}{losses}"
    )


def _logger(prefix: str, started: float) -> Callable[[str], None]:
    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {prefix}: {message}", flush=True)

    return log


def _environment() -> Record:
    """The versions, driver and commit a landscape file (and a fidelity run) records."""
    import torch

    head = _lib.header("versions", "driver", "git", versions=VERSIONS)
    head["versions"].update(cuda=torch.version.cuda, python=sys.version.split()[0])
    return head


# --- fidelity: per-prompt PSNR, SSIM and CLIP-image similarity of a recorded landscape ---------

FIDELITY_CHECKPOINT = 25  # points between partial writes


def fidelity(args: argparse.Namespace) -> Path:
    """Add per-prompt fidelity to a scored landscape: regenerate, compare, never re-time.

    Rebuilds the study's pipeline and scorer as ``measure`` did (the recorded study, resolution,
    dtype, weights, prompts, seeds and images per call), makes the plain pipeline's images of
    the search and held-out prompts, then, per point, applies its accelerators as ``measure``
    does, makes both splits' images, removes them and compares each image with the baseline
    image of the same prompt and seed. The regenerated CLIP scores are checked against the
    recorded ones (``fidelity.score_difference`` in the file: the largest absolute difference).
    Points that already carry the fields are kept (a partial output resumes); ``--select`` and
    ``--indices`` pick a subset; ``--time-budget`` stops before the next point would overrun.
    Writes ``<out>/<study>.json`` (with ``--shard K/N``: ``<study>.fidelity-K-of-N.json``, for
    ``fidelity-merge``): the landscape with the new fields.
    """
    import torch

    from accelopt import accelerators
    from accelopt.measure.metrics import ClipScorer, psnr, score_loss, ssim
    from accelopt.pipelines import load_pipeline
    from accelopt.pipelines.schedulers import set_scheduler
    from accelopt.spec import load_spec
    from accelopt.study.confirm import SEED_OFFSET
    from accelopt.trial.bench import Bench

    started = args.started
    record = load(args.landscape)
    name = record["study"]
    if record.get("baseline_scores") is None or not record.get("heldout_seeds"):
        raise SystemExit(
            f"{args.landscape}: no per-prompt CLIP scores; fidelity needs a scored landscape "
            "(python -m bench.landscape measure --heldout N), e.g. ToySD-DDIM-20"
        )
    log = _logger(f"{name} fidelity", started)
    spec = load_spec(name)
    if spec.resolution != record["resolution"]:
        spec = spec.replace(resolution=record["resolution"])
    n_images, per_call = len(record["seeds"]), int(record["images_per_call"])
    spec = spec.replace(prompts=replace(spec.prompts, count=n_images, batch_size=per_call))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = args.dtype or record["dtype"]  # the recorded images' dtype
    weights: Literal["pretrained", "random"] = (
        "pretrained" if record["weights"] == "pretrained" else "random"
    )
    log(f"building {spec.pipeline} ({weights} weights, {dtype}) ...")
    pipe = load_pipeline(spec.pipeline, weights=weights, dtype=dtype, device=str(device))
    set_scheduler(pipe, spec.scheduler)
    scorer = ClipScorer(spec.metric.model, spec.metric.pretrained, device)
    bench = Bench(spec, pipe, scorer, device)
    prompts = replace(spec.prompts, split="heldout", count=len(record["heldout_seeds"]),
                      seed=spec.prompts.seed + SEED_OFFSET)  # fmt: skip
    held = Bench(spec.replace(prompts=prompts), pipe, scorer, device)
    seeds = [spec.prompts.seed + i for i in range(n_images)]
    held_seeds = [prompts.seed + i for i in range(prompts.count)]
    for what, found, wanted in (
        ("prompts", bench.prompts, record["prompts"]),
        ("seeds", seeds, record["seeds"]),
        ("heldout_prompts", held.prompts, record["heldout_prompts"]),
        ("heldout_seeds", held_seeds, record["heldout_seeds"]),
    ):
        if found != wanted:
            raise SystemExit(f"{args.landscape}: its {what} are not the study's today")

    def generate(of: Any) -> torch.Tensor:
        """Every prompt of ``of`` (the search or held-out prompts), ``per_call`` a call."""
        count = len(of.prompts)
        return torch.cat(
            [of.generate(s, min(s + per_call, count)) for s in range(0, count, per_call)]
        )

    def score(images: torch.Tensor, of: Any) -> list[float]:
        return [round(s, 4) for s in scorer(images, of.prompts)]

    def difference(a: Sequence[float], b: Sequence[float]) -> float:
        return round(max(abs(x - y) for x, y in zip(a, b, strict=True)), 4)

    log("the plain pipeline's images ...")
    references = {"": generate(bench), "heldout_": generate(held)}
    embedded = {split: scorer.embed_images(images) for split, images in references.items()}
    baselines = {"": score(references[""], bench), "heldout_": score(references["heldout_"], held)}
    baseline_difference = max(
        difference(baselines[""], record["baseline_scores"]),
        difference(baselines["heldout_"], record["heldout_baseline_scores"]),
    )

    def compare(images: torch.Tensor, split: str, of: Any, recorded: list[float]) -> Record:
        """The images' scores and loss, and their fidelity to the baseline images."""
        reference = references[split]
        cosine = (scorer.embed_images(images) * embedded[split]).sum(dim=-1)
        scores = score(images, of)
        return {
            f"{split}rescore_difference": difference(scores, recorded),
            f"{split}fidelity_scores": scores,
            f"{split}fidelity_score_loss": round(score_loss(baselines[split], scores), 6),
            f"{split}psnr_per_prompt": [round(x, 4) for x in psnr(images, reference)],
            f"{split}ssim_per_prompt": [round(x, 6) for x in ssim(images, reference)],
            f"{split}clip_image_per_prompt": [round(x, 6) for x in cosine.tolist()],
        }

    points = record["points"]
    wanted_points = _fidelity_subset(points, args.select, args.indices, args.seed)
    todo = [p for p in wanted_points if not p.get("error") and "psnr_per_prompt" not in p]
    k, n = args.shard
    todo = shard(todo, k, n)
    run: Record = {
        "command": args.command_line,
        **_lib.header("device", device=device),
        **_environment(),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        **_lib.header("date", date=_lib.MOMENT),
        "shard": f"{k}/{n}",
        "time_budget": args.time_budget,
        "asked": len(todo),
        "done": 0,
        "stopped": None,
        "wall_seconds": None,
        "baseline_score_difference": baseline_difference,
        "baseline_scores": baselines[""],  # the fidelity_score_loss's, as regenerated
        "heldout_baseline_scores": baselines["heldout_"],
    }
    runs = [*(record.get("fidelity") or {}).get("runs", []), run]
    args.out.mkdir(parents=True, exist_ok=True)
    out_path = args.out / (f"{name}.json" if n == 1 else f"{name}.fidelity-{k}-of-{n}.json")

    def write() -> None:
        run["wall_seconds"] = round(time.monotonic() - started, 1)
        record["fidelity"] = fidelity_info(points, runs)
        write_json(out_path, record)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    budget = math.inf if args.time_budget is None else args.time_budget
    slowest = 0.0
    log(f"{len(todo)} points to compare ({len(points)} in the landscape)")
    try:
        for seq, point in enumerate(todo):
            if time.monotonic() - started + slowest > budget:
                run["stopped"] = f"time budget: stopped before point {seq} of {len(todo)}"
                break
            began = time.monotonic()
            row: Record = {}
            try:
                if point["accelerators"]:
                    accelerators.apply(pipe, point["accelerators"], steps=spec.steps)
                images = generate(bench)
                held_images = generate(held)
            except Exception as err:  # one failing point must not cost the whole run
                point["fidelity_error"] = f"{type(err).__name__}: {err}"[:500]
                continue
            finally:
                accelerators.remove(pipe)  # also when apply or generation raised
            row.update(compare(images, "", bench, point["scores"]))
            row.update(compare(held_images, "heldout_", held, point["heldout_scores"]))
            point.update(row)
            point.pop("fidelity_error", None)
            run["done"] += 1
            slowest = max(slowest, time.monotonic() - began)
            if (seq + 1) % FIDELITY_CHECKPOINT == 0:
                write()
            log(_describe_fidelity(point, seq, len(todo)))
    except (Stop, KeyboardInterrupt):
        run["stopped"] = "interrupted"
        accelerators.remove(pipe)
    finally:
        signal.signal(signal.SIGTERM, previous)
    write()
    check = record["fidelity"]
    log(
        f"wrote {out_path} ({run['done']} of {len(todo)} points"
        f"{', partial' if run['stopped'] else ''}); scores differ from the recording by at "
        f"most {check['score_difference']} (held-out {check['heldout_score_difference']}, "
        f"baseline {baseline_difference})"
    )
    return out_path


def _fidelity_subset(
    points: Sequence[Point], count: int | None, indices: Sequence[int] | None, seed: int
) -> list[Point]:
    """``--indices`` (plan indices), else ``select(points, count)``: the off point and a sample."""
    if indices is None:  # plan order: the off point first, whatever order a shard measured
        return select(sorted(points, key=lambda p: p["index"]), count, seed)
    by_index = {p["index"]: p for p in points}
    if unknown := sorted(set(indices) - set(by_index)):
        raise SystemExit(f"--indices: no point with index {', '.join(map(str, unknown))}")
    return [by_index[i] for i in sorted(set(indices))]


def _describe_fidelity(point: Point, seq: int, total: int) -> str:
    what = short(point["accelerators"])
    loss = 100 * point["score_loss"]
    f = point_fidelity(point)
    assert f is not None
    return (
        f"[{seq + 1}/{total}] {what:50} loss {loss:+.2f}% PSNR {f['psnr']:.2f} "
        f"SSIM {f['ssim']:.4f} CLIP-image {f['clip_image']:.4f}"
    )


# --- command line -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure one shard of one study's landscape")
    which = m.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="a study name, e.g. SD1.5-DDIM-20 or SDXL-DDIM-25")
    which.add_argument("--pipeline", help="with --scheduler and --steps, e.g. TinySD")
    m.add_argument("--scheduler", default="DDIM")
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--resolution", type=int, help="override the study's resolution")
    m.add_argument("--device", help="default: cuda if there is one")
    m.add_argument("--dtype", help="default: the study's on CUDA, float32 on a CPU")
    m.add_argument("--weights", choices=("random", "pretrained"),
                   help="default: pretrained for ToySD (trained), else random")  # fmt: skip
    m.add_argument("--prompts", type=int, default=1, help="search images per point")
    m.add_argument("--heldout", type=int, default=0,
                   help="held-out prompts per point; > 0 also records CLIP scores")  # fmt: skip
    m.add_argument("--batch", type=int, help="prompts per call (default: all of a split)")
    m.add_argument("--tgate-sample", type=int, help="T-GATE points (default: see plan())")
    m.add_argument("--seed", type=int, default=0, help="T-GATE sample, --points, order")
    m.add_argument("--points", type=int, help="measure only this many (the off point + a sample)")
    m.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="K/N")
    m.add_argument("--repeats", type=int, default=1, help="timed calls per point (median)")
    m.add_argument("--warmup", type=int, default=0, help="untimed calls per point")
    m.add_argument("--baseline-every", type=int, default=25)
    m.add_argument("--time-budget", type=float, help="seconds from start; stop before overrun")
    m.add_argument("--out", type=Path, default=Path("."))
    g = sub.add_parser("merge", help="merge shard files into <out>/<study>.json")
    g.add_argument("files", nargs="+", type=Path)
    g.add_argument("--out", type=Path, default=Path(__file__).parent / "landscapes")
    s = sub.add_parser("summary", help="print the markdown summary of landscape files")
    s.add_argument("files", nargs="+", type=Path)
    f = sub.add_parser("fidelity", help="add per-prompt PSNR, SSIM and CLIP-image similarity "
                       "to a scored landscape (regenerates its images; no timing)")  # fmt: skip
    f.add_argument("landscape", type=Path, help="e.g. bench/landscapes/ToySD-DDIM-20.json")
    f.add_argument("--device", help="default: cuda if there is one")
    f.add_argument("--dtype", help="default: the landscape's")
    pick = f.add_mutually_exclusive_group()
    pick.add_argument("--select", type=int, metavar="N",
                      help="only N points: the off point and a seeded sample")  # fmt: skip
    pick.add_argument("--indices", type=_indices, metavar="I,J,...", help="only these points")
    f.add_argument("--seed", type=int, default=0, help="for --select")
    f.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="K/N",
                   help="every N-th point left; writes <study>.fidelity-K-of-N.json")  # fmt: skip
    f.add_argument("--time-budget", type=float, help="seconds from start; stop before overrun")
    f.add_argument("--out", type=Path, default=Path("."), help="writes <out>/<study>.json")
    fm = sub.add_parser("fidelity-merge", help="join fidelity shard files into the landscape")
    fm.add_argument("landscape", type=Path)
    fm.add_argument("files", nargs="+", type=Path)
    fm.add_argument("--out", type=Path, default=Path(__file__).parent / "landscapes")
    return top


def _indices(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--indices takes I,J,...; got {text!r}") from None


def command_line(argv: Sequence[str]) -> str:
    return _lib.command("landscape", argv)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()  # --time-budget counts from here, before torch and the pipeline
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.started = started
    args.command_line = command_line(argv)
    if args.command == "measure":
        if (
            min(args.prompts, args.repeats, args.baseline_every) < 1
            or (args.batch is not None and args.batch < 1)
            or min(args.warmup, args.heldout) < 0
        ):
            raise SystemExit(
                "--prompts, --repeats, --baseline-every, --batch >= 1; --warmup, --heldout >= 0"
            )
        measure(args)
    elif args.command == "merge":
        by_study: dict[str, list[Record]] = {}
        for path in args.files:
            record = load(path)
            by_study.setdefault(record["study"], []).append(record)
        args.out.mkdir(parents=True, exist_ok=True)
        for study, records in by_study.items():
            merged = merge(records, args.command_line)
            path = args.out / f"{study}.json"
            write_json(path, merged)
            print(
                f"{path}: {len(merged['points'])} points"
                + (", partial" if merged["partial"] else "")
            )
    elif args.command == "fidelity":
        if args.select is not None and args.select < 1:
            raise SystemExit(f"--select must be at least 1; got {args.select}")
        fidelity(args)
    elif args.command == "fidelity-merge":
        merged = merge_fidelity(load(args.landscape), [load(p) for p in args.files])
        merged["fidelity"]["command"] = args.command_line
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{merged['study']}.json"
        write_json(path, merged)
        f = merged["fidelity"]
        print(f"{path}: fidelity of {f['points']} of {f['of']} points; scores differ from the "
              f"recording by at most {f['score_difference']} "
              f"(held-out {f['heldout_score_difference']})")  # fmt: skip
    else:
        for path in args.files:
            print(markdown(summarize(load(path))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
