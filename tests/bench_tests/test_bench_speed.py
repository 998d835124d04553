"""bench/speed.py through bench/all.py --suite speed: configurations, pairs, skips, merged files.

Runs the tiny SD and PixArt pipelines on the CPU with one pair per configuration; the GPU
pipes' configurations are checked from their traits without building them. No timing
thresholds: times only exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from accelopt.accelerators import PipeTraits
from bench import speed

ROOT = Path(__file__).resolve().parents[2]

# What PipeTraits.of reads from the full-size configs (tests/bench_tests/test_bench_landscape.py
# has them too).
SD15 = PipeTraits("sd", 4, (1, 2, 4, 8))
SDXL = PipeTraits("sdxl", 3, (2, 4))
PIXART = PipeTraits("pixart-sigma")


def _labels(traits: PipeTraits, steps: int) -> list[str]:
    return [c.label for c in speed.candidates(traits, steps)[0]]


def test_unet_configurations_published_raw_combinations_then_range_ends() -> None:
    assert _labels(SDXL, 25) == [
        "deepcache 3/0 (published)",
        "tome 0.5 md2 (published)",
        "tgate 10/5/1/2 (published)",
        "raw upstream: deepcache 3/0 (published)",
        "raw upstream: tome 0.5 md2 (published)",
        "raw upstream: tgate 10/5/1/2 (published)",
        "deepcache 3/0 + tome 0.5 md2",
        "deepcache 3/0 + tgate 10/5/1/2",
        "tome 0.5 md2 + tgate 10/5/1/2",
        "all three",
        "deepcache 5/0 (range end)",
        "deepcache 2/3 (range end)",
        "tgate 5/9/5/1 (range end)",
        "tome 0.75 md4 (range end)",
    ]
    assert speed.candidates(SD15, 20)[1] == {  # a transformer's caches (PixArt's)
        name: f"{name} cannot accelerate a sd pipeline "
        "(accelerators.applicable: deepcache, tome, tgate)"
        for name in ("magcache", "taylorseer", "fbcache", "dbcache", "pab", "fastercache")
    }
    assert "tome 0.5 md1 (published)" in _labels(SD15, 20)


def test_pixart_gets_tgate_only_and_the_rest_is_skipped_with_the_reason() -> None:
    todo, skipped = speed.candidates(PIXART, 20)
    assert [c.label for c in todo] == [
        "tgate 15/3/1/2 (published)",
        "raw upstream: tgate 15/3/1/2 (published)",
        "tgate 5/9/5/1 (range end)",
    ]
    assert all(list(c.configs) == ["tgate"] for c in todo)
    assert sorted(skipped) == sorted(
        ["deepcache", "tome", "deepcache + tome", "deepcache + tgate", "tome + tgate",
         "deepcache + tome + tgate"]
    )  # fmt: skip
    assert skipped["deepcache + tome"].startswith("deepcache, tome cannot accelerate a pixart")


def test_the_one_call_entry_point_on_tiny_pipes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench.all", "--suite", "speed"]
    command += ["--pipes", "TinySD", "TinyPixArt", "--repeats", "1", "--device", "cpu"]
    command += ["--workers", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["all.log", "results.json", "tables.md"]
    result = json.loads((out / "results.json").read_text())["suites"]["speed"]
    assert result["partial"] is False and result["repeats"] == 1
    assert sorted(result["pipes"]) == ["TinyPixArt", "TinySD"]
    assert len(result["processes"]) == 2  # one per worker
    for name, traits in (("TinySD", PipeTraits("sd", 3, (1, 2, 4))), ("TinyPixArt", PIXART)):
        pipe = result["pipes"][name]
        expected = [speed.AA, *(c.label for c in speed.candidates(traits, pipe["steps"])[0])]
        assert list(pipe["rows"]) == expected
        assert pipe["rows"][speed.AA]["kind"] == "aa"
        assert all(len(row["pairs"]) == 1 for row in pipe["rows"].values())
    pixart = result["pipes"]["TinyPixArt"]
    assert {n for row in pixart["rows"].values() for n in row["accelerators"]} == {"tgate"}
    assert "deepcache" in pixart["skipped"]
    md = (out / "tables.md").read_text()
    assert "| TinyPixArt DPM-Solver++-20, 32 px | A/A: baseline against itself |" in md
    assert "- TinyPixArt: not applicable to its family: deepcache, tome, deepcache + tome," in md
