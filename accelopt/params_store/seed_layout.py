"""The seed system's ``search_params.json`` layout: accelopt's entries written in it, read back.

The seed's traversal_search.py wrote one flat JSON object. Each key is the string
``str((pipe, sched, str(steps), req_speedup, max_score_loss, sorted(targets)))`` and maps to
``best_params``: the knobs under upstream's names (``cache_interval``, ``cache_branch_id``,
``gate_step``, ``sp_interval``, ``fi_interval``, ``warmup``, ``ratio``, ``max_downsample``) and
``speedup``, rounded to 2 decimals. Every answer is there twice: under its key, and under the
key with the achieved speedup in place of ``req_speedup``::

    {"('SDXL', 'DDIM', '25', None, 0.02, ['deepcache'])":
         {"cache_interval": 3, "cache_branch_id": 0, "speedup": 2.27},
     "('SDXL', 'DDIM', '25', 2.27, 0.02, ['deepcache'])":
         {"cache_interval": 3, "cache_branch_id": 0, "speedup": 2.27}}

accelopt's store keys are the same strings, so ``seed_layout`` only flattens. The layout has no
slot for a time requirement: entries exported for ``--req-time`` are left out (and named).
``read_params_file`` reads either layout; a seed file's entries get what the layout does not
hold (resolution, guidance, hub id) from the defaults accelopt uses for that model.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from accelopt._types import is_number
from accelopt.errors import AccelOptError, printable
from accelopt.measure.constraints import BOUNDS
from accelopt.params_store.file import (
    FORMAT,
    locked,
    read_json,
    replace_file,
    seed_key,
    store_entries,
)

__all__ = ["KNOBS", "LAYOUTS", "ParamsFile", "read_params_file", "seed_layout", "write_seed"]

LAYOUTS = ("accelopt", "seed")
# The seed's flat knob names -> (accelerator, accelopt's knob name).
KNOBS = {
    "cache_interval": ("deepcache", "cache_interval"),
    "cache_branch_id": ("deepcache", "cache_branch_id"),
    "gate_step": ("tgate", "gate_step"),
    "sp_interval": ("tgate", "sp_interval"),
    "fi_interval": ("tgate", "fi_interval"),
    "warmup": ("tgate", "warm_up"),
    "ratio": ("tome", "ratio"),
    "max_downsample": ("tome", "max_downsample"),
}
# Knobs the seed had no name for, with the value that means what the seed did (dropped then).
_UNSEEDED = {"use_rand": False, "seed": 0}
_MAX_KEY = 1000  # characters; a seed key is about 60
FIDELITY_BOUNDS = tuple(k for k in BOUNDS if k != "clip_loss")  # no slot in the seed's key


def seed_layout(
    entries: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``entries`` in the seed's layout, and the keys it has no slot for: time requirements,
    fidelity bounds, and knobs the seed did not have (ToMe's random partition).

    An achieved-speedup key never replaces a key some entry was exported under.
    """
    own: dict[str, dict[str, Any]] = {}
    achieved: dict[str, dict[str, Any]] = {}
    left_out = []
    for key, entry in sorted(entries.items()):
        requirement = entry["requirement"]
        if any(requirement.get(k) is not None for k in ("req_time", *FIDELITY_BOUNDS)):
            left_out.append(key)
            continue
        params = {k: v for k, v in entry["params"].items() if k not in _UNSEEDED}
        if any(entry["params"].get(k, off) != off for k, off in _UNSEEDED.items()):
            left_out.append(key)
            continue
        speedup = round(float(entry["measured"]["speedup"]), 2)
        params = {**params, "speedup": speedup}
        own[key] = params
        again = seed_key(
            entry["pipeline"],
            entry["scheduler"],
            entry["steps"],
            entry["targets"],
            requirement["max_score_loss"],
            speedup,
        )
        achieved.setdefault(again, params)
    return {**achieved, **own}, left_out


def write_seed(path: Path, entries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Merge ``entries`` into the seed-layout file ``path`` under the store's lock, swapped in
    atomically; returns the keys left out. A file in another layout is refused, untouched."""
    flat, left_out = seed_layout(entries)
    with locked(path):
        existing: dict[str, Any] = {}
        if path.exists():
            layout, data = _load(path)
            if layout != "seed":
                raise AccelOptError(
                    f"{path} is an accelopt params store, not a seed-layout file; left "
                    f"untouched: export --format seed to another --store"
                )
            existing = data
        merged = {**existing, **flat}
        replace_file(path, json.dumps(merged, indent=2, allow_nan=False) + "\n")
    return left_out


class ParamsFile(NamedTuple):
    """A params file read: its layout, its entries as accelopt's store holds them, and the seed
    entries that could not be read, as ``(printable key, why)`` (an accelopt store's entries
    are checked by ``accelopt.params_store.check.usable_entries``)."""

    layout: str
    entries: dict[str, dict[str, Any]]
    problems: list[tuple[str, str]]


def read_params_file(path: Path) -> ParamsFile:
    """``path`` in either layout; ("accelopt", {}, []) when the file does not exist."""
    if not os.path.lexists(path):
        return ParamsFile("accelopt", {}, [])
    layout, data = _load(path)
    if layout == "accelopt":
        return ParamsFile(layout, store_entries(path, data), [])
    entries, problems = {}, []
    for key, params in data.items():
        try:
            entries[key] = _entry(path, key, params)
        except AccelOptError as err:
            problems.append((printable(key), str(err)))
    return ParamsFile(layout, entries, problems)


def _load(path: Path) -> tuple[str, dict[str, Any]]:
    data = read_json(path, "params file")
    if not isinstance(data, dict):
        raise AccelOptError(f"{path} is not a params file (not a JSON object); left untouched")
    if "format" in data:
        if data["format"] != FORMAT:
            raise AccelOptError(
                f'{path} is not an accelopt params store (no "format": "{FORMAT}"); left '
                f"untouched, pass --store to use another file"
            )
        return "accelopt", data
    if not all(isinstance(v, dict) for v in data.values()):
        raise AccelOptError(
            f"{path} is neither an accelopt params store nor a seed-layout file (each value "
            f"of a seed file is a best_params object); left untouched"
        )
    return "seed", data


def _entry(path: Path, key: str, params: dict[str, Any]) -> dict[str, Any]:
    """A seed file's key and best_params as an accelopt store entry."""
    from accelopt.pipelines.schedulers import resolve_scheduler
    from accelopt.spec import generation_defaults

    def refuse(why: str) -> AccelOptError:
        return AccelOptError(f"{path}: seed key {key[:120]!r}: {why}; left untouched")

    pipe, sched, steps, req_speedup, loss, targets = _parse_key(key, refuse)
    accelerators: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        if not is_number(value):
            raise refuse(f"{name[:40]!r} is not a number")
        if name == "speedup":
            continue
        if name not in KNOBS:
            raise refuse(f"unknown knob {name[:40]!r}; known: {', '.join(KNOBS)}, speedup")
        owner, knob = KNOBS[name]
        accelerators.setdefault(owner, {})[knob] = value
    if "speedup" not in params:
        raise refuse("its best_params has no speedup")
    if not set(accelerators) <= set(targets):
        raise refuse(f"knobs of {', '.join(sorted(set(accelerators) - set(targets)))} outside "
                     f"its targets")  # fmt: skip
    generation = generation_defaults(pipe)
    if generation is None:
        raise refuse(f"accelopt does not know the pipeline {pipe[:60]!r}")
    try:
        scheduler = resolve_scheduler(sched).name
    except AccelOptError as err:
        raise refuse(str(err)) from None
    return {
        "key": key,
        "pipeline": pipe,
        "model": pipe,
        "scheduler": scheduler,
        "seed_scheduler": sched,
        "steps": steps,
        "targets": sorted(targets),
        "requirement": {"req_speedup": req_speedup, "max_score_loss": loss, "req_time": None},
        "accelerators": accelerators,
        "params": {k: v for k, v in params.items() if k != "speedup"},
        "generation": generation,
        "measured": {
            "speedup": float(params["speedup"]),
            "time_per_image": None,
            # The seed kept only answers within their key's budget; it did not store the loss.
            "score_loss": loss,
            "score": None,
            "peak_memory": None,
            "device": "unknown (a seed-layout file)",
        },
        "baseline": {},
        "versions": {},
        "study": None,
        "layout": "seed",
    }


def _parse_key(key: str, refuse: Any) -> tuple[str, str, int, float | None, float, list[str]]:
    if len(key) > _MAX_KEY:
        raise refuse(f"longer than {_MAX_KEY} characters")
    try:
        fields = ast.literal_eval(key)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise refuse("not a tuple literal") from None
    shape = (
        isinstance(fields, tuple)
        and len(fields) == 6
        and isinstance(fields[0], str)
        and isinstance(fields[1], str)
        and isinstance(fields[2], str)
        and fields[2].isdigit()
        and (fields[3] is None or is_number(fields[3]))
        and is_number(fields[4])
        and isinstance(fields[5], list)
        and all(isinstance(t, str) for t in fields[5])
    )
    if not shape:
        raise refuse(
            "expected (pipe, sched, 'steps', req_speedup or None, max_score_loss, [targets])"
        )
    pipe, sched, steps, req_speedup, loss, targets = fields
    return pipe, sched, int(steps), req_speedup, float(loss), targets
