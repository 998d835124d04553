"""How we time generation: synchronize around the work on a GPU, wall clock on a CPU.

GPU work is asynchronous: reading a host clock without synchronizing first measures the launch,
not the work. Peak memory is reset before and read after each measured region.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

__all__ = ["device_name", "median", "peak_memory", "reset_peak_memory", "timed"]

T = TypeVar("T")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """Run ``fn`` and return its result and the seconds it took on ``device``."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes allocated on a CUDA device since the last reset; None elsewhere."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"{device.type} ({torch.get_num_threads()} threads)"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
