"""The lossless switches of diffusers' speed-up guide, each measured on top of a graph mode.

    python -m bench.switches --pipe SD1.5 --batch 1 --repeats 7 --out $OUT

diffusers' "Accelerate inference" guide (optimization/fp16, torch.compile section) adds to a
compiled pipeline: fused QKV projections (``pipe.fuse_qkv_projections()``), a channels_last
denoiser, and inductor flags (``conv_1x1_as_mm``, ``epilogue_fusion = False``, coordinate-descent
tuning). None of them changes what is computed. Each variant here is one switch over the plain
``cuda-graphs`` baseline, on a freshly built pipeline, with dynamo's caches reset, so that its
compile time is its own; ``eager-kernels`` captures PyTorch's own kernels instead of inductor's
(no compile at all). Every variant times its plain baseline and each plan in alternation
(baseline, plan, ...) after warm-up; variants run one after another, so compare them by their
medians (the spread under graphs is about 1%, and a last ``inductor`` block repeats the first to
show the drift). Also recorded: compile and capture seconds, and each variant's largest latent
difference from the first variant's. Writes switches-PIPE-bB.json to --out after every variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from accelopt import accelerators, execution
from accelopt.pipelines import denoiser, model_info
from bench import _lib
from bench.execution import PLANS, SETTINGS, generation, summary, timed_once


@dataclass(frozen=True)
class Variant:
    prepare: Callable[[Any], None] = lambda pipe: None
    inductor_config: dict[str, Any] = field(default_factory=dict)
    inductor: bool = True


def _fuse(pipe: Any) -> None:
    pipe.fuse_qkv_projections()


def _channels_last(pipe: Any) -> None:
    denoiser(pipe).to(memory_format=torch.channels_last)


# Regional compilation: inductor compiles each repeated block (one code object, reused by every
# block of the same shapes), the rest of the denoiser runs PyTorch's kernels, and the whole
# forward is captured as one CUDA graph per structure. A new DeepCache branch then costs a
# capture; a ToMe ratio or a T-GATE mode recompiles only the blocks it changes.
REGIONS = {
    "regional": ("BasicTransformerBlock",),  # diffusers' compile_repeated_blocks for UNets
    "regional-all": ("BasicTransformerBlock", "ResnetBlock2D", "Downsample2D", "Upsample2D"),
}


def _regions(names: tuple[str, ...]) -> Callable[[Any], None]:
    def prepare(pipe: Any) -> None:
        compiled = 0
        for module in denoiser(pipe).modules():
            if type(module).__name__ in names:
                module.compile(fullgraph=False, dynamic=False)
                compiled += 1
        print(f"  compiling {compiled} blocks ({', '.join(names)}) by region", flush=True)

    return prepare


FLAGS = {"conv_1x1_as_mm": True, "epilogue_fusion": False}
DESCENT = {"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True}
VARIANTS = {
    "inductor": Variant(),
    "eager-kernels": Variant(inductor=False),
    "fused-qkv": Variant(prepare=_fuse),
    "channels-last": Variant(prepare=_channels_last),
    "inductor-flags": Variant(inductor_config=FLAGS),
    "coordinate-descent": Variant(inductor_config=DESCENT),
    **{n: Variant(prepare=_regions(blocks), inductor=False) for n, blocks in REGIONS.items()},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipe", default="SD1.5", choices=sorted(SETTINGS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mode", default="cuda-graphs", choices=execution.GRAPH_MODES)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--plans", nargs="*", default=[], choices=list(PLANS))
    parser.add_argument(
        "--plan-variants",
        nargs="*",
        default=["inductor", "eager-kernels"],
        help="the variants that also time --plans (compiling them costs minutes)",
    )
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--device", default="cuda", help="cpu only to try the script itself")
    args = parser.parse_args(argv)
    steps, scheduler, _ = SETTINGS[args.pipe]
    info = model_info(args.pipe)
    assert info is not None
    cuda = args.device.startswith("cuda")
    started = time.perf_counter()
    record: dict[str, Any] = {
        "pipe": args.pipe, "batch": args.batch, "steps": steps, "scheduler": scheduler,
        "resolution": info.resolution, "mode": args.mode,
        **_lib.header("torch", "date", "command", script="switches", argv=argv),
        "variants": [],
    }  # fmt: skip
    path = args.out / f"switches-{args.pipe}-b{args.batch}.json"
    reference: torch.Tensor | None = None
    for name in args.variants:
        variant = VARIANTS[name]
        torch._dynamo.reset()
        pipe = _lib.pipeline(args.pipe, scheduler, dtype="fp16" if cuda else "fp32",
                             device=args.device)  # fmt: skip
        record.update(_lib.header("device", device=pipe.device))
        variant.prepare(pipe)

        generate = generation(pipe, args.pipe, args.batch)

        def once(p: Any = pipe, g: Any = generate) -> tuple[float, torch.Tensor]:
            return timed_once(g, p, args.batch)

        def mode(p: Any = pipe, v: Variant = variant) -> Any:
            return execution.run(p, args.mode, kernels="inductor" if v.inductor else "eager")

        row: dict[str, Any] = {"variant": name, "plans": {}}
        record["variants"].append(row)
        stats = execution.compile_stats(pipe)
        with torch._inductor.config.patch(variant.inductor_config):
            t0 = time.perf_counter()
            with mode():
                _, latents = once()
                row["first_call_seconds"] = time.perf_counter() - t0
                row["compile_seconds"] = stats.seconds
                once()
                aa = [once()[0] for _ in range(args.repeats)]
            row["baseline"] = summary(aa)
            if reference is None:
                reference = latents
            row["max_diff_vs_first"] = float((latents - reference).abs().max())
            print(f"{args.pipe} b{args.batch} {name}: {row['baseline']['median']:.4f} s "
                  f"(spread {100 * row['baseline']['spread']:.1f}%, compile "
                  f"{row['compile_seconds']:.0f} s)", flush=True)  # fmt: skip
            if name in args.plan_variants:
                for label in args.plans:
                    row["plans"][label] = got = _plan(pipe, PLANS[label], steps, once, mode, args)
                    print(
                        f"  {label}: {got['median']:.4f} s, {got['paired_speedup']:.2f}x "
                        f"paired, {got['compile_seconds']:.0f} s compiling",
                        flush=True,
                    )
                    args.out.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(record, indent=1))  # a killed run keeps it
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
        del pipe
        torch.cuda.empty_cache()
    record["total_seconds"] = time.perf_counter() - started
    path.write_text(json.dumps(record, indent=1))
    return 0


def _plan(pipe: Any, configs: dict[str, Any], steps: int, once: Any, mode: Any, args: Any) -> Any:
    stats = execution.compile_stats(pipe)
    s0 = stats.seconds
    with accelerators.apply(pipe, configs, steps=steps), mode():
        once()
        once()
    compiled = stats.seconds - s0
    times, pairs = [], []
    for _ in range(args.repeats):
        with mode():
            b, _ = once()
        with accelerators.apply(pipe, configs, steps=steps), mode():
            p, _ = once()
        times.append(p)
        pairs.append(b / p)
    return {**summary(times), "paired_speedup": statistics.median(pairs), "pair_ratios": pairs,
            "compile_seconds": compiled}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
