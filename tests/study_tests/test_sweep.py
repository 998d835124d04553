"""accelopt sweep: the matrix, skipping finished studies, and the closing table."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelopt.cli import main
from accelopt.study.sweep import (
    DEFAULT_PIPES,
    DEFAULT_SCHEDS,
    DEFAULT_STEPS,
    default_targets,
    matrix,
)


def test_default_matrix_is_the_seed_systems() -> None:
    names = matrix(DEFAULT_PIPES, DEFAULT_SCHEDS, DEFAULT_STEPS, default_targets())
    # Every declared combination: TaylorSeer's studies are "not applicable" on these UNets.
    singles = ("deepcache", "taylorseer", "tgate", "tome")
    pairs = ("deepcache+tgate", "deepcache+tome", "tome+tgate")
    assert default_targets() == (*singles, *pairs, "deepcache+tome+tgate")
    assert len(names) == 3 * 3 * 3 * 8 == len(set(names))
    assert names[0] == "SD1.5-DDIM-20-deepcache"
    assert names[-1] == "SDXL-UniPC-50-deepcache+tome+tgate"


def test_sweep_runs_skips_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    argv = ["sweep", "--pipes", "TinySD", "TinyPixArt", "--scheds", "DDIM", "--steps", "10",
            "--targets", "deepcache", "tgate", "--n-trials", "2", "--storage", storage,
            "--quiet", "--export", "--top-k", "0",
            "--store", str(tmp_path / "store.json")]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["study", "trials", "best", "loss", "state"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert list(rows) == ["TinySD-DDIM-10-deepcache", "TinySD-DDIM-10-tgate",
                          "TinyPixArt-DDIM-10-deepcache", "TinyPixArt-DDIM-10-tgate"]  # fmt: skip
    assert rows["TinySD-DDIM-10-deepcache"].endswith("ran 2")
    assert "not applicable" in rows["TinyPixArt-DDIM-10-deepcache"]
    assert main(argv) == 0  # again: every study is finished, nothing runs
    again = capsys.readouterr().out.splitlines()[1:]
    assert sum(line.endswith("finished already") for line in again) == 3
