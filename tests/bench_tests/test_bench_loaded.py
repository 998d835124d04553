"""bench/loaded.py's pure logic: the "covers, misses or refused" judgement, what export did by
its exit code, the cost of pairing from trial attributes, and the tables from a record (a
synthetic one here, the recorded one against docs/BENCHMARKS.md). No study runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_bench_tables  # beside this file: its table parser

from bench import loaded

ROOT = Path(__file__).resolve().parents[2]

# The docs' sections, each with its --table command's records in order: the first attempt (3
# confirmation pairs, three calls) and the one with 7 pairs.
SECTIONS = [
    [ROOT / "bench" / "results" / "loaded" / f"loaded-cpu{name}-2026-12-04.json" for name in names]
    for names in (("", "-idle", "-third"), ("-7pairs",))
]


def test_judge_covers_misses_or_refused() -> None:
    assert loaded.judge([1.2, 1.9], 1.2, True) == "covers"  # the ends belong to the interval
    assert loaded.judge([1.2, 1.9], 1.9, True) == "covers"
    assert loaded.judge([1.2, 1.9], 1.19, True) == "misses"
    assert loaded.judge([1.2, 1.9], 2.5, True) == "misses"
    assert loaded.judge(None, 0.9, False) == "refused"  # no interval was written to miss
    assert loaded.judge([1.2, 1.9], 0.9, False) == "refused"
    with pytest.raises(ValueError, match="without a held-out interval"):
        loaded.judge(None, 1.5, True)


def test_classify_by_exit_code_and_store() -> None:
    refusal = (
        "TinySD-DDIM-10: trial 2 not exported: its speedup 1.10x (0.86x-3.98x) is undecidable"
    )
    assert loaded.classify(0, "", {"key": {}}) == "exported"
    assert loaded.classify(0, "nothing to export: none passed", {}) == "nothing"
    assert loaded.classify(1, refusal, {}) == "refused"
    with pytest.raises(RuntimeError, match=r"exit 2\):\naccelopt: bad spec"):
        loaded.classify(2, "accelopt: bad spec", {})
    with pytest.raises(RuntimeError, match="exit 1"):  # exit 1 for another reason: a failure
        loaded.classify(1, "every worker stopped", {})


def trial(baseline: list[float], candidate: list[float], seconds: float) -> dict[str, object]:
    return {"pairs": {"baseline": baseline, "candidate": candidate}, "trial_seconds": seconds,
            "generation_seconds": 1.5, "warmup_seconds": 0.5, "scoring_seconds": 0.25}  # fmt: skip


def test_pair_cost_counts_both_sides_of_every_pair() -> None:
    trials = [
        trial([1.0, 2.0, 1.0], [0.5, 0.5, 1.0], 30.0),  # 4 s/image of baseline, 2 of candidate
        trial([0.5, 0.5, 0.5], [0.25, 0.25, 0.25], 10.0),
        {"skipped": "no accelerator on"},  # never measured
        {
            "trial_seconds": 5.0,
            "generation_seconds": 1.0,
            "warmup_seconds": 0.0,
            "scoring_seconds": 0.0,
        },  # stopped early: no pairs
    ]
    cost = loaded.pair_cost(trials, 4)
    # (4 + 2) * 4 images + (1.5 + 0.75) * 4 images = 24 + 9 = 33 s of 40
    assert cost == {"trials": 2, "pairs_per_trial": [3], "images_per_call": 4,
                    "pair_seconds": 33.0, "quality_seconds": 4.0, "scoring_seconds": 0.5,
                    "trial_seconds": 40.0, "share": 33.0 / 40.0}  # fmt: skip
    assert loaded.pair_cost([], 4)["share"] is None


def record() -> dict[str, object]:
    cost = loaded.pair_cost([trial([1.0], [0.5], 12.0)], 4)  # 6 s of 12
    heldout = {"speedup": 1.61, "interval": [1.49, 1.77], "level": 0.75,
               "speedups": [1.77, 1.49, 1.61]}  # fmt: skip

    def again(speedup: float, burners: int, judgement: str) -> dict[str, object]:
        return {"speedup": speedup, "interval": [speedup - 0.1, speedup + 0.1],
                "level": 0.984375, "ratios": [speedup] * 7, "burners": burners,
                "judgement": judgement,
                "trial_interval_covers": {"covers": "misses", "misses": "covers"}.get(judgement),
                }  # fmt: skip

    exported = {"outcome": "exported", "speedup": 2.78, "speedup_interval": [2.28, 5.59],
                "heldout": heldout}  # fmt: skip
    refused = {"outcome": "refused", "speedup": 3.5, "speedup_interval": [1.28, 3.84],
               "heldout": {**heldout, "interval": [0.86, 3.98], "speedup": 2.42}}  # fmt: skip
    return {"runs": [
        {"run": 1, "regime": "loaded", "burners": 2, "load": [2.0, 4.04], "study_seconds": 61.4,
         "export": exported, "remeasured": [again(1.6, 2, "covers"), again(1.3, 0, "misses")],
         "pair_cost": cost},
        {"run": 1, "regime": "idle", "burners": 0, "load": [1.0], "study_seconds": 20.0,
         "export": refused, "remeasured": [again(1.1, 0, "refused")], "pair_cost": cost},
        {"run": 2, "regime": "idle", "burners": 0, "load": [], "study_seconds": 20.0,
         "export": {"outcome": "nothing"}, "remeasured": [],
         "pair_cost": loaded.pair_cost([], 4)},
    ]}  # fmt: skip


def test_the_tables_of_a_record() -> None:
    r = record()
    assert loaded.table(r)[2:] == [
        "| 1 | 2 / 2 | 2.0-4.0 | 61 s | exported | 2.78x (2.28-5.59) | 1.61x (1.49-1.77, 75%, 3)"
        " | 1.60x (1.50-1.70, 98%, 7) | covers |",
        "| 1 | 2 / 0 | 2.0-4.0 | 61 s | exported | 2.78x (2.28-5.59) | 1.61x (1.49-1.77, 75%, 3)"
        " | 1.30x (1.20-1.40, 98%, 7) | misses |",
        "| 1 | 0 / 0 | 1.0 | 20 s | refused | 3.50x (1.28-3.84) | 2.42x (0.86-3.98, 75%, 3) | "
        "1.10x (1.00-1.20, 98%, 7) | refused |",
        "| 2 | 0 / - | - | 20 s | nothing | - | - | - | - |",
    ]
    assert loaded.tally(r) == (
        "3 runs: exported 1, refused 1, nothing feasible 1; of 1 re-measurements of an "
        "exported entry under the study's own load, its held-out interval covers 1 and misses 0 "
        "(the trial's own interval from the search: covers 0); with the burners stopped: "
        "covers 0 of 1"
    )  # the re-measurement with the burners stopped asks another question: counted apart
    assert loaded.cost_table(r)[2:] == [
        "| 1 | loaded | 1 | 1 x 4 | 6 s | 2 s | 0.2 s | 12 s | 50% |",
        "| 1 | idle | 1 | 1 x 4 | 6 s | 2 s | 0.2 s | 12 s | 50% |",
        "| 2 | idle | 0 | - x 4 | 0 s | 0 s | 0.0 s | 0 s | - |",
        "| all | loaded | 1 | | 6 s | | | 12 s | 50% |",
        "| all | idle | 1 | | 6 s | | | 12 s | 50% |",
    ]


def test_merge_numbers_runs_again_within_each_regime() -> None:
    merged = loaded.merge([record(), record()])
    assert [(r["regime"], r["run"]) for r in merged["runs"]] == [
        ("loaded", 1), ("idle", 1), ("idle", 2), ("loaded", 2), ("idle", 3), ("idle", 4),
    ]  # fmt: skip
    assert loaded.tally(merged).startswith("6 runs: exported 2, refused 2, nothing feasible 2")


def test_table_command_prints_the_records_as_one(tmp_path: Path, capsys) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        path.write_text(json.dumps(record()))
    assert loaded.main(["--table", *map(str, paths)]) == 0
    assert capsys.readouterr().out == loaded.markdown(loaded.merge([record(), record()])) + "\n"


@pytest.mark.parametrize(("paths", "runs"), [(SECTIONS[0], 6), (SECTIONS[1], 8)], ids=["3", "7"])
def test_the_docs_tables_come_from_the_records(paths: list[Path], runs: int) -> None:
    merged = loaded.merge([json.loads(path.read_text()) for path in paths])
    lines = loaded.markdown(merged).splitlines()
    docs = test_bench_tables.DOCS
    assert [line for line in lines if line and line not in docs] == []
    assert [r["export"]["outcome"] for r in merged["runs"]].count("exported") == 5
    assert len(merged["runs"]) == runs and len(test_bench_tables.parse("\n".join(lines))) == 2
