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
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, NoReturn

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline

# The script carries these modules verbatim above this body, so these imports are left out.
from accelopt.portable.buffers import Buffers
from accelopt.portable.dbcache import Decision, cache_middle_blocks
from accelopt.portable.deepcache import Schedule, cache_deep_features
from accelopt.portable.fastercache import FASTER_KNOBS, Faster, faster_attention
from accelopt.portable.graphs import Regions, Replayer
from accelopt.portable.magcache import MagSchedule, cache_block_residuals
from accelopt.portable.pab import Broadcast, broadcast_attention, host_timesteps
from accelopt.portable.taylorseer import Forecast, forecast_modules
from accelopt.portable.tgate import Gate, gate_attention, is_guided

# ---- the header: codegen writes the entry's values in place of these placeholders ----
MODEL: str = ""  # hub id or local pipeline folder
PACKAGED_MODEL: list[str] | None = None  # [package, folder in it] of a model shipped in one
BUILT_MODEL: str | None = None  # a tiny pipeline accelopt builds from config, as studies do
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
MAGCACHE: dict[str, Any] | None = None  # with its calibrated "ratios", one per denoiser call
TAYLORSEER: dict[str, Any] | None = None
FBCACHE: dict[str, Any] | None = None
DBCACHE: dict[str, Any] | None = None
PAB: dict[str, Any] | None = None
FASTERCACHE: dict[str, Any] | None = None
DEFAULT_PROMPTS: list[str] = []


def refuse(message: str) -> NoReturn:
    """A bad argument: one line on stderr, as argparse words its errors, and exit code 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def with_accelopt(module: str, what: str) -> Any:
    """accelopt's ``module``, imported only where the script needs accelopt (``what`` the
    script does with it); refused in one line where accelopt is not installed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("accelopt"):
            raise  # accelopt is there but lacks a dependency: its own traceback says which
        refuse(
            f"this script {what}; pip install accelopt (or run it from the checkout's venv), "
            f"or pass --model DIR"
        )


def check_device(device: str) -> None:
    """Refuse ``device`` in one line when torch does not know it or this machine lacks it."""
    try:
        kind = torch.device(device)
    except RuntimeError:
        refuse(f"--device {device}: not a device; use cpu, cuda, cuda:N or mps")
    lacks = f"--device {device}: this machine has no {{}} device; use --device cpu or leave it out"
    if kind.type == "mps" and not torch.backends.mps.is_available():
        refuse(lacks.format("MPS"))
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            refuse(lacks.format("CUDA"))
        count = torch.cuda.device_count()
        if kind.index is not None and kind.index >= count:
            plural = "" if count == 1 else "s"
            refuse(
                f"--device {device}: this machine has {count} CUDA device{plural} "
                f"(cuda:0 to cuda:{count - 1})"
            )


def model_source(model: str) -> str | None:
    """Where ``--model`` loads from: the folder a package ships the stored model in, a local
    pipeline folder or a hub id; None: accelopt builds the stored model. Refused in one line
    when it can be none of them."""
    if model == MODEL and BUILT_MODEL is not None:
        with_accelopt("accelopt.pipelines", f"builds {BUILT_MODEL} from config with accelopt")
        return None
    if model == MODEL and PACKAGED_MODEL is not None:  # shipped inside an installed package
        from importlib import resources

        package, inside = PACKAGED_MODEL
        with_accelopt(package, f"loads {MODEL} from the folder the {package} package ships")
        model = str(resources.files(package).joinpath(inside))
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not path.is_dir():
            refuse(
                f"--model {model}: no such folder; pass a diffusers pipeline folder or a hub "
                f"id (org/name)"
            )
        if not (path / "model_index.json").is_file():
            refuse(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")
        return str(path)
    if model.count("/") != 1:
        refuse(f"--model {model}: no such folder here, nor a hub id (org/name)")
    return model


def quiet_loading() -> None:
    """Turn off the loading bars of diffusers and transformers (the text encoder's "Loading
    weights"; huggingface_hub's with it)."""
    diffusers.utils.logging.disable_progress_bar()
    try:
        import transformers
    except ImportError:  # a pipeline without a transformers text encoder
        return
    transformers.utils.logging.disable_progress_bar()


def load(model: str, source: str | None, device: str) -> Any:
    """The pipeline with the stored scheduler, on ``device``: built by accelopt when ``source``
    is None (seeded as the study built it, so these are the weights it measured), else loaded
    from ``source``."""
    if DTYPE is not None:
        dtype = getattr(torch, DTYPE)
    else:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if source is None:
        pipelines = importlib.import_module("accelopt.pipelines")  # model_source imported it
        pipe = pipelines.load_pipeline(
            BUILT_MODEL, dtype=str(dtype).removeprefix("torch."), device=device
        )
    else:
        if not sys.stderr.isatty():  # a log gets no carriage returns from loading bars
            quiet_loading()
        try:
            pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype)
        except OSError as err:  # not downloaded and no way to the hub, a broken folder, ...
            why = str(err).split(" (")[0].split("\n")[0]
            if not Path(source).is_dir():
                why += f"; download it first (hf download {model}) or pass a local pipeline folder"
            refuse(f"--model {model}: {why}")
    scheduler = getattr(diffusers, SCHEDULER)
    # As the study built it: a config that never asked DDIM to clip x0 to [-1, 1] (PixArt's,
    # a DPM-Solver++ one) does not get DDIM's default clipping, wrong for latents.
    config = {"clip_sample": False, **pipe.scheduler.config}
    pipe.scheduler = scheduler.from_config(config, **SCHEDULER_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class Patches:
    """What ``patch()`` changed on ``net``'s modules (classes, instance attributes such as
    wrapped forwards, hook entries), recorded so that ``switch`` takes it all off and puts the
    very same objects back: the plain pipeline is exactly the loaded one, and re-applying
    makes nothing new, so compiled code and captured graphs stay valid for both."""

    # A module's hook tables: applying the accelerators adds entries to them.
    HOOK_TABLES = (
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
    )
    ABSENT = object()  # an instance attribute a module does not have

    def __init__(self, net: Any, patch: Callable[[], None]) -> None:
        modules = list(net.modules())
        before = [
            (type(m), dict(vars(m)), [dict(getattr(m, t, {})) for t in self.HOOK_TABLES])
            for m in modules
        ]
        patch()
        self.on = True
        # Per changed module: its classes, changed attributes and added hooks, each (off, on).
        self.changes: list[tuple[Any, tuple[type, type], dict[str, tuple[Any, Any]], Any]] = []
        for module, (cls, attrs, hooks) in zip(modules, before, strict=True):
            now = vars(module)
            changed = {
                k: (attrs.get(k, self.ABSENT), now.get(k, self.ABSENT))
                for k in now.keys() | attrs.keys()
                if now.get(k, self.ABSENT) is not attrs.get(k, self.ABSENT)
            }
            added = [
                (t, {k: v for k, v in getattr(module, t, {}).items() if k not in old})
                for t, old in zip(self.HOOK_TABLES, hooks, strict=True)
            ]
            if type(module) is not cls or changed or any(entries for _, entries in added):
                self.changes.append((module, (cls, type(module)), changed, added))

    def switch(self, on: bool) -> None:
        """Take the patches off (``on=False``) or put them back."""
        if on == self.on:
            return
        for module, classes, changed, added in self.changes:
            module.__class__ = classes[on]
            for name, values in changed.items():
                if values[on] is self.ABSENT:
                    del vars(module)[name]
                else:
                    vars(module)[name] = values[on]
            for table, entries in added:
                hooks = getattr(module, table)
                for key, value in entries.items():
                    if on:
                        hooks[key] = value
                    else:
                        del hooks[key]
        self.on = on


class Accelerated:
    """The stored accelerators: ToMe through its upstream API (first), DeepCache, T-GATE,
    MagCache, TaylorSeer, PAB and FasterCache through the graph-safe schedules above (together,
    the gate drives DeepCache's), FirstBlockCache and DBCache through their per-call decision
    (under cuda-graphs, a deciding call replays block by block). Applied once;
    ``switch(False)`` leaves the plain pipeline, ``switch(True)`` puts them back."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.net = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        self.schedule: Schedule | None = None
        self.gate: Gate | None = None
        self.mag: MagSchedule | None = None
        self.forecast: Forecast | None = None
        self.decision: Decision | None = None
        self.broadcast: Broadcast | None = None
        self.faster: Faster | None = None
        self.patches = Patches(self.net, self.apply)

    def apply(self) -> None:
        """Patch the pipeline (once: ``switch`` takes the patches off and puts them back)."""
        pipe = self.pipe
        if TOME is not None:
            import tomesd

            tomesd.apply_patch(
                pipe,
                ratio=TOME["ratio"],
                max_downsample=TOME["max_downsample"],
                use_rand=TOME["use_rand"],
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
        if MAGCACHE is not None:
            self.mag = MagSchedule(
                MAGCACHE["threshold"],
                MAGCACHE["max_skip_steps"],
                MAGCACHE["retention_ratio"],
                MAGCACHE["ratios"],
                lambda: len(pipe.scheduler.timesteps),
            )
            cache_block_residuals(pipe.transformer, self.mag, Buffers())
        if TAYLORSEER is not None:  # graph-safe too, alone (no combination is declared)
            self.forecast = Forecast(
                TAYLORSEER["cache_interval"],
                TAYLORSEER["max_order"],
                TAYLORSEER["disable_cache_before_step"],
                TAYLORSEER["modules"],
            )
            forecast_modules(self.net, self.forecast, Buffers())
        # Decided per call from a value read off the device (alone: no combination declared).
        if FBCACHE is not None:
            self.decision = Decision("fbcache", 1, 0, FBCACHE["threshold"], strict=False)
        if DBCACHE is not None:
            self.decision = Decision(
                "dbcache",
                DBCACHE["Fn_compute_blocks"],
                DBCACHE["Bn_compute_blocks"],
                DBCACHE["residual_diff_threshold"],
                DBCACHE["max_warmup_steps"],
                DBCACHE["max_cached_steps"],
                DBCACHE["max_continuous_cached_steps"],
                DBCACHE["taylorseer_order"],
            )
        if self.decision is not None:
            cache_middle_blocks(pipe.transformer, self.decision, Buffers())
        if PAB is not None:  # alone too; its timesteps read on the host from the scheduler
            self.broadcast = Broadcast(
                PAB["spatial_attention_block_skip_range"],
                PAB["cross_attention_block_skip_range"],
                PAB["timestep_skip_low"],
                PAB["timestep_skip_high"],
                lambda: host_timesteps(pipe.scheduler),
            )
            broadcast_attention(pipe.transformer, self.broadcast, Buffers())
        if FASTERCACHE is not None:  # alone too; its timesteps read on the host, as PAB's
            self.faster = Faster(FASTERCACHE, lambda: host_timesteps(pipe.scheduler))
            faster_attention(pipe.transformer, self.faster, Buffers())

    def switch(self, on: bool) -> None:
        """The accelerators on (``True``) or the plain pipeline (``False``)."""
        self.patches.switch(on)

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
                out["tome"]["seed"] = TOME["seed"]
        if self.gate is not None:
            out["tgate"] = dict(
                zip(
                    ("gate_step", "sp_interval", "fi_interval", "warm_up"),
                    self.gate.config,
                    strict=True,
                )
            )
        if self.mag is not None:
            knobs = ("threshold", "max_skip_steps", "retention_ratio")
            out["magcache"] = {**dict(zip(knobs, self.mag.config, strict=True)),
                               "ratios": list(self.mag.ratios)}  # fmt: skip
        if self.forecast is not None:
            out["taylorseer"] = {
                "cache_interval": self.forecast.interval,
                "max_order": self.forecast.max_order,
                "disable_cache_before_step": self.forecast.before,
                "modules": self.forecast.modules,
            }
        decision = self.decision
        if decision is not None and decision.name == "fbcache":
            out["fbcache"] = {"threshold": decision.threshold}
        elif decision is not None:
            out["dbcache"] = {
                "Fn_compute_blocks": decision.fn,
                "Bn_compute_blocks": decision.bn,
                "residual_diff_threshold": decision.threshold,
                "max_warmup_steps": decision.warmup,
                "max_cached_steps": decision.max_cached,
                "max_continuous_cached_steps": decision.max_continuous,
                "taylorseer_order": decision.order,
            }
        if self.broadcast is not None:
            names = ("spatial_attention_block_skip_range", "cross_attention_block_skip_range",
                     "timestep_skip_low", "timestep_skip_high")  # fmt: skip
            out["pab"] = dict(zip(names, self.broadcast.config, strict=True))
        if self.faster is not None:
            out["fastercache"] = dict(zip(FASTER_KNOBS, self.faster.config, strict=True))
        return out

    def structure(self) -> tuple[Hashable, ...]:
        """What the next denoiser call computes: calls with equal structures share a graph."""
        if not self.patches.on:
            return ("plain",)
        parts = (
            self.schedule,
            self.gate,
            self.mag,
            self.forecast,
            self.decision,
            self.broadcast,
            self.faster,
        )
        return tuple(s.structure() for s in parts if s is not None)

    def __call__(self, **kwargs: Any) -> Any:
        # Every call starts clean: DeepCache and T-GATE count the calls of one generation, and
        # ToMe's random partition draws from a generator seeded anew.
        if not self.patches.on:
            return self.pipe(**kwargs)
        if TOME is not None and TOME["use_rand"]:
            device = next(self.pipe.unet.parameters()).device
            generator = torch.Generator(device).manual_seed(TOME["seed"])
            self.pipe.unet._tome_info["args"]["generator"] = generator
        if self.schedule is not None:
            self.schedule.reset()
        if self.gate is not None:
            self.gate.reset(guided=is_guided(self.net, kwargs["guidance_scale"]))
        if self.mag is not None:
            self.mag.reset()
        if self.forecast is not None:  # TaylorSeer counts a generation's calls too
            self.forecast.reset()
        if self.decision is not None:  # each generation starts with nothing kept
            self.decision.reset()
        if self.broadcast is not None:
            self.broadcast.reset()
        if self.faster is not None:  # without guidance there is no half to rebuild
            self.faster.reset(guided=is_guided(self.net, kwargs["guidance_scale"]))
        return self.pipe(**kwargs)


def execute(pipe: Any, accelerated: Accelerated, mode: str) -> None:
    """Run the denoiser under ``mode``, as accelopt measured it: ``compile`` is inductor's
    kernels for the whole forward; ``cuda-graphs`` captures one graph per structure and replays
    it, the plain pipeline's (``--compare``) over the whole forward compiled, the accelerated
    one's over its repeated blocks compiled one by one (``Regions``), so that each of its
    structures costs a capture rather than a compile."""
    if mode == "eager":
        return
    net = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    import torch._dynamo

    # One graph per structure and input shape under the same code objects (and --compare's
    # plain pipeline beside them): more than dynamo's default 8, as accelopt allows.
    for name in ("recompile_limit", "cache_size_limit"):
        if getattr(torch._dynamo.config, name, 512) < 512:
            setattr(torch._dynamo.config, name, 512)
    # The class's forward, not the patched one; static shapes, one graph per input shape.
    whole = torch.compile(type(net).forward.__get__(net), dynamic=False)
    if mode == "compile":
        net.forward = whole
        return
    regions = Regions(net)
    own = type(net).forward.__get__(net)

    def forward(*args: Any, **kwargs: Any) -> Any:  # called only to capture a graph
        if not accelerated.patches.on:
            return whole(*args, **kwargs)
        with regions.on():
            return own(*args, **kwargs)

    device = next(net.parameters()).device
    # A FirstBlockCache or DBCache call that decides replays block by block (``decides``).
    net.forward = Replayer(forward, device, accelerated.structure, regions=regions)


def parse_args() -> argparse.Namespace:
    """The command line, checked: prompts and how to load, run, time and save. A bad value is
    refused in one line, exit code 2, before anything loads."""
    parser = argparse.ArgumentParser(description=str(__doc__).splitlines()[0])
    parser.add_argument("prompts", nargs="*", help="prompts (default: the stored examples)")
    parser.add_argument(
        "--model",
        default=MODEL,
        help="hub id or local pipeline folder (default: the model the entry was measured on)",
    )
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
    parser.add_argument(
        "--compare",
        action="store_true",
        help="time the plain pipeline too, in pairs alternated with the accelerated one "
        "(same warm-up, prompts and seeds), and print both and the median ratio",
    )
    parser.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    parser.add_argument("--out-dir", default="images", help="where PNGs go")
    parser.add_argument("--save-array", help="also save the images as a .npy array")
    parser.add_argument(
        "--show-applied", action="store_true", help="print the applied parameters as JSON first"
    )
    args = parser.parse_args()
    check_device(args.device)
    decided = "fbcache" if FBCACHE is not None else "dbcache" if DBCACHE is not None else None
    if args.execution == "cuda-graphs" and decided is not None:
        refuse(
            f"--execution cuda-graphs: {decided} decides per call from a device value (its "
            f"residual threshold), which a captured graph cannot read; use --execution eager or "
            f"compile"
        )
    if args.execution == "cuda-graphs" and not args.device.startswith("cuda"):
        refuse(f"--execution cuda-graphs needs a CUDA device, not {args.device}")
    if args.warmup < 0:
        refuse("--warmup must be 0 or more")
    if args.repeats < 1:
        refuse("--repeats must be 1 or more")
    args.source = model_source(args.model)
    return args


def main() -> None:
    args = parse_args()
    prompts = args.prompts or DEFAULT_PROMPTS
    pipe = load(args.model, args.source, args.device)
    accelerated = Accelerated(pipe)
    if args.show_applied:
        print(json.dumps(accelerated.applied(), sort_keys=True))
    execute(pipe, accelerated, args.execution)
    size = {"height": RESOLUTION, "width": RESOLUTION} if RESOLUTION else {}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def generate(on: bool) -> tuple[Any, float]:
        """One generation of every prompt, accelerated (``on``) or plain, and its seconds per
        image."""
        accelerated.switch(on)
        sync()
        started = time.perf_counter()
        images = accelerated(
            prompt=prompts,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=[torch.Generator().manual_seed(args.seed + i) for i in range(len(prompts))],
            output_type="np",
            **size,
            **CALL_DEFAULTS,
        ).images
        sync()
        return images, (time.perf_counter() - started) / len(prompts)

    kinds = (False, True) if args.compare else (True,)  # plain, accelerated
    for _ in range(args.warmup):
        for on in kinds:
            generate(on)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.repeats):
        # With --compare, the plain pipeline goes first in even pairs and second in odd ones
        # (as accelopt's own pairs), so a steady drift in the machine's speed favours neither.
        for on in kinds if i % 2 == 0 else kinds[::-1]:
            got, seconds = generate(on)
            times[on].append(seconds)
            if on:
                images = got
    print(
        f"{timing(times[True])} ({min(times[True]):.4f}-{max(times[True]):.4f}; "
        f"{args.execution} on {args.device}, after {args.warmup} warm-up generations)"
    )
    if args.compare:
        plain = times[False]
        ratios = [p / a for p, a in zip(plain, times[True], strict=True)]
        print(
            f"plain pipeline: {timing(plain)} ({min(plain):.4f}-{max(plain):.4f}), timed in "
            f"pairs alternated with the accelerated one"
        )
        print(
            f"{statistics.median(ratios):.2f}x the plain pipeline: the median of {len(ratios)} "
            f"paired ratios ({min(ratios):.2f}x-{max(ratios):.2f}x)"
        )
    if args.save_array:
        np.save(args.save_array, np.asarray(images))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pipe.numpy_to_pil(np.asarray(images))):
        image.save(out / f"{i:03d}.png")
    print(f"wrote {len(prompts)} image{'s' if len(prompts) != 1 else ''} to {out}")


def timing(times: list[float]) -> str:
    """How a list of seconds per image reads: its median and how many."""
    return f"{statistics.median(times):.4f} s per image, median of {len(times)}"


if __name__ == "__main__":
    main()
