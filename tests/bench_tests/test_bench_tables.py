"""bench/tables.py on the recorded result files: the tables parse, one row per record, and the
tables docs/BENCHMARKS.md shows come out of the files line for line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import landscape_records, tables

ROOT = Path(__file__).resolve().parents[2]

RESULTS = sorted((ROOT / "bench" / "results").glob("*.json"))
# The files the docs' tables were written from (2026-11-28), before bench/tables.py existed.
RECORDED = [ROOT / "bench" / "results" / f"{name}-2026-11-28.json"
            for name in ("cpu", "scaling-h200x2", "speed-5arch-h200x2", "speed-h200")]  # fmt: skip
# The one-call entry point's own files, two GPUs, the same day (evening).
REGENERATED = [ROOT / "bench" / "results" / f"all-{name}-h200x2-2026-11-28.json"
               for name in ("speed", "study", "scaling")]  # fmt: skip
# Four GPUs in one call, the same day (night): the first call, the pinned one the docs show in
# full, and the pinned speed suite again; the docs put their speed rows side by side.
FOUR = {name: ROOT / "bench" / "results" / f"all-{name}-2026-11-28.json"
        for name in ("h200x4-unpinned", "h200x4", "speed-h200x4-repeat")}  # fmt: skip
LANDSCAPES = sorted((ROOT / "bench" / "landscapes").glob("*.json"))
# The random-weight landscapes the docs' landscape tables show (ToySD's has a section of its own).
RANDOM_LANDSCAPES = [ROOT / "bench" / "landscapes" / f"{s}.json"
                     for s in ("SD1.5-DDIM-20", "SDXL-DDIM-25")]  # fmt: skip
DOCS = (ROOT / "docs" / "BENCHMARKS.md").read_text().splitlines()


def parse(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table in ``text``: its header cells and its rows' cells.

    Checks the shape on the way: a separator under the header, as many cells in every row.
    """
    found: list[tuple[list[str], list[list[str]]]] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            head, rule, *rows = [_cells(b) for b in block]
            assert rule == ["---"] * len(head), block[1]
            assert all(len(r) == len(head) for r in rows), block
            found.append((head, rows))
            block = []
    return found


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") or line.startswith("|---"), line
    return [c.strip() for c in line.strip("|").split("|")]


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def row_counts(record: dict[str, Any]) -> list[int]:
    """How many rows each table ``tables.render(record)`` writes must have: one per record."""
    kind = tables.kind_of(record)
    if kind == "results":  # bench/all.py's: a table per suite that ran (landscapes aside)
        suites = record["suites"]
        counts = [row_counts(suites["speed"])] if "speed" in suites else []
        counts += [[1]] if "states" in suites.get("study", {}) else []
        counts += (
            [[len(suites["scaling"]["rows"])]] if suites.get("scaling", {}).get("rows") else []
        )
        return [n for c in counts for n in c]
    if kind == "speed":
        return [sum(len(p.get("rows", {})) for p in record["pipes"].values())]
    if kind == "scaling":
        return [len(record["rows"])]
    if kind == "cpu":
        return [2 + ("clone_demo" in record)]
    return [1]  # a study summary


def test_the_recorded_files_are_of_every_kind() -> None:
    kinds = {tables.kind_of(_load(p)) for p in RESULTS}
    assert {"cpu", "scaling", "speed"} <= kinds
    assert len(LANDSCAPES) == 3
    assert {tables.kind_of(_load(p)) for p in LANDSCAPES} == {"landscape"}


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_the_tables_parse_with_a_row_per_record(path: Path) -> None:
    record = _load(path)
    found = parse(tables.render(record, path.parent))
    assert [len(rows) for _, rows in found] == row_counts(record)
    if tables.kind_of(record) == "speed":  # the rows in the record's order, labels as stored
        [(head, rows)] = found
        assert head[:2] == ["pipe", "configuration"]
        assert [r[1] for r in rows] == [k for p in record["pipes"].values() for k in p["rows"]]


def test_the_landscapes_make_two_tables() -> None:
    records = [_load(p) for p in RANDOM_LANDSCAPES]
    text = tables.render_files(RANDOM_LANDSCAPES)
    (_, rows), (sets_head, sets) = parse(text)
    assert [r[0].split(",")[0] for r in rows] == [r["study"] for r in records]
    assert sets_head == ["accelerators", "SD1.5 points", "SD1.5 median / best", "best's PSNR",
                         "SDXL points", "SDXL median / best", "best's PSNR"]  # fmt: skip
    assert [r[0] for r in sets] == list(tables.SET_NAMES.values())  # every set in both
    for i, record in enumerate(records):  # the points column of each study adds up
        assert sum(int(r[1 + 3 * i]) for r in sets) == len(record["points"])


def test_the_docs_tables_come_from_the_recorded_files() -> None:
    """Every line the renderer writes for the recorded files is in the docs, but one: the CPU
    file predates storing the demo's trial count."""
    text = tables.render_files([*RECORDED, *RANDOM_LANDSCAPES])
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    missing = [line for line in lines if line not in DOCS]
    assert missing == [
        "| the demo study alone (`accelopt run --study TinySD-DDIM-10`) | 13.0 s | <= 120 s |"
    ]
    # header + rows: CPU, scaling, five architectures, the first speed run, two landscape tables
    sizes = [1 + 3, 1 + 2, 1 + 15 + 12 + 14 + 4 + 4, 1 + 28, 1 + 2, 1 + 8]
    assert len(lines) == sum(sizes)


def test_the_regenerated_tables_are_the_docs_line_for_line() -> None:
    lines = [
        line
        for line in tables.render_files(REGENERATED).splitlines()
        if line.startswith("| ") or line.startswith("- SD1.5-DDIM-20: study span")
    ]
    assert [line for line in lines if line not in DOCS] == []
    # speed: header + 15 SDXL + 15 SD2.1 + 15 SD1.5 + 4 PixArt-alpha rows; the study twice
    # (its call and the scaling call's one-worker run), each with its span; scaling 2 rows
    assert len(lines) == (1 + 49) + 2 * (1 + 1 + 1) + (1 + 2)


def test_the_four_gpu_call_is_the_docs_line_for_line() -> None:
    lines = [
        line
        for line in tables.render_files([FOUR["h200x4"]]).splitlines()
        if line.startswith("| ") or line.startswith("- SD1.5-DDIM-20: study span")
    ]
    assert [line for line in lines if line not in DOCS] == []
    # speed: header + 15 SDXL, SD2.1 and SD1.5 rows + 4 each PixArt; study + span; scaling
    assert len(lines) == (1 + 3 * 15 + 2 * 4) + (1 + 1 + 1) + (1 + 2)


def test_the_three_calls_side_by_side_are_the_docs_line_for_line() -> None:
    runs = {p.stem: tables.speed_of(_load(p)) for p in FOUR.values()}
    lines = tables.runs_table(runs)
    assert [line for line in lines if line not in DOCS] == []
    # the repeat has no SDXL: SD2.1 and SD1.5's 15 rows, each PixArt's 4
    [(head, rows)] = parse("\n".join(lines))
    assert len(rows) == 2 * 15 + 2 * 4 and head[-1] == "largest / smallest median"


def test_runs_side_by_side_keep_the_rows_every_run_measured() -> None:
    record = tables.speed_of(_load(FOUR["h200x4"]))
    fewer = json.loads(json.dumps(record))
    del fewer["pipes"]["SD1.5"]["rows"]["all three"]
    fewer["pipes"]["SD1.5"]["rows"]["deepcache 3/0 (published)"]["speedup"] *= 1.25
    [(head, rows)] = parse("\n".join(tables.runs_table({"a": record, "b": fewer})))
    assert head[2:] == ["a: median (min-max)", "b: median (min-max)", "largest / smallest median"]
    measured = sum(len(p["rows"]) for p in record["pipes"].values())
    assert len(rows) == measured - 1
    assert ["SD1.5", "all three"] not in [r[:2] for r in rows]
    ratios = {tuple(r[:2]): r[-1] for r in rows}
    assert ratios[("SD1.5", "deepcache 3/0 (published)")] == "1.25"
    assert {v for k, v in ratios.items() if k != ("SD1.5", "deepcache 3/0 (published)")} == {
        "1.00"
    }


def test_the_command_line_puts_runs_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "runs.md"
    assert tables.main(["--runs", *map(str, FOUR.values()), "--out", str(out)]) == 0
    runs = {p.stem: tables.speed_of(_load(p)) for p in FOUR.values()}
    assert out.read_text() == "\n".join(tables.runs_table(runs)) + "\n"


def test_runs_side_by_side_refuse_a_file_without_a_speed_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = ROOT / "bench" / "results" / "all-study-h200x2-2026-11-28.json"
    with pytest.raises(SystemExit) as stop:
        tables.main(["--runs", str(FOUR["h200x4"]), str(study)])
    assert stop.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith("--runs compares speed runs; no speed run in: all-study-h200x2-2026-11-28")
    )


TOY = ROOT / "bench" / "landscapes" / "ToySD-DDIM-20.json"


def test_the_fidelity_tables_are_the_docs_line_for_line(tmp_path: Path) -> None:
    """The toy landscape's fidelity section: its tables and notes, from the recorded file."""
    out = tmp_path / "fidelity.md"
    assert tables.main(["--fidelity", str(TOY), "--out", str(out)]) == 0
    text = out.read_text()
    lines = [line for line in text.splitlines() if line.startswith(("| ", "- "))]
    assert [line for line in lines if line not in DOCS] == []
    families, choices, floors = parse(text)
    record = _load(TOY)
    summary = landscape_records.fidelity_summary(record)
    assert [r[0] for r in families[1]] == [tables.SET_NAMES[f["set"]] for f in summary["families"]]
    assert len(choices[1]) == len(landscape_records.FIDELITY_BOUNDS)
    assert choices[1][0][:4] == ["CLIP loss <= 2% alone", "332", "DeepCache 4/0", "2.45x"]
    assert [r[0] for r in floors[1]] == ["40 dB", "35 dB", "30 dB"]
    assert floors[1][-1][2:] == ["0 of 332 (0%)", "198 of 332 (60%)"]
    assert record["fidelity"]["points"] == len(record["points"]) == 475


def test_fidelity_tables_need_the_fidelity_fields(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        tables.main(["--fidelity", str(RANDOM_LANDSCAPES[0])])
    assert stop.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith("SD1.5-DDIM-20: no per-prompt fidelity; run python -m bench.landscape fidelity")
    )


def test_speed_notes_say_what_was_not_measured_and_why() -> None:
    record = _load(ROOT / "bench" / "results" / "speed-5arch-h200x2-2026-11-28.json")
    notes = tables.speed_notes(record)
    assert notes[:3] == [
        "- SD2.1, deepcache 2/3 (range end): time budget: not started",
        "- SD2.1, tgate 5/9/5/1 (range end): time budget: not started",
        "- SD2.1, tome 0.75 md4 (range end): time budget: not started",
    ]
    assert notes[4] == ("- PixArt-alpha: not applicable to its family: deepcache, tome, "
                        "deepcache + tome, deepcache + tgate, tome + tgate, "
                        "deepcache + tome + tgate")  # fmt: skip
    assert len(notes) == 6


def test_describe_names_every_accelerator() -> None:
    configs = {
        "deepcache": {"cache_interval": 3, "cache_branch_id": 0},
        "tome": {"ratio": 0.5, "max_downsample": 2},
        "tgate": {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2},
    }
    assert tables.describe(configs) == "deepcache 3/0 + tome 0.5 md2 + tgate 10/5/1/2"


def test_an_unknown_file_is_refused_with_its_keys() -> None:
    with pytest.raises(ValueError, match=r"not a benchmark record \(keys: a, b\)"):
        tables.kind_of({"b": 1, "a": 2})


def test_the_command_line_writes_a_section_per_file(tmp_path: Path) -> None:
    out = tmp_path / "tables.md"
    assert tables.main([*map(str, RECORDED), "--out", str(out)]) == 0
    text = out.read_text()
    assert [line for line in text.splitlines() if line.startswith("### ")] == [
        f"### {p.name}" for p in RECORDED
    ]
    assert len(parse(text)) == len(RECORDED)


def test_results_say_which_suites_did_not_run_and_why() -> None:
    results = {
        "kind": "accelopt bench", "command": "python3 bench/all.py --out $OUT", "suite": "all",
        "time_budget": 520.0, "card": "4x NVIDIA H200", "date": "2026-11-29", "python": "3.12",
        "versions": {"torch": "2.11.0", "tgate": None}, "nvidia_smi": "(smi)",
        "wall_seconds": 501.0, "partial": True,
        "plan": {"gpus": 4, "summary": ["GPU 0: speed SDXL (~400 s, stop by 485 s)"]},
        "suites": {
            "study": {"study": "SD1.5-DDIM-20", "partial": True, "error": "did not run"},
            "scaling": {"rows": [], "partial": True, "error": "time budget: 3 s left"},
        },
    }  # fmt: skip
    assert tables.render(results).splitlines() == [
        "# Benchmarks, 2026-11-29: 4x NVIDIA H200",
        "",
        "- command: `python3 bench/all.py --out $OUT`; wall 501 s of a 520 s budget; **PARTIAL**",
        "- versions: torch 2.11.0; Python 3.12",
        "- full-size architectures have random weights (nothing can be downloaded): times are"
        " real, images and scores are not; ToySD is trained here, so its scores mean something",
        "- plan for 4 GPUs, seconds from the start:",
        "  - GPU 0: speed SDXL (~400 s, stop by 485 s)",
        "",
        "```",
        "(smi)",
        "```",
        "",
        "## Study engine: per-trial overhead (partial)",
        "",
        "Not measured: did not run",
        "",
        "## Two GPUs, one study: `--workers 2` against one worker (partial)",
        "",
        "Not measured: time budget: 3 s left",
    ]
