"""The body of every generated script: loading, the accelerators, the execution mode, ``main``.

``accelopt.codegen`` writes a script as its docstring, the imports its parts need, the header
(one assignment per ``HEADER_NAMES`` constant, rendered from a store entry), the other portable
modules, then this file's code below the header block, verbatim. So this is real code that ruff
and mypy check, not a program inside a string; accelopt itself never imports it (it is the
script's ``__main__``, and it imports diffusers and numpy as the scripts do).

The header block below only declares the constants and their types for ruff and mypy: codegen
drops it and writes the entry's values in its place, so nothing between the imports and
``load`` reaches a script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline

# The script carries these modules verbatim above this body, so these imports are left out.
from accelopt.portable.buffers import Buffers
from accelopt.portable.deepcache import Schedule, cache_deep_features
from accelopt.portable.graphs import Replayer
from accelopt.portable.tgate import Gate, gate_attention, is_guided

# ---- the header: codegen writes the entry's values in place of these placeholders ----
MODEL: str = ""  # hub id or local pipeline folder
PACKAGED_MODEL: list[str] | None = None  # [package, folder in it] of a model shipped in one
SCHEDULER: str = ""  # a diffusers scheduler class name
SCHEDULER_CONFIG: dict[str, Any] = {}
STEPS: int = 0
GUIDANCE: float = 0.0
RESOLUTION: int | None = None
DTYPE: str | None = None  # torch's attribute name: "float16"; None: float16 on CUDA, else float32
CALL_DEFAULTS: dict[str, Any] = {}  # extra arguments of the pipeline call
EXECUTION: str = "eager"  # "eager", "compile" or "cuda-graphs"
DEEPCACHE: dict[str, Any] | None = None  # each accelerator's stored knobs; None: not used
TOME: dict[str, Any] | None = None
TGATE: dict[str, Any] | None = None
DEFAULT_PROMPTS: list[str] = []


def load(model: str, device: str) -> Any:
    """The pipeline with the stored scheduler, on ``device``."""
    if DTYPE is not None:
        dtype = getattr(torch, DTYPE)
    else:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype)
    scheduler = getattr(diffusers, SCHEDULER)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config, **SCHEDULER_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class Accelerated:
    """The stored accelerators: ToMe through its upstream API (first), DeepCache and T-GATE
    through the graph-safe schedules above (together, the gate drives DeepCache's)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.net = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        self.schedule: Schedule | None = None
        self.gate: Gate | None = None
        if TOME is not None:
            import tomesd

            tomesd.apply_patch(
                pipe,
                ratio=TOME["ratio"],
                max_downsample=TOME["max_downsample"],
                use_rand=TOME.get("use_rand", False),
            )
        if DEEPCACHE is not None:
            self.schedule = Schedule(DEEPCACHE["cache_interval"], DEEPCACHE["cache_branch_id"])
            cache_deep_features(pipe.unet, self.schedule, Buffers(), counted=TGATE is None)
        if TGATE is not None:
            self.gate = Gate(
                TGATE["gate_step"],
                TGATE["sp_interval"],
                TGATE["fi_interval"],
                TGATE["warm_up"],
                lambda: pipe.scheduler,
                self.schedule,
            )
            gate_attention(self.net, self.gate, Buffers())

    def applied(self) -> dict[str, Any]:
        """What the accelerators hold now, in the stored parameters' names."""
        out: dict[str, Any] = {}
        if self.schedule is not None:
            out["deepcache"] = {
                "cache_interval": self.schedule.interval,
                "cache_branch_id": self.schedule.branch,
            }
        info = getattr(getattr(self.pipe, "unet", None), "_tome_info", None)
        if info is not None:
            out["tome"] = {k: info["args"][k] for k in ("ratio", "max_downsample", "use_rand")}
            if info["args"]["use_rand"]:
                assert TOME is not None  # only ToMe's patch leaves _tome_info
                out["tome"]["seed"] = TOME.get("seed", 0)
        if self.gate is not None:
            out["tgate"] = dict(
                zip(
                    ("gate_step", "sp_interval", "fi_interval", "warm_up"),
                    self.gate.config,
                    strict=True,
                )
            )
        return out

    def structure(self) -> tuple[Hashable, ...]:
        """What the next denoiser call computes: calls with equal structures share a graph."""
        return tuple(s.structure() for s in (self.schedule, self.gate) if s is not None)

    def __call__(self, **kwargs: Any) -> Any:
        # Every call starts clean: DeepCache and T-GATE count the calls of one generation, and
        # ToMe's random partition draws from a generator seeded anew.
        if TOME is not None and TOME.get("use_rand", False):
            device = next(self.pipe.unet.parameters()).device
            generator = torch.Generator(device).manual_seed(TOME.get("seed", 0))
            self.pipe.unet._tome_info["args"]["generator"] = generator
        if self.schedule is not None:
            self.schedule.reset()
        if self.gate is not None:
            self.gate.reset(guided=is_guided(self.net, kwargs["guidance_scale"]))
        return self.pipe(**kwargs)


def execute(pipe: Any, accelerated: Accelerated, mode: str) -> None:
    """Run the denoiser under ``mode``, as accelopt measured it: ``compile`` is inductor's
    kernels; ``cuda-graphs`` captures those kernels once per structure and replays them."""
    if mode == "eager":
        return
    net = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    # The class's forward, not the patched one; static shapes, one graph per input shape.
    forward = torch.compile(type(net).forward.__get__(net), dynamic=False)
    if mode == "compile":
        net.forward = forward
    else:
        device = next(net.parameters()).device
        net.forward = Replayer(forward, device, accelerated.structure)


def parse_args() -> argparse.Namespace:
    """The command line, checked: prompts and how to load, run, time and save."""
    parser = argparse.ArgumentParser(description=str(__doc__).splitlines()[0])
    parser.add_argument("prompts", nargs="*", help="prompts (default: the stored examples)")
    parser.add_argument("--model", default=MODEL, help="hub id or local pipeline folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--execution",
        default=EXECUTION,
        choices=("eager", "compile", "cuda-graphs"),
        help="how the denoiser runs (default: as measured)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed generations first; they compile or capture the graphs",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed generations; the last one's images are written",
    )
    parser.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    parser.add_argument("--out-dir", default="images", help="where PNGs go")
    parser.add_argument("--save-array", help="also save the images as a .npy array")
    parser.add_argument(
        "--show-applied", action="store_true", help="print the applied parameters as JSON first"
    )
    args = parser.parse_args()
    if args.execution == "cuda-graphs" and not args.device.startswith("cuda"):
        parser.error(f"--execution cuda-graphs needs a CUDA device, not {args.device}")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")
    return args


def main() -> None:
    args = parse_args()
    prompts = args.prompts or DEFAULT_PROMPTS

    model = args.model
    if model == MODEL and PACKAGED_MODEL is not None:  # shipped inside an installed package
        from importlib import resources

        model = str(resources.files(PACKAGED_MODEL[0]).joinpath(PACKAGED_MODEL[1]))
    pipe = load(model, args.device)
    accelerated = Accelerated(pipe)
    if args.show_applied:
        print(json.dumps(accelerated.applied(), sort_keys=True))
    execute(pipe, accelerated, args.execution)
    size = {"height": RESOLUTION, "width": RESOLUTION} if RESOLUTION else {}

    def generate() -> Any:
        return accelerated(
            prompt=prompts,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=[torch.Generator().manual_seed(args.seed + i) for i in range(len(prompts))],
            output_type="np",
            **size,
            **CALL_DEFAULTS,
        ).images

    for _ in range(args.warmup):
        generate()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(args.repeats):
        sync()
        started = time.perf_counter()
        images = generate()
        sync()
        times.append((time.perf_counter() - started) / len(prompts))
    print(
        f"{statistics.median(times):.4f} s per image, median of {len(times)} "
        f"({min(times):.4f}-{max(times):.4f}; {args.execution} on {args.device}, "
        f"after {args.warmup} warm-up generations)"
    )
    if args.save_array:
        np.save(args.save_array, np.asarray(images))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pipe.numpy_to_pil(np.asarray(images))):
        image.save(out / f"{i:03d}.png")
    print(f"wrote {len(prompts)} image{'s' if len(prompts) != 1 else ''} to {out}")


if __name__ == "__main__":
    main()
