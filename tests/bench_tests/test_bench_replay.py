"""bench/replay.py: strategies replayed on a recorded landscape, costs checked by hand.

The synthetic landscape is a 3x3 grid (DeepCache interval 1/2/3 x ToMe ratio 0/0.5/0.7, the
first values off) whose points cost distinct powers of two, so a total names the points paid
for. Its scored twin adds per-prompt CLIP scores (8 search prompts in batches of 2, 4 held-out
ones) whose losses are exact binary fractions, so early stops and held-out verdicts are known by
hand. Structures cost powers of two above every point's (``BUILD``), so a total still says
which were built. No timing thresholds: the replay never times anything.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import landscape_records, replay

ROOT = Path(__file__).resolve().parents[2]

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
    return landscape_records.config_key(configs(dc, ratio))


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
        "schema": landscape_records.SCHEMA,
        "kind": landscape_records.KIND,
        "study": "Tiny-3x3",
        "steps": 10,
        "images_per_point": 2,
        "space": {DC: [1, 2, 3], TOME: [0.0, 0.5, 0.7], "tgate.gate_step": [10, 5]},
        "points": points,
    }


# (cache_interval, ratio): (8 search scores against a baseline of 50.0 each: loss = (50 - s) /
# 50; 4 held-out scores against 64.0 each). The same points are feasible as under PSNR >= 35.
SCORES: dict[tuple[int, float], tuple[list[float], list[float]]] = {
    (1, 0.0): ([50.0] * 8, [64.0] * 4),
    (2, 0.0): ([50.0] * 8, [64.0] * 4),  # loss 0, held-out 0: passes
    (3, 0.0): ([49.5] * 8, [62.0] * 4),  # 1%; held-out 3.125%: fails
    (1, 0.5): ([49.75] * 8, [63.0] * 4),  # 0.5%; held-out 1.5625%: passes
    (1, 0.7): ([45.0] * 8, [60.0] * 4),  # 10% from the first prompt: stops after 2 batches
    (2, 0.5): ([49.25] * 8, [63.0] * 4),  # 1.5%; passes
    (2, 0.7): ([50.0] * 6 + [40.0] * 2, [60.0] * 4),  # 5%, all of it in the last batch: no stop
    (3, 0.5): ([49.0] * 8, [62.0] * 4),  # 2%, exactly the budget: the best; held-out fails
    (3, 0.7): ([45.0] * 8, [50.0] * 4),  # 10%: stops after 2 batches
}


def scored(
    scores: dict[tuple[int, float], tuple[list[float], list[float]]] = SCORES,
    table: dict[tuple[int, float], tuple[float, float, float]] = TABLE,
) -> dict[str, Any]:
    """``record(table)`` with per-prompt scores, as bench/landscape.py --heldout writes them."""
    rec = record(table)
    for p in rec["points"]:
        dc, ratio, gate = (p["params"][k] for k in (DC, TOME, "tgate.gate_step"))
        p["scores"], p["heldout_scores"] = scores[(dc, ratio)] if gate == 10 else SCORES[(1, 0)]
        p["time_per_image"] /= 4  # 8 images a point, not 2: the same GPU seconds per point
    rec.update(pipeline="Tiny", scheduler="DDIM", max_score_loss=0.02, early_stop=0.99,
               batch_size=2, baseline_scores=[50.0] * 8, heldout_baseline_scores=[64.0] * 4,
               images_per_point=8)  # fmt: skip
    return rec


def neighbour(
    study: str = "Other-3x3", steps: int = 10, pipeline: str = "Other"
) -> dict[str, Any]:
    """An unscored landscape whose best feasible point (PSNR >= 35) is DeepCache 3 alone."""
    table = dict(TABLE)
    table[(3, 0.5)] = (64.0, 2.2, 20.0)
    rec = record(table)
    rec.update(study=study, steps=steps, pipeline=pipeline, scheduler="DDIM")
    return rec


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
        "seed": 0, "cost": 255.0, "reached": False, "found": None, "measured": 7, "stopped": 0,
        "off": 1, "repeat": 0, "dominated": 1, "unrecorded": 0, "lost": 0,
        "spent": 239.0, "structure_seconds": 0.0,  # paid until it stopped: all but (2, 0.5)
        # the export: its fastest feasible point; no held-out scores, so no verdict
        "exported": key(3, 0.5), "answer_speedup": 2.2, "passes": None, "confirmed": None,
        "passes_confirmed": None,
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
    rec = replay.Replay.of(scored(table=table), neighbours=[neighbour()])
    assert rec.missing == [key(2, 0.7)]
    strategy = replay.STRATEGIES[name]
    if name.startswith("tpe"):
        strategy = functools.partial(strategy, max_asks=300)
    dropped = 0
    for seed in (0, 1):
        trace = steps_of(strategy, rec, seed)
        assert trace == steps_of(strategy, rec, seed)
        measured = [s.key for s in trace if s.measured]
        # Never paid twice, but a trial stopped early: it is no finished trial (as in the
        # Objective), so TPE's repeat of it is measured, and stopped, again.
        again = {s.key for s in trace if s.measured and measured.count(s.key) > 1}
        assert all(s.why == "stopped" for s in trace if s.key in again and s.measured)
        assert not again or "early" in name
        assert set(measured) <= set(rec.candidates)  # recorded, T-GATE off, an accelerator on
        assert all(s.why == "unrecorded" for s in trace if s.key not in rec.points)
        assert replay.run(rec, strategy, seed) == replay.run(rec, strategy, seed)
        dropped += sum(s.why == "unrecorded" for s in trace)
    # The grid holds the missing point and TPE draws it (seed 1: again and again, as a failed
    # trial tells it nothing): both drop it at no cost. Random draws from the record only.
    assert (dropped > 0) == (name != "random")
    if name.startswith("tpe"):  # other seeds draw other points
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
    # --neighbours with no file: no warm start (a recorded ToySD-DDIM-20 would be a neighbour).
    argv = [str(path), "--seeds", "2", "--out", str(tmp_path), "--neighbours"]
    assert replay.main(argv) == 0
    result = json.loads((tmp_path / "replay-SD1.5-DDIM-20.json").read_text())
    assert result["command"] == f"python -m bench.replay {' '.join(argv)}"
    assert result["min_psnr"] == 35.0 and not result["speed_only"] and result["seeds"] == [0, 1]
    assert result["candidates"] == 424 and result["missing"] == []  # 16 DC, 24 ToMe, 384 both
    # The default: the strategies this landscape allows; the others say why not.
    assert list(result["strategies"]) == ["grid", "random", "tpe", "tpe+cost"]
    assert list(result["unavailable"]) == ["tpe+early", "tpe+warm", "tpe+early+warm"]
    assert "no per-prompt CLIP scores" in result["unavailable"]["tpe+early"]
    assert result["scores"] is None and result["warm_start"] == []
    for s in result["strategies"].values():
        assert len(s["runs"]) == 2 and 0 < s["mean"] <= result["full_cost"]
    assert result["strategies"]["grid"]["ratio_to_grid"] == 1.0
    table = capsys.readouterr().out
    assert table == (tmp_path / "replay-SD1.5-DDIM-20.md").read_text()
    assert "| tpe |" in table and "PSNR >= 35 dB" in table


# --- scored landscapes: early stopping, warm start, held-out pass rates -----------------------


def test_a_scored_landscape_judges_by_the_score_loss() -> None:
    rec = replay.Replay.of(scored(), min_psnr=99.0)  # the PSNR floor no longer applies
    assert rec.scores is not None and rec.rule == "CLIP-score loss <= 2% on 8 prompts"
    assert rec.loss(key(3, 0.5)) == 0.02 and rec.feasible(key(3, 0.5))  # at the budget counts
    assert rec.loss(key(2, 0.7)) == 0.05 and not rec.feasible(key(2, 0.7))
    assert rec.best == key(3, 0.5)
    assert {k for k in rec.candidates if rec.hits(k)} == {key(3, 0.0), key(3, 0.5)}
    assert rec.heldout_loss(key(3, 0.0)) == 0.03125 and rec.passes(key(3, 0.0)) is False
    assert rec.heldout_loss(key(2, 0.5)) == 0.015625 and rec.passes(key(2, 0.5)) is True
    assert rec.constraint(key(1, 0.7)) == ("score_loss", pytest.approx(0.08))
    assert replay.Replay.of(record()).constraint(key(1, 0.7)) == ("psnr_shortfall", 5.0)
    # A tighter budget on the command line: 1% is still in, 1.5% is not.
    tight = replay.Replay.of(scored(), max_score_loss=0.01)
    assert tight.best == key(3, 0.0) and not tight.feasible(key(2, 0.5))


def test_stop_after_is_the_objectives_early_stop() -> None:
    rec = replay.Replay.of(scored())
    # 10% on every prompt: over budget at 99% from the second batch (4 prompts) on.
    assert rec.stop_after(key(1, 0.7)) == 4 and rec.stop_after(key(3, 0.7)) == 4
    # Over budget only in the last batch, which is never judged (it is complete by then).
    assert rec.stop_after(key(2, 0.7)) is None
    assert rec.stop_after(key(3, 0.5)) is None  # exactly at the budget is not over it
    never = scored()
    never["early_stop"] = 0.0  # the study's "0: measure every prompt"
    assert replay.Replay.of(never).stop_after(key(1, 0.7)) is None
    noisy = dict(SCORES)
    noisy[(1, 0.7)] = ([48.5, 41.5] * 4, [60.0] * 4)
    rec = replay.Replay.of(scored(noisy))
    # Loss 10% on average, 3% and 17% in turn: the 99% lower bound is 0.6% after 4 prompts,
    # 2.7% after 6.
    assert rec.stop_after(key(1, 0.7)) == 6


def test_early_stopping_charges_only_the_prompts_generated() -> None:
    rec = replay.Replay.of(scored())
    full = functools.partial(replay.tpe, max_asks=100)
    early = e = functools.partial(replay.STRATEGIES["tpe+early"], max_asks=100)
    # Seed 2: TPE pays (2, 0) 1 + (3, .7) 128 + (2, .5) 16 + (3, .5) 64, the target; with early
    # stopping the same trials, but (3, .7) stops after 4 of its 8 prompts: 64.
    assert [s.key for s in steps_of(early, rec, 2)] == [s.key for s in steps_of(full, rec, 2)]
    assert replay.Step(key(3, 0.7), True, "stopped", 0.5) in steps_of(early, rec, 2)
    assert replay.run(rec, full, 2)["cost"] == 209.0
    stopped = replay.run(rec, early, 2)
    assert (stopped["cost"], stopped["stopped"], stopped["found"]) == (145.0, 1, key(3, 0.5))
    # Seed 3: a stopped trial counts as measured (as in the Objective), so TPE's repeat of
    # (1, .7) is skipped, not stopped again: 32 + 4 + 4 + 2, against TPE's 32 + 8 + 4 + 2.
    again = replay.run(rec, early, 3)
    assert (again["cost"], again["measured"], again["stopped"]) == (42.0, 4, 1)
    assert (key(1, 0.7), False, "repeat") in [
        (s.key, s.measured, s.why) for s in steps_of(early, rec, 3)
    ]
    assert replay.run(rec, full, 3)["cost"] == 46.0
    # Over seeds 0-11, never more, and 220 s less in all.
    costs = [(replay.run(rec, full, s)["cost"], replay.run(rec, e, s)["cost"]) for s in range(12)]
    assert all(e <= f for f, e in costs)
    assert sum(f - e for f, e in costs) == 220.0


def test_the_held_out_pass_rate_with_and_without_confirmation() -> None:
    rec = replay.Replay.of(scored())
    # Grid seed 2 measures (2, 0) and then (3, 0), at the target: it exports (3, 0), which
    # fails on the held-out prompts; confirmation re-scores both and exports (2, 0).
    two = replay.run(rec, replay.grid, 2)
    assert (two["exported"], two["passes"]) == (key(3, 0.0), False)
    assert (two["confirmed"], two["passes_confirmed"]) == (key(2, 0.0), True)
    # Grid seed 0 measures (3, 0.5) first, the best, which fails: nothing else to confirm.
    zero = replay.run(rec, replay.grid, 0)
    assert (zero["exported"], zero["passes"], zero["confirmed"]) == (key(3, 0.5), False, None)
    # Only the top 3 are confirmed: (2, 0) passes but is fourth, so nothing is exported.
    worse = dict(SCORES)
    worse[(2, 0.5)] = (SCORES[(2, 0.5)][0], [62.0] * 4)
    done = [key(2, 0.0), key(3, 0.0), key(2, 0.5), key(3, 0.5), key(1, 0.7)]
    assert replay.exported(replay.Replay.of(scored(worse)), done) == {
        "exported": key(3, 0.5), "answer_speedup": 2.2, "passes": False, "confirmed": None,
        "passes_confirmed": False,
    }  # fmt: skip
    assert replay.exported(rec, done)["confirmed"] == key(2, 0.5)  # third, and it passes
    assert replay.exported(rec, [])["exported"] is None  # nothing feasible: nothing exported
    result = replay.replay(rec, range(4), ["grid"])["strategies"]["grid"]
    runs = result["runs"]
    assert result["pass_rate"] == sum(r["passes"] for r in runs) / 4
    assert result["pass_rate_confirmed"] == sum(r["passes_confirmed"] for r in runs) / 4
    unscored = replay.replay(replay.Replay.of(record()), [0], ["grid"])
    assert unscored["strategies"]["grid"]["pass_rate"] is None  # no held-out scores: no verdict


def test_warm_start_enqueues_the_neighbours_best_first() -> None:
    rec = replay.Replay.of(scored(), neighbours=[neighbour()])
    # The neighbour (same 10 DDIM steps, another pipeline) has DeepCache 3 as its best.
    [start] = rec.warm_starts
    assert (start.source, start.params, start.speedup) == ("Other-3x3", {DC: 3, TOME: 0.0}, 2.16)
    trace = steps_of(functools.partial(replay.STRATEGIES["tpe+warm"], max_asks=100), rec, 0)
    assert trace[0] == replay.Step(key(3, 0.0), True)
    run = replay.run(rec, replay.STRATEGIES["tpe+warm"], 0)
    assert (run["cost"], run["measured"], run["found"]) == (2.0, 1, key(3, 0.0))
    # A neighbour found twice (bench/landscapes/ and beside the file) is one study.
    assert len(replay.Replay.of(scored(), neighbours=[neighbour()] * 2).warm_starts) == 1
    # Neither another step count on another pipeline, nor the study itself, is a neighbour.
    far = replay.Replay.of(scored(), neighbours=[neighbour(steps=25), neighbour("Tiny-3x3")])
    assert far.warm_starts == []
    assert "no neighbouring landscape" in (replay.unavailable(far, "tpe+warm") or "")
    # The same pipeline at another step count is one (warmstart's rule).
    same = replay.Replay.of(scored(), neighbours=[neighbour(steps=25, pipeline="Tiny")])
    assert [s.source for s in same.warm_starts] == ["Other-3x3"]


def test_strategies_that_need_scores_refuse_an_unscored_landscape(tmp_path: Path) -> None:
    rec = replay.Replay.of(record())
    for name in ("tpe+early", "tpe+early+warm"):
        with pytest.raises(ValueError, match="Tiny-3x3: its landscape has no per-prompt CLIP"):
            steps_of(replay.STRATEGIES[name], rec, 0)
    path = tmp_path / "Tiny-3x3.json"
    path.write_text(json.dumps(record()))
    with pytest.raises(SystemExit, match=r"tpe\+early: Tiny-3x3: its landscape has no per-prompt"):
        replay.main([str(path), "--strategies", "tpe,tpe+early", "--neighbours"])


def test_main_on_a_scored_landscape(tmp_path: Path, capsys: Any) -> None:
    path, other = tmp_path / "Tiny-3x3.json", tmp_path / "Other-3x3.json"
    path.write_text(json.dumps(scored()))
    other.write_text(json.dumps(neighbour()))
    assert replay.main([str(path), "--seeds", "3", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "replay-Tiny-3x3.json").read_text())
    assert list(result["strategies"]) == list(replay.STRATEGIES)  # the neighbour: beside it
    assert result["unavailable"] == {} and result["min_psnr"] is None
    assert result["scores"] == {"prompts": 8, "heldout_prompts": 4, "max_score_loss": 0.02,
                                "batch_size": 2, "early_stop": 0.99}  # fmt: skip
    assert result["best"]["score_loss"] == 0.02 and result["best"]["heldout_score_loss"] == 0.03125
    [start] = result["warm_start"]
    assert start == {"source": "Other-3x3", "speedup_there": 2.16,
                     "accelerators": {"deepcache": {"cache_interval": 3}}}  # fmt: skip
    for name, s in result["strategies"].items():
        assert len(s["runs"]) == 3 and 0 <= s["pass_rate"] <= s["pass_rate_confirmed"] <= 1
        assert (s["mean_stopped"] > 0) == ("early" in name) or s["mean_stopped"] == 0
    table = capsys.readouterr().out
    assert table == (tmp_path / "out" / "replay-Tiny-3x3.md").read_text()
    assert "| stopped early (mean) | held-out pass | held-out pass, confirmed |" in table
    assert "- warm start (tpe+warm): deepcache 3 from Other-3x3 (2.16x there;" in table
    assert "CLIP-score loss <= 2% on 8 prompts" in table


# --- structures and the cost-aware search (issue 33) ------------------------------------------

# Powers of two above every point's cost, so a total still names what was paid for.
BUILD = replay.StructureCosts(deepcache=512.0, branch=1024.0, tome=2048.0, tgate=8192.0)


def test_structures_of_a_configuration() -> None:
    both = {"deepcache": {"cache_interval": 3, "cache_branch_id": 2},
            "tome": {"ratio": 0.5, "max_downsample": 1}, "tgate": {"gate_step": 5}}  # fmt: skip
    assert replay.structures(both) == [("deepcache",), ("branch", 2), ("tome", 0.5, 1), ("tgate",)]
    assert replay.structures({}) == []  # the plain pipeline's, built before the search
    assert [BUILD.seconds(s) for s in replay.structures(both)] == [512.0, 1024.0, 2048.0, 8192.0]
    assert not replay.StructureCosts() and BUILD


def test_each_structure_is_charged_once_per_run() -> None:
    rec = replay.Replay.of(record(), structure_costs=BUILD)
    # Grid seed 5 measures (1, .7) 8 + (2, 0) 1 + (1, .5) 4 + (3, .7) 128 + (3, .5) 64 = 205 s,
    # and builds ToMe 0.7 2048 + DeepCache 512 + its branch 1024 + ToMe 0.5 2048: (3, .7) and
    # (3, .5) meet nothing new.
    five = replay.run(rec, replay.grid, 5)
    assert (five["cost"], five["structure_seconds"], five["measured"]) == (5837.0, 5632.0, 5)
    assert five["spent"] == five["cost"]
    # Grid seed 0 pays (3, .5) 64 and both its structures' families at once.
    assert replay.run(rec, replay.grid, 0)["cost"] == 64.0 + 512 + 1024 + 2048
    # Unreached: every point measured and every structure built once.
    assert rec.full_cost == 255.0 + 512 + 1024 + 2 * 2048
    # A trial stopped early built its structures: TPE seed 2 pays (2, 0) 1, (3, .7) 64 of its
    # 128 and ToMe 0.7, (2, .5) 16 and ToMe 0.5, then (3, .5) 64 with nothing new.
    early = functools.partial(replay.STRATEGIES["tpe+early"], max_asks=100)
    scored_rec = replay.Replay.of(scored(), structure_costs=BUILD)
    assert replay.run(scored_rec, early, 2)["cost"] == 145.0 + 512 + 1024 + 2 * 2048


def test_structure_seconds_zero_is_the_old_cost_model(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "Tiny-3x3.json"
    path.write_text(json.dumps(record()))
    out = tmp_path / "out"
    base = [str(path), "--seeds", "6", "--strategies", "grid,tpe", "--out", str(out)]
    assert replay.main([*base, "--structure-seconds", "0", "--neighbours"]) == 0
    zero = json.loads((out / "replay-Tiny-3x3.json").read_text())
    free = replay.Replay.of(record())
    for name in ("grid", "tpe"):
        expected = [replay.run(free, replay.STRATEGIES[name], s) for s in range(6)]
        assert zero["strategies"][name]["runs"] == expected
    assert [r["cost"] for r in zero["strategies"]["grid"]["runs"]][::5] == [64.0, 205.0]
    assert zero["full_cost"] == 255.0 and zero["structure_note"] is None
    assert "structures:" not in capsys.readouterr().out
    # By default each family's figure from docs/BENCHMARKS.md; ToMe's says it is assumed.
    assert replay.main([*base, "--neighbours"]) == 0
    measured = json.loads((out / "replay-Tiny-3x3.json").read_text())
    assert measured["structure_costs"] == {"deepcache": 6.0, "branch": 1.0, "tome": 7.0,
                                           "tgate": 422.0}  # fmt: skip
    assert measured["strategies"]["grid"]["runs"][5]["cost"] == 205.0 + 6 + 1 + 2 * 7
    assert "(**ToMe's seconds per (ratio, max_downsample) are assumed, not measured**)" in (
        capsys.readouterr().out
    )
    # A family's own option beats --structure-seconds.
    args = replay.parser().parse_args(
        [str(path), "--structure-seconds", "0", "--tome-seconds", "3"]
    )
    assert replay.structure_costs(args) == replay.StructureCosts(tome=3.0)
    with pytest.raises(SystemExit, match="structure seconds must be >= 0 and --tome-factor > 0"):
        replay.main([*base, "--branch-seconds", "-1"])


def test_tpe_cost_probes_first_and_prunes_a_lost_family_for_free() -> None:
    table = dict(TABLE)
    table[(1, 0.7)] = (8.0, 0.9, 30.0)  # ToMe alone at its fastest loses to the plain pipeline
    table[(3, 0.0)] = (2.0, 1.8, 36.0)  # the target is (3, .5) alone, with ToMe
    rec = replay.Replay.of(record(table), structure_costs=BUILD)
    assert replay.probes(rec) == {
        "deepcache": {"accelerators": configs(3, 0.0), "speedup": 1.8},
        "tome": {"accelerators": configs(1, 0.7), "speedup": 0.9},
    }
    cost_aware = functools.partial(replay.STRATEGIES["tpe+cost"], max_asks=100)
    for seed in range(4):
        trace = steps_of(cost_aware, rec, seed)
        # The probes (Space.fastest) come first and are measured: (3, 0) then (1, .7).
        assert trace[:2] == [replay.Step(key(3, 0.0), True), replay.Step(key(1, 0.7), True)]
        later = trace[2:]
        assert not any(s.measured for s in later)  # (2, 0) is dominated by feasible (3, 0)
        assert any(s.why == "lost" for s in later)
        # A ToMe configuration is pruned as lost, or as a repeat of the probe (the Objective
        # asks for repeats first).
        tome = {(s.key, s.why) for s in later if "tome" in rec.points[s.key]["accelerators"]}
        assert {k for k, why in tome if why != "lost"} <= {key(1, 0.7)}
        run = replay.run(rec, cost_aware, seed)
        # Never reached (the target has ToMe): flagged at the full cost, but it spent only
        # the probes and their structures, and stopped when nothing was left to measure.
        assert (run["reached"], run["cost"], run["measured"]) == (False, rec.full_cost, 2)
        assert run["spent"] == 2.0 + 8.0 + 512 + 1024 + 2048 and run["lost"] >= 1
        assert run["exported"] == key(3, 0.0)
    # What the rule costs here: plain TPE finds the target, with ToMe, that it gave up.
    plain = replay.run(rec, functools.partial(replay.tpe, max_asks=100), 0)
    assert (plain["reached"], plain["found"]) == (True, key(3, 0.5))


def test_tome_factor_runs_tome_configurations_slower() -> None:
    original = record()
    rec = replay.Replay.of(original, tome_factor=0.5)
    assert rec.speedup(key(3, 0.5)) == 1.1 and rec.cost(key(3, 0.5)) == 128.0
    assert rec.speedup(key(3, 0.0)) == 2.16 and rec.cost(key(3, 0.0)) == 2.0  # no ToMe: as is
    assert rec.best == key(3, 0.0)  # the best is DeepCache alone now
    assert replay.Replay.of(original).speedup(key(3, 0.5)) == 2.2  # the record is untouched
