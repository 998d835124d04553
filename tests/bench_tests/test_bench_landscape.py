"""bench/landscape.py and bench/all.py: the plan of points, shards, files, merge and summary.

Measurements run on the tiny SD pipeline on the CPU (a few points each); the plans of the GPU
studies are checked without building their pipelines. No timing thresholds: times only exist.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from accelopt.accelerators import PipeTraits
from accelopt.trial.space import Space
from bench import landscape
from bench import landscape_records as records

ROOT = Path(__file__).resolve().parents[2]


# The traits PipeTraits.of reads from the full-size configs (and from TinySD's), written out so
# the GPU studies' plans can be checked here without building 860M- and 2.6B-parameter UNets.
SD15 = PipeTraits("sd", 4, (1, 2, 4, 8))
SDXL = PipeTraits("sdxl", 3, (2, 4))
TINY_SD = PipeTraits("sd", 3, (1, 2, 4), branches=(0, 1, 3, 4, 6, 7))  # TinySD's own layout


def _space(traits: PipeTraits, steps: int) -> Any:
    return Space.build(traits, steps, None)


def _keys(points: list[dict[str, Any]]) -> list[str]:
    return [records.config_key(p["accelerators"]) for p in points]


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
        records.config_key(space.configs({**dict(zip(dc_tome, values, strict=True)), **off_tgate}))
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
    assert s["command"].startswith("python -m bench.landscape measure --pipeline TinySD")
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
    merged = records.merge(shards)
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
        records.write_json(files[-1], s)
    assert landscape.main(["merge", *map(str, files), "--out", str(tmp_path / "out")]) == 0
    back = records.load(tmp_path / "out" / "TinySD-DDIM-10.json")
    assert back["points"] == merged["points"]
    assert set(records.lookup(back)) == set(_keys(merged["points"]))


def test_merge_refuses_a_shard_twice_and_flags_a_missing_one(
    shards: list[dict[str, Any]],
) -> None:
    with pytest.raises(ValueError, match="given twice"):
        records.merge([shards[0], shards[0]])
    alone = records.merge([shards[1]])
    assert alone["partial"] is True
    assert alone["missing"] is None  # shard 1 of 2 is not here at all


def test_summary_markdown(shards: list[dict[str, Any]]) -> None:
    summary = records.summarize(records.merge(shards))
    assert (summary["measured"], summary["planned"], summary["partial"]) == (POINTS, POINTS, False)
    assert summary["off"] == {"psnr": math.inf, "ssim": 1.0}
    assert summary["baseline"]["count"] == summary["baseline"]["identical"] == 5
    assert sum(g["points"] for g in summary["groups"]) == POINTS
    text = records.markdown(summary)
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
    from accelopt.prompts import load_prompts
    from accelopt.spec import load_spec
    from accelopt.study.confirm import SEED_OFFSET

    spec = load_spec("ToySD-DDIM-20")
    for s, per_call in zip(toy, (1, 2), strict=True):
        assert (s["study"], s["weights"]) == ("ToySD-DDIM-20", "pretrained")
        assert (s["images_per_point"], s["images_per_call"]) == (2, per_call)
        assert s["prompts"] == [p.text for p in load_prompts("search", 2, "shapes")]
        assert s["seeds"] == [0, 1]
        assert s["heldout_prompts"] == [p.text for p in load_prompts("heldout", 2, "shapes")]
        assert s["heldout_seeds"] == [SEED_OFFSET, SEED_OFFSET + 1]  # accelopt.study.confirm's
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
    merged = records.merge(toy)
    assert len(merged["points"]) == 3 and merged["partial"] is False
    assert merged["baseline_scores"] == toy[0]["baseline_scores"]
    # One prompt a call or two: each prompt has its own generator, so the same images.
    assert merged["baseline_score_spread"] <= 1e-3
    summary = records.summarize(merged)
    scores = summary["scores"]
    assert (scores["points"], scores["prompts"], scores["heldout_prompts"]) == (2, 2, 2)
    assert scores["within"] == sum(
        p["score_loss"] <= 0.02 for p in merged["points"] if p["accelerators"]
    )
    text = records.markdown(summary)
    assert "- CLIP-score loss (accelopt-toy-clip), budget 2%: " in text
    other = dict(toy[1], heldout_seeds=[7, 8])
    with pytest.raises(ValueError, match="shards differ in 'heldout_seeds'"):
        records.merge([toy[0], other])


def test_an_unscored_landscape_loads_and_summarizes_as_before() -> None:
    old = records.load(ROOT / "bench" / "landscapes" / "SD1.5-DDIM-20.json")
    assert "baseline_scores" not in old and "scores" not in old["points"][0]
    assert records.summarize(old)["scores"] is None
    assert "CLIP-score" not in records.markdown(records.summarize(old))


def test_scores_need_a_trained_scorer(tmp_path: Path) -> None:
    args = ["measure", "--pipeline", "TinySD", "--steps", "10", "--device", "cpu"]
    with pytest.raises(SystemExit, match="TinySD-DDIM-10: --heldout records CLIP scores, and"):
        landscape.main([*args, "--heldout", "2", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


# --- fidelity: per-prompt PSNR, SSIM and CLIP-image beside the CLIP loss ----------------------


def test_fidelity_regenerates_a_fresh_measure_exactly(
    toy: list[dict[str, Any]], tmp_path: Path
) -> None:
    """On the CPU, fidelity's images are measure's: the same scores to the last digit. A run
    stopped by its budget writes a partial file, and a run on that file completes it."""
    base = tmp_path / "shard.json"
    records.write_json(base, toy[0])  # one prompt a call, as fidelity regenerates it
    args = ["fidelity", str(base), "--device", "cpu"]
    assert landscape.main([*args, "--time-budget", "0", "--out", str(tmp_path / "a")]) == 0
    partial = records.load(tmp_path / "a" / "ToySD-DDIM-20.json")
    (run,) = partial["fidelity"]["runs"]
    assert run["stopped"] == f"time budget: stopped before point 0 of {len(toy[0]['points'])}"
    assert (partial["fidelity"]["points"], run["done"]) == (0, 0)
    assert partial["fidelity"]["baseline_score_difference"] == 0.0
    assert partial["fidelity"]["score_difference"] is None
    assert partial["points"] == toy[0]["points"]  # nothing else changes

    resumed = tmp_path / "a" / "ToySD-DDIM-20.json"
    assert (
        landscape.main(["fidelity", str(resumed), "--device", "cpu", "--out", str(tmp_path / "b")])
        == 0
    )
    done = records.load(tmp_path / "b" / "ToySD-DDIM-20.json")
    f = done["fidelity"]
    assert [r["done"] for r in f["runs"]] == [0, len(toy[0]["points"])]
    assert (f["points"], f["of"], f["errors"]) == (len(toy[0]["points"]),) * 2 + (0,)
    assert f["score_difference"] == f["heldout_score_difference"] == 0.0
    assert f["points_with_score_difference"] == 0
    assert f["runs"][1]["baseline_scores"] == toy[0]["baseline_scores"]
    for p, measured in zip(done["points"], toy[0]["points"], strict=True):
        assert {k: p[k] for k in measured} == measured  # the recording stays as it was
        assert (p["fidelity_scores"], p["heldout_fidelity_scores"]) == (
            measured["scores"],
            measured["heldout_scores"],
        )
        assert (p["fidelity_score_loss"], p["heldout_fidelity_score_loss"]) == (
            measured["score_loss"],
            measured["heldout_score_loss"],
        )
        for key in records.FIDELITY_POINT_KEYS:
            if key.endswith("_per_prompt"):
                assert len(p[key]) == 2, key
        if not p["accelerators"]:  # the plain pipeline: its own baseline images
            assert p["psnr_per_prompt"] == p["heldout_psnr_per_prompt"] == [math.inf] * 2
            assert p["ssim_per_prompt"] == p["heldout_ssim_per_prompt"] == [1.0, 1.0]
            assert p["clip_image_per_prompt"] == [1.0, 1.0]
        else:  # measure's mean PSNR and SSIM are the means of these
            assert math.isclose(statistics.fmean(p["psnr_per_prompt"]), p["psnr"], abs_tol=1e-3)
            assert math.isclose(statistics.fmean(p["ssim_per_prompt"]), p["ssim"], abs_tol=1e-5)
            assert all(0 < c < 1 for c in p["clip_image_per_prompt"])


def test_fidelity_needs_a_scored_landscape(tmp_path: Path) -> None:
    old = ROOT / "bench" / "landscapes" / "SD1.5-DDIM-20.json"
    with pytest.raises(SystemExit, match="no per-prompt CLIP scores; fidelity needs a scored"):
        landscape.main(["fidelity", str(old), "--device", "cpu", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_fidelity_subsets(capsys: pytest.CaptureFixture[str]) -> None:
    points = [{"index": i} for i in (3, 0, 2, 1)]  # a shard's measurement order
    assert [p["index"] for p in landscape._fidelity_subset(points, 1, None, 0)] == [0]
    assert [p["index"] for p in landscape._fidelity_subset(points, None, [2, 1, 2], 0)] == [1, 2]
    with pytest.raises(SystemExit, match="--indices: no point with index 7, 9"):
        landscape._fidelity_subset(points, None, [9, 1, 7], 0)
    with pytest.raises(SystemExit) as stop:
        landscape.main(["fidelity", "x.json", "--indices", "1,a"])
    assert stop.value.code == 2
    assert "--indices takes I,J,...; got '1,a'" in capsys.readouterr().err


def _prompts(search: list[float], heldout: list[float]) -> dict[str, list[float]]:
    """Per-prompt fidelity: PSNRs as given; SSIM and CLIP-image from them, so they rank alike."""
    out: dict[str, list[float]] = {}
    for split, values in (("", search), ("heldout_", heldout)):
        out[f"{split}psnr_per_prompt"] = values
        out[f"{split}ssim_per_prompt"] = [1.0 if math.isinf(v) else v / 50 for v in values]
        out[f"{split}clip_image_per_prompt"] = [1.0 if math.isinf(v) else v / 45 for v in values]
    return out


def _synthetic() -> dict[str, Any]:
    """Six points of two prompts; every number chosen so each count below is worked by hand."""

    def point(
        i: int,
        configs: dict[str, Any],
        speedup: float,
        loss: float,
        held: float,
        search: list[float],
        heldout: list[float],
        **extra: Any,
    ) -> dict[str, Any]:
        prompts = _prompts(search, heldout)
        means = {k: statistics.fmean(prompts[f"{k}_per_prompt"]) for k in ("psnr", "ssim")}
        return {"index": i, "accelerators": configs, "speedup": speedup, "score_loss": loss,
                "heldout_score_loss": held, **means, **prompts, **extra}  # fmt: skip

    dc = {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}}
    tome = {"tome": {"ratio": 0.5, "max_downsample": 1}}
    inf = math.inf
    return {
        "study": "Toy", "device": "cpu", "date": "2026-12-04", "max_score_loss": 0.02,
        "prompts": ["a", "b"], "heldout_prompts": ["c", "d"],
        "points": [
            point(0, {}, 1.0, 0.0, 0.0, [inf, inf], [inf, inf]),
            # pooled PSNR of 30 and 26 dB: 10 log10(2 / (10^-3 + 10^-2.6)) = 27.55 dB
            point(1, dc, 3.0, 0.01, 0.03, [30.0, 26.0], [30.0, 30.0]),
            point(2, dc, 2.0, 0.0, 0.01, [40.0, 40.0], [38.0, 38.0]),
            point(3, tome, 1.5, 0.03, 0.0, [50.0, 50.0], [50.0, 50.0]),  # over the budget
            # 36 dB and an identical image: pooled 39.01 dB, not inf
            point(4, {**dc, **tome}, 2.5, 0.015, 0.019, [36.0, inf], [33.0, 33.0]),
            # within the budget by its recorded loss, over it by the regenerated one
            point(5, dc, 5.0, 0.01, 0.0, [45.0, 45.0], [45.0, 45.0],
                  fidelity_score_loss=0.025, heldout_fidelity_score_loss=0.0),
        ],
    }  # fmt: skip


def test_pooled_psnr() -> None:
    assert records.pooled_psnr([30.0, 30.0]) == pytest.approx(30.0)
    assert records.pooled_psnr([30.0, 26.0]) == pytest.approx(27.5549, abs=1e-4)
    assert records.pooled_psnr([36.0, math.inf]) == pytest.approx(39.0103, abs=1e-4)
    assert records.pooled_psnr([math.inf, math.inf]) == math.inf


def test_pooled_psnr_is_torchmetrics_psnr_of_the_whole_batch() -> None:
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.image")
    from accelopt.measure.metrics import psnr

    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64)
    b = (a + 0.05 * torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)).clamp(0, 1)
    b[1] = a[1]  # one identical image: inf alone, not in the pool
    expected = float(tm.peak_signal_noise_ratio(b, a, data_range=1.0))
    assert records.pooled_psnr(psnr(b, a)) == pytest.approx(expected, abs=1e-5)  # its float32


def test_fidelity_summary_counts() -> None:
    bounds = ({}, {"psnr": 35.0}, {"ssim": 0.9})
    s = records.fidelity_summary(_synthetic(), bounds, floors=(40.0, 30.0))
    assert (s["points"], s["measured"], s["within"], s["recorded_within"], s["flips"]) == (
        5, 5, 3, 4, 1
    )  # fmt: skip
    alone, psnr, ssim = s["choices"]
    # The budget alone: points 1, 2 and 4 (5 is over it by the regenerated loss); the fastest,
    # 1, loses 3% on the held-out prompts; 2 and 4 keep the budget there.
    assert (alone["feasible"], alone["heldout_clip"], alone["heldout_all"]) == (3, 2, 2)
    assert alone["chosen"]["index"] == 1
    assert (alone["chosen"]["passes_clip"], alone["chosen"]["passes_all"]) == (False, False)
    assert alone["chosen"]["search"]["psnr"] == pytest.approx(27.5549, abs=1e-4)
    assert alone["chosen"]["search"]["min_psnr"] == 26.0
    # PSNR >= 35 dB: 2 (40) and 4 (39.01); 4 is faster, keeps the budget on the held-out
    # prompts, but its held-out PSNR is 33 dB; 2's is 38 dB.
    assert (psnr["feasible"], psnr["heldout_clip"], psnr["heldout_all"]) == (2, 2, 1)
    assert psnr["chosen"]["index"] == 4
    assert (psnr["chosen"]["passes_clip"], psnr["chosen"]["passes_all"]) == (True, False)
    # SSIM >= 0.9 (PSNR/50 here): 1's mean is 0.56, 2's 0.8, 4's 0.86: none
    assert (ssim["feasible"], ssim["chosen"]) == (0, None)
    assert s["below"] == [
        {"floor": 40.0, "pooled": 2, "any_prompt": 2},  # 1 and 4 (39.01; one prompt 36)
        {"floor": 30.0, "pooled": 1, "any_prompt": 1},  # 1 (27.55; one prompt 26)
    ]
    assert [(f["set"], f["points"], f["index"]) for f in s["families"]] == [
        ("deepcache", 2, 1),
        ("deepcache+tome", 1, 4),
    ]
    with pytest.raises(ValueError, match="unknown fidelity metric 'lpips'"):
        records.fidelity_summary(_synthetic(), ({"lpips": 0.1},))


def test_merge_fidelity_takes_each_point_from_its_file() -> None:
    full = _synthetic()
    recorded = ("index", "accelerators", "psnr", "ssim")
    base = {**full, "points": [{k: v for k, v in p.items() if k in recorded}
                               for p in full["points"]]}  # fmt: skip
    keys = ("psnr_per_prompt", "ssim_per_prompt")

    def part(indices: set[int], run: str) -> dict[str, Any]:
        points = [dict(p) if p["index"] in indices else dict(b)
                  for p, b in zip(full["points"], base["points"], strict=True)]  # fmt: skip
        for p in points:
            if p["index"] in indices:
                p.update(rescore_difference=0.0, heldout_rescore_difference=0.5,
                         fidelity_scores=[1.0], heldout_fidelity_scores=[1.0],
                         fidelity_score_loss=0.0, heldout_fidelity_score_loss=0.0)  # fmt: skip
        runs = [{"shard": run, "baseline_score_difference": 0.0}]
        return {**base, "points": points, "fidelity": {"runs": runs}}

    merged = records.merge_fidelity(base, [part({0, 1, 2}, "1/2"), part({3, 4, 5}, "2/2")])
    for p, want in zip(merged["points"], full["points"], strict=True):
        assert [p[k] for k in keys] == [want[k] for k in keys]
    f = merged["fidelity"]
    assert [r["shard"] for r in f["runs"]] == ["1/2", "2/2"]
    assert (f["points"], f["heldout_score_difference"], f["points_with_score_difference"]) == (
        6, 0.5, 6
    )  # fmt: skip
    assert "psnr_per_prompt" not in base["points"][0]  # the inputs stay as given
    with pytest.raises(ValueError, match="two files measured point 2"):
        records.merge_fidelity(base, [part({1, 2}, "1/2"), part({2, 3}, "2/2")])
    with pytest.raises(ValueError, match="fidelity of Other, not of Toy"):
        records.merge_fidelity(base, [{**part({1}, "1/1"), "study": "Other"}])


# --- bench/all.py -----------------------------------------------------------------------------


def test_the_one_call_entry_point(tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    command = [sys.executable, "-m", "bench.all", "--suite", "landscapes"]
    command += ["--studies", "TinySD-DDIM-10"]
    command += ["--device", "cpu", "--workers", "2", "--points", "3", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["all.log", "landscapes/TinySD-DDIM-10.json", "results.json", "tables.md"]
    merged = records.load(out / "landscapes" / "TinySD-DDIM-10.json")
    assert len(merged["points"]) == 3
    assert merged["partial"] is False
    assert [s["cuda_visible_devices"] for s in merged["shards"]] == [None, None]
    results = json.loads((out / "results.json").read_text())
    assert results["suites"] == {"landscapes": {"files": ["landscapes/TinySD-DDIM-10.json"],
                                                "problems": [], "partial": False}}  # fmt: skip
    assert "| TinySD-DDIM-10, 32 px, batch 1 | 3 of 3 |" in (out / "tables.md").read_text()
