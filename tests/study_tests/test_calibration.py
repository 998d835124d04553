"""Calibration per study (accelopt/study/prepare.py ``calibrate``): MagCache's ratios measured
once for the study's pipeline, scheduler and steps, stored with it, carried by every trial's
config and by the exported entry."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from accelopt.export import entries_for
from accelopt.params_store.check import check_entry
from accelopt.spec import load_spec
from accelopt.study.loop import run_study


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def test_a_study_calibrates_once_and_every_trial_carries_the_ratios(storage: str) -> None:
    spec = load_spec("TinyPixArt-DDIM-10-magcache").replace(max_score_loss=0.99)
    said: list[str] = []
    study = run_study(spec, storage=storage, n_trials=3, progress=False, log=said.append).study
    ratios = study.user_attrs["calibration"]["magcache"]["ratios"]
    assert len(ratios) == 10 and ratios[0] == 1.0  # DDIM at 10 steps: 10 transformer calls
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios)
    assert sum("calibrating magcache" in line for line in said) == 1
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(t.user_attrs["accelerators"]["magcache"]["ratios"] == ratios for t in done)
    # Resumed, it reads the stored ratios: measured once per study.
    said.clear()
    again = run_study(spec, storage=storage, n_trials=4, progress=False, log=said.append).study
    assert not any("calibrating" in line for line in said)
    assert again.user_attrs["calibration"]["magcache"]["ratios"] == ratios
    # The exported entry carries them where the store check and codegen read them.
    ((key, entry),) = entries_for(again, storage, force=True).items()
    assert entry["accelerators"]["magcache"]["ratios"] == ratios
    assert entry["params"]["ratios"] == ratios
    check_entry(key, entry)


def test_a_study_without_a_calibrated_accelerator_measures_none(storage: str) -> None:
    """TinyPixArt-DDIM-10-tgate searches T-GATE alone: nothing to calibrate, no calibration
    stored."""
    spec = load_spec("TinyPixArt-DDIM-10-tgate").replace(max_score_loss=0.99)
    said: list[str] = []
    study = run_study(spec, storage=storage, n_trials=2, progress=False, log=said.append).study
    assert "calibration" not in study.user_attrs
    assert not any("calibrating" in line for line in said)
