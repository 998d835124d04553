"""Store entry -> one standalone Python script that runs the stored configuration.

The script imports diffusers, torch and the upstream accelerator packages, never accelopt. Its
values live in a header of plain assignments built as an AST (``literal``), so no value is ever
pasted into source text: a model id with quotes, a prompt with a newline or a NaN renders as
valid Python that evaluates back to the same value. The code below the header is the same for
every script.

Requests, as the seed system's task generator made them: a speedup requirement
(``req_speedup``), a quality budget (``max_score_loss``), a time budget (``req_time``), or none
of them ("the best you have"). The answer is the fastest stored entry that meets the request.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from accelopt.errors import AccelOptError

__all__ = [
    "HEADER_NAMES",
    "Request",
    "find_entry",
    "literal",
    "load_tasks",
    "nearest",
    "parse_request_targets",
    "render_script",
    "write_scripts",
]


@dataclass(frozen=True)
class Request:
    """What a user asks codegen for; unset requirements do not constrain."""

    pipe: str
    sched: str
    steps: int
    targets: tuple[str, ...] | None = None
    req_speedup: float | None = None
    max_score_loss: float = 0.02
    req_time: float | None = None
    output: str | None = field(default=None, compare=False)

    def describe(self) -> str:
        parts = [f"{self.pipe} {self.sched} {self.steps} steps"]
        if self.targets:
            parts.append("+".join(self.targets))
        if self.req_speedup is not None:
            parts.append(f"speedup >= {self.req_speedup:g}x")
        if self.req_time is not None:
            parts.append(f"<= {self.req_time:g} s/image")
        parts.append(f"score loss <= {100 * self.max_score_loss:g}%")
        return ", ".join(parts)

    def run_command(self) -> str:
        """The ``accelopt run`` command that would produce an entry for this request."""
        from accelopt.schedulers import resolve_scheduler
        from accelopt.store import seed_pipeline

        name = f"{seed_pipeline(self.pipe)}-{resolve_scheduler(self.sched).name}-{self.steps}"
        if self.targets:
            name += "-" + "+".join(self.targets)
        cmd = f"accelopt run --study {name}"
        if self.max_score_loss != 0.02:
            cmd += f" --max-score-loss {self.max_score_loss:g}"
        if self.req_speedup is not None:
            cmd += f" --req-speedup {self.req_speedup:g}"
        if self.req_time is not None:
            cmd += f" --req-time {self.req_time:g}"
        return cmd + " --export"

    def script_name(self) -> str:
        """A file name for this request's script inside a batch's output folder."""
        stem = f"{self.pipe}-{self.sched}-{self.steps}"
        if self.targets:
            stem += "-" + "+".join(self.targets)
        return re.sub(r"[^A-Za-z0-9.+-]", "_", stem) + ".py"


def parse_request_targets(value: str | list[str] | None) -> tuple[str, ...] | None:
    """``"deepcache,tgate"``, ``"deepcache+tgate"`` or a list -> canonical names; None stays."""
    from accelopt.accelerators import parse_targets

    if value is None:
        return None
    return parse_targets(value.replace(",", "+") if isinstance(value, str) else value)


_TASK_KEYS: dict[str, Any] = {"pipe": str, "sched": str, "steps": int, "targets": (str, list),
              "req_speedup": (int, float), "max_score_loss": (int, float),
              "req_time": (int, float), "output": str}  # fmt: skip


def load_tasks(path: Path) -> list[Request]:
    """Requests from a task file: a JSON list, or a TOML file of ``[[task]]`` tables."""
    try:
        text = path.read_text("utf-8")
        data = tomllib.loads(text)["task"] if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise AccelOptError(f"tasks file {str(path)!r} does not exist") from None
    except (ValueError, KeyError) as err:
        raise AccelOptError(f"{path}: not a task list ({err}); see README, 'codegen'") from None
    if not isinstance(data, list) or not data:
        raise AccelOptError(f"{path}: expected a non-empty list of tasks")
    requests = []
    for i, task in enumerate(data):
        if not isinstance(task, dict):
            raise AccelOptError(f"{path}: task {i} is not a table")
        for key in ("pipe", "sched", "steps"):
            if key not in task:
                raise AccelOptError(f"{path}: task {i} lacks {key!r}")
        for key, value in task.items():
            if key not in _TASK_KEYS:
                raise AccelOptError(
                    f"{path}: task {i}: unknown key {key!r}; allowed: {', '.join(_TASK_KEYS)}"
                )
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, _TASK_KEYS[key]):
                raise AccelOptError(f"{path}: task {i}: {key} has the wrong type: {value!r}")
        requests.append(Request(**{**task, "targets": parse_request_targets(task.get("targets"))}))
    return requests


def write_scripts(
    entries: Mapping[str, Mapping[str, Any]],
    requests: Iterable[Request],
    output: Path,
    batch: bool,
    force: bool = False,
) -> list[tuple[Path, dict[str, Any]]]:
    """Write a script per answered request (``output`` is a folder for a batch); then refuse,
    in one error, every request no entry answers, naming the nearest entries and the run."""
    if batch and output.exists() and not output.is_dir():
        raise AccelOptError(f"-o {output}: with --tasks, -o names a folder, and this is a file")
    written, missing = [], []
    for request in requests:
        entry = find_entry(entries, request)
        if entry is None:
            near = "; ".join(nearest(entries, request)) or "the store is empty"
            missing.append(f"no entry answers {request.describe()} (nearest: {near}); "
                           f"make one with: {request.run_command()}")  # fmt: skip
            continue
        target = output / (request.output or request.script_name()) if batch else output
        if target.exists() and not force:
            raise AccelOptError(f"{target} exists; pass --force to overwrite it")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_script(entry), encoding="utf-8")
        written.append((target, entry))
    if missing:
        raise AccelOptError(" | ".join(missing))
    return written


def _same_model(entry: Mapping[str, Any], request: Request) -> bool:
    from accelopt.schedulers import resolve_scheduler
    from accelopt.store import seed_pipeline

    return (
        seed_pipeline(entry["pipeline"]).lower() == seed_pipeline(request.pipe).lower()
        and resolve_scheduler(entry["scheduler"]).name == resolve_scheduler(request.sched).name
        and entry["steps"] == request.steps
    )


def _meets(entry: Mapping[str, Any], request: Request) -> bool:
    m = entry["measured"]
    if request.targets is not None and set(entry["accelerators"]) != set(request.targets):
        return False
    if m["score_loss"] is None or m["score_loss"] > request.max_score_loss:
        return False
    if m["speedup"] <= 1.0:  # slower than the plain pipeline answers nothing
        return False
    if request.req_speedup is not None and m["speedup"] < request.req_speedup:
        return False
    return request.req_time is None or m["time_per_image"] <= request.req_time


def find_entry(
    entries: Mapping[str, Mapping[str, Any]], request: Request
) -> dict[str, Any] | None:
    """The fastest entry that answers ``request``, or None."""
    found = [e for e in entries.values() if _same_model(e, request) and _meets(e, request)]
    return dict(max(found, key=lambda e: e["measured"]["speedup"])) if found else None


def nearest(entries: Mapping[str, Mapping[str, Any]], request: Request, n: int = 3) -> list[str]:
    """Up to ``n`` entries closest to the request, described in one short line each."""
    from accelopt.store import seed_pipeline

    def distance(e: Mapping[str, Any]) -> tuple[int, int, int]:
        same_pipe = seed_pipeline(e["pipeline"]).lower() == seed_pipeline(request.pipe).lower()
        return (0 if same_pipe else 1, abs(e["steps"] - request.steps),
                0 if _same_model(e, request) else 1)  # fmt: skip

    ranked = sorted(entries.values(), key=distance)[:n]
    return [
        f"{e['pipeline']} {e['scheduler']} {e['steps']} {'+'.join(sorted(e['accelerators']))}: "
        f"{e['measured']['speedup']:.2f}x, loss {_percent(e['measured']['score_loss'])}"
        for e in ranked
    ]


def _percent(loss: float | None) -> str:
    return "n/a" if loss is None else f"{100 * loss:.2f}%"


# ---- rendering -----------------------------------------------------------------------------

HEADER_NAMES = (
    "MODEL",
    "SCHEDULER",
    "SCHEDULER_CONFIG",
    "STEPS",
    "GUIDANCE",
    "RESOLUTION",
    "DTYPE",
    "CALL_DEFAULTS",
    "DEEPCACHE",
    "TOME",
    "TGATE",
    "TGATE_LOADER",
    "DEFAULT_PROMPTS",
)


def literal(value: Any) -> ast.expr:
    """An AST expression that evaluates to ``value`` exactly (plain data only).

    Floats that have no literal (nan, inf) become ``float('nan')`` and the like.
    """
    # Subclasses (IntEnum, numpy scalars, a str with its own __repr__) are cast to the plain
    # type first: ast.unparse writes a constant through its repr.
    if value is None or isinstance(value, bool):
        return ast.Constant(None if value is None else bool(value))
    if isinstance(value, int | str):
        return ast.Constant(int(value) if isinstance(value, int) else str(value))
    if isinstance(value, float):
        value = float(value)
        if math.isfinite(value):
            return ast.Constant(value)
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return ast.Call(ast.Name("float", ast.Load()), [ast.Constant(text)], [])
    if isinstance(value, list | tuple):
        items = [literal(v) for v in value]
        return (
            ast.List(items, ast.Load())
            if isinstance(value, list)
            else ast.Tuple(items, ast.Load())
        )
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only dicts with str keys can be rendered")
        return ast.Dict(
            [ast.Constant(str(k)) for k in value], [literal(v) for v in value.values()]
        )
    raise TypeError(f"cannot render a {type(value).__name__} into a script")


def _header(values: Mapping[str, Any]) -> str:
    body: list[ast.stmt] = [
        ast.Assign([ast.Name(name, ast.Store())], literal(values[name]), lineno=0)
        for name in HEADER_NAMES
    ]
    return ast.unparse(ast.fix_missing_locations(ast.Module(body, [])))


def _model_source(info: Any, model: str) -> str:
    """What the script loads: the hub id, the shipped folder of a toy model, or the name itself.

    A tiny pipeline has neither hub id nor folder: its scripts run with --model pointing at one.
    """
    from accelopt.pipelines import TOY_PIPELINES, toy_folder

    if info is None:
        return model
    if info.name in TOY_PIPELINES:
        return str(toy_folder(info.name))
    return str(info.hub_id or info.name)


def header_values(entry: Mapping[str, Any], prompts: Iterable[str] = ()) -> dict[str, Any]:
    """The script's header, from a store entry."""
    from accelopt.accelerators.tgate import LOADERS
    from accelopt.pipelines import model_info
    from accelopt.schedulers import resolve_scheduler

    if not isinstance(entry["model"], str):
        raise AccelOptError(f"store entry {entry.get('key')!r}: model must be a string")
    info = model_info(entry["model"])
    sched = resolve_scheduler(entry["scheduler"])
    acc = entry["accelerators"]
    family = info.family if info else None
    loader = None
    if "tgate" in acc:
        if family is None:
            raise AccelOptError(f"cannot tell which T-GATE loader fits {entry['model']!r}")
        loader = LOADERS[family][1 if "deepcache" in acc else 0]
        if loader is None:
            raise AccelOptError(f"T-GATE has no loader with DeepCache for {family} pipelines")
    pixart = family is not None and family.startswith("pixart")
    gen = entry["generation"]
    return {
        "MODEL": _model_source(info, entry["model"]),
        "SCHEDULER": sched.class_name,
        "SCHEDULER_CONFIG": dict(sched.overrides),
        "STEPS": entry["steps"],
        "GUIDANCE": gen["guidance"],
        "RESOLUTION": gen["resolution"],
        "DTYPE": gen["dtype"],
        "CALL_DEFAULTS": {"use_resolution_binning": False, "clean_caption": False}
        if pixart
        else {},
        "DEEPCACHE": acc.get("deepcache"),
        "TOME": acc.get("tome"),
        "TGATE": acc.get("tgate"),
        "TGATE_LOADER": loader,
        "DEFAULT_PROMPTS": list(prompts) or ["a photograph of a lighthouse on a cliff at dusk"],
    }


def render_script(entry: Mapping[str, Any], prompts: Iterable[str] = ()) -> str:
    """The whole script for a store entry."""
    m = entry["measured"]
    doc = (
        f"{entry['pipeline']}, {entry['scheduler']}, {entry['steps']} steps, "
        f"{' + '.join(sorted(entry['accelerators'])) or 'no accelerator'}."
    )
    summary = (
        f"Measured by accelopt on {m['device']}: {m['speedup']:.2f}x the plain pipeline, "
        f"{m['time_per_image']:.4f} s per image, CLIP score loss {_percent(m['score_loss'])}."
    )
    text = f"Generated by accelopt codegen: {doc}\n\n{summary}\nStore key: {entry['key']}\n"
    header = _header(header_values(entry, prompts))
    return f"#!/usr/bin/env python3\n{_docstring(text)}\n\n{_IMPORTS}\n{header}\n{_BODY}"


def _docstring(text: str) -> str:
    """A readable triple-quoted docstring when it provably evaluates to ``text``, else repr."""
    quoted = f'"""{text}"""'
    try:
        if ast.literal_eval(quoted) == text and "\\" not in text:
            return quoted
    except (SyntaxError, ValueError):
        pass
    return ast.unparse(ast.Expr(ast.Constant(text)))


_IMPORTS = """\
import argparse
import json
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline
"""

# The same for every script: it reads only the header's names.
_BODY = '''

def load(model, device):
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
    """The stored accelerators, applied through their upstream APIs (ToMe first)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.helper = None
        if TOME is not None:
            import tomesd

            tomesd.apply_patch(pipe, ratio=TOME["ratio"], max_downsample=TOME["max_downsample"],
                               use_rand=False)
        if TGATE is not None:
            import tgate

            loader = getattr(tgate, TGATE_LOADER)
            if DEEPCACHE is not None:  # only the combined loader works with DeepCache
                loader(pipe, cache_interval=DEEPCACHE["cache_interval"],
                       cache_branch_id=DEEPCACHE["cache_branch_id"])
                self.helper = pipe.deepcache
            else:
                loader(pipe)
        elif DEEPCACHE is not None:
            from DeepCache import DeepCacheSDHelper

            self.helper = DeepCacheSDHelper(pipe=pipe)
            self.helper.set_params(cache_interval=DEEPCACHE["cache_interval"],
                                   cache_branch_id=DEEPCACHE["cache_branch_id"])
            self.helper.enable()

    def applied(self):
        """What the upstream objects hold now, in the stored parameters' names."""
        out = {}
        if self.helper is not None:
            p = self.helper.params
            out["deepcache"] = {"cache_interval": p["cache_interval"],
                                "cache_branch_id": 3 * p["cache_block_id"] + p["cache_layer_id"]}
        info = getattr(getattr(self.pipe, "unet", None), "_tome_info", None)
        if info is not None:
            out["tome"] = {k: info["args"][k] for k in ("ratio", "max_downsample", "use_rand")}
        if TGATE is not None:
            out["tgate"] = dict(TGATE, entry_point="tgate", loader=TGATE_LOADER)
        return out

    def __call__(self, **kwargs):
        # Every call starts clean: DeepCache counts steps from its first call and T-GATE
        # leaves cached attention behind.
        if TGATE is not None:
            net = self.pipe.unet if hasattr(self.pipe, "unet") else self.pipe.transformer
            for module in net.modules():
                if type(module).__name__ == "Attention":
                    vars(module).pop("cache", None)
                    vars(module).pop("forward", None)
        if self.helper is not None:
            self.helper.disable()
            self.helper.enable()
        if TGATE is not None:
            return self.pipe.tgate(**kwargs, **TGATE)
        return self.pipe(**kwargs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", nargs="*", help="prompts (default: the stored examples)")
    parser.add_argument("--model", default=MODEL, help="hub id or local pipeline folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    parser.add_argument("--out-dir", default="images", help="where PNGs go")
    parser.add_argument("--save-array", help="also save the images as a .npy array")
    parser.add_argument("--show-applied", action="store_true",
                        help="print the applied parameters as JSON first")
    args = parser.parse_args()
    prompts = args.prompts or DEFAULT_PROMPTS

    pipe = load(args.model, args.device)
    accelerated = Accelerated(pipe)
    if args.show_applied:
        print(json.dumps(accelerated.applied(), sort_keys=True))
    size = {"height": RESOLUTION, "width": RESOLUTION} if RESOLUTION else {}
    images = accelerated(
        prompt=prompts,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=[torch.Generator().manual_seed(args.seed + i) for i in range(len(prompts))],
        output_type="np",
        **size,
        **CALL_DEFAULTS,
    ).images
    if args.save_array:
        np.save(args.save_array, np.asarray(images))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pipe.numpy_to_pil(np.asarray(images))):
        image.save(out / f"{i:03d}.png")
    print(f"wrote {len(prompts)} images to {out}")


if __name__ == "__main__":
    main()
'''
