"""ToyPixArt: the toy DiT's architecture, its training recipe, and its study before it ships."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelopt.cli import main as cli
from accelopt.measure.metrics import TOY_CLIP
from accelopt.pipelines import model_info, toy_folder, toy_shipped
from accelopt.spec import load_spec
from accelopt.toy import models


def test_toy_pixart_is_known_as_a_pixart_pipeline() -> None:
    info = model_info("toypixart")
    assert info is not None and (info.name, info.family, info.resolution) == (
        "ToyPixArt",
        "pixart-alpha",
        models.RESOLUTION,
    )
    spec = load_spec("ToyPixArt-DPM-Solver++-20")
    assert (spec.pipeline, spec.scheduler, spec.steps, spec.resolution) == (
        "ToyPixArt",
        "DPM-Solver++",
        20,
        64,
    )
    assert spec.prompts.set == "shapes" and spec.metric.model == TOY_CLIP


@pytest.mark.skipif(toy_shipped("ToyPixArt"), reason="ToyPixArt's weights ship")
def test_toy_pixart_study_says_its_weights_are_not_shipped_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    assert cli(["run", "--study", "ToyPixArt-DPM-Solver++-20", "--storage", storage]) == 2
    *_, last = capsys.readouterr().err.strip().splitlines()
    assert last == (
        f"accelopt: error: ToyPixArt's trained weights are not shipped yet "
        f"({toy_folder('ToyPixArt')} holds no model_index.json); train them with python -m "
        f"accelopt.toy.train and put the folder there, or use ToySD"
    )
