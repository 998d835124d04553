"""Execution modes on a GPU: each mode's plain baseline and accelerated plans, alternated.

    python -m bench.execution --pipe SD1.5 --batch 1 --repeats 7 --out $OUT

Full-size architecture, random fp16 weights (timing is real, images are not), latent output.
For every mode (eager, compile, cuda-graphs) the plain pipeline and each plan are timed in
alternation (baseline, plan, baseline, plan, ...) after warm-up; a plan's speedup is the median
of its per-pair ratios against that mode's baseline, and against the fastest mode's baseline.
The spread is (max - min) / median over the repeats. Also recorded: compile and capture seconds
per mode and plan (``execution.compile_stats``), the A/A spread of each mode's baseline, the
largest latent difference of each compiled plan against the same plan run eagerly, and each
plan's FLOP floor: the share of the plain generation's FLOPs it still computes (torch's
``FlopCounterMode``, text encoders included), times the fastest plain baseline, and its
images' PSNR against the plain pipeline's under the same mode (decoded in float32).
``--upstream`` times diffusers' own hooks and cache-dit's DBCache at the same settings beside
ours (eager and compile), with their latents' largest difference from ours. One more generation
of each of our plans times what runs outside its compiled or captured forward: the denoiser's
own forward hooks (``hooks_timed``; FasterCache's halving and spectral rebuild, T-GATE's).
Writes execution-PIPE-bB.json to --out after every row.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from accelopt import accelerators, execution
from accelopt.errors import AccelOptError
from accelopt.measure import timing
from accelopt.pipelines import call_defaults, denoiser, model_info
from accelopt.testing.upstream import upstream_cache
from bench import _lib

SETTINGS = {  # steps, scheduler, guidance: each family's usual sampling
    "SD1.5": (20, "DDIM", 7.0),
    "SDXL": (25, "DDIM", 7.0),
    "PixArt-Sigma": (20, "DPM-Solver++", 4.5),
    "TinySD": (10, "DDIM", 7.0),
    "TinyPixArt": (10, "DDIM", 4.5),
}
PLANS: dict[str, dict[str, dict[str, Any]]] = {
    "deepcache 3/0": {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}},
    "deepcache 5/0": {"deepcache": {"cache_interval": 5, "cache_branch_id": 0}},
    "deepcache 3/1": {"deepcache": {"cache_interval": 3, "cache_branch_id": 1}},
    "tome 0.5": {"tome": {"ratio": 0.5, "max_downsample": 1}},
    "tgate 10": {"tgate": {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2}},
    "deepcache 3/0 + tgate 10": {
        "deepcache": {"cache_interval": 3, "cache_branch_id": 0},
        "tgate": {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2},
    },
    "tome 0.5 + tgate 10": {
        "tome": {"ratio": 0.5, "max_downsample": 1},
        "tgate": {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2},
    },
    # Block caches at their published settings (accelopt/accelerators/{magcache,taylorseer}.py
    # cite them): diffusers' defaults, then the MagCache repository's FLUX.1-dev setting and
    # TaylorSeer's FLUX interval. MagCache's ratios are calibrated here on the plain pipeline.
    "magcache 0.06/3/0.2": {
        "magcache": {"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2}
    },
    "magcache 0.24/5/0.1": {
        "magcache": {"threshold": 0.24, "max_skip_steps": 5, "retention_ratio": 0.1}
    },
    "taylorseer 5/1/3": {
        "taylorseer": {"cache_interval": 5, "max_order": 1, "disable_cache_before_step": 3}
    },
    "taylorseer 6/1/3": {
        "taylorseer": {"cache_interval": 6, "max_order": 1, "disable_cache_before_step": 3}
    },
    # Decided per call from the device (accelopt/accelerators/{fbcache,dbcache}.py cite them):
    # ParaAttention's FLUX.1-dev default and its FP8 setting; cache-dit's defaults (F8B0 W8,
    # 0.08) and its 2.66x FLUX setting (F4B0 W4 MC4, 0.12). Under cuda-graphs a deciding call
    # replays block by block; "fbcache decides, never reuses" is that path's cost alone: a
    # threshold no change is below, so every call from the second reads its change and computes.
    "fbcache 0.08": {"fbcache": {"threshold": 0.08}},
    "fbcache 0.12": {"fbcache": {"threshold": 0.12}},
    "fbcache decides, never reuses": {"fbcache": {"threshold": 1e-9}},
    "dbcache F8B0 0.08": {
        "dbcache": {"Fn_compute_blocks": 8, "Bn_compute_blocks": 0,
                    "residual_diff_threshold": 0.08, "max_warmup_steps": 8}
    },
    "dbcache F4B0 W4 MC4 0.12": {
        "dbcache": {"Fn_compute_blocks": 4, "Bn_compute_blocks": 0,
                    "residual_diff_threshold": 0.12, "max_warmup_steps": 4,
                    "max_continuous_cached_steps": 4}
    },
    # With cache-dit's TaylorSeer calibrator on top (order 1, its default), where random
    # weights reuse at all (the 2026-12-07 study found reuse at 0.2-0.32), beside the same
    # setting without it: what the forecast costs and changes.
    "dbcache F1B0 W4 0.32": {
        "dbcache": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0,
                    "residual_diff_threshold": 0.32, "max_warmup_steps": 4}
    },
    "dbcache F1B0 W4 0.32 T1": {
        "dbcache": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0,
                    "residual_diff_threshold": 0.32, "max_warmup_steps": 4,
                    "taylorseer_order": 1}
    },
    # Pyramid Attention Broadcast (accelopt/accelerators/pab.py cites them): diffusers'
    # documented example (self-attention every 2 calls, timesteps 100-800), and with
    # cross-attention every 6 calls, the middle of the paper's ablation.
    "pab 2/1 100-800": {"pab": {"spatial_attention_block_skip_range": 2}},
    "pab 2/6 100-800": {"pab": {"spatial_attention_block_skip_range": 2,
                                "cross_attention_block_skip_range": 6}},
    # FasterCache (accelopt/accelerators/fastercache.py cites them): diffusers' defaults (the
    # unconditional half every 5 calls below timestep 641, self-attention every 2 below 681),
    # and its documented example (the window to 781, weight 0.3).
    "fastercache 5/2": {"fastercache": {}},
    "fastercache 5/2 781 w0.3": {"fastercache": {"unconditional_batch_timestep_skip_high": 781,
                                                 "attention_weight": 0.3}},
}  # fmt: skip
# diffusers' own hooks and cache-dit's DBCache, raw, at the settings of ours
# (accelopt.testing.upstream: the cache context and the per-generation reset PixArt's pipeline
# lacks): label -> our plan's label. Timed under eager and compile; a captured graph would
# keep the first call's decision.
UPSTREAM = {
    "diffusers fbcache 0.08": "fbcache 0.08",
    "diffusers magcache 0.06/3/0.2": "magcache 0.06/3/0.2",
    "diffusers taylorseer 5/1/3": "taylorseer 5/1/3",
    "diffusers pab 2/6 100-800": "pab 2/6 100-800",
    "diffusers fastercache 5/2": "fastercache 5/2",
    "cache-dit dbcache F8B0 0.08": "dbcache F8B0 0.08",
    "cache-dit dbcache F4B0 W4 MC4 0.12": "dbcache F4B0 W4 MC4 0.12",
    "cache-dit dbcache F1B0 W4 0.32 T1": "dbcache F1B0 W4 0.32 T1",
}
PROMPT = "a photograph of a lighthouse at dusk"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipe", default="SD1.5", choices=sorted(SETTINGS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--modes", nargs="+", default=list(execution.MODES))
    parser.add_argument("--plans", nargs="+", default=list(PLANS))
    parser.add_argument(
        "--upstream", nargs="*", default=[], choices=sorted(UPSTREAM),
        help="diffusers' hooks beside ours (their plan in --plans too)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--device", default="cuda", help="cpu only to try the script itself")
    args = parser.parse_args(argv)
    steps, scheduler, _ = SETTINGS[args.pipe]
    info = model_info(args.pipe)
    assert info is not None
    started = time.perf_counter()
    cuda = args.device.startswith("cuda")
    dtype = "fp16" if cuda else "fp32"
    pipe = _lib.pipeline(args.pipe, scheduler, dtype=dtype, device=args.device)
    traits = accelerators.PipeTraits.of(pipe)
    plans = {k: v for k, v in PLANS.items() if k in args.plans}
    if traits.family == "sdxl" and "tome 0.5" in plans:  # its first level has no attention
        plans["tome 0.5"] = {"tome": {"ratio": 0.5, "max_downsample": 2}}
    plans = {k: v for k, v in plans.items() if set(v) <= set(accelerators.applicable(traits))}

    generate = generation(pipe, args.pipe, args.batch)
    plans = {k: accelerators.calibrated(pipe, v, generate) for k, v in plans.items()}

    def once() -> tuple[float, torch.Tensor]:
        return timed_once(generate, pipe, args.batch)

    record: dict[str, Any] = {
        "pipe": args.pipe,
        "batch": args.batch,
        "steps": steps,
        "scheduler": scheduler,
        "resolution": info.resolution,
        **_lib.header(
            "device", "torch", "date", "command", device=pipe.device, script="execution", argv=argv
        ),
        "build_seconds": time.perf_counter() - started,
        "configs": plans,  # as run: calibrated knobs included
        "modes": {},
        "work": {},
    }
    path = args.out / f"execution-{args.pipe}-b{args.batch}.json"

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))

    from torch.utils.flop_counter import FlopCounterMode

    def flops() -> int:
        with FlopCounterMode(display=False) as counter:
            generate()
        return int(counter.get_total_flops())

    plain_flops = flops()
    record["work"]["plain"] = {"flops": plain_flops, "share": 1.0}
    for label, configs in list(plans.items()):
        try:
            with accelerators.apply(pipe, configs, steps=steps):
                done = flops()
        except AccelOptError as err:  # settings this pipeline cannot take (DBCache's F8 on 2)
            record["work"][label] = {"refused": str(err)}
            print(f"  {label}: refused on {args.pipe}: {err}", flush=True)
            del plans[label]
            continue
        record["work"][label] = {"flops": done, "share": done / plain_flops}
    eager_latents: dict[str, torch.Tensor] = {}
    our_latents: dict[tuple[str, str], torch.Tensor] = {}  # (mode, plan): beside upstream's
    for mode in args.modes:
        stats = execution.compile_stats(pipe)
        row: dict[str, Any] = {"plans": {}}
        record["modes"][mode] = row
        t0, s0 = time.perf_counter(), stats.seconds
        with execution.run(pipe, mode):
            _, base_latents = once()  # compiles or captures the plain graph
            row["first_call_seconds"] = time.perf_counter() - t0
            row["compile_seconds"] = stats.seconds - s0
            for _ in range(2):
                once()
            aa = [once()[0] for _ in range(args.repeats)]
        row["baseline"] = summary(aa)
        if mode == "eager":
            eager_latents["plain"] = base_latents
        else:
            row["baseline"]["max_diff_vs_eager"] = _diff(base_latents, eager_latents.get("plain"))
        print(f"{args.pipe} b{args.batch} {mode}: baseline {row['baseline']['median']:.4f} s "
              f"(spread {100 * row['baseline']['spread']:.1f}%, compile "
              f"{row['compile_seconds']:.0f} s)", flush=True)  # fmt: skip
        save()
        for label, configs in plans.items():
            try:
                execution.check(mode, configs)
            except Exception as err:
                row["plans"][label] = {"refused": str(err)}
                continue
            try:
                entry, latents = timed_plan(
                    pipe,
                    mode,
                    args.repeats,
                    once,
                    functools.partial(accelerated, pipe, configs, steps),
                )
            except Exception as err:  # one plan's failure is a row, not the end of the table
                row["plans"][label] = {"failed": f"{type(err).__name__}: {err}"}
                print(f"  {label}: failed: {type(err).__name__}: {err}", flush=True)
                save()
                continue
            compiled = entry["compile_seconds"]
            if mode == "eager":
                eager_latents[label] = latents
            else:
                entry["max_diff_vs_eager"] = _diff(latents, eager_latents.get(label))
            entry["psnr_vs_plain"] = image_psnr(pipe, latents, base_latents)
            our_latents[(mode, label)] = latents
            row["plans"][label] = entry
            print(f"  {label}: {entry['median']:.4f} s, {entry['paired_speedup']:.2f}x paired "
                  f"(spread {100 * entry['spread']:.1f}%, compile {compiled:.0f} s, "
                  f"diff vs eager {entry.get('max_diff_vs_eager')}, PSNR vs plain "
                  f"{entry['psnr_vs_plain']} dB, hooks {_hooks(entry['hooks'])})",
                  flush=True)  # fmt: skip
            save()
        for label in args.upstream:
            ours = UPSTREAM[label]
            if ours not in plans:
                continue
            if mode == "cuda-graphs":
                row["plans"][label] = {"refused": "upstream decides in Python per call: one "
                                       "captured graph would replay its first call's "
                                       "decision"}  # fmt: skip
                continue
            ((name, knobs),) = plans[ours].items()
            try:
                entry, latents = timed_plan(
                    pipe, mode, args.repeats, once,
                    functools.partial(upstream_cache, pipe, name, knobs, steps),
                )  # fmt: skip
            except AccelOptError as err:  # diffusers' FasterCache wraps the forward itself
                row["plans"][label] = {"refused": str(err)}
                print(f"  {label}: refused: {err}", flush=True)
                continue
            entry["max_diff_vs_ours"] = _diff(latents, our_latents.get((mode, ours)))
            entry["psnr_vs_plain"] = image_psnr(pipe, latents, base_latents)
            row["plans"][label] = entry
            print(f"  {label}: {entry['median']:.4f} s, {entry['paired_speedup']:.2f}x paired, "
                  f"diff vs ours {entry['max_diff_vs_ours']}", flush=True)  # fmt: skip
            save()
        torch.cuda.empty_cache()
    fastest = min(r["baseline"]["median"] for r in record["modes"].values())
    record["fastest_baseline"] = fastest
    for row in record["modes"].values():
        for label, entry in row["plans"].items():
            if "median" in entry:
                entry["speedup_vs_fastest"] = fastest / entry["median"]
                share = record["work"].get(label, {}).get("share")
                if share is not None:
                    entry["flop_floor_seconds"] = share * fastest
    record["total_seconds"] = time.perf_counter() - started
    save()
    print(json.dumps({m: r["baseline"]["median"] for m, r in record["modes"].items()}))
    return 0


def timed_plan(
    pipe: Any,
    mode: str,
    repeats: int,
    once: Callable[[], tuple[float, torch.Tensor]],
    applied: Callable[[], contextlib.AbstractContextManager[Callable[[], None]]],
) -> tuple[dict[str, Any], torch.Tensor]:
    """One plan under ``mode``: its first call (compiling or capturing) and two warm-ups, then
    ``repeats`` alternated pairs of the plain pipeline and the plan. ``applied()`` puts the
    plan on (``accelerated``, ``upstream_cache``) and yields what starts each generation afresh.
    Returns the plan's timings and paired speedup, what its denoiser's hooks took in one more
    generation (``hooks_timed``), and its first generation's latents."""
    stats = execution.compile_stats(pipe)
    s0, t0 = stats.seconds, time.perf_counter()
    with applied() as fresh, execution.run(pipe, mode):
        fresh()
        _, latents = once()
        first = time.perf_counter() - t0
        for _ in range(2):
            fresh()
            once()
        compiled = stats.seconds - s0
        with hooks_timed(denoiser(pipe)) as hooks:  # after the warm-ups: no capture inside
            fresh()
            once()
    plan_t, pairs = [], []
    for _ in range(repeats):
        with execution.run(pipe, mode):
            b, _ = once()
        with applied() as fresh, execution.run(pipe, mode):
            fresh()
            p, _ = once()
        pairs.append(b / p)
        plan_t.append(p)
    entry = {
        **summary(plan_t),
        "paired_speedup": statistics.median(pairs),
        "pair_ratios": pairs,
        "first_call_seconds": first,
        "compile_seconds": compiled,
        "hooks": hooks,
    }
    return entry, latents


@contextlib.contextmanager
def accelerated(
    pipe: Any, configs: dict[str, dict[str, Any]], steps: int
) -> Iterator[Callable[[], None]]:
    """accelopt's accelerators on ``pipe``; each generation resets them itself."""
    with accelerators.apply(pipe, configs, steps=steps):
        yield lambda: None


@contextlib.contextmanager
def hooks_timed(net: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Time ``net``'s own forward hooks while the block runs: the work a plan does outside the
    compiled or captured forward, which execution modes leave to Python around it. Yields a
    record that is complete when the block ends: ``calls``, ``host_seconds`` (the wall time
    inside the hooks) and, on a GPU, ``device_seconds`` (CUDA events around each hook: the
    stretch of the stream its kernels and launches take). The hooks are put back as they were.
    Hooks on the blocks inside ``net`` (MagCache's measurement) are not counted.

    >>> with hooks_timed(pipe.transformer) as spent:  # doctest: +SKIP
    ...     generate()
    >>> spent["calls"]  # doctest: +SKIP
    40
    """
    spent: dict[str, Any] = {"calls": 0, "host_seconds": 0.0}
    cuda = next(net.parameters()).device.type == "cuda"
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def timed(hook: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
            t0 = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                spent["host_seconds"] += time.perf_counter() - t0
                spent["calls"] += 1
                if cuda:
                    end.record()
                    events.append((start, end))

        return call

    tables = (net._forward_pre_hooks, net._forward_hooks)
    saved = [dict(table) for table in tables]
    for table in tables:
        for key, hook in table.items():
            table[key] = timed(hook)
    try:
        yield spent
    finally:
        for table, old in zip(tables, saved, strict=True):
            for key in table.keys() & old.keys():
                table[key] = old[key]
        if cuda:
            torch.cuda.synchronize()
            spent["device_seconds"] = sum(s.elapsed_time(e) for s, e in events) / 1000


def generation(pipe: Any, name: str, batch: int) -> Callable[[], torch.Tensor]:
    """One generation of ``batch`` images with ``name``'s settings (``SETTINGS``), latents out."""
    steps, _, guidance = SETTINGS[name]
    info = model_info(name)
    assert info is not None

    def generate() -> torch.Tensor:
        out = accelerators.generate(
            pipe,
            prompt=[PROMPT] * batch,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=info.resolution,
            width=info.resolution,
            output_type="latent",
            generator=torch.Generator(pipe.device).manual_seed(0),
            **call_defaults(pipe),
        )
        return out.images.float()

    return generate


def timed_once(generate: Callable[[], torch.Tensor], pipe: Any, batch: int) -> tuple[float, Any]:
    """Seconds per image of one synchronized ``generate()``, and its latents."""
    latents, seconds = timing.timed(generate, pipe.device)
    return seconds / batch, latents


def summary(times: list[float]) -> dict[str, Any]:
    """Median, the times, and the spread: (max - min) / median."""
    median = statistics.median(times)
    return {"median": median, "times": times, "spread": (max(times) - min(times)) / median}


def image_psnr(pipe: Any, latents: torch.Tensor, plain: torch.Tensor) -> float | None:
    """PSNR (dB) of the images ``latents`` decode to against ``plain``'s, both through the
    pipeline's VAE in float32 (SDXL's overflows in fp16); the mean over the batch. None where
    an image is not finite (random weights can overflow) or the two are equal."""
    from accelopt.measure.metrics import psnr

    vae = pipe.vae
    dtype = vae.dtype
    try:
        vae.to(torch.float32)
        with torch.no_grad():
            images = [
                (vae.decode(x.to(torch.float32) / vae.config.scaling_factor).sample / 2 + 0.5)
                .clamp(0, 1)
                .float()
                for x in (latents, plain)
            ]
    finally:
        vae.to(dtype)
    if not all(bool(torch.isfinite(x).all()) for x in images):
        return None
    values = psnr(images[0], images[1])
    finite = [v for v in values if v != float("inf")]
    return statistics.mean(finite) if finite else None


def _hooks(spent: dict[str, Any]) -> str:
    device = spent.get("device_seconds")
    on_device = "" if device is None else f", {1000 * device:.1f} ms on the device"
    return f"{spent['calls']} calls, {1000 * spent['host_seconds']:.1f} ms on the host{on_device}"


def _diff(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
    return None if b is None else float((a - b).abs().max())


if __name__ == "__main__":
    sys.exit(main())
