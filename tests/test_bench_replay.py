"""bench/replay.py: strategies replayed on a recorded landscape, costs checked by hand.

The synthetic landscape is a 3x3 grid (DeepCache interval 1/2/3 x ToMe ratio 0/0.5/0.7, the
first values off) whose points cost distinct powers of two, so a total names the points paid
for. No timing thresholds: the replay never times anything.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # replay imports landscape, beside it

import landscape  # noqa: E402
import replay  # noqa: E402

# (cache_interval, ratio): (GPU seconds for the point's 2 images, speedup, PSNR)
TABLE: dict[tuple[int, float], tuple[float, float, float]] = {
    (1, 0.0): (256.0, 1.0, math.inf),  # the plain pipeline
    (2, 0.0): (1.0, 1.5, 40.0),
    (3, 0.0): (2.0, 2.16, 36.0),  # at the target: 2.16 >= 0.98 * 2.2
    (1, 0.5): (4.0, 1.1, 45.0),
    (1, 0.7): (8.0, 1.2, 30.0),  # infeasible
    (2, 0.5): (16.0, 2.15, 37.0),  # feasible, just under the target (2.156)
    (2, 0.7): (32.0, 1.9, 34.0),  # infeasible
    (3, 0.5): (64.0, 2.2, 35.0),  # the best feasible: PSNR exactly at the floor counts
    (3, 0.7): (128.0, 3.0, 20.0),  # fastest, infeasible
}
DC, TOME = "deepcache.cache_interval", "tome.ratio"


def configs(dc: int, ratio: float) -> dict[str, Any]:
    c: dict[str, Any] = {}
    if dc != 1:
        c["deepcache"] = {"cache_interval": dc}
    if ratio:
        c["tome"] = {"ratio": ratio}
    return c


def key(dc: int, ratio: float) -> str:
    return landscape.config_key(configs(dc, ratio))


def record(table: dict[tuple[int, float], tuple[float, float, float]] = TABLE) -> dict[str, Any]:
    points = [
        {
            "index": i,
            "params": {DC: dc, TOME: ratio, "tgate.gate_step": 10},
            "accelerators": configs(dc, ratio),
            "time_per_image": cost / 2,
            "psnr": psnr,
            "speedup": speedup,
        }
        for i, ((dc, ratio), (cost, speedup, psnr)) in enumerate(table.items())
    ]
    # A recorded T-GATE point: outside the replayed space, never proposed.
    tgate = {"deepcache": {"cache_interval": 3}, "tgate": {"gate_step": 5}}
    points.append({
        "index": len(points), "params": {DC: 3, TOME: 0.0, "tgate.gate_step": 5},
        "accelerators": tgate, "time_per_image": 0.5, "psnr": 50.0, "speedup": 9.0,
    })  # fmt: skip
    return {
        "schema": landscape.SCHEMA,
        "kind": landscape.KIND,
        "study": "Tiny-3x3",
        "steps": 10,
        "images_per_point": 2,
        "space": {DC: [1, 2, 3], TOME: [0.0, 0.5, 0.7], "tgate.gate_step": [10, 5]},
        "points": points,
    }


def steps_of(strategy: replay.Strategy, rec: replay.Replay, seed: int) -> list[replay.Step]:
    return list(strategy(rec, seed))


def test_space_is_deepcache_by_tome_and_the_target_rule() -> None:
    rec = replay.Replay.of(record(), min_psnr=35.0)
    assert set(rec.space.params) == {DC, TOME}
    assert set(rec.points) == {key(dc, r) for dc, r in TABLE}  # not the T-GATE point
    assert len(rec.candidates) == 8 and key(1, 0.0) not in rec.candidates
    assert rec.best == key(3, 0.5) and rec.target == pytest.approx(0.98 * 2.2)
    assert {k for k in rec.candidates if rec.hits(k)} == {key(3, 0.0), key(3, 0.5)}
    assert rec.feasible(key(3, 0.5)) and not rec.feasible(key(2, 0.7))
    assert rec.cost(key(2, 0.5)) == 16.0 and rec.full_cost == 255.0
    assert replay.Replay.of(record(), 35.0, warmup_calls=1).cost(key(2, 0.5)) == 32.0
    # Speed only: every point feasible, the fastest is the best.
    assert replay.Replay.of(record(), min_psnr=0).best == key(3, 0.7)


def test_grid_skips_dominated_points_at_no_cost() -> None:
    rec = replay.Replay.of(record())
    # GridOrder's seeded order for seed 0 (pinned: the costs below follow from it).
    order = [
        (3, 0.5),
        (2, 0.7),
        (1, 0.5),
        (2, 0.0),
        (2, 0.5),
        (1, 0.7),
        (1, 0.0),
        (3, 0.7),
        (3, 0.0),
    ]
    trace = steps_of(replay.grid, rec, 0)
    assert [s.key for s in trace] == [key(*p) for p in order]
    assert [s.why for s in trace] == [
        "", "", "", "", "dominated", "", "off", "", ""
    ]  # fmt: skip
    # (2, 0.5) is no more aggressive than feasible (3, 0.5); (1, 0.5) is ToMe alone, another
    # accelerator set; (1, 0.7) and (3, 0.0) each have a knob above feasible (1, 0.5), (2, 0).
    run = replay.run(rec, replay.grid, 0)
    assert (run["cost"], run["reached"], run["measured"]) == (64.0, True, 1)
    # Seed 2: (2, 0) for 1 s, then (3, 0) for 2 s reaches the target.
    assert replay.run(rec, replay.grid, 2)["cost"] == 3.0
    # Seed 5: (1, .7) 8 + (2, 0) 1 + (1, .5) 4, off skipped free, (3, .7) 128, (3, .5) 64.
    five = replay.run(rec, replay.grid, 5)
    assert (five["cost"], five["measured"], five["off"]) == (205.0, 5, 1)


def test_a_dominated_target_is_never_reached_and_costs_everything() -> None:
    table = dict(TABLE)
    table[(2, 0.5)] = (16.0, 2.3, 37.0)  # timed faster than (3, 0.5), which dominates it
    table[(3, 0.0)] = (2.0, 1.0, 36.0)
    rec = replay.Replay.of(record(table))
    assert {k for k in rec.candidates if rec.hits(k)} == {key(2, 0.5)}
    run = replay.run(rec, replay.grid, 0)  # (3, 0.5) comes first and dominates (2, 0.5)
    assert run == {
        "seed": 0, "cost": 255.0, "reached": False, "found": None,
        "measured": 7, "off": 1, "repeat": 0, "dominated": 1, "unrecorded": 0,
    }  # fmt: skip


def test_random_pays_each_point_once_in_seeded_order() -> None:
    rec = replay.Replay.of(record())
    trace = steps_of(replay.uniform, rec, 3)
    assert sorted(s.key for s in trace) == sorted(rec.candidates)  # every point, once
    assert all(s.measured for s in trace)
    first = next(i for i, s in enumerate(trace) if rec.hits(s.key))
    run = replay.run(rec, replay.uniform, 3)
    assert run["cost"] == sum(rec.cost(s.key) for s in trace[: first + 1])
    assert run["measured"] == first + 1 and run["found"] == trace[first].key


@pytest.mark.parametrize("name", sorted(replay.STRATEGIES))
def test_seeds_reproduce_and_nothing_unrecorded_is_measured(name: str) -> None:
    table = dict(TABLE)
    del table[(2, 0.7)]  # a partial record: this configuration was never measured
    rec = replay.Replay.of(record(table))
    assert rec.missing == [key(2, 0.7)]
    strategy = replay.STRATEGIES[name]
    if name == "tpe":
        strategy = functools.partial(replay.tpe, max_asks=300)
    dropped = 0
    for seed in (0, 1):
        trace = steps_of(strategy, rec, seed)
        assert trace == steps_of(strategy, rec, seed)
        measured = [s.key for s in trace if s.measured]
        assert len(measured) == len(set(measured))  # never paid twice
        assert set(measured) <= set(rec.candidates)  # recorded, T-GATE off, an accelerator on
        assert all(s.why == "unrecorded" for s in trace if s.key not in rec.points)
        assert replay.run(rec, strategy, seed) == replay.run(rec, strategy, seed)
        dropped += sum(s.why == "unrecorded" for s in trace)
    # The grid holds the missing point and TPE draws it (seed 1: again and again, as a failed
    # trial tells it nothing): both drop it at no cost. Random draws from the record only.
    assert (dropped > 0) == (name != "random")
    if name == "tpe":  # other seeds draw other points
        assert steps_of(strategy, rec, 0)[:10] != steps_of(strategy, rec, 1)[:10]


def test_tpe_prunes_repeats_and_dominated_points_for_free() -> None:
    rec = replay.Replay.of(record())
    trace = steps_of(functools.partial(replay.tpe, max_asks=100), rec, 0)
    skipped = [s for s in trace if not s.measured]
    assert {s.why for s in skipped} <= {"off", "repeat", "dominated"}
    paid = [s.key for s in trace if s.measured]
    first = next(i for i, k in enumerate(paid) if rec.hits(k))
    run = replay.run(rec, functools.partial(replay.tpe, max_asks=100), 0)
    assert (run["cost"], run["found"]) == (sum(map(rec.cost, paid[: first + 1])), paid[first])
    skipped_before = sum(
        not s.measured for s in trace[: trace.index(replay.Step(paid[first], True))]
    )
    assert sum(run[why] for why in ("off", "repeat", "dominated")) == skipped_before


def test_main_on_the_recorded_sd15_landscape(tmp_path: Path, capsys: Any) -> None:
    path = ROOT / "bench" / "landscapes" / "SD1.5-DDIM-20.json"
    assert replay.main([str(path), "--seeds", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "replay-SD1.5-DDIM-20.json").read_text())
    assert result["command"] == f"python bench/replay.py {path} --seeds 2 --out {tmp_path}"
    assert result["min_psnr"] == 35.0 and not result["speed_only"] and result["seeds"] == [0, 1]
    assert result["candidates"] == 424 and result["missing"] == []  # 16 DC, 24 ToMe, 384 both
    assert list(result["strategies"]) == ["grid", "random", "tpe"]
    for s in result["strategies"].values():
        assert len(s["runs"]) == 2 and 0 < s["mean"] <= result["full_cost"]
    assert result["strategies"]["grid"]["ratio_to_grid"] == 1.0
    table = capsys.readouterr().out
    assert table == (tmp_path / "replay-SD1.5-DDIM-20.md").read_text()
    assert "| tpe |" in table and "PSNR >= 35 dB" in table
