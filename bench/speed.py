"""Speed of each accelerator and combination against the plain pipeline, alternated, on a GPU.

    python bench/speed.py --pipes SD1.5 SDXL --repeats 5 --out $OUT

Full-size architectures with random fp16 weights (no download exists here): timing is real,
images are not. Each configuration is timed ``repeats`` times, each time right after a timing
of the plain pipeline (A, B, A, B, ...), so clock drift hits both; the speedup is the median of
the per-pair ratios and the spread is (max - min) / median of the configuration's times. Also:
an A/A pair (the baseline against itself) and, for the single accelerators, accelopt's apply
against the raw upstream calls. Writes speed.json and speed.md to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from accelopt import accelerators, timing
from accelopt.pipelines import call_defaults, load_pipeline
from accelopt.schedulers import set_scheduler

STEPS = {"SD1.5": 20, "SD2.1": 25, "SDXL": 25, "TinySD": 10, "TinySDXL": 10}
RESOLUTION = {"SD1.5": 512, "SD2.1": 768, "SDXL": 1024, "TinySD": 32, "TinySDXL": 32}


def configs(pipe: str) -> dict[str, dict[str, Any]]:
    """Published settings and the ends of our ranges."""
    md = 2 if "XL" in pipe else 1  # ToMe's first level that has attention
    dc, tg = {"cache_interval": 3, "cache_branch_id": 0}, {"gate_step": 10, "warm_up": 2}
    return {
        "deepcache 3/0 (published)": {"deepcache": dc},
        "deepcache 5/0 (range end)": {"deepcache": {"cache_interval": 5, "cache_branch_id": 0}},
        "deepcache 2/3 (range end)": {"deepcache": {"cache_interval": 2, "cache_branch_id": 3}},
        f"tome 0.5 md{md} (published)": {"tome": {"ratio": 0.5, "max_downsample": md}},
        "tome 0.75 md4 (range end)": {"tome": {"ratio": 0.75, "max_downsample": 4}},
        "tgate gate 10 (published)": {"tgate": tg},
        "tgate gate 5 sp 9 (range end)": {
            "tgate": {"gate_step": 5, "sp_interval": 9, "fi_interval": 5, "warm_up": 1}
        },
        "deepcache 3/0 + tgate 10": {"deepcache": dc, "tgate": tg},
        f"deepcache 3/0 + tome 0.5 md{md}": {
            "deepcache": dc,
            "tome": {"ratio": 0.5, "max_downsample": md},
        },
        f"tome 0.5 md{md} + tgate 10": {"tome": {"ratio": 0.5, "max_downsample": md}, "tgate": tg},
        "all three": {"deepcache": dc, "tome": {"ratio": 0.5, "max_downsample": md}, "tgate": tg},
    }


def raw_upstream(pipe: Any, name: str, params: dict[str, Any], steps: int) -> Callable[..., Any]:
    """The same single accelerator applied with upstream's own calls, as its README shows."""
    if name == "deepcache":
        from DeepCache import DeepCacheSDHelper

        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(**params)
        helper.enable()

        def call(**kw: Any) -> Any:
            helper.disable()
            helper.enable()
            return pipe(**kw)

        call.undo = helper.disable  # type: ignore[attr-defined]
        return call
    if name == "tome":
        import tomesd

        tomesd.apply_patch(pipe, use_rand=False, **params)

        def merged(**kw: Any) -> Any:
            return pipe(**kw)

        merged.undo = lambda: tomesd.remove_patch(pipe)  # type: ignore[attr-defined]
        return merged
    raise ValueError(name)


def bench_pipe(name: str, repeats: int, device: str) -> dict[str, Any]:
    pipe = load_pipeline(name, weights="random", dtype="fp16" if device != "cpu" else None,
                         device=device)  # fmt: skip
    where = pipe.device

    def timed(fn: Callable[[], Any]) -> float:
        return timing.timed(fn, where)[1]

    set_scheduler(pipe, "DDIM")
    steps, size = STEPS[name], RESOLUTION[name]
    kwargs = dict(prompt=["a photograph of a lighthouse at dusk"], num_inference_steps=steps,
                  guidance_scale=7.0, height=size, width=size, output_type="np",
                  **call_defaults(pipe))  # fmt: skip

    def gen(call: Callable[..., Any] = pipe) -> Callable[[], Any]:
        return lambda: call(**kwargs, generator=torch.Generator().manual_seed(0))

    for _ in range(2):
        timed(gen())  # warm-up: kernels, allocator
    rows: dict[str, Any] = {}

    Applied = tuple[Callable[..., Any], Callable[[], None]]

    def pairs(label: str, apply: Callable[[], Applied]) -> None:
        # The baseline is the plain pipeline: patches go on right before each candidate timing
        # and come off right after it (not timed), so A and B alternate for real.
        call, undo = apply()
        timed(gen(call))  # warm-up of this configuration
        undo()
        base, cand, peak = [], [], 0
        for _ in range(repeats):
            base.append(timed(gen()))
            call, undo = apply()
            timing.reset_peak_memory(where)
            cand.append(timed(gen(call)))
            peak = max(peak, timing.peak_memory(where) or 0)
            undo()
        ratios = [b / c for b, c in zip(base, cand, strict=True)]
        med = statistics.median(cand)
        rows[label] = {
            "speedup": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "seconds": med,
            "baseline_seconds": statistics.median(base),
            "spread": (max(cand) - min(cand)) / med,
            "peak_gib": peak / 2**30,
        }
        print(f"{name:6} {label:34} {rows[label]['speedup']:.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) spread {100 * rows[label]['spread']:.1f}% "
              f"{med:.3f} s", flush=True)  # fmt: skip

    def accelopt_apply(cfg: dict[str, Any]) -> Callable[[], Applied]:
        def apply() -> Applied:
            acc = accelerators.apply(pipe, cfg, steps=steps)
            return acc, acc.remove

        return apply

    def raw_apply(single: str, params: dict[str, Any]) -> Callable[[], Applied]:
        def apply() -> Applied:
            call = raw_upstream(pipe, single, params, steps)
            return call, call.undo  # type: ignore[attr-defined]

        return apply

    pairs("A/A: baseline against itself", lambda: (pipe, lambda: None))
    for label, cfg in configs(name).items():
        pairs(label, accelopt_apply(cfg))
    for single in ("deepcache", "tome"):
        label, cfg = next((k, v) for k, v in configs(name).items() if list(v) == [single])
        pairs(f"raw upstream: {label}", raw_apply(single, cfg[single]))
    accelerators.remove(pipe)
    if where.type == "cuda":
        torch.cuda.empty_cache()
    return {"steps": steps, "resolution": size, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipes", nargs="+", default=["SD1.5", "SDXL"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    from importlib.metadata import version

    result = {
        "card": timing.device_name(torch.device(args.device)),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {
            p: version(p) for p in ("torch", "diffusers", "DeepCache", "tgate", "tomesd")
        },
        "repeats": args.repeats,
        "pipes": {name: bench_pipe(name, args.repeats, args.device) for name in args.pipes},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=2))
    lines = ["| pipe | configuration | speedup (median) | min-max | spread | s/image | peak GiB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in result["pipes"].items():
        for label, row in r["rows"].items():
            lines.append(
                f"| {name} {r['steps']} steps {r['resolution']} px | {label} | "
                f"{row['speedup']:.2f}x | {row['speedup_min']:.2f}-{row['speedup_max']:.2f} | "
                f"{100 * row['spread']:.1f}% | {row['seconds']:.3f} | {row['peak_gib']:.1f} |"
            )
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
