"""bench.execution's block-cache plans: MagCache's ratios are measured on the plain pipeline
before timing, as a study measures them; other knobs pass through untouched."""

from __future__ import annotations

from accelopt.testing import tiny_pipeline
from bench import execution


def test_plans_get_their_calibrated_knobs_measured_on_the_plain_pipeline() -> None:
    pipe = tiny_pipeline("TinyPixArt")
    generate = execution.generation(pipe, "TinyPixArt", batch=1)
    plans = {k: execution.PLANS[k] for k in ("magcache 0.06/3/0.2", "taylorseer 5/1/3")}
    got = {k: execution.calibrated(pipe, v, generate) for k, v in plans.items()}
    ratios = got["magcache 0.06/3/0.2"]["magcache"].pop("ratios")
    steps = execution.SETTINGS["TinyPixArt"][0]
    assert len(ratios) == steps and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert got == plans  # nothing else changed, TaylorSeer has nothing to calibrate
