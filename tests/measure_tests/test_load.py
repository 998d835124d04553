"""Tests for accelopt/measure/load.py: a starved baseline timing, a baseline that drifted, and
threads per worker, from injected clocks and numbers (no real load, no timing thresholds)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from accelopt.measure.load import CpuProbe, CpuReading, Drift, threads_for, warning


def clock(*readings: float) -> Callable[[], float]:
    """A clock that reads ``readings`` in turn: at the probe's start, then at its read."""
    it: Iterator[float] = iter(readings)
    return lambda: next(it)


def probe(wall: float, cpu: float, *, threads: int = 2, cores: int = 2) -> CpuReading:
    """What a probe reads over ``wall`` seconds in which the process ran ``cpu`` CPU seconds."""
    started = CpuProbe(wall=clock(100.0, 100.0 + wall), cpu=clock(7.0, 7.0 + cpu),
                       load_average=lambda: 3.94, cores=lambda: cores,
                       threads=lambda: threads)  # fmt: skip
    return started.read()


def test_a_process_that_got_half_its_threads_time_reads_as_loaded() -> None:
    reading = probe(wall=10.0, cpu=9.6)
    assert reading == CpuReading(load_average=3.94, cores=2, threads=2, cpu_share=0.48)
    assert reading.loaded
    assert warning("TinySD-DDIM-10", reading.record()) == (
        "TinySD-DDIM-10: warning: this machine is loaded (load average 3.9 on 2 cores; this "
        "process got 48% of its 2 threads' CPU time during the baseline); speedups measured now "
        "are unreliable"
    )
    assert reading.record() == {
        "signal": "cpu share", "load_average": 3.94, "cores": 2, "threads": 2, "cpu_share": 0.48,
        "reason": reading.reason(),
    }  # fmt: skip


def test_a_process_that_got_its_threads_time_is_not_loaded() -> None:
    assert not probe(wall=10.0, cpu=19.0).loaded  # 95%: the idle machine's


def test_threads_beyond_the_cores_are_judged_by_the_cores() -> None:
    """Eight threads on two cores can never get more than two cores: an idle machine's 95%."""
    reading = probe(wall=10.0, cpu=19.0, threads=8, cores=2)
    assert (reading.cpu_share, reading.loaded) == (0.95, False)
    assert "of its 8 threads' CPU time" in reading.reason()
    assert "of its 1 thread' CPU time" not in probe(10.0, 4.0, threads=1).reason()
    assert (
        "on 1 core; this process got 40% of its 1 thread's CPU time"
        in probe(10.0, 4.0, threads=1, cores=1).reason()
    )


@pytest.mark.parametrize(("before", "after", "far"), [
    (0.3, 4.69, True), (0.3, 0.6, False), (0.3, 0.61, True), (0.3, 0.15, False),
    (0.3, 0.14, True),
])  # fmt: skip
def test_a_baseline_is_far_off_beyond_twice_either_way(
    before: float, after: float, far: bool
) -> None:
    assert Drift(before, after, "before").far is far


def test_a_drift_says_both_timings_and_what_the_first_was() -> None:
    drift = Drift(0.31, 4.69, "this study's first timing on cpu (2 threads)")
    assert warning("ToySD-DDIM-20", drift.record()) == (
        "ToySD-DDIM-20: warning: the baseline went from 0.310 to 4.690 s/image (15.13x this "
        "study's first timing on cpu (2 threads)); speedups measured on either side of it are "
        "unreliable"
    )
    assert drift.record() == {"signal": "baseline drift", "before": 0.31, "after": 4.69,
                              "ratio": 4.69 / 0.31, "reason": drift.reason()}  # fmt: skip


@pytest.mark.parametrize(("cores", "workers", "current", "threads"), [
    (2, 1, 2, 2),  # one process: torch's own choice
    (2, 2, 2, 1),  # --workers 2 on 2 cores: one each
    (2, 4, 2, 1),  # more workers than cores: still one each
    (16, 3, 16, 5),  # the remainder stays idle rather than oversubscribed
    (16, 2, 1, 1),  # OMP_NUM_THREADS=1 stays
])  # fmt: skip
def test_workers_split_the_cores_threads(cores: int, workers: int, current: int,
                                         threads: int) -> None:  # fmt: skip
    assert threads_for(cores, workers, current) == threads
