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
TINY_SD = PipeTraits("sd", 3, (1, 2, 4), branches=(0, 1, 3, 4, 6, 7))  # TinySD's own layout


def _space(traits: PipeTraits, steps: int) -> Any:
    return Space.build(traits, steps, None)


def _keys(points: list[dict[str, Any]]) -> list[str]:
    return [landscape.config_key(p["accelerators"]) for p in points]


# --- the plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "steps", "grid", "total"),
    [
        # DeepCache: off + 4 intervals x 4 branches = 17 (x 3 on TinySD, whose branch 2 computes
        # branch 1's images); ToMe, fixed partition: off + 8 ratios x 3 (SD) or 2 (SDXL)
        # max_downsample values = 25 or 17; then 50 points with T-GATE on.
        (SD15, 20, 17 * 25, 17 * 25 + 50),
        (SDXL, 25, 17 * 17, 17 * 17 + 50),
        (TINY_SD, 10, 13 * 25, 13 * 25 + 50),
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
    fixed = {**grid, "tome.use_rand": [False]}  # landscapes keep ToMe's fixed partition
    expected = {
        landscape.config_key(
            space.configs({**dict(zip(dc_tome, values, strict=True)), **off_tgate})
        )
        for values in itertools.product(*(fixed[k] for k in dc_tome))
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
            "points": 375,
            "grid_points": 325,
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


# --- scores: ToySD, whose CLIP scorer is trained ----------------------------------------------


def _measure_toy(out: Path, *extra: str) -> dict[str, Any]:
    args = ["measure", "--study", "ToySD-DDIM-20", "--device", "cpu", "--points", "3"]
    args += ["--prompts", "2", "--heldout", "2", "--out", str(out), *extra]
    assert landscape.main(args) == 0
    (path,) = out.glob("ToySD-DDIM-20.shard-*.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two shards of 3 ToySD points on the CPU: the first one prompt a call, the second both."""
    root = tmp_path_factory.mktemp("toy")
    return [
        _measure_toy(root / "shard1", "--shard", "1/2", "--batch", "1"),
        _measure_toy(root / "shard2", "--shard", "2/2"),
    ]


def test_a_scored_landscape_records_the_studys_prompts_seeds_and_rules(
    toy: list[dict[str, Any]],
) -> None:
    from accelopt.confirm import SEED_OFFSET
    from accelopt.prompts import load_prompts
    from accelopt.spec import load_spec

    spec = load_spec("ToySD-DDIM-20")
    for s, per_call in zip(toy, (1, 2), strict=True):
        assert (s["study"], s["weights"]) == ("ToySD-DDIM-20", "pretrained")
        assert (s["images_per_point"], s["images_per_call"]) == (2, per_call)
        assert s["prompts"] == [p.text for p in load_prompts("search", 2, "shapes")]
        assert s["seeds"] == [0, 1]
        assert s["heldout_prompts"] == [p.text for p in load_prompts("heldout", 2, "shapes")]
        assert s["heldout_seeds"] == [SEED_OFFSET, SEED_OFFSET + 1]  # accelopt.confirm's
        rules = (spec.max_score_loss, spec.early_stop, spec.prompts.batch_size)
        found = (s["max_score_loss"], s["early_stop"], s["batch_size"])
        assert (s["scorer"], found) == ("accelopt-toy-clip", rules)
        assert len(s["baseline_scores"]) == len(s["heldout_baseline_scores"]) == 2
        assert all(50 < x <= 100 for x in s["baseline_scores"] + s["heldout_baseline_scores"])
        for p in s["points"]:
            assert len(p["scores"]) == len(p["heldout_scores"]) == 2
            assert p["heldout_time_per_image"] > 0
            if not p["accelerators"]:  # the plain pipeline again: its own baseline, exactly
                assert (p["scores"], p["heldout_scores"]) == (
                    s["baseline_scores"],
                    s["heldout_baseline_scores"],
                )
                assert p["score_loss"] == p["heldout_score_loss"] == 0.0


def test_scored_shards_merge_and_summarize(toy: list[dict[str, Any]]) -> None:
    merged = landscape.merge(toy)
    assert len(merged["points"]) == 3 and merged["partial"] is False
    assert merged["baseline_scores"] == toy[0]["baseline_scores"]
    # One prompt a call or two: each prompt has its own generator, so the same images.
    assert merged["baseline_score_spread"] <= 1e-3
    summary = landscape.summarize(merged)
    scores = summary["scores"]
    assert (scores["points"], scores["prompts"], scores["heldout_prompts"]) == (2, 2, 2)
    assert scores["within"] == sum(
        p["score_loss"] <= 0.02 for p in merged["points"] if p["accelerators"]
    )
    text = landscape.markdown(summary)
    assert "- CLIP-score loss (accelopt-toy-clip), budget 2%: " in text
    other = dict(toy[1], heldout_seeds=[7, 8])
    with pytest.raises(ValueError, match="shards differ in 'heldout_seeds'"):
        landscape.merge([toy[0], other])


def test_an_unscored_landscape_loads_and_summarizes_as_before() -> None:
    old = landscape.load(ROOT / "bench" / "landscapes" / "SD1.5-DDIM-20.json")
    assert "baseline_scores" not in old and "scores" not in old["points"][0]
    assert landscape.summarize(old)["scores"] is None
    assert "CLIP-score" not in landscape.markdown(landscape.summarize(old))


def test_scores_need_a_trained_scorer(tmp_path: Path) -> None:
    args = ["measure", "--pipeline", "TinySD", "--steps", "10", "--device", "cpu"]
    with pytest.raises(SystemExit, match="TinySD-DDIM-10: --heldout records CLIP scores, and"):
        landscape.main([*args, "--heldout", "2", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


# --- bench/all.py -----------------------------------------------------------------------------


def test_the_one_call_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    command = [sys.executable, str(ROOT / "bench" / "all.py"), "--suite", "landscapes"]
    command += ["--studies", "TinySD-DDIM-10"]
    command += ["--device", "cpu", "--workers", "2", "--points", "3", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["all.log", "landscapes/TinySD-DDIM-10.json", "results.json", "tables.md"]
    merged = landscape.load(out / "landscapes" / "TinySD-DDIM-10.json")
    assert len(merged["points"]) == 3
    assert merged["partial"] is False
    assert [s["cuda_visible_devices"] for s in merged["shards"]] == [None, None]
    results = json.loads((out / "results.json").read_text())
    assert results["suites"] == {"landscapes": {"files": ["landscapes/TinySD-DDIM-10.json"],
                                                "problems": [], "partial": False}}  # fmt: skip
    assert "| TinySD-DDIM-10, 32 px, batch 1 | 3 of 3 |" in (out / "tables.md").read_text()
