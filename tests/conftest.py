from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable

import pytest
import torch

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.testing import tiny_pipeline

# One inductor cache for every test process and the scripts they start: a graph compiled once
# (a minute on two cores) is loaded by the others. A study sets it beside its storage only
# when it is unset (execution.use_cache_dir), so tests never scatter it over tmp folders.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "accelopt-tests-inductor")
)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers with several torch threads each oversubscribe the cores many times over.
    torch.set_num_threads(1)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1, and any attempt to open a connection fails loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def tiny() -> Callable[[str], Pipeline]:
    """Tiny pipelines by name, built once per session; tests leave them unaccelerated."""
    built: dict[str, Pipeline] = {}

    def get(name: str) -> Pipeline:
        if name not in built:
            built[name] = tiny_pipeline(name)
        pipe = built[name]
        accelerators.remove(pipe)  # a failed test must not leak patches into the next
        return pipe

    return get


def pytest_report_header() -> list[str]:
    """The versions a run used, and the GPU if any: closing notes quote this line."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("torch", "diffusers", "transformers", "DeepCache", "tgate", "tomesd", "optuna")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} missing")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return [f"accelopt versions: {', '.join(found)}; {gpu}"]


class Timings:
    """Stands in for the clock of timed pairs (``Bench.time_call``): each plain call takes the
    next of ``plain``, each accelerated call the next of ``candidate`` (seconds per image; the
    last value repeats), and every call is recorded as ``"plain"`` or ``"candidate"``."""

    def __init__(self, plain: list[float], candidate: list[float]) -> None:
        self.plain, self.candidate, self.calls = list(plain), list(candidate), []

    def __call__(self, bench: object) -> float:
        kind = "plain" if accelerators.active(bench.pipe) is None else "candidate"  # type: ignore[attr-defined]
        self.calls.append(kind)
        values = self.plain if kind == "plain" else self.candidate
        return values.pop(0) if len(values) > 1 else values[0]


@pytest.fixture
def timings(monkeypatch: pytest.MonkeyPatch) -> Timings:
    """Timed pairs that do not depend on this machine's load: plain 1.0 s, accelerated 0.5 s
    (a steady 2x) unless a test sets ``timings.plain`` and ``timings.candidate``."""
    from accelopt.objective import Bench

    clock = Timings([1.0], [0.5])
    monkeypatch.setattr(Bench, "time_call", lambda self: clock(self))
    return clock
