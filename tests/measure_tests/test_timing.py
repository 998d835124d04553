"""Tests for accelopt/measure/timing.py on the CPU: results pass through, memory is a CUDA-only
reading."""

from __future__ import annotations

import pytest
import torch

from accelopt.measure.environment import device_name
from accelopt.measure.timing import (
    interval_text,
    median,
    peak_memory,
    reset_peak_memory,
    time_text,
    timed,
)

CPU = torch.device("cpu")


def test_timed_returns_the_result_and_seconds() -> None:
    calls = []

    def work() -> dict[str, int]:
        calls.append(1)
        return {"answer": 42}

    result, seconds = timed(work, CPU)
    assert result == {"answer": 42}
    assert calls == [1]
    assert type(seconds) is float
    assert seconds >= 0.0


def test_timed_lets_exceptions_through() -> None:
    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        timed(fail, CPU)


def test_peak_memory_on_cpu_is_none() -> None:
    assert reset_peak_memory(CPU) is None
    assert peak_memory(CPU) is None


def test_device_name_on_cpu_counts_threads() -> None:
    assert device_name(CPU) == f"cpu ({torch.get_num_threads()} threads)"


@pytest.mark.parametrize(
    ("values", "expected"),
    [([3, 1, 2], 2.0), ([4.0, 1.0, 3.0, 2.0], 2.5), ((5.5,), 5.5), ([2, 2, 9], 2.0)],
)
def test_median(values: list[float], expected: float) -> None:
    result = median(values)
    assert result == expected
    assert type(result) is float


def test_median_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        median([])


# ---- how speeds read (accelopt.measure.timing.interval_text, time_text) -----------------------


@pytest.mark.parametrize(
    ("interval", "level", "pairs", "shown"),
    [
        ([1.31, 1.6], 0.98, 7, " (1.31x-1.60x, 98% interval over 7 pairs)"),
        (None, None, 1, " (one timed pair: no interval)"),  # recorded since: the count alone
        ([2.4, 2.4], 0.0, 0, " (one timed pair: no interval)"),  # stored before: [x, x], 0%
        ([2.4, 2.4], 0.0, None, " (one timed pair: no interval)"),  # an entry without a count
        ([2.3, 2.6], 0.75, None, " (2.30x-2.60x, 75% interval)"),
        (None, None, 0, ""),  # unpaired
    ],
)  # fmt: skip
def test_one_pair_never_reads_as_an_interval(
    interval: list[float] | None, level: float | None, pairs: int | None, shown: str
) -> None:
    assert interval_text(interval, level, pairs) == shown


def test_the_time_per_image_says_its_batch_and_what_the_speedup_compares_it_with() -> None:
    paired = {"speedup": 2.5, "speedup_vs_mode_baseline": 2.5, "time_per_image": 0.4,
              "paired_baseline_time_per_image": 1.0, "timing_batch_size": 4,
              "speedup_pairs": 3}  # fmt: skip
    assert time_text(paired) == (
        "0.4000 s/image in batches of 4 (plain: 1.0000 s/image in the same pairs; medians of 3 "
        "pairs, the speedup is the median of their ratios)"
    )
    assert time_text({**paired, "speedup_pairs": 1}) == (
        "0.4000 s/image in batches of 4 (plain: 1.0000 s/image in the same pairs)"
    )
    # another execution mode's plain pipeline was faster: the speedup is against it, and says so
    scaled = {**paired, "speedup": 1.25}
    assert time_text(scaled, "s per image") == (
        "0.4000 s per image in batches of 4 (plain: 1.0000 s per image in the same pairs, "
        "2.50x against it; the speedup is scaled to the fastest plain pipeline, another "
        "execution mode's; medians of 3 pairs, the speedup is the median of their ratios)"
    )
    unpaired = {"speedup": 2.0, "time_per_image": 0.5, "timing_batch_size": 2, "speedup_pairs": 0}
    assert time_text(unpaired) == (
        "0.5000 s/image in batches of 2 (unpaired: the quality pass against the baseline timed "
        "apart)"
    )
    assert time_text({"speedup": 2.0}) == "time per image not recorded"
