"""Tests for accelopt/codegen.py: literals, header values and rendered scripts.

Nothing here runs a script (tests/features/test_codegen_run.py does); scripts are parsed and their
header values evaluated with nothing but ``float`` in scope. Which entry answers a request is
tests/params_store_tests/test_query.py's.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import random
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from accelopt import accelerators
from accelopt.accelerators import FasterCacheConfig
from accelopt.codegen import (
    BODY,
    HEADER_NAMES,
    PORTABLE,
    header_values,
    literal,
    portable_parts,
    read_header,
    render_script,
    script_body,
)
from accelopt.errors import AccelOptError
from accelopt.pipelines import MODELS, TOY_PIPELINES, model_info, toy_shipped
from accelopt.pipelines.schedulers import SCHEDULERS, resolve_scheduler
from accelopt.portable.fastercache import FASTER_KNOBS
from accelopt.prompts import load_prompts
from accelopt.testing import make_entry

SAFE_BUILTINS = {"__builtins__": {"float": float}}


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down; nan equals nan, -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def round_trip(value: Any) -> Any:
    code = ast.unparse(ast.fix_missing_locations(ast.Expression(literal(value))))
    return eval(compile(ast.parse(code, mode="eval"), "<literal>", "eval"), SAFE_BUILTINS)


# ---- literal --------------------------------------------------------------------------------

NASTY = [
    "'",
    '"',
    "'''",
    '"""',
    "\\",
    "\\n",
    "\\'",
    '\\"""',
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\x00",
    "\x0c",
    "\x1b[31m",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ud800",
    "🚀",
    "👩‍👩‍👧",
    "__import__('os').system('x')",
    '"""; __import__("os").system("x"); """',
    "'); __import__('os').system('x'); ('",
    "\\N{BULLET}",
    "{0}{}",
    "%s",
    "# comment",
]
SCALARS = [
    0,
    -1,
    7,
    2**64,
    -(2**200),
    10**4000,
    True,
    False,
    None,
    0.0,
    -0.0,
    1.5,
    -2.25,
    1e308,
    -1e308,
    5e-324,
    -5e-324,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    *NASTY,
]


@pytest.mark.parametrize("value", SCALARS, ids=lambda v: ascii(v)[:40])
def test_literal_scalars_round_trip(value: Any) -> None:
    assert same(round_trip(value), value)


def test_literal_negative_zero_keeps_its_sign() -> None:
    assert math.copysign(1.0, round_trip(-0.0)) == -1.0
    assert math.copysign(1.0, round_trip(0.0)) == 1.0


def test_literal_nan_and_infinities() -> None:
    assert math.isnan(round_trip(float("nan")))
    assert round_trip(float("inf")) == math.inf
    assert round_trip(float("-inf")) == -math.inf
    assert ast.unparse(literal(float("nan"))) == "float('nan')"
    assert ast.unparse(literal(float("-inf"))) == "float('-inf')"


def test_literal_nested_containers_round_trip() -> None:
    value = {
        "scalars": list(SCALARS),
        "tuple": tuple(NASTY),
        "empty": [(), [], {}, ("single",)],
        "nested": [{"a": (1, [2.5, {"b": None}])}, ((float("nan"),),)],
        **{s: s for s in NASTY},
    }
    assert same(round_trip(value), value)


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        frozenset({"a"}),
        object(),
        b"bytes",
        bytearray(b"x"),
        1j,
        {1: "a"},
        {("a",): 1},
        {None: 1},
        [1, {2}],
        {"ok": [b"x"]},
        ({"k": {3: 4}},),
    ],
    ids=lambda v: "object" if type(v) is object else ascii(v),
)
def test_literal_refuses_what_is_not_plain_data(value: Any) -> None:
    with pytest.raises(TypeError):
        literal(value)


class _EvilInt(int):
    def __repr__(self) -> str:
        return "__import__('os').getcwd()"


class _EvilFloat(float):
    def __repr__(self) -> str:
        return "x"


@pytest.mark.parametrize("value", [_EvilInt(1), _EvilFloat(1.5)], ids=["int", "float"])
def test_literal_subclasses_render_as_plain_values(value: Any) -> None:
    code = ast.unparse(literal(value))
    assert ast.literal_eval(code) == value
    assert type(ast.literal_eval(code)) in (int, float)


# ---- rendering: a fuzz of nasty entries ------------------------------------------------------

# A toy known before its training run ships (ToyPixArt) has no layout to check entries against.
KNOWN = [
    name
    for m in MODELS
    if m.name not in TOY_PIPELINES or toy_shipped(m.name)
    for name in (m.name, m.hub_id, m.name.upper())
    if name
]
SCHEDULER_NAMES = [n for s in SCHEDULERS for n in (s.name, *s.aliases, s.name.lower())]
FAMILY_ACCELERATORS = {
    "sd": ("deepcache", "tgate", "tome"),
    "sdxl": ("deepcache", "tgate", "tome"),
    "pixart-alpha": ("tgate",),
    "pixart-sigma": ("tgate",),
    None: ("deepcache", "tome"),
}
ALLOWED_HEADER_NODES = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Load, ast.USub)
IMPORTS = [
    ("ImportFrom", ["annotations"]),
    ("Import", ["argparse"]),
    ("Import", ["importlib"]),
    ("Import", ["json"]),
    ("Import", ["math"]),
    ("Import", ["statistics"]),
    ("Import", ["sys"]),
    ("Import", ["time"]),
    ("ImportFrom", ["Callable", "Hashable", "Iterator", "Mapping", "Sequence"]),
    ("ImportFrom", ["contextmanager"]),
    ("ImportFrom", ["dataclass"]),
    ("ImportFrom", ["Path"]),
    ("ImportFrom", ["Any", "NoReturn"]),
    ("Import", ["diffusers"]),
    ("Import", ["numpy"]),
    ("Import", ["torch"]),
    ("ImportFrom", ["DiffusionPipeline"]),
]


def nasty_text(rng: random.Random) -> str:
    pieces = [rng.choice([*NASTY, "abc", " ", "SDXL", "-", "/"]) for _ in range(rng.randint(1, 6))]
    return "".join(pieces)


def nasty_data(rng: random.Random, depth: int = 0) -> Any:
    """Plain data: what a knob or a generation setting could hold in a hand-edited store."""
    choice = rng.randrange(8 if depth < 2 else 5)
    if choice == 0:
        return nasty_text(rng)
    if choice == 1:
        return rng.choice([0, -3, 2**70, True, False, None])
    if choice == 2:
        return rng.choice([0.5, -0.0, 1e308, 5e-324, float("nan"), float("inf"), -math.inf])
    if choice == 3:
        return rng.randint(-10, 10)
    if choice == 4:
        return rng.random()
    if choice == 5:
        return [nasty_data(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if choice == 6:
        return tuple(nasty_data(rng, depth + 1) for _ in range(rng.randint(0, 3)))
    return {nasty_text(rng): nasty_data(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def valid_knobs(rng: random.Random, name: str, traits: Any) -> dict[str, Any]:
    """Knobs accelopt's own ``check`` takes for this layout (``traits``, None: unknown)."""
    most_branch = 3 * (traits.down_blocks if traits and traits.down_blocks else 4) - 1
    downsamples = traits.attention_downsamples if traits and traits.has_unet else (1, 2, 4)
    return {
        "deepcache": {"cache_interval": rng.randint(1, 5),
                      "cache_branch_id": rng.randint(0, most_branch)},
        "tome": {"ratio": rng.choice([0.1, 0.5, 0.75]), "max_downsample": rng.choice(downsamples),
                 "use_rand": rng.random() < 0.5},
        "tgate": {"gate_step": rng.randint(1, 10), "warm_up": rng.randint(0, 4)},
    }[name]  # fmt: skip


def clean_text(rng: random.Random) -> str:
    """Nasty, but a string JSON and UTF-8 can carry (no lone surrogate)."""
    return nasty_text(rng).replace("\ud800", "?")


def valid_entry(rng: random.Random) -> tuple[dict[str, Any], list[str]]:
    """An entry every check passes, hostile only in its free text (device, names, key)."""
    from accelopt.params_store.check import _traits

    model = rng.choice(KNOWN) if rng.random() < 0.6 else "models/" + clean_text(rng)
    info = model_info(model)
    traits = _traits(model)
    names = [n for n in FAMILY_ACCELERATORS[info.family if info else None] if rng.random() < 0.5]
    steps = rng.choice([10, 20, 25, 50])
    generation = {
        "resolution": rng.choice([None, 512, 1024]),
        "guidance": rng.choice([0, 7.5, -0.0, 1.0]),
        "dtype": rng.choice([None, "float16", "fp32", "bfloat16"]),
    }
    entry = make_entry(
        model,
        rng.choice(SCHEDULER_NAMES),
        steps,
        {n: valid_knobs(rng, n, traits) for n in names},
        req_speedup=rng.choice([None, 2.0]),
        req_time=rng.choice([None, 1.5]),
        speedup=rng.choice([1.5, 3.14159, 1e-3]),
        time_per_image=rng.choice([0.25, 1e-9]),
        score_loss=rng.choice([0.0, 0.0123, -0.5]),
        device=rng.choice([clean_text(rng), None, "cpu"]),
        generation=generation,
        study_name=clean_text(rng),
        storage=clean_text(rng),
        key=rng.choice([None, clean_text(rng)]),
    )
    prompts = [clean_text(rng) for _ in range(rng.randint(0, 3))]
    return entry, prompts


def corrupted(rng: random.Random, entry: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``entry`` with one hostile change that makes it unusable, and which."""
    out = json_copy(entry)
    kind = rng.choice(CORRUPTIONS)
    if kind == "missing key":
        del out[rng.choice(["model", "measured", "generation", "steps", "accelerators"])]
    elif kind == "wrong type":
        section, field = rng.choice([("measured", "speedup"), ("generation", "guidance"),
                                     (None, "steps"), (None, "model"),
                                     ("generation", "resolution")])  # fmt: skip
        holder = out if section is None else out[section]
        holder[field] = rng.choice(["3", [1], {"a": 1}, True])
    elif kind == "not finite":
        out["measured"]["speedup"] = rng.choice([float("nan"), float("inf")])
    elif kind == "huge":
        out["steps"] = 10**5000 if rng.random() < 0.5 else 2**70
    elif kind == "deep knob":
        nested: Any = 1
        for _ in range(200):
            nested = {"k": nested}
        out["accelerators"] = {"deepcache": {"cache_interval": nested}}
        out["targets"] = ["deepcache"]
    elif kind == "unknown knob":
        out["accelerators"] = {"tgate": {"gate_step": 5, clean_text(rng): 1}}
        out["targets"] = ["tgate"]
    elif kind == "out of range":
        out["accelerators"] = {"deepcache": {"cache_interval": 0, "cache_branch_id": 99}}
        out["targets"] = ["deepcache"]
    elif kind == "other model":
        out["pipeline"], out["model"] = "TinySD", "evil/" + clean_text(rng)
    elif kind == "surrogate":
        out["measured"]["device"] = "\ud800"
    elif kind == "long string":
        out["study"]["name"] = "x" * 100_000
    return out, kind


CORRUPTIONS = ["missing key", "wrong type", "not finite", "huge", "deep knob", "unknown knob",
               "out of range", "other model", "surrogate", "long string"]  # fmt: skip


def json_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    return value


def expected_docstring(entry: dict[str, Any]) -> str:
    m = entry["measured"]
    used = " + ".join(sorted(entry["accelerators"])) or "no accelerator"
    return (
        f"Generated by accelopt codegen: {entry['pipeline']}, {entry['scheduler']}, "
        f"{entry['steps']} steps, {used}.\n\n"
        f"Measured by accelopt on {m['device'] or 'a device not recorded'}: "
        f"{m['speedup']:.2f}x the plain pipeline, "
        f"{m['time_per_image']:.4f} s per image, CLIP score loss {100 * m['score_loss']:.2f}%.\n"
        f"Measured under execution mode {(entry.get('execution') or {}).get('mode', 'eager')}, "
        "which this script reproduces (--execution picks another); it prints the seconds per "
        "image it measures itself.\n"
        f"Store key: {entry['key']}\n"
    )


def needs_accelopt(entry: dict[str, Any]) -> str:
    """The docstring's paragraph for a model accelopt builds (tiny) or ships (toy)."""
    info = model_info(entry["model"])
    if info is None or info.hub_id is not None:
        return ""
    how = (
        f"loads {info.name} from the folder the accelopt package ships"
        if info.name in TOY_PIPELINES
        else f"builds {info.name} from config with accelopt (random weights, seeded as the "
        "study built them)"
    )
    return (
        f"\nThis script {how}: it needs accelopt installed (pip install accelopt, or run it from "
        "the checkout's venv), unless --model names a saved pipeline folder.\n"
    )


def header_end(tree: ast.Module) -> int:
    """The line the header's last assignment ends on."""
    (last,) = [
        s
        for s in tree.body
        if isinstance(s, ast.Assign) and ast.unparse(s.targets[0]) == HEADER_NAMES[-1]
    ]
    assert last.end_lineno is not None
    return last.end_lineno


def portable_statements() -> list[tuple[str, str | None]]:
    """The top-level statements of the portable modules a script carries, in order."""
    found = []
    for name in PORTABLE:
        for stmt in ast.parse(portable_parts(name)[1]).body:
            found.append((type(stmt).__name__, getattr(stmt, "name", None)))
    return found


def check_script(script: str, entry: dict[str, Any], prompts: list[str]) -> ast.Module:
    """The script's exact shape; its header values evaluate back to header_values'."""
    assert script.startswith("#!/usr/bin/env python3\n")
    script.encode("utf-8")  # the CLI writes it as UTF-8
    tree = ast.parse(script)
    body = list(tree.body)

    doc = body.pop(0)
    assert isinstance(doc, ast.Expr)
    assert isinstance(doc.value, ast.Constant)
    assert doc.value.value == expected_docstring(entry) + needs_accelopt(entry)

    imports = []
    while isinstance(body[0], ast.Import | ast.ImportFrom):
        stmt = body.pop(0)
        imports.append((type(stmt).__name__, [a.name for a in stmt.names]))
    assert imports == IMPORTS

    values = header_values(entry, prompts)
    assert list(values) == list(HEADER_NAMES)
    for name in HEADER_NAMES:
        stmt = body.pop(0)
        assert isinstance(stmt, ast.Assign)
        assert [ast.dump(t) for t in stmt.targets] == [ast.dump(ast.Name(name, ast.Store()))]
        for node in ast.walk(stmt.value):
            if isinstance(node, ast.Call):  # only float('nan') and the infinities
                assert ast.unparse(node) in ("float('nan')", "float('inf')", "float('-inf')")
            elif isinstance(node, ast.UnaryOp):
                assert isinstance(node.op, ast.USub)
                assert isinstance(node.operand, ast.Constant)
            elif isinstance(node, ast.Name):
                assert node.id == "float"
            else:
                assert isinstance(node, ALLOWED_HEADER_NODES), ast.dump(node)
        code = compile(ast.Expression(stmt.value), "<header>", "eval")
        assert same(eval(code, SAFE_BUILTINS), values[name]), name

    assert [(type(s).__name__, getattr(s, "name", None)) for s in body] == [
        *portable_statements(),
        ("FunctionDef", "refuse"),
        ("FunctionDef", "with_accelopt"),
        ("FunctionDef", "check_device"),
        ("FunctionDef", "model_source"),
        ("FunctionDef", "quiet_loading"),
        ("FunctionDef", "load"),
        ("ClassDef", "Patches"),
        ("ClassDef", "Accelerated"),
        ("FunctionDef", "execute"),
        ("FunctionDef", "parse_args"),
        ("FunctionDef", "main"),
        ("FunctionDef", "timing"),
        ("If", None),
    ]
    guard = body[-1]
    assert isinstance(guard, ast.If)
    assert ast.unparse(guard) == "if __name__ == '__main__':\n    main()"
    return tree


def body_text(script: str, tree: ast.Module) -> str:
    # Python counts lines by "\n" only; str.splitlines() also splits at \u2028, \x0c and more.
    return "\n".join(script.split("\n")[header_end(tree) :])


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_entries_render_safe_scripts(seed: int) -> None:
    """Valid entries with hostile text render scripts whose header evaluates back to the
    entry; every hostile change of one makes codegen refuse it, naming its key."""
    from accelopt.params_store.check import InvalidEntry

    rng = random.Random(seed)
    bodies = set()
    refused: set[str] = set()
    for _ in range(40):
        entry, prompts = valid_entry(rng)
        script = render_script(entry, prompts)
        tree = check_script(script, entry, prompts)
        bodies.add(body_text(script, tree))
        bad, kind = corrupted(rng, entry)
        with pytest.raises(InvalidEntry) as info:
            render_script(bad, prompts)
        assert str(info.value).startswith("store entry "), kind
        assert len(str(info.value)) < 1000, kind
        refused.add(kind)
    assert len(bodies) == 1  # the code below the header never changes
    assert len(refused) >= 8  # most kinds of corruption were tried


def test_plain_entry_gets_a_readable_docstring() -> None:
    entry = make_entry(
        "SDXL",
        "DDIM",
        25,
        {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}, "tgate": {"gate_step": 10}},
        speedup=2.5,
        score_loss=0.015,
        device="NVIDIA H100",
    )
    script = render_script(entry)
    check_script(script, entry, [])
    assert script.splitlines()[:6] == [
        "#!/usr/bin/env python3",
        '"""Generated by accelopt codegen: SDXL, DDIM, 25 steps, deepcache + tgate.',
        "",
        "Measured by accelopt on NVIDIA H100: 2.50x the plain pipeline, 0.4000 s per image, "
        "CLIP score loss 1.50%.",
        "Measured under execution mode eager, which this script reproduces (--execution picks "
        "another); it prints the seconds per image it measures itself.",
        "Store key: ('SDXL', 'DDIM', '25', None, 0.02, ['deepcache', 'tgate'])",
    ]
    assert script.splitlines()[6] == '"""'


def test_the_docstring_carries_the_intervals_export_decided_on() -> None:
    entry = make_entry("SDXL", "DDIM", 25, {"deepcache": {"cache_interval": 3,
                       "cache_branch_id": 0}}, speedup=2.5, device="NVIDIA H200")  # fmt: skip
    entry["measured"].update(speedup_interval=[2.3, 2.6], speedup_level=0.75)
    heldout = {"speedup": 2.4, "speedups": [2.4] * 7, "interval": [2.31, 2.52],
               "level": 0.984375, "passed": True, "speed": "faster"}  # fmt: skip
    entry["heldout"] = heldout
    lines = render_script(entry).splitlines()
    assert lines[3].startswith("Measured by accelopt on NVIDIA H200: 2.50x the plain pipeline "
                               "(2.30x-2.60x, 75% interval), 0.4000 s per image")  # fmt: skip
    assert lines[4] == ("Re-timed on held-out prompts: 2.40x (2.31x-2.52x, 98% interval over 7 "
                        "pairs).")  # fmt: skip
    entry["heldout"] = {**heldout, "interval": [0.9, 2.52], "speed": "undecidable"}
    undecidable = "(0.90x-2.52x, 98% interval over 7 pairs), undecidable: exported with --force."
    assert render_script(entry).splitlines()[4].endswith(undecidable)
    entry["heldout"] = {**heldout, "speedups": [2.4]}  # measure.timing.interval_text's wording
    one = "Re-timed on held-out prompts: 2.40x (one timed pair: no interval)."
    assert render_script(entry).splitlines()[4] == one
    for hostile in ({"speed": "fast\nimport os"}, {"interval": [1.0, math.inf]},
                    {"level": 2.0}, {"speedup": "2.4"}):  # fmt: skip
        entry["heldout"] = {**heldout, **hostile}
        with pytest.raises(AccelOptError, match="heldout"):
            render_script(entry)


@pytest.mark.parametrize(
    ("device", "readable"),
    [
        ('A100 """ + __import__("os").system("x") + """', False),
        ("back\\slash", False),
        ("cr\rhere", False),
        ("nul\x00here", False),
        ('ends with a quote"', True),
        ("tab\there, ''' and \u2028", True),
    ],
)
def test_docstring_triple_quoted_only_when_safe(device: str, readable: bool) -> None:
    entry = make_entry(device=device)
    script = render_script(entry)
    check_script(script, entry, [])  # the docstring evaluates to the text, the device inside
    assert script.split("\n")[1].startswith('"""') is readable
    docstring = ast.get_docstring(ast.parse(script), clean=False)
    assert docstring is not None
    assert f"Measured by accelopt on {device}:" in docstring


@pytest.mark.parametrize("model", [123, 1.5, None])
def test_non_string_model_id_is_refused(model: Any) -> None:
    entry = make_entry()
    entry["model"] = model
    with pytest.raises(AccelOptError, match="model: Input should be a valid string"):
        render_script(entry)


def test_fixed_body_is_identical_across_scripts() -> None:
    first = make_entry("SDXL", "DDIM", 25, {"tgate": {"gate_step": 10, "warm_up": 2}})
    second = make_entry(
        "./my '''fine\"tune",
        "dpm++",
        50,
        {"tome": {"ratio": 0.5, "max_downsample": 1}},
        device="cpu\n",
        generation={"resolution": None, "guidance": 7.5, "dtype": None},
    )
    scripts = [render_script(first), render_script(second, ['a"""b', "c\\d\n"])]
    trees = [ast.parse(s) for s in scripts]
    assert scripts[0] != scripts[1]
    tails = [body_text(s, t) for s, t in zip(scripts, trees, strict=True)]
    assert tails[0] == tails[1]
    assert tails[0].rstrip().endswith('if __name__ == "__main__":\n    main()')
    assert "def load(model: str, source: str | None, device: str) -> Any:" in tails[0]
    for script, tree, entry in zip(scripts, trees, (first, second), strict=True):
        model = script.split("\n")[header_end(tree) - len(HEADER_NAMES)]
        assert model == f"MODEL = {header_values(entry)['MODEL']!r}"


# ---- header_values --------------------------------------------------------------------------


def test_header_values_exact_for_sdxl_tgate() -> None:
    entry = make_entry(
        "stabilityai/stable-diffusion-xl-base-1.0", "ddim", 25, {"tgate": {"gate_step": 10}}
    )
    assert header_values(entry) == {
        "MODEL": "stabilityai/stable-diffusion-xl-base-1.0",
        "PACKAGED_MODEL": None,
        "BUILT_MODEL": None,
        "SCHEDULER": "DDIMScheduler",
        "SCHEDULER_CONFIG": {},
        "STEPS": 25,
        "GUIDANCE": 5.0,
        "RESOLUTION": 1024,
        "DTYPE": "float16",
        "CALL_DEFAULTS": {},
        "EXECUTION": "eager",
        "DEEPCACHE": None,
        "TOME": None,
        "TGATE": {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2},
        "MAGCACHE": None,
        "TAYLORSEER": None,
        "FBCACHE": None,
        "DBCACHE": None,
        "PAB": None,
        "FASTERCACHE": None,
        "DEFAULT_PROMPTS": [load_prompts("heldout", 1, "accelopt")[0].text],
    }


@pytest.mark.parametrize(
    ("model", "source", "built"),
    [
        ("SD1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", None),
        # No weights anywhere: the script builds it with accelopt, unless --model names a folder.
        ("TinySD", "TinySD", "TinySD"),
        ("tinypixart", "TinyPixArt", "TinyPixArt"),
        ("./my-finetune", "./my-finetune", None),
    ],
)
def test_scripts_load_from_the_hub_id_or_the_given_source(
    model: str, source: str, built: str | None
) -> None:
    entry = make_entry(model, "ddim", 25, {"tgate": {"gate_step": 10}})
    values = header_values(entry)
    assert (values["MODEL"], values["BUILT_MODEL"]) == (source, built)
    doc = ast.get_docstring(ast.parse(render_script(entry)), clean=False)
    assert doc is not None
    assert ("it needs accelopt installed" in doc) is (built is not None)


def test_toy_scripts_find_the_model_shipped_with_accelopt() -> None:
    """No path of the machine that wrote the script: the installed package has the folder;
    the example prompt is the toy's own kind (its tokenizer is 32 tokens long)."""
    from accelopt.pipelines import toy_folder

    entry = make_entry("ToySD", "ddim", 20, {"deepcache": {"cache_interval": 3}})
    values = header_values(entry)
    assert values["MODEL"] == "ToySD"
    package, inside = values["PACKAGED_MODEL"]
    folder = Path(str(resources.files(package).joinpath(inside)))
    assert folder == toy_folder("ToySD")
    assert (folder / "model_index.json").is_file()
    assert str(toy_folder("ToySD")) not in render_script(entry)
    assert values["DEFAULT_PROMPTS"] == [load_prompts("heldout", 1, "shapes")[0].text]


@pytest.mark.parametrize(
    ("model", "names"),
    [
        ("SD1.5", ("deepcache", "tgate")),
        ("TinySD", ("tgate", "tome")),
        ("PixArt-Sigma", ("tgate",)),
        ("PixArt-Sigma", ("magcache",)),
        ("PixArt-Sigma", ("taylorseer",)),
        ("PixArt-Sigma", ("fbcache",)),
        ("PixArt-Sigma", ("dbcache",)),
        ("./my-finetune", ("tgate",)),  # no loader to pick: any pipeline with attention
        ("SDXL", ()),
    ],
)
def test_header_values_carry_the_stored_accelerators(model: str, names: tuple[str, ...]) -> None:
    ratios = [1.0, 0.1 + 0.2, *[0.975] * 23]  # 0.30000000000000004 must come back exactly
    valid = {"deepcache": {"cache_interval": 3}, "tgate": {"gate_step": 7, "warm_up": 1},
             "tome": {"ratio": 0.5, "max_downsample": 2},
             "magcache": {"threshold": 0.12, "ratios": ratios},
             "taylorseer": {"cache_interval": 4, "max_order": 2, "modules": "blocks"},
             "fbcache": {"threshold": 0.08},
             "dbcache": {"Fn_compute_blocks": 4, "Bn_compute_blocks": 2,
                         "residual_diff_threshold": 0.12, "max_warmup_steps": 4,
                         "max_continuous_cached_steps": 3}}  # fmt: skip
    acc = {name: valid[name] for name in names}
    entry = make_entry(model, "DDIM", 25, acc)
    values = header_values(entry)
    for name in accelerators.ORDER:  # what the entry stores, every other knob its default
        fields = dataclasses.fields(accelerators.get(name).config_cls)
        defaults = {f.name: list(f.default) if f.default == () else f.default for f in fields}
        assert values[name.upper()] == ({**defaults, **acc[name]} if name in acc else None)
    # Its calibrated ratios are data: rendered as literals that read back to the same floats.
    assert read_header(render_script(entry))["MAGCACHE"] == values["MAGCACHE"]


def test_the_script_reads_every_knob_from_its_header_with_no_default_of_its_own() -> None:
    """Each ``NAME["knob"]`` the carried script reads is a field of that method's config (the
    header states every field: ``_knobs``), and it reads none with ``NAME.get(knob, default)``:
    a default there could differ from accelopt's, and the script would run another setting."""
    from accelopt.portable import script

    headers = {name.upper(): name for name in accelerators.ORDER}
    read: dict[str, set[str]] = {}
    defaults = []
    whole = set()  # given whole to a schedule that reads each knob (FasterCache's FASTER_KNOBS)
    for node in ast.walk(ast.parse(Path(script.__file__).read_text())):
        if isinstance(node, ast.Call):
            whole |= {a.id for a in node.args if isinstance(a, ast.Name) and a.id in headers}
        if not isinstance(node, ast.Subscript | ast.Attribute):
            continue
        name = node.value.id if isinstance(node.value, ast.Name) else None
        if name in headers and isinstance(node, ast.Subscript):
            assert isinstance(node.slice, ast.Constant), ast.unparse(node)
            read.setdefault(name, set()).add(node.slice.value)
        elif name in headers and isinstance(node, ast.Attribute) and node.attr == "get":
            defaults.append(ast.unparse(node))
    assert defaults == []
    assert whole == {"FASTERCACHE"} and set(read) | whole == set(headers)
    for header, knobs in read.items():
        fields = dataclasses.fields(accelerators.get(headers[header]).config_cls)
        assert knobs <= {f.name for f in fields}, header
    # Every field, in the config's order: the schedule takes them by position.
    assert tuple(f.name for f in dataclasses.fields(FasterCacheConfig)) == FASTER_KNOBS


@pytest.mark.parametrize(
    ("model", "hub_id"),
    [
        ("PixArt-Sigma", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"),
        ("pixart-alpha", "PixArt-alpha/PixArt-XL-2-1024-MS"),
        ("TinyPixArt", "TinyPixArt"),
    ],
)
def test_header_values_pixart_call_defaults(model: str, hub_id: str) -> None:
    values = header_values(make_entry(model, "DPM-Solver++", 20, {}))
    assert values["CALL_DEFAULTS"] == {"use_resolution_binning": False, "clean_caption": False}
    assert values["MODEL"] == hub_id


@pytest.mark.parametrize("model", ["SD1.5", "SDXL", "TinySDXL", "./local-folder"])
def test_header_values_no_call_defaults_outside_pixart(model: str) -> None:
    assert header_values(make_entry(model, "DDIM", 25))["CALL_DEFAULTS"] == {}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("SDXL", "stabilityai/stable-diffusion-xl-base-1.0"),
        ("sd1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        ("TinySD", "TinySD"),
        ("tinysdxl", "TinySDXL"),
        ("/data/my finetune", "/data/my finetune"),
    ],
)
def test_header_values_model(model: str, expected: str) -> None:
    assert header_values(make_entry(model))["MODEL"] == expected


DPM_CONFIG = {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}


@pytest.mark.parametrize(
    ("scheduler", "class_name", "config"),
    [
        ("dpm++", "DPMSolverMultistepScheduler", DPM_CONFIG),
        ("DPM-Solver++", "DPMSolverMultistepScheduler", DPM_CONFIG),
        ("UniPCMultistepScheduler", "UniPCMultistepScheduler", {}),
        ("unipc", "UniPCMultistepScheduler", {}),
        ("DDIM", "DDIMScheduler", {}),
        ("euler", "EulerDiscreteScheduler", {}),
    ],
)
def test_header_values_scheduler(scheduler: str, class_name: str, config: dict) -> None:
    values = header_values(make_entry("SDXL", scheduler))
    assert values["SCHEDULER"] == class_name
    assert values["SCHEDULER_CONFIG"] == config


def test_header_scheduler_config_is_a_copy() -> None:
    values = header_values(make_entry("SDXL", "dpm++"))
    values["SCHEDULER_CONFIG"]["use_karras_sigmas"] = True
    assert resolve_scheduler("dpm++").overrides["use_karras_sigmas"] is False


def test_header_values_prompts_and_generation() -> None:
    entry = make_entry(generation={"resolution": None, "guidance": 7.5, "dtype": None}, steps=50)
    values = header_values(entry, iter(["one", "two"]))
    assert values["DEFAULT_PROMPTS"] == ["one", "two"]
    assert (values["RESOLUTION"], values["GUIDANCE"], values["DTYPE"], values["STEPS"]) == (
        None,
        7.5,
        None,
        50,
    )
    assert header_values(entry, [])["DEFAULT_PROMPTS"] == [
        load_prompts("heldout", 1, "accelopt")[0].text
    ]
    shapes = make_entry(generation={"guidance": 5.0, "prompt_set": "shapes"})
    shape = load_prompts("heldout", 1, "shapes")[0].text
    assert header_values(shapes)["DEFAULT_PROMPTS"] == [shape]


def test_a_script_runs_under_the_mode_its_entry_was_measured_in() -> None:
    """The header carries the mode (entries from before modes ran eagerly); the docstring says
    it; an unknown mode is refused, never rendered."""
    entry = make_entry()
    old = {k: v for k, v in entry.items() if k != "execution"}
    assert header_values(old)["EXECUTION"] == "eager"
    graphs = make_entry(execution="cuda-graphs")
    assert header_values(graphs)["EXECUTION"] == "cuda-graphs"
    doc = ast.get_docstring(ast.parse(render_script(graphs)))
    assert "Measured under execution mode cuda-graphs, which this script reproduces" in doc
    for bad in ("graphs\nimport os", 3, None):
        with pytest.raises(AccelOptError, match=r"execution\.mode: Input should be 'eager'"):
            render_script({**entry, "execution": {"mode": bad}})


def imported(tree: ast.Module) -> set[tuple[str | None, str]]:
    """(module, name) for every top-level import: ``from a import b`` is ("a", "b")."""
    found = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            module = stmt.module if isinstance(stmt, ast.ImportFrom) else None
            found |= {(module, alias.name) for alias in stmt.names}
    return found


@pytest.mark.parametrize("name", PORTABLE)
def test_scripts_carry_the_portable_modules_verbatim_and_what_they_import(name: str) -> None:
    """The graph-safe DeepCache and the replayer a study ran are the script's, character for
    character; they import nothing from accelopt, and the script imports all they need."""
    imports, source = portable_parts(name)
    script = render_script(make_entry())
    assert source in script
    assert not [line for line in imports if "accelopt" in line]
    assert imported(ast.parse("\n".join(imports))) <= imported(ast.parse(script))
    names = {getattr(s, "name", None) for s in ast.parse(source).body} - {None}
    body = {getattr(s, "name", None) for s in ast.parse(script_body()[1]).body} - {None}
    assert body >= {"load", "Accelerated", "execute", "main"}
    assert not names & body  # no clash with the script's own code
    own = resources.files("accelopt.portable").joinpath(f"{name}.py").read_text("utf-8")
    carried_before = {f"accelopt.portable.{m}" for m in PORTABLE[: PORTABLE.index(name)]}
    for module, _ in imported(ast.parse(own)):
        if module is not None and module.startswith("accelopt"):
            assert module in carried_before  # its names are already in the script


def test_the_portable_modules_define_each_name_once() -> None:
    """A script carries them into one namespace, where a name two of them define would be the
    later one's everywhere (PAB's rule, once named as T-GATE's ``modes``, broke T-GATE)."""
    sources = [
        resources.files("accelopt.portable").joinpath(f"{name}.py").read_text("utf-8")
        for name in PORTABLE
    ]
    defined: dict[str, int] = {}
    for i, source in enumerate([*sources, script_body()[1]]):
        for stmt in ast.parse(source).body:
            if isinstance(stmt, ast.FunctionDef | ast.ClassDef):
                names = [stmt.name]
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            else:
                continue
            for name in names:
                assert defined.setdefault(name, i) == i, name


def test_the_body_is_accelopt_portable_script_below_its_header() -> None:
    """The script's own code is a module ruff and mypy check; scripts carry it verbatim from
    below its header block, which declares the header's names in order and never reaches a
    script."""
    source = resources.files("accelopt.portable").joinpath(f"{BODY}.py").read_text("utf-8")
    tree = ast.parse(source)
    declared = [ast.unparse(s.target) for s in tree.body if isinstance(s, ast.AnnAssign)]
    assert declared == list(HEADER_NAMES)
    imports, body = script_body()
    assert body.startswith("def refuse(")
    assert body in source
    assert not [n for n in imports if "accelopt" in ast.unparse(n)]
    script = render_script(make_entry())
    assert script.endswith(body)
    assert script.count(body) == 1
    assert 'MODEL: str = ""' not in script
