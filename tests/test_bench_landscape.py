"""bench/landscape.py and bench/all.py: the plan of points, shards, files, merge and summary.

Measurements run on the tiny SD pipeline on the CPU (a few points each); the plans of the GPU
studies are checked without building their pipelines. No timing thresholds: times only exist.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from accelopt.accelerators import PipeTraits
from accelopt.search import Space

ROOT = Path(__file__).resolve().parents[1]


def _import(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


landscape = _import("landscape")

# The traits PipeTraits.of reads from the full-size configs (and from TinySD's), written out so
# the GPU studies' plans can be checked here without building 860M- and 2.6B-parameter UNets.
SD15 = PipeTraits("sd", 4, (1, 2, 4, 8))
SDXL = PipeTraits("sdxl", 3, (2, 4))
TINY_SD = PipeTraits("sd", 3, (1, 2, 4))


def _space(traits: PipeTraits, steps: int) -> Any:
    return Space.build(traits, steps, None)


def _keys(points: list[dict[str, Any]]) -> list[str]:
    return [landscape.config_key(p["accelerators"]) for p in points]


# --- the plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "steps", "grid", "total"),
    [
        # DeepCache: off + 4 intervals x 4 branches = 17; ToMe: off + 8 ratios x 3 (SD) or 2
        # (SDXL) max_downsample values = 25 or 17; then 50 points with T-GATE on.
        (SD15, 20, 17 * 25, 17 * 25 + 50),
        (SDXL, 25, 17 * 17, 17 * 17 + 50),
        (TINY_SD, 10, 17 * 25, 17 * 25 + 50),
    ],
)
def test_plan_sizes(traits: PipeTraits, steps: int, grid: int, total: int) -> None:
    points = landscape.plan(_space(traits, steps))
    assert len(points) == total >= landscape.MIN_POINTS
    assert sum("tgate" not in p["accelerators"] for p in points) == grid


def test_plan_is_every_deepcache_tome_configuration_of_the_study_space() -> None:
    space = _space(SDXL, 25)
    points = landscape.plan(space)
    grid = space.grid()
    dc_tome = [k for k in grid if not k.startswith("tgate.")]
    off_tgate = {k: v[0] for k, v in grid.items() if k.startswith("tgate.")}
    assert off_tgate["tgate.gate_step"] == 25  # the off value comes first
    expected = {
        landscape.config_key(
            space.configs({**dict(zip(dc_tome, values, strict=True)), **off_tgate})
        )
        for values in itertools.product(*(grid[k] for k in dc_tome))
    }
    keys = _keys(points)
    assert len(keys) == len(set(keys))  # every configuration once
    assert {
        k for k, p in zip(keys, points, strict=True) if "tgate" not in p["accelerators"]
    } == expected
    assert [p["index"] for p in points] == list(range(len(points)))
    assert points[0]["accelerators"] == {}  # the plain pipeline
    for p in points:  # params are study params: the Space maps them to the configuration
        assert set(p["params"]) == set(grid)
        assert all(p["params"][k] in grid[k] for k in grid)
        assert space.configs(p["params"]) == p["accelerators"]


def test_the_tgate_sample_is_seeded_and_has_tgate_on() -> None:
    space = _space(SD15, 20)
    first, again, other = (landscape.plan(space, seed=s) for s in (0, 0, 1))
    sample = [p for p in first if "tgate" in p["accelerators"]]
    assert len(sample) == 50
    assert all(p["params"]["tgate.gate_step"] < 20 for p in sample)
    assert first == again
    assert _keys(first) != _keys(other)
    assert _keys(first)[:425] == _keys(other)[:425]  # the grid does not depend on the seed
    assert len(landscape.plan(space, tgate_sample=7)) == 425 + 7


def test_the_default_tgate_sample_tops_up_to_the_minimum() -> None:
    assert landscape.default_tgate_sample(425) == 50
    assert landscape.default_tgate_sample(289) == 50
    assert landscape.default_tgate_sample(200) == 100


def test_select_keeps_the_off_point_and_is_seeded() -> None:
    points = landscape.plan(_space(TINY_SD, 10))
    chosen = landscape.select(points, 6)
    assert len(chosen) == 6
    assert chosen[0]["accelerators"] == {}
    assert chosen == landscape.select(points, 6)
    assert landscape.select(points, None) == points
    assert landscape.select(points, 10**6) == points


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_shards_partition_the_points(n: int) -> None:
    ordered = landscape.measurement_order(landscape.plan(_space(SD15, 20)))
    shards = [[p["index"] for p in landscape.shard(ordered, k, n)] for k in range(1, n + 1)]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == len(ordered)  # no overlap
    assert set(flat) == {p["index"] for p in ordered}  # none missing
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/2/3"])
def test_bad_shards_are_refused(text: str) -> None:
    with pytest.raises(SystemExit):
        landscape.parser().parse_args(["measure", "--pipeline", "TinySD", "--shard", text])


# --- measuring on TinySD ----------------------------------------------------------------------

POINTS = 5


def _measure(out: Path, *extra: str) -> dict[str, Any]:
    args = ["measure", "--pipeline", "TinySD", "--steps", "10", "--device", "cpu"]
    assert landscape.main([*args, "--points", str(POINTS), "--out", str(out), *extra]) == 0
    (path,) = out.glob("TinySD-DDIM-10.shard-*.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("landscape")
    return [
        _measure(root / f"shard{k}", "--shard", f"{k}/2", "--baseline-every", "2") for k in (1, 2)
    ]


def test_shards_measure_exactly_the_points_asked(shards: list[dict[str, Any]]) -> None:
    expected = landscape.select(landscape.plan(_space(TINY_SD, 10)), POINTS)
    indices = [[p["index"] for p in s["points"]] for s in shards]
    assert not set(indices[0]) & set(indices[1])
    assert sorted(indices[0] + indices[1]) == [p["index"] for p in expected]
    for s in shards:
        assert s["partial"] is False
        assert s["shards"][0]["stopped"] is None
        assert s["plan"] == {
            "seed": 0,
            "points": 475,
            "grid_points": 425,
            "tgate_sample": 50,
            "selected": POINTS,
            "complete": ["deepcache", "tome"],
        }


def test_the_file_says_what_was_measured(shards: list[dict[str, Any]]) -> None:
    s = shards[0]
    assert (s["schema"], s["kind"], s["study"]) == (1, "accelopt landscape", "TinySD-DDIM-10")
    assert (s["pipeline"], s["scheduler"], s["steps"], s["resolution"]) == (
        "TinySD",
        "DDIM",
        10,
        32,
    )
    assert s["images_per_point"] == len(s["prompts"]) == len(s["seeds"]) == 1
    assert s["device"].startswith("cpu")
    assert {"torch", "diffusers"} <= set(s["versions"])
    assert s["command"].startswith("python bench/landscape.py measure --pipeline TinySD")
    for p in s["points"]:
        assert p["time_per_image"] > 0
        assert p["speedup"] > 0
        assert p["peak_memory"] is None  # the CPU has no peak counter
        assert "error" not in p


def test_the_off_point_and_every_baseline_are_bit_identical(
    shards: list[dict[str, Any]],
) -> None:
    points = [p for s in shards for p in s["points"]]
    (off,) = [p for p in points if not p["accelerators"]]
    assert (off["psnr"], off["ssim"]) == (math.inf, 1.0)
    baselines = [b for s in shards for b in s["baselines"]]
    # Every 2 points and after the last: timed after accelerators came off, same images.
    assert [b["seq"] for b in baselines] == [0, 2, 3, 0, 2]
    assert all((b["psnr"], b["ssim"]) == (math.inf, 1.0) for b in baselines)
    for p in points:
        if p["accelerators"]:
            assert math.isfinite(p["psnr"])
            assert p["ssim"] < 1.0


def test_merge_joins_the_shards(shards: list[dict[str, Any]], tmp_path: Path) -> None:
    merged = landscape.merge(shards)
    assert [p["index"] for p in merged["points"]] == sorted(
        p["index"] for s in shards for p in s["points"]
    )
    assert len(merged["points"]) == POINTS
    assert merged["partial"] is False
    assert merged["missing"] == []
    assert [(s["shard"], s["of"]) for s in merged["shards"]] == [(1, 2), (2, 2)]
    assert len(merged["baselines"]) == 5
    # Written and read back through the command line.
    files = []
    for k, s in enumerate(shards):
        files.append(tmp_path / f"s{k}.json")
        landscape.write_json(files[-1], s)
    assert landscape.main(["merge", *map(str, files), "--out", str(tmp_path / "out")]) == 0
    back = landscape.load(tmp_path / "out" / "TinySD-DDIM-10.json")
    assert back["points"] == merged["points"]
    assert set(landscape.lookup(back)) == set(_keys(merged["points"]))


def test_merge_refuses_a_shard_twice_and_flags_a_missing_one(
    shards: list[dict[str, Any]],
) -> None:
    with pytest.raises(ValueError, match="given twice"):
        landscape.merge([shards[0], shards[0]])
    alone = landscape.merge([shards[1]])
    assert alone["partial"] is True
    assert alone["missing"] is None  # shard 1 of 2 is not here at all


def test_summary_markdown(shards: list[dict[str, Any]]) -> None:
    summary = landscape.summarize(landscape.merge(shards))
    assert (summary["measured"], summary["planned"], summary["partial"]) == (POINTS, POINTS, False)
    assert summary["off"] == {"psnr": math.inf, "ssim": 1.0}
    assert summary["baseline"]["count"] == summary["baseline"]["identical"] == 5
    assert sum(g["points"] for g in summary["groups"]) == POINTS
    text = landscape.markdown(summary)
    assert text.startswith("### TinySD-DDIM-10 (cpu")
    assert "points: 5 of 5 (complete); errors: 0" in text
    assert "5 of 5 bit-identical" in text


def test_a_spent_time_budget_stops_cleanly_and_says_partial(tmp_path: Path) -> None:
    record = _measure(tmp_path, "--time-budget", "0")
    assert record["partial"] is True
    assert record["points"] == []
    assert record["shards"][0]["stopped"] == f"time budget: stopped before point 0 of {POINTS}"


# --- bench/all.py -----------------------------------------------------------------------------


def test_the_one_call_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    command = [sys.executable, str(ROOT / "bench" / "all.py"), "--studies", "TinySD-DDIM-10"]
    command += ["--device", "cpu", "--workers", "2", "--points", "3", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["landscape.log", "landscape.md", "landscapes/TinySD-DDIM-10.json"]
    merged = landscape.load(out / "landscapes" / "TinySD-DDIM-10.json")
    assert len(merged["points"]) == 3
    assert merged["partial"] is False
    assert [s["cuda_visible_devices"] for s in merged["shards"]] == [None, None]
    assert "### TinySD-DDIM-10" in (out / "landscape.md").read_text()
