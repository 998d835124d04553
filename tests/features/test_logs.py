"""What a run writes where no terminal reads it (a CI log, nohup, a pipe): whole lines only."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelopt.cli import main

# The toy model: loaded with diffusers' and transformers' own loading bars, unlike the tiny
# pipelines built from config. Two prompts, one trial, no timing pairs: seconds on two cores.
QUICK_TOY = """
pipeline = "ToySD"
scheduler = "DDIM"
steps = 10
resolution = 64
guidance = 5.0
n_trials = 1
warmup = 0

[prompts]
set = "shapes"
count = 2
batch_size = 2

[metric]
model = "accelopt-toy-clip"
pretrained = ""

[timing]
pairs = 0
"""


def test_a_run_off_a_terminal_writes_no_carriage_return(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "QuickToy.toml"
    spec.write_text(QUICK_TOY)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["run", "--spec", str(spec), "--storage", storage, "--no-warm-start"]) == 0
    out, err = capsys.readouterr()  # capsys is no terminal
    assert "QuickToy: loading ToySD: done in" in err  # progress lines were written ...
    assert "QuickToy: ran 1 trials (1 in the study)" in out
    assert "\r" not in out + err  # ... and no bar, ours or upstream's
