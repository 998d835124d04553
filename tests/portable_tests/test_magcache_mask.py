"""MagCache's skip mask (accelopt/portable/magcache.py): diffusers' rule, worked out by hand.

Every mask below is written out call by call: the first ``int(retention_ratio * calls + 0.5)``
calls compute; after them each call multiplies the accumulated ratio, adds one step and
``|1 - ratio|`` to the error, and skips while error <= threshold and steps <= max_skip_steps,
else computes and resets.
"""

from __future__ import annotations

import pytest

from accelopt.portable.magcache import MagSchedule, mag_skip_mask

# Magnitude ratios shaped like a calibration's: 1.0 first, a dip, then close to 1.
RATIOS = (1.0, 0.9, 0.98, 0.99, 1.0, 1.0, 1.02, 0.95)
C, S = False, True  # compute, skip


def test_the_rule_worked_by_hand() -> None:
    # threshold 0.1, K 2, retention 0.2 -> int(1.6 + 0.5) = 2 calls retained (0, 1).
    # call 2: ratio .98, err .02, steps 1 -> skip; call 3: ratio .9702, err .0498, steps 2 ->
    # skip; call 4: ratio .9702, err .0796, steps 3 > 2 -> compute, reset; call 5: 1.0, err 0,
    # steps 1 -> skip; call 6: 1.02, err .02, steps 2 -> skip; call 7: steps 3 -> compute.
    assert mag_skip_mask(RATIOS, 0.1, 2, 0.2) == (C, C, S, S, C, S, S, C)


@pytest.mark.parametrize(
    ("threshold", "max_skip_steps", "retention_ratio", "mask"),
    [
        # the threshold: at 0.03 call 3's error .0498 breaks it (compute, reset), call 4 then
        # starts afresh at ratio 1.0: skip; call 5 err 0: skip; call 6 steps 3: compute; call 7
        # ratio .95, err .05 > .03: compute.
        (0.03, 2, 0.2, (C, C, S, C, S, S, C, C)),
        # max_skip_steps: 1 skips every other call after the retained ones (err small)
        (0.1, 1, 0.2, (C, C, S, C, S, C, S, C)),
        # retention_ratio: 0.5 retains int(4.5) = 4 calls; from call 4: skip, skip, compute
        # (steps 3), skip (ratio .95, err .05)
        (0.1, 2, 0.5, (C, C, C, C, S, S, C, S)),
        # 0.0 retains nothing, but call 0 has no residual to reuse: compute and reset; call 1:
        # ratio .9, err .1 <= .1: skip; call 2: ratio .882, err .218: compute, reset; calls 3,
        # 4 skip (err .01, .02); call 5 steps 3: compute; calls 6, 7 skip (err .02, .051)
        (0.1, 2, 0.0, (C, S, C, S, S, C, S, S)),
    ],
)
def test_each_knob_changes_the_mask(
    threshold: float, max_skip_steps: int, retention_ratio: float, mask: tuple[bool, ...]
) -> None:
    """Against the by-hand mask above (0.1, 2, 0.2): each knob alone moves it."""
    got = mag_skip_mask(RATIOS, threshold, max_skip_steps, retention_ratio)
    assert got == mask
    assert got != mag_skip_mask(RATIOS, 0.1, 2, 0.2)


def test_the_threshold_holds_with_equality_as_diffusers() -> None:
    """``accumulated_err <= threshold`` (diffusers' and the repository's FLUX script): an error
    exactly at the threshold skips, one just above computes."""
    ratios = (1.0, 0.5, 0.5)  # call 1: ratio .5, err .5 exactly in binary
    assert mag_skip_mask(ratios, 0.5, 3, 0.0) == (C, S, C)
    assert mag_skip_mask(ratios, 0.4999, 3, 0.0) == (C, C, C)


def test_retention_rounds_half_up() -> None:
    """int(retention_ratio * calls + 0.5): 0.25 of 10 calls retains 3, 0.24 retains 2."""
    flat = (1.0,) * 10
    assert mag_skip_mask(flat, 0.1, 9, 0.25).index(True) == 3
    assert mag_skip_mask(flat, 0.1, 9, 0.24).index(True) == 2


def test_no_skip_at_zero_steps_or_full_retention() -> None:
    assert not any(mag_skip_mask(RATIOS, 1.0, 0, 0.0))
    assert not any(mag_skip_mask(RATIOS, 1.0, 6, 1.0))


def test_the_schedule_reads_the_mask_call_by_call_and_starts_clean() -> None:
    schedule = MagSchedule(0.1, 2, 0.2, RATIOS, calls=lambda: len(RATIOS))
    seen = []
    for _ in range(2):  # two generations: the second starts at call 0 again
        schedule.reset()
        for _ in RATIOS:
            schedule.advance()
            seen.append(schedule.structure())
    mask = mag_skip_mask(RATIOS, 0.1, 2, 0.2)
    expected = [("magcache", "skip" if skip else "compute") for skip in mask]
    assert seen == expected * 2


def test_ratios_for_another_call_count_are_refused_at_the_first_call() -> None:
    schedule = MagSchedule(0.1, 2, 0.2, RATIOS, calls=lambda: 10)
    with pytest.raises(ValueError, match="8 calibrated ratios for a generation of 10 denoiser"):
        schedule.advance()
    off = MagSchedule(0.1, 0, 0.2, (), calls=lambda: 10)  # never skips: needs no ratios
    off.advance()
    assert off.structure() == ("magcache", "compute")
