"""Whether the machine was busy while a study timed its baseline, and how many torch threads a
worker gets so that a host's workers do not oversubscribe its cores.

Two timings taken seconds apart move together under a steady load, so an A/A check alone never
sees one (a ToySD baseline timed 15x its usual with a 14% spread). Two signals do:

- **The CPU share** (``CpuReading``): the process's CPU seconds over wall seconds times the
  threads it can use, during the baseline's timing on a CPU. A process that competes with other
  work for the cores gets less than its threads' worth. Measured on the 2-core machine
  (2026-12-07, TinySD-DDIM-10, 2 torch threads, spinning OpenMP waits count as CPU time): an
  idle machine gave 85-99%, a busy loop on each core 43-55%, other helpers' work besides
  ours 22-45%. ``SHARE_MIN`` sits between the two groups. The load average is shown beside it,
  never judged: it counts our own threads too, lags a minute behind, and read 1.5-2.3 on the
  idle machine right after other work stopped.
- **The baseline's drift** (``Drift``): a baseline re-timed later (every ``BASELINE_EVERY``
  trials), or a resumed study's first timing on the same device, far off the one before it.
  This is the signal on a GPU, whose timing a CPU share cannot judge (the host waits on the
  device), and it catches a load that comes or goes during the study.

>>> CpuReading(load_average=3.9, cores=2, threads=2, cpu_share=0.48).reason()
"this machine is loaded (load average 3.9 on 2 cores; this process got 48% of its 2 threads' \
CPU time during the baseline)"
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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

SHARE_MIN = 0.7  # a CPU share under this: the process waited for cores (see the module's text)
DRIFT = 1.5  # a baseline this many times slower or faster than the one before it


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

    More threads than cores do not add speed but make every thread wait its turn at each
    parallel region's barrier: two workers of two threads on two cores ran slower than two of
    one.

    >>> threads_for(cores=2, workers=2, current=2), threads_for(16, 1, 4), threads_for(2, 4, 2)
    (1, 4, 1)
    """
    return max(1, min(current, cores // max(workers, 1)))


def warning(study: str, reason: str) -> str:
    """The one line a loaded machine gets: ``study: warning: REASON; speedups measured now are
    unreliable``."""
    return f"{study}: warning: {reason}; speedups measured now are unreliable"


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
        threads = f"{self.threads} thread's" if self.threads == 1 else f"{self.threads} threads'"
        return (
            f"this machine is loaded (load average {self.load_average:.1f} on {self.cores} "
            f"core{'s' if self.cores != 1 else ''}; this process got {100 * self.cpu_share:.0f}% of its {threads} CPU time "
            f"during the baseline)"
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
