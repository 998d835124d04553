"""The questions asked of a params store: the entry for a request, the nearest, the frontier.

Requests, as the seed system's task generator made them: a speedup requirement
(``req_speedup``), a quality budget (``max_score_loss``, default 0.02), a time budget
(``req_time``), or none of them ("the best you have"). The answer is the fastest stored entry
that meets the request::

    >>> from accelopt.params_store.query import Request, find_entry
    >>> find_entry({}, Request("SDXL", "DDIM", 25)) is None
    True

Where the store holds a pareto study's frontier for the requested model, every point of it (and
every other entry of that model, as one point) is a candidate, and a request picks one point:

- none: the fastest point within its study's own score-loss budget;
- ``req_speedup`` X: the point that loses least among those at least X times as fast;
- ``max_score_loss`` L: the fastest point that loses at most L;
- ``req_time`` T: the point that loses least among those at or under T seconds per image.

A mix narrows the same way (a speed requirement with L: the least loss among those this fast
within L). A request no point meets is refused naming the nearest point there is.

``accelopt.codegen`` renders the entry found as a script; nothing here knows about scripts.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from accelopt._types import is_number
from accelopt.errors import AccelOptError, printable
from accelopt.measure.constraints import (
    BOUNDS,
    METRICS,
    Bound,
    loss_budget_refusal,
    quality_loss,
)

__all__ = [
    "BOUND_FLAGS",
    "DEFAULT_MAX_SCORE_LOSS",
    "Request",
    "find_entry",
    "frontier_points",
    "load_tasks",
    "nearest",
    "parse_request_targets",
    "ranking_speed",
    "why_missing",
]

_SCORE_LOSS = METRICS["score_loss"]  # how a score loss reads: ``1.90%``, ``n/a``
DEFAULT_MAX_SCORE_LOSS = 0.02  # a request's quality budget when it names none (no frontier)
FIDELITY_BOUNDS = tuple(k for k in BOUNDS if k != "clip_loss")
# The command-line flag of each fidelity bound, for codegen requests and run alike (a request
# names the run that would answer it).
BOUND_FLAGS = {"psnr_min": "--min-psnr", "ssim_min": "--min-ssim",
               "clip_image_min": "--min-clip-image", "lpips_max": "--max-lpips"}  # fmt: skip


@dataclass(frozen=True)
class Request:
    """What a user asks the store for (codegen's requests); unset requirements do not
    constrain.

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
        """Whether ``measured`` (an entry's measured values) meets every fidelity bound."""
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
        """The request in one line, as refusals name it::

        >>> Request("SDXL", "DDIM", 25, req_speedup=2.0).describe()
        'SDXL DDIM 25 steps, speedup >= 2x, score loss <= 2%'
        """
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


_MAX_TASK_BYTES = 16 * 2**20


def load_tasks(path: Path) -> list[Request]:
    """Requests from a task file: a JSON list, or a TOML file of ``[[task]]`` tables."""
    from accelopt._files import read_regular

    if not os.path.lexists(path):
        raise AccelOptError(f"tasks file {str(path)[:200]!r} does not exist")
    raw = read_regular(path, "task file", _MAX_TASK_BYTES)  # a FIFO or a folder: one line
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)["task"] if path.suffix == ".toml" else json.loads(text)
    except RecursionError:
        raise AccelOptError(f"{path}: not a task list (nested too deep)") from None
    except (ValueError, KeyError) as err:  # UnicodeDecodeError is a ValueError
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
            budget = key == "max_score_loss"
            percent = loss_budget_refusal(value, f"{key} = {value:g}") if budget else None
            if percent is not None:
                raise AccelOptError(f"{path}: task {i}: {percent}")
        requests.append(Request(**{**task, "targets": parse_request_targets(task.get("targets"))}))
    return requests


# ---- ordinary entries ----------------------------------------------------------------------


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
    loss = m.get("score_loss")  # the entry check lets an entry leave it out
    if loss is None or loss > request.loss_budget:
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


def ranking_speed(
    measured: Mapping[str, Any], heldout: Mapping[str, Any] | None
) -> tuple[float, str]:
    """The speed a configuration is ranked by among others, and what that figure is: its
    held-out confirmation's lower bound (paired, on prompts the search never saw: the best of
    many noisy trials is biased upward, and a wide interval is no promise); that confirmation's
    speedup when it has no interval; the search's speedup when it was never confirmed.

    ``measured`` is a trial's user attributes or an entry's ``measured``, ``heldout`` its
    confirmation (``accelopt.study.confirm``). Export's choice among a study's trials and
    codegen's among a store's entries both rank by it::

        >>> ranking_speed({"speedup": 7.0}, {"speedup": 1.9, "interval": [1.5, 2.1],
        ...                                  "level": 0.98})
        (1.5, "held-out speedup's lower bound")
        >>> ranking_speed({"speedup": 7.0}, None)
        (7.0, 'search speedup (not confirmed on held-out prompts)')
    """
    if isinstance(heldout, Mapping) and is_number(heldout.get("speedup")):
        interval, level = heldout.get("interval"), heldout.get("level")
        if (isinstance(interval, list) and len(interval) == 2 and is_number(interval[0])
                and level != 0):  # fmt: skip
            return float(interval[0]), "held-out speedup's lower bound"
        return float(heldout["speedup"]), "held-out speedup"
    return float(measured["speedup"]), "search speedup (not confirmed on held-out prompts)"


def find_entry(
    entries: Mapping[str, Mapping[str, Any]], request: Request
) -> dict[str, Any] | None:
    """The fastest entry that answers ``request`` (by ``ranking_speed``: held-out figures
    where there are), or None; where the store holds a frontier for the model, the point of it
    the request picks (as an entry of its own)."""
    points = frontier_points(entries, request)
    if points:
        return _pick(points, request)
    found: list[Mapping[str, Any]] = [
        e for e in entries.values() if _same_model(e, request) and _meets(e, request)
    ]
    if not found:
        return None

    def rank(e: Mapping[str, Any]) -> tuple[float, float]:  # the search's speedup breaks ties
        return ranking_speed(e["measured"], e.get("heldout"))[0], e["measured"]["speedup"]

    best = max(found, key=rank)
    return dict(best)


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
    used = point.get("accelerators")
    out.update(
        # A point answers for exactly the accelerators it used (the entry check holds an
        # entry's own to its targets).
        targets=sorted(used) if isinstance(used, dict) else entry.get("targets"),
        accelerators=used,
        params=point.get("params") or {},
        measured=point.get("measured"),
        heldout=point.get("heldout"),
        # The check reads no baseline: a hand-edited store may hold anything there.
        baseline={**_mapping(entry.get("baseline")), **_mapping(point.get("baseline"))},
        study={**_mapping(entry.get("study")), "trial": point.get("trial")},
    )
    return out


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _own_budget(point: Mapping[str, Any]) -> float:
    """The score-loss budget of the study a point comes from."""
    budget = (point.get("requirement") or {}).get("max_score_loss")
    if isinstance(budget, int | float) and is_number(budget):  # isinstance narrows for mypy
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
        f"{m['time_per_image']:.4g} s/image, score loss {_SCORE_LOSS.show(m['score_loss'])}"
    )


# ---- what comes nearest ---------------------------------------------------------------------


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
        f"{e['measured']['speedup']:.2f}x, "
        f"loss {_SCORE_LOSS.show(e['measured'].get('score_loss'))}"
        f"{fidelity(e['measured'])}"
        for e in ranked
    ]
