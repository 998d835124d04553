"""Store entry -> one standalone Python script that runs the stored configuration.

The script imports diffusers, torch and the upstream accelerator packages, never accelopt. Its
values live in a header of plain assignments built as an AST (``literal``), so no value is ever
pasted into source text: a model id with quotes, a prompt with a newline or a NaN renders as
valid Python that evaluates back to the same value. The code around the header is the same for
every script and is real code in ``accelopt.portable``, copied verbatim: the imports its parts
need, then the modules studies ran (the graph-safe DeepCache and the CUDA-graph replayer), then
``accelopt.portable.script`` (loading, the accelerators, the execution mode, ``main``).

One exception: where its model is accelopt's own (a tiny pipeline built from config, the toy
model in the package), the script imports accelopt when it loads that model, and its docstring
says so.

A script runs the denoiser under the execution mode its entry was measured in (``EXECUTION``;
``--execution`` overrides it): compiled by inductor, or replayed as CUDA graphs the way
``accelopt.execution`` does. It warms up first, then times one generation and prints its seconds
per image, so the deployed speed can be set beside the measured one.

Which entry answers a request is ``accelopt.params_store.query``'s question; ``write_scripts``
asks it, then renders each answer here. The request names are re-exported from here for the
callers that import them from codegen.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import os
import sys
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from accelopt.errors import AccelOptError, printable
from accelopt.measure.constraints import METRICS, quality_text
from accelopt.measure.timing import interval_text, time_text
from accelopt.params_store.query import (
    BOUND_FLAGS,
    Request,
    find_entry,
    frontier_points,
    load_tasks,
    nearest,
    parse_request_targets,
    why_missing,
)

# BOUND_FLAGS, Request, find_entry, frontier_points, load_tasks, nearest,
# parse_request_targets and why_missing are accelopt.params_store.query's, re-exported:
# the CLI and notebooks import them from here.
__all__ = [
    "BODY",
    "BOUND_FLAGS",
    "HEADER_NAMES",
    "PORTABLE",
    "Request",
    "find_entry",
    "frontier_points",
    "header_values",
    "literal",
    "load_tasks",
    "nearest",
    "parse_request_targets",
    "portable_parts",
    "read_header",
    "render_script",
    "script_body",
    "why_missing",
    "write_scripts",
]

_SCORE_LOSS = METRICS["score_loss"]  # how a score loss reads in a docstring: ``1.50%``


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
    reports the others first); a batch's outputs must stay inside ``output``, and no two may be
    one file. Every output is checked (``accelopt._files.check_output``), and every script
    made, before the first is written; an OS error is one line (``AccelOptError``)."""
    from accelopt._files import check_output, write_output
    from accelopt.params_store.check import usable_entries

    entries = usable_entries(entries)[0]
    requests = list(requests)
    if batch:
        _check_folder(output)
        outputs = [_task_output(output, i, r) for i, r in enumerate(requests)]
    else:
        outputs = [(output, f"-o {printable(str(output), 200)}")] * len(requests)
    answers, missing, claimed = [], [], _Claimed()
    for i, (request, (target, shown)) in enumerate(zip(requests, outputs, strict=True)):
        entry = find_entry(entries, request)
        if entry is None:
            missing.append(why_missing(entries, request))
            continue
        if batch:
            claimed.add(i, target)
        check_output(target, shown, force)
        answers.append((target, shown, entry, render_script(entry)))
    for done, (target, shown, _, script) in enumerate(answers):
        try:
            write_output(target, script, shown)
        except AccelOptError as err:  # what no check could foresee (a full disk)
            before = f" ({done} written before it)" if done else ""
            raise AccelOptError(f"{err}{before}") from None
    if missing:
        raise AccelOptError(" | ".join(missing))
    return [(target, entry) for target, _, entry, _ in answers]


def _check_folder(folder: Path) -> None:
    """A batch's ``-o``: a folder, or a path where one can be made."""
    from accelopt._files import check_output, os_problem

    shown = printable(str(folder), 200)
    try:
        is_dir = folder.is_dir()  # follows a link to a folder, as writing into it does
    except OSError as err:
        raise AccelOptError(f"cannot write into -o {shown}: {os_problem(err)}") from None
    if is_dir:
        return
    if os.path.lexists(folder):
        what = "a link to no folder" if folder.is_symlink() else "a file"
        raise AccelOptError(f"-o {shown}: with --tasks, -o names a folder, and this is {what}")
    check_output(folder, f"-o {shown}", force=False)  # where the folder will be made


def _task_output(folder: Path, i: int, request: Request) -> tuple[Path, str]:
    """Task ``i``'s output inside ``folder``, resolved, and how errors name it."""
    name = request.output or request.script_name()
    return _inside(folder, name), f"task {i}'s output {printable(name, 120)}"


class _Claimed:
    """The files a batch's tasks will write: two tasks that would write one file (the same
    path once resolved, or one file under two names) are refused, since the second would
    silently replace the first."""

    def __init__(self) -> None:
        self._by: dict[Any, int] = {}

    def add(self, task: int, target: Path) -> None:
        keys: list[Any] = [target]
        try:
            info = os.stat(target)
            keys.append((info.st_dev, info.st_ino))  # a hard link, a case-blind file system
        except OSError:
            pass  # not there yet (or refused next, in one line, by check_output)
        for key in keys:
            if key in self._by:
                raise AccelOptError(
                    f"tasks {self._by[key]} and {task} both write {printable(str(target), 200)}; "
                    f'give each its own "output" (nothing was written)'
                )
        self._by.update(dict.fromkeys(keys, task))


def _inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it stays inside ``folder`` once symlinks are resolved:
    a task file names its outputs, and it may come from anyone."""
    from accelopt._files import os_problem

    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not name.strip() or "\x00" in name:
        raise AccelOptError(
            f"task output {printable(name, 120)} must be a relative path inside -o {folder}"
        )
    try:
        os.fsencode(name)
    except UnicodeError:  # a lone surrogate a JSON escape can make (\ud800)
        raise AccelOptError(
            f"task output {printable(name, 120)} is not a file name: it holds a character no "
            f"file system encoding has; give another name"
        ) from None
    try:
        root = folder.resolve()
        target = (root / relative).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop (3.11 says it with RuntimeError)
        raise AccelOptError(
            f"task output {printable(name, 120)} in -o {folder}: {os_problem(err)}"
        ) from None
    if not target.is_relative_to(root) or target == root:
        raise AccelOptError(
            f"task output {printable(name, 120)} leads outside -o {folder} (through a link)"
        )
    return target


# ---- rendering -----------------------------------------------------------------------------

HEADER_NAMES = (
    "MODEL",
    "PACKAGED_MODEL",
    "BUILT_MODEL",
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
    "MAGCACHE",
    "TAYLORSEER",
    "FBCACHE",
    "DBCACHE",
    "PAB",
    "FASTERCACHE",
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
    from accelopt import accelerators
    from accelopt.params_store.check import check_entry
    from accelopt.pipelines import TINY_PIPELINES, TOY_PIPELINES, model_info, resolve_dtype
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
        # A tiny model has no weights anywhere: the script builds it with accelopt, with the
        # seed studies build it with (load_pipeline's), so it runs what the study measured.
        "BUILT_MODEL": info.name if info and info.name in TINY_PIPELINES else None,
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
        # One per method (MagCache's with its calibrated ratios, as data), None where unused.
        **{name.upper(): _knobs(name, acc) for name in accelerators.ORDER},
        "DEFAULT_PROMPTS": list(prompts) or _example_prompts(gen.get("prompt_set"), toy),
    }


def _knobs(name: str, applied: Mapping[str, Any]) -> dict[str, Any] | None:
    """Method ``name``'s knobs in the entry, every one of its config's filled in: a script states
    each value it runs with and keeps no default of its own (an entry stores what its study
    searched, and a hand-written one may name only the knob it changes).

    >>> _knobs("tgate", {"tgate": {"gate_step": 8}})
    {'gate_step': 8, 'sp_interval': 5, 'fi_interval': 1, 'warm_up': 2}
    """
    from accelopt import accelerators

    if name not in applied:
        return None
    config = accelerators.get(name).config(applied[name])
    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(config)
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


def _heldout(h: Mapping[str, Any] | None) -> str:
    """The held-out confirmation's speed, the figure export decided on."""
    if not h:
        return ""
    speed = h.get("speed")
    forced = f", {speed}: exported with --force" if speed not in (None, "faster") else ""
    shown = interval_text(h.get("interval"), h.get("level"), len(h.get("speedups") or []))
    return f"\nRe-timed on held-out prompts: {h['speedup']:.2f}x{shown}{forced}."


def render_script(entry: Mapping[str, Any], prompts: Iterable[str] = ()) -> str:
    """The whole script for a store entry (refused unless ``check.check_entry`` passes)."""
    values = header_values(entry, prompts)  # checks the entry first
    text = _docstring_text(entry, values["EXECUTION"]) + _needs_accelopt(values)
    parts = [_portable_parts(name) for name in PORTABLE]
    body_imports, body = script_body()
    imports = _import_block([*body_imports, *(n for own, _ in parts for n in own)])
    portable = "".join(
        f"\n\n# ---- accelopt.portable.{name}, copied verbatim ----\n\n{source}"
        for name, (_, source) in zip(PORTABLE, parts, strict=True)
    )
    body = f"\n\n# ---- accelopt.portable.{BODY}, copied verbatim below its header ----\n\n{body}"
    header = _header(values)
    return f"#!/usr/bin/env python3\n{_docstring(text)}\n\n{imports}\n{header}\n{portable}{body}"


def _docstring_text(entry: Mapping[str, Any], execution: str) -> str:
    """What the script's docstring says: the configuration, and how it measured."""
    m = entry["measured"]
    doc = (
        f"{entry['pipeline']}, {entry['scheduler']}, {entry['steps']} steps, "
        f"{' + '.join(sorted(entry['accelerators'])) or 'no accelerator'}."
    )
    # the batch size it was timed at and what the speedup compares it with
    per_image = time_text(m, "s per image")
    shown = interval_text(
        m.get("speedup_interval"), m.get("speedup_level"), m.get("speedup_pairs")
    )
    measured = quality_text(
        {k: m[k] for k in METRICS if k != "score_loss" and m.get(k) is not None}
    )
    fidelity = f", {measured}" if measured else ""
    # Only the speedup is sure to be there (the entry check lets the rest be left out).
    loss = _SCORE_LOSS.show(m.get("score_loss"))
    device = m.get("device") or "a device not recorded"
    summary = (
        f"Measured by accelopt on {device}: {m['speedup']:.2f}x the plain pipeline"
        f"{shown}, {per_image}, CLIP score loss {loss}{fidelity}.{_heldout(entry.get('heldout'))}"
    )
    if entry.get("layout") == "seed":  # accelopt.params_store.seed_layout: the seed kept these
        summary = (
            f"From a seed-layout params file: {m['speedup']:.2f}x the plain pipeline, within a "
            f"CLIP score loss of {loss}; the time per image, the card and the generation "
            f"settings were not recorded (accelopt's defaults are used)."
        )
    summary += (
        f"\nMeasured under execution mode {execution}, which this script reproduces "
        f"(--execution picks another); it prints the seconds per image it measures itself."
    )
    return f"Generated by accelopt codegen: {doc}\n\n{summary}\nStore key: {entry['key']}\n"


def _needs_accelopt(values: Mapping[str, Any]) -> str:
    """The docstring's last paragraph for a script that needs accelopt installed to load its
    model as generated (without ``--model``); empty for the others."""
    if values["BUILT_MODEL"] is not None:
        how = (
            f"builds {values['BUILT_MODEL']} from config with accelopt (random weights, seeded "
            f"as the study built them)"
        )
    elif values["PACKAGED_MODEL"] is not None:
        how = f"loads {values['MODEL']} from the folder the accelopt package ships"
    else:
        return ""
    return (
        f"\nThis script {how}: it needs accelopt installed (pip install accelopt, or run it "
        f"from the checkout's venv), unless --model names a saved pipeline folder.\n"
    )


# ---- the code every script carries: accelopt.portable ---------------------------------------

# accelopt.portable's modules, in the order scripts carry them, above the body.
PORTABLE = (
    "buffers",
    "graphs",
    "deepcache",
    "tgate",
    "magcache",
    "taylorseer",
    "dbcache",
    "pab",
    "fastercache",
)
# accelopt.portable's module that is the script's own code, after the header and PORTABLE.
BODY = "script"

_Import = ast.Import | ast.ImportFrom


@functools.cache
def _portable_module(name: str) -> tuple[str, ast.Module]:
    """``accelopt.portable.<name>``'s source and its parsed tree (read once: every script
    carries the same)."""
    source = resources.files("accelopt.portable").joinpath(f"{name}.py").read_text("utf-8")
    return source, ast.parse(source)


def _after(source: str, node: ast.stmt) -> str:
    """``source`` after ``node``'s last line, verbatim (comments included), trimmed of blank
    lines at either end."""
    rest = source.splitlines(keepends=True)[node.end_lineno or 0 :]
    return "".join(rest).strip("\n") + "\n"


def _portable_parts(name: str) -> tuple[list[_Import], str]:
    source, tree = _portable_module(name)
    imports = [n for n in tree.body if isinstance(n, _Import)]
    if not imports:
        raise AssertionError(f"accelopt.portable.{name} has no imports to start after")
    return [n for n in imports if not _portable_import(n)], _after(source, imports[-1])


def portable_parts(name: str) -> tuple[list[str], str]:
    """``accelopt.portable.<name>``'s import statements, and its source after them verbatim,
    comments included (the module docstring and imports are the script's own). Imports from
    other portable modules are left out: the script carries those modules before this one."""
    imports, source = _portable_parts(name)
    return [ast.unparse(n) for n in imports], source


def script_body() -> tuple[list[_Import], str]:
    """``accelopt.portable.script``'s imports (those of other portable modules left out), and
    its code after the header block, verbatim. The header block declares ``HEADER_NAMES`` in
    order, so that ruff and mypy see the names the body reads; the script has the entry's
    values there instead."""
    source, tree = _portable_module(BODY)
    header = [n for n in tree.body if isinstance(n, ast.AnnAssign | ast.Assign)]
    declared = tuple(ast.unparse(n.target if isinstance(n, ast.AnnAssign) else n.targets[0])
                     for n in header)  # fmt: skip
    if declared != HEADER_NAMES:
        raise AssertionError(f"accelopt.portable.{BODY} declares {declared}, not HEADER_NAMES")
    imports = [n for n in tree.body if isinstance(n, _Import)]
    return [n for n in imports if not _portable_import(n)], _after(source, header[-1])


def _portable_import(node: _Import) -> bool:
    return isinstance(node, ast.ImportFrom) and (node.module or "").startswith("accelopt.portable")


def _import_block(imports: Iterable[_Import]) -> str:
    """One import block for everything the script's parts import, in ruff's isort order:
    ``__future__``, the standard library, the rest; plain imports before ``from`` imports."""
    plain: set[tuple[str, str | None]] = set()
    named: dict[str, set[tuple[str, str | None]]] = {}
    for node in imports:
        if isinstance(node, ast.Import):
            plain |= {(a.name, a.asname) for a in node.names}
        else:
            named.setdefault(node.module or "", set()).update(
                (a.name, a.asname) for a in node.names
            )
    sections: list[list[ast.stmt]] = [[], [], []]
    for module, asname in sorted(plain, key=lambda p: (p[0], p[1] or "")):
        sections[_section(module)].append(ast.Import([ast.alias(module, asname)]))
    for module, names in sorted(named.items()):
        aliases = [ast.alias(n, a) for n, a in sorted(names, key=lambda p: (p[0], p[1] or ""))]
        sections[_section(module)].append(ast.ImportFrom(module, aliases, 0))
    return "\n\n".join("\n".join(map(ast.unparse, s)) for s in sections if s) + "\n"


def _section(module: str) -> int:
    top = module.partition(".")[0]
    if top == "accelopt":  # a script never imports accelopt: portable imports are left out
        raise AssertionError(f"a script would import {module}")
    return 0 if top == "__future__" else 1 if top in sys.stdlib_module_names else 2


def _docstring(text: str) -> str:
    """A readable triple-quoted docstring when it provably evaluates to ``text``, else repr."""
    quoted = f'"""{text}"""'
    try:
        # The backslash first: parsing one that escapes nothing warns (invalid escape sequence).
        if "\\" not in text and ast.literal_eval(quoted) == text:
            return quoted
    except (SyntaxError, ValueError):
        pass
    return ast.unparse(ast.Expr(ast.Constant(text)))
