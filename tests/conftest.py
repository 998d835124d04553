from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable

import pytest
import torch

from accelopt import accelerators, execution
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

# Tests that share something costly stay in one test process, one after the other:
# - the compiling ones: tests/test_execution.py's compiled pipeline is built once, and each later
#   graph finds the kernels of an earlier one in the cache above, instead of two processes
#   compiling the same graph at once (minutes each on two cores);
# - the modules whose tests read one study searched by a module-scoped fixture (half a minute).
# Everything else is spread test by test, as --dist load does. xdist's own xdist_group mark
# cannot do this under pytest 9 (it renames items through an attribute pytest no longer reads),
# and the scheduling process never sees the items, so the groups are test-id prefixes.
TOGETHER = {
    "tests/test_execution.py::": "compiling",
    "tests/features/test_codegen_run.py::test_a_compile_mode_script": "compiling",
    **{f"tests/{module}.py::": module for module in (
        "bench_tests/test_bench_landscape", "features/test_browser", "test_export",
        "study_tests/test_pareto", "params_store_tests/test_seed_format",
    )},
}  # fmt: skip


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist choice is the caller's
    from xdist.scheduler import LoadScopeScheduling

    class Together(LoadScopeScheduling):
        """--dist load, except that the tests of one TOGETHER group are one unit of work."""

        def _split_scope(self, nodeid: str) -> str:
            return next((g for p, g in TOGETHER.items() if nodeid.startswith(p)), nodeid)

    return Together(config, log)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1, and any attempt to open a connection fails loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def fresh_dynamo() -> None:
    """Dynamo forgets what this process compiled, so a test that counts the graphs it makes
    ("the first setting compiles, the next ones nothing") counts its own, whatever test ran
    before it in the same worker (PAB's blocks and DBCache's share code and shapes). Only for
    tests on dynamo's "eager" backend, where compiling again costs seconds."""
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def tiny() -> Callable[[str], Pipeline]:
    """Tiny pipelines by name, built once per session, handed out unaccelerated, keeping no
    method's buffers or graphs, and with the scheduler they were built with, whatever the test
    before did to them."""
    built: dict[str, tuple[Pipeline, object]] = {}

    def get(name: str) -> Pipeline:
        if name not in built:
            pipe = tiny_pipeline(name)
            built[name] = pipe, pipe.scheduler
        pipe, scheduler = built[name]
        accelerators.remove(pipe)  # a failed test must not leak patches into the next
        execution.release(pipe, keep=())  # nor what its methods kept for later calls
        pipe.scheduler = scheduler  # nor its set_scheduler: PNDM fails at the 2 steps of some
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
    from accelopt.trial.bench import Bench

    clock = Timings([1.0], [0.5])
    monkeypatch.setattr(Bench, "time_call", lambda self: clock(self))
    return clock
