"""bench/noise.py's tables from its recorded runs: the rows group what ran at once, and the
tables docs/BENCHMARKS.md shows come out of the records line for line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_bench_tables  # beside this file: its table parser

from bench import noise

ROOT = Path(__file__).resolve().parents[2]

FOLDER = ROOT / "bench" / "results" / "noise-h200x4-2026-11-28"
# As the docs' command gives them: unpinned first, each alone then its four at once.
RECORDS = sorted(FOLDER.glob("unpinned-*.json")) + sorted(FOLDER.glob("pinned-*.json"))


def test_the_docs_tables_come_from_the_records() -> None:
    lines = noise.table([json.loads(p.read_text()) for p in RECORDS])
    docs = test_bench_tables.DOCS
    assert [line for line in lines if line.startswith("| ") and line not in docs] == []
    conditions, floors = test_bench_tables.parse("\n".join(lines))
    # (pinned or not) x (alone or four at once) x two thread counts x batch 1 and 4
    assert len(conditions[1]) == 2 * 2 * 2 * 2
    assert len(floors[1]) == 2 * 2 * 2  # a UNet floor at each batch, per placement
    assert [r[:2] for r in conditions[1][::4]] == [
        ["no", "alone"], ["no", "four at once"], ["yes", "alone"], ["yes", "four at once"]
    ]  # fmt: skip


def test_four_at_once_rows_span_the_four_processes() -> None:
    four = [json.loads(p.read_text()) for p in sorted(FOLDER.glob("pinned-four*.json"))]
    assert len(four) == 4
    (_, rows), _ = test_bench_tables.parse("\n".join(noise.table(four)))
    assert len(rows) == 4  # threads 1 and 4, batch 1 and 4: one row each for the four
    medians = [r["conditions"][0]["median_s"] for r in four]
    assert rows[0][:4] == ["yes", "four at once", "1", "1"]
    assert rows[0][4] == f"{min(medians):.3f}-{max(medians):.3f}"


def test_the_table_is_printed_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert noise.main(["--table", *map(str, RECORDS)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == noise.table([json.loads(p.read_text()) for p in RECORDS])


@pytest.mark.parametrize("cores", ["3", "3-1", "a-b"])
def test_a_bad_core_range_is_a_usage_error(
    cores: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        noise.main(["--cores", cores, "--out", str(tmp_path / "noise.json")])
    assert stop.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(f"--cores takes a range of core numbers like 0-3, not {cores!r}")
    )
    assert not (tmp_path / "noise.json").exists()
