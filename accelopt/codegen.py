"""Store entry -> one standalone Python script that runs the stored configuration.

The script imports diffusers, torch and the upstream accelerator packages, never accelopt. Its
values live in a header of plain assignments built as an AST (``literal``), so no value is ever
pasted into source text: a model id with quotes, a prompt with a newline or a NaN renders as
valid Python that evaluates back to the same value. The code below the header is the same for
every script: ``accelopt.portable``'s modules, copied verbatim (the graph-safe DeepCache and the
CUDA-graph replayer that studies ran), then the script's own body.

A script runs the denoiser under the execution mode its entry was measured in (``EXECUTION``;
``--execution`` overrides it): compiled by inductor, or replayed as CUDA graphs the way
``accelopt.execution`` does. It warms up first, then times one generation and prints its seconds
per image, so the deployed speed can be set beside the measured one.

Requests, as the seed system's task generator made them: a speedup requirement
(``req_speedup``), a quality budget (``max_score_loss``, default 0.02), a time budget
(``req_time``), or none of them ("the best you have"). The answer is the fastest stored entry
that meets the request.

Where the store holds a pareto study's frontier for the requested model, every point of it (and
every other entry of that model, as one point) is a candidate, and a request picks one point:

- none: the fastest point within its study's own score-loss budget;
- ``req_speedup`` X: the point that loses least among those at least X times as fast;
- ``max_score_loss`` L: the fastest point that loses at most L;
- ``req_time`` T: the point that loses least among those at or under T seconds per image.

A mix narrows the same way (a speed requirement with L: the least loss among those this fast
within L). A request no point meets is refused naming the nearest point there is.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from accelopt._types import is_number
from accelopt.errors import AccelOptError, printable
from accelopt.measure.constraints import BOUNDS, METRICS, Bound, quality_loss

__all__ = [
    "BOUND_FLAGS",
    "HEADER_NAMES",
    "Request",
    "find_entry",
    "frontier_points",
    "literal",
    "load_tasks",
    "nearest",
    "parse_request_targets",
    "render_script",
    "why_missing",
    "write_scripts",
]

DEFAULT_MAX_SCORE_LOSS = 0.02  # a request's quality budget when it names none (no frontier)
FIDELITY_BOUNDS = tuple(k for k in BOUNDS if k != "clip_loss")
# The command-line flag of each fidelity bound, for codegen requests and run alike.
BOUND_FLAGS = {"psnr_min": "--min-psnr", "ssim_min": "--min-ssim",
               "clip_image_min": "--min-clip-image", "lpips_max": "--max-lpips"}  # fmt: skip


@dataclass(frozen=True)
class Request:
    """What a user asks codegen for; unset requirements do not constrain.

    An unset ``max_score_loss`` is 0.02 for ordinary entries; on a frontier it is the study's
    own budget, or none at all next to a speed requirement (see the module's docstring).
    """

    pipe: str
    sched: str
    steps: int
    targets: tuple[str, ...] | None = None
    req_speedup: float | None = None
    max_score_loss: float | None = None
    req_time: float | None = None
    # Fidelity bounds (``accelopt.measure.constraints``): an entry answers only if it measured the
    # metric and meets the bound (entries exported before fidelity was measured do not).
    psnr_min: float | None = None
    ssim_min: float | None = None
    clip_image_min: float | None = None
    lpips_max: float | None = None
    output: str | None = field(default=None, compare=False)

    @property
    def bounds(self) -> list[Bound]:
        """The fidelity bounds asked for."""
        return [Bound(k, v) for k in FIDELITY_BOUNDS if (v := getattr(self, k)) is not None]

    def fidelity_met(self, measured: Mapping[str, Any]) -> bool:
        return all(b.holds(measured.get(b.name)) for b in self.bounds)

    @property
    def loss_budget(self) -> float:
        """The quality budget against ordinary entries."""
        return DEFAULT_MAX_SCORE_LOSS if self.max_score_loss is None else self.max_score_loss

    @property
    def fast(self) -> bool:
        """Whether the request asks for a speed: on a frontier, the least loss then wins."""
        return self.req_speedup is not None or self.req_time is not None

    def describe(self) -> str:
        return ", ".join([*self._parts(), f"score loss <= {100 * self.loss_budget:g}%"])

    def describe_on_frontier(self) -> str:
        """As ``describe``, with what an unset quality budget means on a frontier."""
        parts = self._parts()
        if self.max_score_loss is not None:
            parts.append(f"score loss <= {100 * self.max_score_loss:g}%")
        elif not self.fast:
            parts.append("score loss within its study's budget")
        return ", ".join(parts)

    def _parts(self) -> list[str]:
        parts = [f"{self.pipe} {self.sched} {self.steps} steps"]
        if self.targets:
            parts.append("+".join(self.targets))
        if self.req_speedup is not None:
            parts.append(f"speedup >= {self.req_speedup:g}x")
        if self.req_time is not None:
            parts.append(f"<= {self.req_time:g} s/image")
        return parts + [b.describe() for b in self.bounds]

    def run_command(self) -> str:
        """The ``accelopt run`` command that would produce an entry for this request."""
        from accelopt.params_store.file import seed_pipeline
        from accelopt.pipelines.schedulers import resolve_scheduler

        name = f"{seed_pipeline(self.pipe)}-{resolve_scheduler(self.sched).name}-{self.steps}"
        if self.targets:
            name += "-" + "+".join(self.targets)
        cmd = f"accelopt run --study {name}"
        if self.loss_budget != DEFAULT_MAX_SCORE_LOSS:
            cmd += f" --max-score-loss {self.loss_budget:g}"
        if self.req_speedup is not None:
            cmd += f" --req-speedup {self.req_speedup:g}"
        if self.req_time is not None:
            cmd += f" --req-time {self.req_time:g}"
        for bound in self.bounds:
            cmd += f" {BOUND_FLAGS[bound.key]} {bound.limit:.10g}"
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
              "req_time": (int, float), "output": str,
              **dict.fromkeys(FIDELITY_BOUNDS, (int, float))}  # fmt: skip


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
    in one error, every request no entry answers, naming the nearest entries and the run.

    Only entries that pass ``accelopt.params_store.check.check_entry`` are considered (the CLI
    reports the
    others first); a batch's outputs must stay inside ``output``, and every one is checked, and
    every script made, before the first is written."""
    from accelopt.params_store.check import usable_entries

    entries = usable_entries(entries)[0]
    if batch and output.exists() and not output.is_dir():
        raise AccelOptError(f"-o {output}: with --tasks, -o names a folder, and this is a file")
    answers, missing = [], []
    for request in requests:  # every output checked and every script made before one is written
        target = _inside(output, request.output or request.script_name()) if batch else output
        entry = find_entry(entries, request)
        if entry is None:
            missing.append(why_missing(entries, request))
            continue
        if target.exists() and not force:
            raise AccelOptError(f"{target} exists; pass --force to overwrite it")
        answers.append((target, entry, render_script(entry)))
    for target, _, script in answers:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(script, encoding="utf-8")
    if missing:
        raise AccelOptError(" | ".join(missing))
    return [(target, entry) for target, entry, _ in answers]


def _inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it stays inside ``folder`` once symlinks are resolved:
    a task file names its outputs, and it may come from anyone."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not name.strip() or "\x00" in name:
        raise AccelOptError(
            f"task output {printable(name, 120)} must be a relative path inside -o {folder}"
        )
    root = folder.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or target == root:
        raise AccelOptError(
            f"task output {printable(name, 120)} leads outside -o {folder} (through a link)"
        )
    return target


def _same_model(entry: Mapping[str, Any], request: Request) -> bool:
    from accelopt.params_store.file import seed_pipeline
    from accelopt.pipelines.schedulers import resolve_scheduler

    return (
        seed_pipeline(entry["pipeline"]).lower() == seed_pipeline(request.pipe).lower()
        and resolve_scheduler(entry["scheduler"]).name == resolve_scheduler(request.sched).name
        and entry["steps"] == request.steps
    )


def _meets(entry: Mapping[str, Any], request: Request) -> bool:
    m = entry["measured"]
    if request.targets is not None and set(entry["accelerators"]) != set(request.targets):
        return False
    if m["score_loss"] is None or m["score_loss"] > request.loss_budget:
        return False
    if m["speedup"] <= 1.0:  # slower than the plain pipeline answers nothing
        return False
    if request.req_speedup is not None and m["speedup"] < request.req_speedup:
        return False
    if not request.fidelity_met(m):
        return False
    if request.req_time is None:
        return True
    return is_number(m.get("time_per_image")) and m["time_per_image"] <= request.req_time


def find_entry(
    entries: Mapping[str, Mapping[str, Any]], request: Request
) -> dict[str, Any] | None:
    """The fastest entry that answers ``request``, or None; where the store holds a frontier
    for the model, the point of it the request picks (as an entry of its own)."""
    points = frontier_points(entries, request)
    if points:
        return _pick(points, request)
    found = [e for e in entries.values() if _same_model(e, request) and _meets(e, request)]
    return dict(max(found, key=lambda e: e["measured"]["speedup"])) if found else None


def why_missing(entries: Mapping[str, Mapping[str, Any]], request: Request) -> str:
    """One line: why no entry answers ``request``, and what comes nearest."""
    points = frontier_points(entries, request)
    if points:
        near, why = _nearest_point(points, request)
        best = f"{_point_line(near)} ({why})" if near else "no point beats the plain pipeline"
        return (f"no stored frontier point answers {request.describe_on_frontier()}; best "
                f"available: {best}")  # fmt: skip
    near_entries = "; ".join(nearest(entries, request)) or "the store is empty"
    return (f"no entry answers {request.describe()} (nearest: {near_entries}); "
            f"make one with: {request.run_command()}")  # fmt: skip


# ---- frontiers ------------------------------------------------------------------------------


def frontier_points(
    entries: Mapping[str, Mapping[str, Any]], request: Request
) -> list[dict[str, Any]]:
    """Every point stored for the request's model (and exact targets), each as an entry of its
    own: the frontiers' points and the other entries. Empty when no frontier has a point there:
    the store then answers as ordinary entries do."""
    points, frontiers = [], False
    for entry in entries.values():
        if not _same_model(entry, request):
            continue
        stored = entry.get("frontier")
        listed = isinstance(stored, list)
        candidates = [dict(entry)]
        if isinstance(stored, list):
            candidates = [_at_point(entry, p) for p in stored if isinstance(p, dict)]
        for point in candidates:
            used, m = point.get("accelerators"), point.get("measured")
            if not isinstance(used, dict) or not isinstance(m, dict):
                continue  # hand-edited beyond use
            if not all(is_number(m.get(k)) for k in ("speedup", "score_loss", "time_per_image")):
                continue
            if request.targets is None or set(used) == set(request.targets):
                points.append(point)
                frontiers = frontiers or listed
    return points if frontiers else []


def _at_point(entry: Mapping[str, Any], point: Mapping[str, Any]) -> dict[str, Any]:
    """The entry as it would be for one point of its frontier."""
    out = {k: v for k, v in entry.items() if k != "frontier"}
    out.update(
        accelerators=point.get("accelerators"),
        params=point.get("params") or {},
        measured=point.get("measured"),
        heldout=point.get("heldout"),
        baseline={**(entry.get("baseline") or {}), **(point.get("baseline") or {})},
        study={**(entry.get("study") or {}), "trial": point.get("trial")},
    )
    return out


def _own_budget(point: Mapping[str, Any]) -> float:
    """The score-loss budget of the study a point comes from."""
    budget = (point.get("requirement") or {}).get("max_score_loss")
    if isinstance(budget, int | float) and is_number(budget):
        return float(budget)
    return DEFAULT_MAX_SCORE_LOSS


def _fast_enough(point: Mapping[str, Any], request: Request) -> bool:
    m = point["measured"]
    if m["speedup"] <= 1.0:  # slower than the plain pipeline answers nothing
        return False
    if request.req_speedup is not None and m["speedup"] < request.req_speedup:
        return False
    return request.req_time is None or m["time_per_image"] <= request.req_time


def _pick(points: list[dict[str, Any]], request: Request) -> dict[str, Any] | None:
    def within(p: Mapping[str, Any]) -> bool:
        budget = request.max_score_loss
        if budget is None and not request.fast:
            budget = _own_budget(p)
        return budget is None or p["measured"]["score_loss"] <= budget

    found = [p for p in points if _fast_enough(p, request) and within(p)
             and request.fidelity_met(p["measured"])]  # fmt: skip
    if not found:
        return None
    if request.fast:  # this fast, losing least (by its frontier's own second objective)
        return min(found, key=lambda p: (_loss(p), -p["measured"]["speedup"]))
    return max(found, key=lambda p: (p["measured"]["speedup"], -_loss(p)))


def _loss(point: Mapping[str, Any]) -> float:
    """A point's quality as a loss, by the metric its frontier was searched on (the score loss
    for older entries and other entries' single points)."""
    metric = point.get("pareto_metric") or "score_loss"
    value = quality_loss(point["measured"], metric)
    return float(point["measured"]["score_loss"]) if value is None else value


def _nearest_point(
    points: list[dict[str, Any]], request: Request
) -> tuple[dict[str, Any] | None, str]:
    """The point nearest to a request none meets, and why it is the one."""
    faster = [p for p in points if p["measured"]["speedup"] > 1.0]
    fast = [p for p in faster if _fast_enough(p, request)]
    if fast:  # fast enough, over the loss budget: the one that loses least
        return min(fast, key=lambda p: p["measured"]["score_loss"]), (
            "the least loss among points this fast" if request.fast else "the least loss"
        )
    if not faster:
        return None, ""
    if request.req_speedup is None:  # a time budget alone
        return min(faster, key=lambda p: p["measured"]["time_per_image"]), "the quickest"
    return max(faster, key=lambda p: p["measured"]["speedup"]), "the fastest"


def _point_line(p: Mapping[str, Any]) -> str:
    m, study = p["measured"], p.get("study") or {}
    used = "+".join(sorted(p["accelerators"])) or "no accelerator"
    return (
        f"{printable(study.get('name'), 80)} trial {study.get('trial')} ({used}): "
        f"{m['speedup']:.2f}x, "
        f"{m['time_per_image']:.4g} s/image, score loss {_percent(m['score_loss'])}"
    )


def nearest(entries: Mapping[str, Mapping[str, Any]], request: Request, n: int = 3) -> list[str]:
    """Up to ``n`` entries closest to the request, described in one short line each."""
    from accelopt.params_store.file import seed_pipeline

    def distance(e: Mapping[str, Any]) -> tuple[int, int, int]:
        same_pipe = seed_pipeline(e["pipeline"]).lower() == seed_pipeline(request.pipe).lower()
        return (0 if same_pipe else 1, abs(e["steps"] - request.steps),
                0 if _same_model(e, request) else 1)  # fmt: skip

    def fidelity(m: Mapping[str, Any]) -> str:  # what the request bounds, as measured
        return "".join(f", {b.metric.label} {b.metric.show(m.get(b.name))}"
                       for b in request.bounds)  # fmt: skip

    ranked = sorted(entries.values(), key=distance)[:n]
    return [
        f"{printable(e['pipeline'], 60)} {printable(e['scheduler'], 40)} {e['steps']} "
        f"{'+'.join(sorted(e['accelerators']))}: "
        f"{e['measured']['speedup']:.2f}x, loss {_percent(e['measured']['score_loss'])}"
        f"{fidelity(e['measured'])}"
        for e in ranked
    ]


def _percent(loss: float | None) -> str:
    return "n/a" if loss is None else f"{100 * loss:.2f}%"


# ---- rendering -----------------------------------------------------------------------------

HEADER_NAMES = (
    "MODEL",
    "PACKAGED_MODEL",
    "SCHEDULER",
    "SCHEDULER_CONFIG",
    "STEPS",
    "GUIDANCE",
    "RESOLUTION",
    "DTYPE",
    "CALL_DEFAULTS",
    "EXECUTION",
    "DEEPCACHE",
    "TOME",
    "TGATE",
    "DEFAULT_PROMPTS",
)


def read_header(source: str) -> dict[str, Any]:
    """The header constants of a generated script (``HEADER_NAMES``), read without running it."""
    return {
        ast.unparse(node.targets[0]): ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) in HEADER_NAMES
    }


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


def _execution(entry: Mapping[str, Any]) -> str:
    """The mode an entry was measured in (``check_entry`` has checked it); entries from
    before modes existed ran eagerly."""
    return str((entry.get("execution") or {}).get("mode", "eager"))


def header_values(entry: Mapping[str, Any], prompts: Iterable[str] = ()) -> dict[str, Any]:
    """The script's header, from a store entry."""
    from accelopt.params_store.check import check_entry
    from accelopt.pipelines import TOY_PIPELINES, model_info, resolve_dtype
    from accelopt.pipelines.schedulers import resolve_scheduler

    check_entry(entry.get("key"), entry)  # every value below is the right type, and in range
    info = model_info(entry["model"])
    sched = resolve_scheduler(entry["scheduler"])
    acc = entry["accelerators"]
    family = info.family if info else None
    pixart = family is not None and family.startswith("pixart")
    gen = entry["generation"]
    dtype = gen.get("dtype")
    if dtype is not None:  # the script reads it as torch's attribute name
        dtype = str(resolve_dtype(dtype, _cpu())).removeprefix("torch.")
    toy = info is not None and info.name in TOY_PIPELINES
    return {
        "MODEL": (info.hub_id or info.name) if info else entry["model"],
        # A toy model ships inside the accelopt package: the script finds it there.
        "PACKAGED_MODEL": ["accelopt", f"data/toy/{info.name}"] if toy and info else None,
        "SCHEDULER": sched.class_name,
        "SCHEDULER_CONFIG": dict(sched.overrides),
        "STEPS": entry["steps"],
        "GUIDANCE": gen["guidance"],
        "RESOLUTION": gen.get("resolution"),
        "DTYPE": dtype,
        "CALL_DEFAULTS": {"use_resolution_binning": False, "clean_caption": False}
        if pixart
        else {},
        "EXECUTION": _execution(entry),
        "DEEPCACHE": acc.get("deepcache"),
        "TOME": acc.get("tome"),
        "TGATE": acc.get("tgate"),
        "DEFAULT_PROMPTS": list(prompts) or _example_prompts(gen.get("prompt_set"), toy),
    }


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def _example_prompts(prompt_set: str | None, toy: bool) -> list[str]:
    """The first prompt of the study's prompt set: what its model was measured on (the toy
    model draws shapes, and its tokenizer is 32 tokens long). Entries from before the set was
    stored get the toy's set for a toy model, accelopt's otherwise."""
    from accelopt.prompts import PROMPT_SETS, load_prompts

    chosen = prompt_set if prompt_set in PROMPT_SETS else ("shapes" if toy else "accelopt")
    return [load_prompts("heldout", 1, chosen)[0].text]


def _interval(interval: Sequence[float] | None, level: float | None, pairs: int = 0) -> str:
    """`` (1.31x-1.60x, 98% interval over 7 pairs)``, or nothing without an interval."""
    if not interval:
        return ""
    over = f" over {pairs} pairs" if pairs else ""
    covers = f", {100 * level:.0f}% interval{over}" if level is not None else over
    return f" ({interval[0]:.2f}x-{interval[1]:.2f}x{covers})"


def _heldout(h: Mapping[str, Any] | None) -> str:
    """The held-out confirmation's speed, the figure export decided on."""
    if not h:
        return ""
    speed = h.get("speed")
    forced = f", {speed}: exported with --force" if speed not in (None, "faster") else ""
    shown = _interval(h.get("interval"), h.get("level"), len(h.get("speedups") or []))
    return f"\nRe-timed on held-out prompts: {h['speedup']:.2f}x{shown}{forced}."


def render_script(entry: Mapping[str, Any], prompts: Iterable[str] = ()) -> str:
    """The whole script for a store entry (refused unless ``entries.check_entry`` passes)."""
    values = header_values(entry, prompts)  # checks the entry first
    m = entry["measured"]
    doc = (
        f"{entry['pipeline']}, {entry['scheduler']}, {entry['steps']} steps, "
        f"{' + '.join(sorted(entry['accelerators'])) or 'no accelerator'}."
    )
    seconds = m.get("time_per_image")
    per_image = "time per image not recorded" if seconds is None else f"{seconds:.4f} s per image"
    fidelity = "".join(f", {METRICS[k].label} {METRICS[k].show(m[k])}" for k in METRICS
                       if k != "score_loss" and m.get(k) is not None)  # fmt: skip
    summary = (
        f"Measured by accelopt on {m['device']}: {m['speedup']:.2f}x the plain pipeline"
        f"{_interval(m.get('speedup_interval'), m.get('speedup_level'))}, {per_image}, CLIP "
        f"score loss {_percent(m['score_loss'])}{fidelity}.{_heldout(entry.get('heldout'))}"
    )
    if (
        entry.get("layout") == "seed"
    ):  # accelopt.params_store.seed_layout: the seed kept only these
        summary = (
            f"From a seed-layout params file: {m['speedup']:.2f}x the plain pipeline, within a "
            f"CLIP score loss of {_percent(m['score_loss'])}; the time per image, the card "
            f"and the generation settings were not recorded (accelopt's defaults are used)."
        )
    summary += (
        f"\nMeasured under execution mode {values['EXECUTION']}, which this script reproduces "
        f"(--execution picks another); it prints the seconds per image it measures itself."
    )
    text = f"Generated by accelopt codegen: {doc}\n\n{summary}\nStore key: {entry['key']}\n"
    header = _header(values)
    portable = "".join(_portable_source(name) for name in PORTABLE)
    return f"#!/usr/bin/env python3\n{_docstring(text)}\n\n{_IMPORTS}\n{header}\n{portable}{_BODY}"


# accelopt.portable's modules, in the order scripts carry them.
PORTABLE = ("buffers", "graphs", "deepcache", "tgate")


def portable_parts(name: str) -> tuple[list[str], str]:
    """``accelopt.portable.<name>``'s import statements, and its source after them verbatim,
    comments included (the module docstring and imports are the script's own). Imports from
    other portable modules are left out: the script carries those modules before this one."""
    source = resources.files("accelopt.portable").joinpath(f"{name}.py").read_text("utf-8")
    tree = ast.parse(source)
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    if not imports:
        raise AssertionError(f"accelopt.portable.{name} has no imports to start after")
    rest = source.splitlines(keepends=True)[imports[-1].end_lineno or 0 :]
    own = [n for n in imports if not _portable_import(n)]
    return [ast.unparse(n) for n in own], "".join(rest).strip("\n") + "\n"


def _portable_import(node: ast.Import | ast.ImportFrom) -> bool:
    return isinstance(node, ast.ImportFrom) and (node.module or "").startswith("accelopt.portable")


def _portable_source(name: str) -> str:
    _, source = portable_parts(name)
    return f"\n\n# ---- accelopt.portable.{name}, copied verbatim ----\n\n{source}"


def _docstring(text: str) -> str:
    """A readable triple-quoted docstring when it provably evaluates to ``text``, else repr."""
    quoted = f'"""{text}"""'
    try:
        if ast.literal_eval(quoted) == text and "\\" not in text:
            return quoted
    except (SyntaxError, ValueError):
        pass
    return ast.unparse(ast.Expr(ast.Constant(text)))


# What the body and the portable modules use (a test checks the portable modules' imports).
_IMPORTS = """\
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """The stored accelerators: ToMe through its upstream API (first), DeepCache and T-GATE
    through the graph-safe schedules above (together, the gate drives DeepCache's)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.net = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        self.schedule = self.gate = None
        if TOME is not None:
            import tomesd

            tomesd.apply_patch(pipe, ratio=TOME["ratio"], max_downsample=TOME["max_downsample"],
                               use_rand=TOME.get("use_rand", False))
        if DEEPCACHE is not None:
            self.schedule = Schedule(DEEPCACHE["cache_interval"], DEEPCACHE["cache_branch_id"])
            cache_deep_features(pipe.unet, self.schedule, Buffers(), counted=TGATE is None)
        if TGATE is not None:
            self.gate = Gate(TGATE["gate_step"], TGATE["sp_interval"], TGATE["fi_interval"],
                             TGATE["warm_up"], lambda: pipe.scheduler, self.schedule)
            gate_attention(self.net, self.gate, Buffers())

    def applied(self):
        """What the accelerators hold now, in the stored parameters' names."""
        out = {}
        if self.schedule is not None:
            out["deepcache"] = {"cache_interval": self.schedule.interval,
                                "cache_branch_id": self.schedule.branch}
        info = getattr(getattr(self.pipe, "unet", None), "_tome_info", None)
        if info is not None:
            out["tome"] = {k: info["args"][k] for k in ("ratio", "max_downsample", "use_rand")}
            if info["args"]["use_rand"]:
                out["tome"]["seed"] = TOME.get("seed", 0)
        if self.gate is not None:
            out["tgate"] = dict(zip(("gate_step", "sp_interval", "fi_interval", "warm_up"),
                                    self.gate.config))
        return out

    def structure(self):
        """What the next denoiser call computes: calls with equal structures share a graph."""
        return tuple(s.structure() for s in (self.schedule, self.gate) if s is not None)

    def __call__(self, **kwargs):
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


def execute(pipe, accelerated, mode):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", nargs="*", help="prompts (default: the stored examples)")
    parser.add_argument("--model", default=MODEL, help="hub id or local pipeline folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--execution", default=EXECUTION, choices=("eager", "compile",
                        "cuda-graphs"), help="how the denoiser runs (default: as measured)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed generations first; they compile or capture the graphs")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed generations; the last one's images are written")
    parser.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    parser.add_argument("--out-dir", default="images", help="where PNGs go")
    parser.add_argument("--save-array", help="also save the images as a .npy array")
    parser.add_argument("--show-applied", action="store_true",
                        help="print the applied parameters as JSON first")
    args = parser.parse_args()
    if args.execution == "cuda-graphs" and not args.device.startswith("cuda"):
        parser.error(f"--execution cuda-graphs needs a CUDA device, not {args.device}")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")
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

    def generate():
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
    print(f"{statistics.median(times):.4f} s per image, median of {len(times)} "
          f"({min(times):.4f}-{max(times):.4f}; {args.execution} on {args.device}, "
          f"after {args.warmup} warm-up generations)")
    if args.save_array:
        np.save(args.save_array, np.asarray(images))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pipe.numpy_to_pil(np.asarray(images))):
        image.save(out / f"{i:03d}.png")
    print(f"wrote {len(prompts)} image{'s' if len(prompts) != 1 else ''} to {out}")


if __name__ == "__main__":
    main()
'''
