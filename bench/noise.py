"""Where the A/A spread comes from: the plain pipeline timed against itself, under conditions.

    python -m bench.noise --pipe SD1.5 --pairs 8 --threads 0 4 --batch 1 4 --out noise.json

For each (CPU threads, batch) condition: ``--pairs`` A/A pairs of the plain pipeline (random
fp16 weights), each timing with the CPU time the machine spent meanwhile (user, system and
*steal*, from /proc/stat: a virtual machine's vCPUs waiting for the host), the GPU's SM clock
and power before and after. Then the UNet's GPU floor: one denoising step (the CFG batch)
timed eager and as a CUDA-graph replay, both with CUDA events; eager over graph says how far
the pipeline is bound by launching kernels rather than by the GPU. ``--threads 0`` keeps
torch's default (one thread per core); ``--cores 0-3`` pins the process to those cores.

``--table RECORD ...`` prints the tables docs/BENCHMARKS.md shows.

Run several at once on disjoint GPUs to see what neighbours do to each other (bench/all.py
runs its suites that way).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

import torch

from accelopt.measure import timing
from bench import _lib
from bench.speed import PROMPT, SETTINGS


def cpu_times() -> list[int]:
    """/proc/stat's machine-wide jiffies: user, nice, system, idle, iowait, irq, softirq, steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def gpu_state(index: int) -> list[str]:
    query = "clocks.sm,power.draw,temperature.gpu,utilization.gpu"
    fmt = "--format=csv,noheader,nounits"
    out = subprocess.run(["nvidia-smi", "-i", str(index), f"--query-gpu={query}", fmt],
                         capture_output=True, text=True)  # fmt: skip
    return [x.strip() for x in out.stdout.split(",")]


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.median(xs)


def unet_floor(pipe: Any, batch: int, size: int) -> dict[str, float]:
    """Milliseconds of one CFG step of the UNet: eager, and replayed from a CUDA graph."""
    unet, dev = pipe.unet, pipe.device
    n, latent = 2 * batch, size // pipe.vae_scale_factor
    gen = torch.Generator(dev).manual_seed(0)
    sample = torch.randn(n, unet.config.in_channels, latent, latent, device=dev,
                         dtype=unet.dtype, generator=gen)  # fmt: skip
    dim = unet.config.cross_attention_dim
    text = torch.randn(n, 77, dim, device=dev, dtype=unet.dtype, generator=gen)
    t = torch.full((n,), 500, device=dev, dtype=torch.long)
    extra: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":  # SDXL
        pooled = (
            unet.config.projection_class_embeddings_input_dim
            - 6 * unet.config.addition_time_embed_dim
        )
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(n, pooled, device=dev, dtype=unet.dtype, generator=gen),
            "time_ids": torch.tensor(
                [[size, size, 0, 0, size, size]] * n, device=dev, dtype=unet.dtype
            ),
        }

    def step() -> Any:
        return unet(sample, t, encoder_hidden_states=text, return_dict=False, **extra)[0]

    def events_ms(fn: Any, reps: int = 20) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps

    with torch.inference_mode():
        for _ in range(3):
            step()
        eager = events_ms(step)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graph.replay()
        replay = events_ms(graph.replay)
    return {"batch": batch, "eager_ms": eager, "graph_ms": replay,
            "eager_over_graph": eager / replay}  # fmt: skip


def table(records: list[dict[str, Any]]) -> list[str]:
    """Markdown: one row per (pinned or not, alone or with neighbours, threads, batch), the
    ranges over the processes that ran it at once, then one per UNet floor measured.

    A record's neighbours are the records of the same run whose label differs only in its
    GPU suffix ("four0" ... "four3"): ``--label`` says which is which.
    """

    def run_of(r: dict[str, Any]) -> tuple[str, str]:
        """(pinned, placement) of a record's run."""
        return ("yes" if r.get("pinned") else "no",
                "alone" if r["label"].endswith("alone") else "four at once")  # fmt: skip

    def span(xs: list[float], fmt: str) -> str:
        lo, hi = min(xs), max(xs)
        return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else (
            f"{lo:{fmt}}-{hi:{fmt}}")  # fmt: skip

    groups: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for r in records:
        for c in r["conditions"]:
            key = (*run_of(r), c["threads"], c["batch"])
            groups.setdefault(key, []).append(c)
    lines = [
        "| pinned | placement | threads | batch | s/call (median) | spread | A/A ratios "
        "(min-max) | steal (max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (pinned, where, threads, batch), cs in groups.items():
        lines.append(
            f"| {pinned} | {where} | {threads} | {batch} | "
            f"{span([c['median_s'] for c in cs], '.3f')} | "
            f"{span([100 * c['spread'] for c in cs], '.0f')}% | "
            f"{min(c['aa_ratio_min'] for c in cs):.2f}-{max(c['aa_ratio_max'] for c in cs):.2f} | "
            f"{100 * max(c['steal_max'] for c in cs):.1f}% |"
        )
    lines += ["", "| pinned | placement | batch | UNet step, eager (ms) | as a CUDA graph (ms) |",
              "|---|---|---|---|---|"]  # fmt: skip
    floors: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    for r in records:
        for f in r.get("unet_floor", []):
            key = (*run_of(r), int(f["batch"]))
            floors.setdefault(key, []).append(f)
    for (pinned, where, batch), fs in floors.items():
        lines.append(f"| {pinned} | {where} | {batch} | {span([f['eager_ms'] for f in fs], '.1f')}"
                     f" | {span([f['graph_ms'] for f in fs], '.1f')} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--pipe", default="SD1.5", choices=[k for k in SETTINGS if "Tiny" not in k])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--threads", type=int, nargs="+", default=[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--cores", help="pin the process to these CPU cores, e.g. 0-3")
    p.add_argument("--label", default="", help="recorded as is (e.g. 'alone', 'four at once')")
    p.add_argument("--out", type=Path, help="the record (JSON)")
    p.add_argument(
        "--table",
        type=Path,
        nargs="+",
        metavar="RECORD",
        help="print the markdown tables of these records instead of measuring",
    )
    args = p.parse_args(argv)
    if args.table:
        print("\n".join(table([json.loads(path.read_text()) for path in args.table])))
        return 0
    if args.out is None:
        p.error("--out is required to measure")

    if args.cores:
        first, _, last = args.cores.partition("-")
        if not (first.isdigit() and last.isdigit() and int(first) <= int(last)):
            p.error(f"--cores takes a range of core numbers like 0-3, not {args.cores!r}")
        os.sched_setaffinity(0, range(int(first), int(last) + 1))
    setting = SETTINGS[args.pipe]
    pipe = _lib.pipeline(args.pipe, setting.scheduler, dtype="fp16", device="cuda", quiet=False)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor if hasattr(pipe, "unet") else 1024
    dev, index = pipe.device, torch.cuda.current_device()
    default_threads = torch.get_num_threads()
    record: dict[str, Any] = {"pipe": args.pipe, "label": args.label, "size": size,
                              **_lib.header("card", device=dev), "cores": default_threads,
                              "pinned": args.cores,
                              "conditions": []}  # fmt: skip
    for threads in args.threads:
        torch.set_num_threads(threads or default_threads)
        for batch in args.batch:
            kwargs = dict(prompt=[PROMPT] * batch, num_inference_steps=setting.steps,
                          guidance_scale=setting.guidance, height=size, width=size,
                          output_type="np")  # fmt: skip

            def once(kwargs: dict[str, Any] = kwargs) -> dict[str, Any]:
                before, gpu = cpu_times(), gpu_state(index)
                seconds = timing.timed(
                    lambda: pipe(**kwargs, generator=torch.Generator().manual_seed(0)), dev
                )[1]
                used = [b - a for a, b in zip(before, cpu_times(), strict=True)]
                total = sum(used) or 1
                return {"seconds": seconds, "steal": used[7] / total,
                        "busy": (used[0] + used[1] + used[2]) / total,
                        "gpu_before": gpu, "gpu_after": gpu_state(index)}  # fmt: skip

            once()  # warm-up
            runs = [once() for _ in range(2 * args.pairs)]
            a = [r["seconds"] for r in runs[0::2]]
            b = [r["seconds"] for r in runs[1::2]]
            ratios = [x / y for x, y in zip(a, b, strict=True)]
            cond = {"threads": torch.get_num_threads(), "batch": batch,
                    "median_s": statistics.median(a + b), "spread": spread(a + b),
                    "aa_ratio_median": statistics.median(ratios),
                    "aa_ratio_min": min(ratios), "aa_ratio_max": max(ratios),
                    "steal_max": max(r["steal"] for r in runs), "runs": runs}  # fmt: skip
            record["conditions"].append(cond)
            print(f"{args.label:12} {args.pipe:6} threads {cond['threads']:3} batch {batch}: "
                  f"{cond['median_s']:.3f} s, spread {100 * cond['spread']:.1f}%, A/A "
                  f"{cond['aa_ratio_min']:.3f}-{cond['aa_ratio_max']:.3f}, steal max "
                  f"{100 * cond['steal_max']:.1f}%", flush=True)  # fmt: skip
            args.out.write_text(json.dumps(record, indent=1))
    torch.set_num_threads(default_threads)
    if hasattr(pipe, "unet"):
        record["unet_floor"] = [unet_floor(pipe, b, size) for b in args.batch]
        for f in record["unet_floor"]:
            print(f"{args.label:12} {args.pipe:6} UNet step batch {f['batch']}: eager "
                  f"{f['eager_ms']:.2f} ms, graph {f['graph_ms']:.2f} ms "
                  f"({f['eager_over_graph']:.2f}x)", flush=True)  # fmt: skip
    args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
