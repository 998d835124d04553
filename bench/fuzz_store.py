"""Fuzz accelopt's own params stores through the CLI, in process.

    python -m bench.fuzz_store --cases 2000 --seed 3407
    python -m bench.fuzz_store --cases 1 --seed 3407 --first 1234 -v   # replay case 1234

Each case is a store of valid entries in the shape export writes (``accelopt.testing.
make_entry``: several models, accelerators, execution modes, a pareto entry with its
frontier), or a seed-layout file, with one to three mutations: a key left out or added, a
wrong type, NaN or Infinity, a huge number, an odd string (escapes, surrogates, path-like
names), targets and accelerators that disagree, a knob out of range, a frontier point broken,
the file itself broken (not UTF-8, cut short, another format), the store path a FIFO, a
folder or a link. Every case runs, through ``accelopt.cli.main`` in this process:

- ``store check``;
- ``codegen`` for a request near the store's entries (random requirements and targets), once
  with a step count no entry has (the refusal names the nearest entries), and once as a batch
  (``--tasks``, outputs with path-like names, a folder or a FIFO in the way).

A finding is a command that raises (a traceback), runs past ``--timeout`` seconds (a hang),
exits with a code other than 0, 1 or 2, writes outside its output folder, or writes a script
whose settings ``accelopt.accelerators.apply`` refuses on its model's pipeline (built on the
meta device) or its execution mode refuses (``accelopt.execution.check``, ``check_values``).
Scripts for a model accelopt does not know are compiled and their header read, not applied.
Prints the counts and every finding with its case number; exits 1 on any finding.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Fuzz", "main"]

# ---- the stores mutated -------------------------------------------------------------------

DC = {"cache_interval": 3, "cache_branch_id": 0}
TOME_SD = {"ratio": 0.5, "max_downsample": 1}
TOME_XL = {"ratio": 0.5, "max_downsample": 2, "use_rand": False}
TGATE = {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2}
# (model, scheduler, steps, accelerators, execution mode)
BASES: list[tuple[str, str, int, dict[str, Any], str]] = [
    ("SDXL", "DDIM", 25, {"deepcache": DC}, "eager"),
    ("SDXL", "DDIM", 25, {"deepcache": DC, "tgate": TGATE}, "compile"),
    ("SDXL", "DPM-Solver++", 30, {"tome": TOME_XL}, "eager"),
    ("SD1.5", "DDIM", 50, {"deepcache": DC, "tome": TOME_SD, "tgate": TGATE}, "eager"),
    ("SD1.5", "UniPC", 20, {"tgate": {**TGATE, "gate_step": 8}}, "cuda-graphs"),
    ("PixArt-Sigma", "DPM-Solver++", 20, {"tgate": {**TGATE, "gate_step": 8}}, "eager"),
    ("TinySD", "DDIM", 10, {"deepcache": {"cache_interval": 2, "cache_branch_id": 1}}, "eager"),
    ("TinySD", "DDIM", 10, {"tome": {"ratio": 0.3, "max_downsample": 1}}, "compile"),
    ("ToySD", "DDIM", 10, {"deepcache": DC}, "eager"),
    ("someone/unknown-model", "DDIM", 25, {"deepcache": DC}, "eager"),
]

ODD_STRINGS = [
    "", " ", "\x1b[2J\x1b]0;title\x07", "line\nbreak", "\u202eevil", "\ud800", "x" * 5000,
    "../../etc/passwd", "/etc/passwd", "C:\\Windows\\system32", "a/b/c.py", "~/.bashrc",
    "nul\x00byte", "DeepCache", " tome ", "tomesd", "SDXL", "sdxl", "NaN", "1e999", "null",
    "stabilityai/stable-diffusion-xl-base-1.0", "file:///tmp/x", "'); import os; ('",
    '"""', "\\", "{}", "[]", "deepcache+tgate", "ddim", "DDIM ", "25", "-1",
]  # fmt: skip
ODD_NUMBERS: list[Any] = [
    math.nan, math.inf, -math.inf, 10**400, -(10**400), 10**5000, 1e308, -1e308, 5e-324,
    2**63, 2**70, -1, 0, -0.0, 0.5, 1, 1.0, 3, 7, 1000, 1001, True, False,
]  # fmt: skip
ACCELERATOR_NAMES = ["deepcache", "tome", "tgate"]


def base_entries() -> list[dict[str, Any]]:
    """One valid entry per ``BASES`` row, and a pareto entry with a frontier of three."""
    from accelopt.testing import make_entry

    entries = []
    for model, sched, steps, used, mode in BASES:
        entries.append(make_entry(model, sched, steps, copy.deepcopy(used), execution=mode,
                                  study_name=f"{model}-{sched}-{steps}"))  # fmt: skip
    pareto = make_entry("SDXL", "DDIM", 25, {"deepcache": dict(DC)}, speedup=2.0,
                        score_loss=0.01, key=None)  # fmt: skip
    pareto["targets"] = ["deepcache", "tgate", "tome"]
    pareto["key"] = pareto["key"].replace("['deepcache']", "['deepcache', 'tgate', 'tome']")
    pareto.update(objective="pareto", pareto_metric="score_loss")
    pareto["frontier"] = [
        {"trial": i, "accelerators": used, "params": {},
         "measured": {"speedup": s, "time_per_image": 1 / s, "score": 30.0, "score_loss": loss,
                      "peak_memory": None, "device": "NVIDIA H200"},
         "baseline": {"time_per_image": 1.0}, "heldout": None}
        for i, (s, loss, used) in enumerate([
            (1.5, 0.001, {"deepcache": {**DC, "cache_interval": 2}}),
            (2.0, 0.01, {"deepcache": dict(DC)}),
            (3.0, 0.03, {"deepcache": dict(DC), "tgate": dict(TGATE)}),
        ])
    ]  # fmt: skip
    entries.append(pareto)
    heldout = make_entry("SD1.5", "DDIM", 50, {"deepcache": dict(DC)}, speedup=2.5)
    heldout["heldout"] = {"speedup": 2.4, "speedups": [2.4] * 7, "interval": [2.3, 2.5],
                          "level": 0.98, "passed": True, "speed": "faster"}  # fmt: skip
    entries.append(heldout)
    return entries


def seed_file(rng: random.Random) -> dict[str, Any]:
    """A seed-layout file (the seed system's flat ``search_params.json``)."""
    flat: dict[str, Any] = {}
    for _ in range(rng.randint(1, 3)):
        pipe = rng.choice(["SDXL", "SD1.5", "SD2.1", "TinySD"])
        targets = sorted(rng.sample(ACCELERATOR_NAMES, rng.randint(1, 3)))
        key = str((pipe, "DDIM", "25", None, 0.02, targets))
        params: dict[str, Any] = {"speedup": round(rng.uniform(1.1, 3), 2)}
        if "deepcache" in targets:
            params.update(cache_interval=3, cache_branch_id=0)
        if "tgate" in targets:
            params.update(gate_step=10, sp_interval=5, fi_interval=1, warmup=2)
        if "tome" in targets:
            params.update(ratio=0.5, max_downsample=2 if pipe == "SDXL" else 1)
        flat[key] = params
    return flat


# ---- mutations ----------------------------------------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys, list indexes)."""
    found = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _paths(v, (*prefix, i))
    return found


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    _at(node, path[:-1])[path[-1]] = value


def odd_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(7 if depth < 2 else 4)
    if choice == 0:
        return rng.choice(ODD_STRINGS)
    if choice in (1, 2):
        return rng.choice(ODD_NUMBERS)
    if choice == 3:
        return None
    if choice == 4:
        return [odd_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if choice == 5:
        return {
            rng.choice(ODD_STRINGS): odd_value(rng, depth + 1) for _ in range(rng.randint(0, 3))
        }
    return rng.choice(ACCELERATOR_NAMES)


def _entry_of(store: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    entries = store.get("entries")
    if not isinstance(entries, dict) or not entries:
        return None
    entry = entries[rng.choice(list(entries))]
    return entry if isinstance(entry, dict) else None


def mutate_value(store: Any, rng: random.Random) -> str:
    """Anything anywhere: a key removed or added, a value replaced by an odd one."""
    paths = [p for p in _paths(store) if p]
    if not paths:  # emptied by an earlier mutation
        store[rng.choice(ODD_STRINGS)] = odd_value(rng)
        return "key added"
    path = rng.choice(paths)
    parent = _at(store, path[:-1])
    kind = rng.choice(["remove", "add", "replace", "replace", "number"])
    if kind == "remove" and isinstance(parent, dict):
        del parent[path[-1]]
        return "key removed"
    if kind == "add" and isinstance(parent, dict):
        parent[rng.choice([*ODD_STRINGS, "extra", "speedup", "device"])] = odd_value(rng)
        return "key added"
    if kind == "number":
        _set(store, path, rng.choice(ODD_NUMBERS))
        return "odd number"
    _set(store, path, odd_value(rng))
    return "odd value"


def mutate_measured(store: Any, rng: random.Random) -> str:
    """A measurement left out, null, or odd (codegen and the queries read them)."""
    entry = _entry_of(store, rng)
    if entry is None or not isinstance(entry.get("measured"), dict):
        return mutate_value(store, rng)
    m = entry["measured"]
    fields = ["score_loss", "device", "time_per_image", "speedup", "score", "psnr",
              "speedup_interval", "speedup_level", "timing_batch_size"]  # fmt: skip
    field = rng.choice(fields)
    action = rng.randrange(3)
    if action == 0:
        m.pop(field, None)
        return "measurement left out"
    m[field] = None if action == 1 else odd_value(rng)
    return "measurement null" if action == 1 else "measurement odd"


def mutate_targets(store: Any, rng: random.Random) -> str:
    """Targets and accelerators that disagree."""
    entry = _entry_of(store, rng)
    if entry is None:
        return mutate_value(store, rng)
    action = rng.randrange(6)
    if action == 0:
        entry["accelerators"] = {}
        return "accelerators emptied"
    if action == 1:
        entry["targets"] = sorted(rng.sample(ACCELERATOR_NAMES, rng.randint(0, 3)))
        return "targets replaced"
    if action == 2:
        entry["targets"] = [*entry.get("targets", []), rng.choice(ACCELERATOR_NAMES)]
        return "targets duplicated or unsorted"
    if action == 3 and isinstance(entry.get("accelerators"), dict) and entry["accelerators"]:
        used = entry["accelerators"]
        name = rng.choice(list(used))
        used[rng.choice(["DeepCache", "tomesd", " tgate", "TGATE", *ACCELERATOR_NAMES])] = (
            used.pop(name)
        )
        return "accelerator renamed"
    if action == 4:
        entry.setdefault("accelerators", {})[rng.choice(ACCELERATOR_NAMES)] = rng.choice(
            [dict(DC), dict(TOME_XL), dict(TOME_SD), dict(TGATE), {}]
        )
        return "accelerator added"
    entry["targets"] = rng.choice([None, "deepcache", {"deepcache": 1}, [1], [None]])
    return "targets wrong type"


def mutate_knob(store: Any, rng: random.Random) -> str:
    """A knob out of range, of the wrong type, unknown, or gone."""
    entry = _entry_of(store, rng)
    used = entry.get("accelerators") if entry else None
    if not isinstance(used, dict) or not used:
        return mutate_value(store, rng)
    knobs = used[rng.choice(list(used))]
    if not isinstance(knobs, dict):
        return mutate_value(store, rng)
    action = rng.randrange(4)
    if action == 0 and knobs:
        knobs.pop(rng.choice(list(knobs)))
        return "knob removed"
    if action == 1:
        knobs[rng.choice([*ODD_STRINGS[:8], "scale", "seed", "use_rand"])] = odd_value(rng)
        return "knob added"
    if knobs:
        knob = rng.choice(list(knobs))
        knobs[knob] = rng.choice(
            [rng.randint(-3, 60), rng.uniform(-1, 2), *ODD_NUMBERS]
            if action == 2
            else [str(knobs[knob]), [knobs[knob]], None, {"v": 1}]
        )
    return "knob out of range" if action == 2 else "knob wrong type"


def mutate_frontier(store: Any, rng: random.Random) -> str:
    """A pareto entry's frontier broken: a point, its measurements, or the list itself."""
    entries = store.get("entries") if isinstance(store, dict) else None
    pareto = [e for e in (entries or {}).values() if isinstance(e, dict) and "frontier" in e]
    if not pareto:
        return mutate_value(store, rng)
    entry = rng.choice(pareto)
    action = rng.randrange(6)
    points = entry.get("frontier")
    if action == 0 or not isinstance(points, list) or not points:
        entry["frontier"] = rng.choice([None, {}, [], "frontier", [1, None, "x"]])
        return "frontier replaced"
    point = rng.choice(points)
    if not isinstance(point, dict):
        return "frontier replaced"
    if action == 1:
        point["accelerators"] = rng.choice(
            [{}, {"tome": dict(TOME_SD)}, {"deepcache": {"cache_interval": 0}}, None, []]
        )
        return "point accelerators"
    if action == 2 and isinstance(point.get("measured"), dict):
        point["measured"].pop(rng.choice(["speedup", "score_loss", "time_per_image"]), None)
        return "point measurement left out"
    if action == 3:
        point[rng.choice(["baseline", "study", "heldout", "params", "trial"])] = odd_value(rng)
        return "point field odd"
    if action == 4:
        entry["objective"] = rng.choice(["pareto", None, "frontier"])
        entry.pop("frontier", None) if rng.random() < 0.5 else None
        return "objective without frontier"
    entry[rng.choice(["baseline", "study", "requirement", "heldout"])] = odd_value(rng)
    return "entry field odd"


def mutate_key(store: Any, rng: random.Random) -> str:
    """The store's key and the entry's own disagree, or a key is odd."""
    entries = store.get("entries") if isinstance(store, dict) else None
    if not isinstance(entries, dict) or not entries:
        return mutate_value(store, rng)
    key = rng.choice(list(entries))
    new = rng.choice([*ODD_STRINGS, key + " ", key.upper()])
    entries[new] = entries.pop(key)
    if isinstance(entries[new], dict) and rng.random() < 0.5:
        entries[new]["key"] = new
    return "key changed"


MUTATIONS: list[Callable[[Any, random.Random], str]] = [
    mutate_value, mutate_value, mutate_measured, mutate_measured, mutate_targets,
    mutate_targets, mutate_knob, mutate_knob, mutate_frontier, mutate_key,
]  # fmt: skip


Asked = tuple[str, str, int]  # (model, scheduler, steps) of a request


def store_bytes(
    rng: random.Random, bases: list[dict[str, Any]]
) -> tuple[bytes, list[str], list[Asked]]:
    """A mutated store (or seed file) as bytes, the mutations made, and what its entries
    answered before (what a request should ask for, mostly)."""
    from accelopt.params_store.file import FORMAT, VERSION

    if rng.random() < 0.1:  # the seed's layout, its keys and knobs mutated
        data: Any = seed_file(rng)
        asked: list[Asked] = [("SDXL", "DDIM", 25), ("SD1.5", "DDIM", 25), ("TinySD", "DDIM", 25)]
        kinds = []
        for _ in range(rng.randint(1, 2)):
            kinds.append("seed: " + mutate_value(data, rng))
    else:
        chosen = rng.sample(bases, rng.randint(1, 4))
        asked = [(e["model"], e["scheduler"], e["steps"]) for e in chosen]
        entries = {e["key"]: copy.deepcopy(e) for e in chosen}
        data = {"format": FORMAT, "version": VERSION, "entries": entries}
        count = rng.choice([1, 1, 1, 2, 3])
        kinds = [rng.choice(MUTATIONS)(data, rng) for _ in range(count)]
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # only to write 10**5000: accelopt reads under the default
    try:
        text = json.dumps(data, indent=rng.choice([None, 2]), allow_nan=True)
    finally:
        sys.set_int_max_str_digits(limit)
    raw = text.encode("utf-8", "surrogatepass")
    damage = rng.random()
    if damage < 0.02:
        raw, kinds = raw[: rng.randrange(len(raw))], [*kinds, "file cut short"]
    elif damage < 0.04:
        raw, kinds = b"\xff\xfe" + raw, [*kinds, "not UTF-8"]
    elif damage < 0.05:
        raw, kinds = b"[" * 3000 + b"]" * 3000, ["nested too deep"]
    return raw, kinds, asked


# ---- running the CLI ----------------------------------------------------------------------


class Hang(BaseException):
    """A command ran past the timeout (raised by SIGALRM: no ``except Exception`` stops it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


class Fuzz:
    """Runs cases and keeps the counts and findings."""

    def __init__(self, timeout: int, verbose: bool) -> None:
        self.timeout = timeout
        self.verbose = verbose
        self.codes: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.scripts = Counter[str]()
        self.findings: list[str] = []
        self.finding_kinds: Counter[str] = Counter()
        self.bases = [e for e in base_entries() if self._valid(e)]

    @staticmethod
    def _valid(entry: dict[str, Any]) -> bool:
        from accelopt.params_store.check import InvalidEntry, check_entry

        try:
            check_entry(entry["key"], entry)
        except InvalidEntry as err:
            print(f"fuzz_store: base entry refused, left out: {err}", file=sys.stderr)
            return False
        return True

    def run(self, case: int, name: str, argv: list[str]) -> tuple[int | None, str]:
        """``accelopt.cli.main(argv)``: its exit code (None if it raised or hung) and stderr."""
        from accelopt.cli import main

        out, err = io.StringIO(), io.StringIO()
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(self.timeout)
        code: int | None = None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
        except Hang:
            self.finding(case, f"{name}: hung past {self.timeout} s: {argv}")
        except KeyboardInterrupt:  # the fuzz itself stopped (main catches its own)
            raise
        except BaseException as exc:  # a traceback a user would see
            self.finding(case, f"{name}: raised {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        if code in (130, 143):  # main took a Ctrl-C or SIGTERM meant for the fuzz: stop
            raise KeyboardInterrupt
        self.codes[f"{name} exit {code}"] += 1
        text = err.getvalue() + out.getvalue()
        if "Traceback" in text:
            self.finding(case, f"{name}: printed a traceback")
        if code is not None and code not in (0, 1, 2):
            self.finding(case, f"{name}: exit code {code}")
        return code, err.getvalue()

    def finding(self, case: int, what: str) -> None:
        self.findings.append(f"case {case}: {what}")
        self.finding_kinds[_kind(what)] += 1
        if self.verbose:
            print(f"FINDING case {case}: {what}", file=sys.stderr)

    def case(self, case: int, rng: random.Random, root: Path) -> None:
        folder = root / f"c{case}"
        folder.mkdir()
        raw, kinds, asked = store_bytes(rng, self.bases)
        self.kinds.update(kinds)
        store = folder / "store.json"
        store.write_bytes(raw)
        where = rng.random()
        if where < 0.01:  # the store path is something else
            store.unlink()
            os.mkfifo(store)
            self.kinds["store is a FIFO"] += 1
        elif where < 0.02:
            link = folder / "link.json"
            link.symlink_to(store.name)
            store = link
            self.kinds["store through a link"] += 1
        out = folder / "out"
        out.mkdir()
        self.run(case, "store check", ["store", "check", "--store", str(store)])
        model, sched, steps = self._request_model(rng, asked)
        flags = self._request_flags(rng)
        script = out / rng.choice(["a.py", "b.py"])
        argv = ["codegen", "--pipe", model, "--sched", sched, "--steps", str(steps), *flags,
                "--store", str(store), "-o", str(script), "--force"]  # fmt: skip
        code, _ = self.run(case, "codegen", argv)
        if code == 0:
            self.verify(case, script)
        argv[6] = str(steps + 1)  # no entry has it: the refusal names the nearest ones
        self.run(case, "codegen nearest", argv)
        self.batch(case, rng, folder, store, model, sched, steps)
        outside = {p.name for p in folder.iterdir()} - {"store.json", "link.json", "out",
                                                        "tasks.json", "batch"}  # fmt: skip
        if os.path.lexists("/tmp/abs.py"):  # a task's absolute output
            outside.add("/tmp/abs.py")
            os.unlink("/tmp/abs.py")
        if outside:
            self.finding(case, f"wrote outside its output folder: {sorted(outside)}")

    def _request_model(self, rng: random.Random, asked: list[Asked]) -> Asked:
        """What one of the store's entries answered (mostly), or another model's request."""
        model, sched, steps = rng.choice(asked)
        if rng.random() < 0.1:
            model, sched, steps, _, _ = rng.choice(BASES)
        if rng.random() < 0.1:
            model = rng.choice([model.lower(), "stabilityai/stable-diffusion-xl-base-1.0", "x"])
        return model, sched, steps

    def _request_flags(self, rng: random.Random) -> list[str]:
        flags: list[str] = []
        if rng.random() < 0.4:  # the store's best, no requirement
            return flags
        if rng.random() < 0.4:
            flags += ["--targets", "+".join(rng.sample(ACCELERATOR_NAMES, rng.randint(1, 3)))]
        if rng.random() < 0.3:
            flags += ["--req-speedup", rng.choice(["1.2", "2", "2.5", "10"])]
        if rng.random() < 0.3:
            flags += ["--max-score-loss", rng.choice(["0.001", "0.02", "0.05", "0.5"])]
        if rng.random() < 0.2:
            flags += ["--req-time", rng.choice(["0.1", "0.5", "2"])]
        if rng.random() < 0.1:
            flags += ["--min-psnr", "30"]
        return flags

    def batch(self, case: int, rng: random.Random, folder: Path, store: Path, model: str,
              sched: str, steps: int) -> None:  # fmt: skip
        """``codegen --tasks``: outputs with odd names, sometimes one file or in the way."""
        out = folder / "batch"
        out.mkdir()
        odd = ["./x.py", "../escape.py", "/tmp/abs.py", "a" * 300 + ".py", "dir", "fifo", "",
               "x\x00.py", "same/x.py", *ODD_STRINGS[:6]]  # fmt: skip
        names = [rng.choice([None, "x.py", "sub/y.py"] if rng.random() < 0.6 else odd)
                 for _ in range(2)]  # fmt: skip
        if "same/x.py" in names:
            (out / "same").symlink_to(".")
        if "dir" in names:
            (out / "dir").mkdir()
        if "fifo" in names:
            os.mkfifo(out / "fifo")
        tasks = []
        for name in names:
            task: dict[str, Any] = {"pipe": model, "sched": sched, "steps": steps}
            if name is not None:
                task["output"] = name
            if rng.random() < 0.3:
                task["req_speedup"] = rng.choice([1.5, 2.0])
            tasks.append(task)
        (folder / "tasks.json").write_text(json.dumps(tasks))
        argv = ["codegen", "--tasks", str(folder / "tasks.json"), "--store", str(store), "-o",
                str(out), *(["--force"] if rng.random() < 0.7 else [])]  # fmt: skip
        code, _ = self.run(case, "codegen --tasks", argv)
        if code == 0:
            for path in out.rglob("*.py"):
                if path.is_file():
                    self.verify(case, path)

    def verify(self, case: int, script: Path) -> None:
        """The script compiles, its header reads back, and its settings are ones ``apply``
        and the execution mode take on its model."""
        from accelopt.codegen import read_header

        self.scripts["written"] += 1
        source = script.read_text("utf-8")
        try:
            compile(source, str(script), "exec")
            header = read_header(source)
        except (SyntaxError, ValueError) as err:
            self.finding(case, f"script does not compile or read back: {err}")
            return
        why = refusal(header)
        if why == "unknown model":
            self.scripts["unknown model: compiled, not applied"] += 1
        elif why:
            self.scripts["refused by apply"] += 1
            self.finding(case, f"script carries settings apply refuses: {why}")
        else:
            self.scripts["applied"] += 1


def _kind(what: str) -> str:
    """A finding without its particulars: ``codegen: raised KeyError``, ``codegen --tasks:
    hung``."""
    command, _, rest = what.partition(": ")
    if rest.startswith("raised "):
        return f"{command}: {rest.split(':')[0]}"
    return f"{command}: {rest.split(' ')[0]}" if rest else command


def refusal(header: dict[str, Any]) -> str | None:
    """Why ``accelopt.accelerators.apply`` (or the execution mode) refuses a script's
    settings on its model; None if it takes them."""
    from accelopt import accelerators, execution
    from accelopt.errors import AccelOptError

    configs = {n: header[n.upper()] for n in ACCELERATOR_NAMES if header[n.upper()] is not None}
    pipe = _pipeline(header["BUILT_MODEL"] or _known(header["MODEL"], header["PACKAGED_MODEL"]))
    if pipe is None:
        return "unknown model"
    try:
        mode = execution.check(header["EXECUTION"], configs)
        if configs:
            applied = accelerators.apply(pipe, configs, steps=header["STEPS"])
            execution.check_values(mode, applied.configs)
            applied.remove()
    except (AccelOptError, KeyError, TypeError, ValueError) as err:
        return f"{type(err).__name__}: {err} ({header['MODEL']}, {configs})"
    return None


def _known(model: str, packaged: Any) -> str | None:
    from accelopt.pipelines import model_info

    info = model_info(model)
    return info.name if info else None


@functools.cache
def _pipeline(name: str | None) -> Any:
    """A known model's pipeline on the meta device (the toy's on the CPU, as it ships)."""
    from accelopt.pipelines import TOY_PIPELINES, load_pipeline

    if name is None:
        return None
    toy = name in TOY_PIPELINES
    return load_pipeline(name, weights="pretrained" if toy else "random",
                         device="cpu" if toy else "meta")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--first", type=int, default=0, help="the first case's number")
    parser.add_argument("--timeout", type=int, default=60, help="seconds a command may take")
    parser.add_argument("-v", "--verbose", action="store_true", help="print findings as found")
    args = parser.parse_args(argv)
    os.environ.pop("ACCELOPT_STORE", None)
    fuzz = Fuzz(args.timeout, args.verbose)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-store-") as tmp:
        for case in range(args.first, args.first + args.cases):
            fuzz.case(case, random.Random(f"{args.seed}:{case}"), Path(tmp))
            if args.verbose and (case + 1) % 100 == 0:
                print(f"{case + 1} cases, {len(fuzz.findings)} findings", file=sys.stderr)
    seconds = time.perf_counter() - start
    commands = sum(fuzz.codes.values())
    print(f"fuzz_store: {args.cases} cases (seed {args.seed}, first {args.first}), "
          f"{commands} commands in {seconds:.0f} s")  # fmt: skip
    print("mutations:", ", ".join(f"{k} {v}" for k, v in fuzz.kinds.most_common()))
    print("exit codes:", ", ".join(f"{k}: {v}" for k, v in sorted(fuzz.codes.items())))
    print("scripts:", ", ".join(f"{k} {v}" for k, v in fuzz.scripts.items()) or "none")
    kinds = ", ".join(f"{k} {v}" for k, v in fuzz.finding_kinds.most_common())
    print(f"findings: {len(fuzz.findings)}" + (f" ({kinds})" if kinds else ""))
    for line in fuzz.findings[:50]:
        print("  " + line)
    return 1 if fuzz.findings else 0


if __name__ == "__main__":
    sys.exit(main())
