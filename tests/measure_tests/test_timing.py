"""Tests for accelopt/measure/timing.py on the CPU: results pass through, memory is a CUDA-only
reading."""

from __future__ import annotations

import pytest
import torch

from accelopt.measure.environment import device_name
from accelopt.measure.timing import median, peak_memory, reset_peak_memory, timed

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
