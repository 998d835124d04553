"""Whether the machine was busy while a study timed its baseline, and how many torch threads a
worker gets so that a host's workers do not oversubscribe its cores.

Two timings taken seconds apart move together under a steady load, so an A/A check alone never
sees one (a ToySD baseline timed 15x its usual with a 14% spread). Two signals do:

- **The CPU share** (``CpuReading``): the process's CPU seconds over wall seconds times the
  threads it can run at once, during the baseline's two timings on a CPU. A process that
  competes with other work for the cores gets less than its threads' worth. Measured on the
  2-core machine (2026-12-07, TinySD-DDIM-10; torch's waiting threads spin, so an idle
  machine's share is near 1 with either thread count): idle (the CPU >= 90% idle before),
  0.97-0.98 with 2 threads and 0.98-1.0 with 1; a busy loop on each core, 0.26-0.49 with 2
  threads and 0.65-0.68 with 1 (three runnable threads on two cores: 2/3 each); other helpers'
  work, with or without the loops, 0.18-0.43. ``SHARE_MIN`` sits between: 0.8 keeps the one
  thread beside two busy loops (1.4-2x as slow) on the loaded side with room. The load average
  is shown beside it, never judged: it counts our own threads, lags a minute, and read 1.1-2.4
  on the idle machine after other work and 1.1-1.3 with the busy loops just started.
- **The baseline's drift** (``Drift``): a baseline re-timed later (every ``BASELINE_EVERY``
  trials), or a resumed study's first timing on the same device, far off the one before it.
  This is the signal on a GPU, whose timing a CPU share cannot judge (the host waits on the
  device), and it catches a load that comes or goes during the study. On the same machine
  and day, the idle TinySD baseline's medians varied up to 1.46x across runs (1 thread:
  0.120-0.175 s/image; 2 threads: 0.086-0.114), a re-timing up to 1.29x within a run; beside
  a busy loop on each core they took 1.4-2x (1 thread) to 3-50x (2 threads) as long.
  ``DRIFT`` is 2: above the idle spread of a tiny pipeline, whose timings are a fraction of a
  second; the CPU share catches the smaller slowdowns at the start.

>>> CpuReading(load_average=3.9, cores=2, threads=2, cpu_share=0.48).reason()
"this machine is loaded (load average 3.9 on 2 cores; this process got 48% of its 2 threads' \
CPU time during the baseline)"
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DRIFT",
    "SHARE_MIN",
    "CpuProbe",
    "CpuReading",
    "Drift",
    "threads_for",
    "usable_cores",
    "warning",
]

SHARE_MIN = 0.8  # a CPU share under this: the process waited for cores (see the module's text)
DRIFT = 2.0  # a baseline this many times slower or faster than the one before it (see above)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container or taskset narrows),
    else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS and Windows
        return os.cpu_count() or 1


def threads_for(cores: int, workers: int, current: int) -> int:
    """Torch intra-op threads for one of ``workers`` processes sharing ``cores``: an equal
    share, at least one, and never more than ``current`` (a lower ``OMP_NUM_THREADS`` stays).

    Threads beyond the cores free to run them do not add speed but wait their turn at each
    parallel region's barrier: beside a busy loop on each of two cores (what another worker
    is to this one), two threads timed the TinySD baseline 3-50x slower than idle, one thread
    1.4-2x (2026-12-07).

    >>> threads_for(cores=2, workers=2, current=2), threads_for(16, 1, 4), threads_for(2, 4, 2)
    (1, 4, 1)
    """
    return max(1, min(current, cores // max(workers, 1)))


def warning(study: str, record: Mapping[str, Any]) -> str:
    """The one line a loaded machine gets, from a ``record()``: ``study: warning: REASON; ``
    and which speedups it makes unreliable: those measured now under a starved CPU share,
    those on either side of a drift (the load changed between them, either way)."""
    which = "on either side of it" if record.get("signal") == "baseline drift" else "now"
    return f"{study}: warning: {record['reason']}; speedups measured {which} are unreliable"


@dataclass(frozen=True)
class CpuReading:
    """What the process got of the cores while it timed the baseline on a CPU."""

    load_average: float  # the 1-minute load average when the timing began
    cores: int  # usable cores (``usable_cores``)
    threads: int  # torch's intra-op threads
    cpu_share: float  # CPU seconds / (wall seconds x the threads it could run at once)

    @property
    def loaded(self) -> bool:
        return self.cpu_share < SHARE_MIN

    def reason(self) -> str:
        cores = f"{self.cores} core{'s' if self.cores != 1 else ''}"
        threads = f"{self.threads} thread's" if self.threads == 1 else f"{self.threads} threads'"
        return (
            f"this machine is loaded (load average {self.load_average:.1f} on {cores}; this "
            f"process got {100 * self.cpu_share:.0f}% of its {threads} CPU time during the "
            f"baseline)"
        )

    def record(self) -> dict[str, Any]:
        """The numbers as a study stores them, with the reason they read as."""
        return {"signal": "cpu share", **asdict(self), "reason": self.reason()}


@dataclass(frozen=True)
class Drift:
    """A baseline timed again, against an earlier one of the same pipeline on the same device.

    >>> Drift(0.31, 4.69, "its timing at this worker's start").reason()
    "the baseline went from 0.310 to 4.690 s/image (15.13x its timing at this worker's start)"
    """

    before: float  # seconds per image
    after: float
    against: str  # what ``before`` was: "its timing at this worker's start", ...

    @property
    def ratio(self) -> float:
        return self.after / self.before

    @property
    def far(self) -> bool:
        return not 1 / DRIFT <= self.ratio <= DRIFT

    def reason(self) -> str:
        return (
            f"the baseline went from {self.before:.3f} to {self.after:.3f} s/image "
            f"({self.ratio:.2f}x {self.against})"
        )

    def record(self) -> dict[str, Any]:
        return {"signal": "baseline drift", "before": self.before, "after": self.after,
                "ratio": self.ratio, "reason": self.reason()}  # fmt: skip


class CpuProbe:
    """Made before a timing, read after it: the process's share of the cores meanwhile.

    The clocks, load average, core count and thread count are arguments so that tests give
    their own; the defaults are this process's.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = time.process_time,
        load_average: Callable[[], float] = lambda: os.getloadavg()[0],
        cores: Callable[[], int] = usable_cores,
        threads: Callable[[], int] | None = None,
    ) -> None:
        if threads is None:
            import torch

            threads = torch.get_num_threads
        self._wall, self._cpu = wall, cpu
        self._cores, self._threads = cores(), threads()
        self._load = load_average()
        self._started = (wall(), cpu())

    def read(self) -> CpuReading:
        wall = self._wall() - self._started[0]
        cpu = self._cpu() - self._started[1]
        # Threads beyond the cores cannot all run at once: an idle machine gives them its cores.
        runnable = max(1, min(self._threads, self._cores))
        share = cpu / (wall * runnable) if wall > 0 else 1.0
        return CpuReading(round(self._load, 2), self._cores, self._threads, round(share, 3))
