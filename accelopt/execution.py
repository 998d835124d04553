"""Execution modes: how the denoiser runs once accelerators have patched it.

>>> from accelopt import accelerators, execution
>>> with accelerators.apply(pipe, {"deepcache": {"cache_interval": 3}}):
...     with execution.run(pipe, "cuda-graphs"):
...         images = accelerators.generate(pipe, prompt="a red cube").images

- ``eager``: PyTorch as written.
- ``compile``: the denoiser's forward compiled by inductor (``torch.compile``, no CUDA graphs).
- ``cuda-graphs``: the same inductor kernels, captured by accelopt as CUDA graphs and replayed,
  so a step costs no kernel launches on the host. CUDA only.

The order is fixed: accelerators patch the modules, then a mode compiles or captures what they
left. A graph is made once per *structure* (what a call computes: ``Accelerated.structure()``,
e.g. DeepCache's full step, or its shallow step at branch 2) and input shapes, and kept on the
denoiser across applications, so trials that differ only in a schedule (DeepCache's interval)
never compile again. Per-call logic (which step is full) runs in forward pre-hooks, in Python,
outside every graph: that is the contract an accelerator keeps to run here. Those that cannot
are refused by name with the reason (``REFUSED``), never run eagerly behind the user's back;
so are single knob values a mode cannot run (``REFUSED_VALUES``), which the search leaves out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.errors import AccelOptError, choices
from accelopt.portable.graphs import Graph, Replayer, signature

__all__ = [
    "MODES",
    "REFUSED",
    "REFUSED_VALUES",
    "Compiled",
    "allowed",
    "check",
    "check_values",
    "compile_stats",
    "modes_to_measure",
    "run",
    "use_cache_dir",
]

MODES = ("eager", "compile", "cuda-graphs")  # spec.EXECUTIONS adds "auto"
GRAPH_MODES = ("compile", "cuda-graphs")

# (mode, accelerator) -> why that accelerator cannot run under that mode. Empty today: DeepCache
# and T-GATE keep their caches in owned buffers and decide per call in hooks, and ToMe's merge
# is one static shape per ratio. A method that cannot keep that contract is declared here.
REFUSED: dict[tuple[str, str], str] = {}

# (mode, "accelerator.knob", value) -> why that value cannot run under that mode.
REFUSED_VALUES: dict[tuple[str, str, Any], str] = {
    (mode, "tome.use_rand", True): (
        "tomesd draws the random partition with a torch.Generator, which dynamo cannot put in a "
        "graph (a graph break in every merged block, and repeated calls differed, on TinySD "
        "2026-12-03); use tome.use_rand=false"
    )
    for mode in GRAPH_MODES
}

# Dynamo keeps one compiled graph per structure and shape under the same code objects (the
# UNet's forward, each block's): a study needs more of them than the default limit of 8.
RECOMPILE_LIMIT = 256


def check(mode: str, names: Iterable[str] = (), device: str | None = None) -> str:
    """``mode`` if it exists, runs on ``device`` and can run every accelerator in ``names``."""
    if mode not in MODES:
        raise AccelOptError(f"unknown execution mode {mode!r}; valid: {choices(MODES)}")
    if mode == "cuda-graphs" and device is not None and not device.startswith("cuda"):
        raise AccelOptError(
            f"execution mode cuda-graphs needs a CUDA device, not {device}; "
            f"use --execution eager or compile here"
        )
    for name in names:
        why = REFUSED.get((mode, name))
        if why:
            raise AccelOptError(
                f"{name} cannot run under execution mode {mode}: {why}; use --execution eager"
            )
    return mode


def modes_to_measure(requested: str, device: str) -> tuple[str, ...]:
    """The modes whose plain baselines a study times at its start, fastest wins under "auto".

    On CUDA every mode, so that speedups are against the fastest plain pipeline a user could
    run. On a CPU, eager and the mode asked for: compiling there costs minutes, and "auto" is
    eager (launch overhead, what graphs remove, is no CPU cost).
    """
    if device.startswith("cuda"):
        return MODES
    return tuple(m for m in MODES if m in ("eager", requested))


def allowed(mode: str, names: Iterable[str]) -> tuple[str, ...]:
    """The accelerators among ``names`` that can run under ``mode``."""
    return tuple(n for n in names if (mode, n) not in REFUSED)


def check_values(mode: str, configs: Mapping[str, Any]) -> None:
    """Refuse a knob value ``mode`` cannot run (``configs``: accelerator -> config object)."""
    for name, config in configs.items():
        for knob, value in vars(config).items():
            why = REFUSED_VALUES.get((mode, f"{name}.{knob}", value))
            if why:
                raise AccelOptError(
                    f"{name}.{knob}={value!r} cannot run under execution mode {mode}: {why}"
                )


def use_cache_dir(folder: Path) -> Path:
    """Keep inductor's compiled kernels in ``folder`` (beside the storage), so re-runs and the
    other workers on this host load them instead of compiling again. An explicit
    ``$TORCHINDUCTOR_CACHE_DIR`` wins."""
    chosen = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder)))
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


@dataclass
class Compiled:
    """What one denoiser has compiled or captured, kept across trials (see ``_COMPILED``)."""

    forward: Callable[..., Any] | None = None  # the inductor-compiled forward
    graphs: dict[str, dict[Hashable, Graph]] = field(default_factory=dict)  # by kernels
    pool: Any = None  # one memory pool for every graph of this denoiser
    seconds: float = 0.0  # spent compiling and capturing, all told
    compiles: int = 0  # graphs inductor made (dynamo's count) for this denoiser
    captures: int = 0
    seen: set[Hashable] = field(default_factory=set)  # keys called under compile so far


_COMPILED: WeakKeyDictionary[Any, Compiled] = WeakKeyDictionary()


def compile_stats(pipe: Pipeline) -> Compiled:
    """What ``pipe``'s denoiser has compiled and captured so far, and what it cost."""
    from accelopt.pipelines import denoiser

    return _COMPILED.setdefault(denoiser(pipe), Compiled())


@contextmanager
def run(
    pipe: Pipeline,
    mode: str,
    on_compile: Callable[[str], None] | None = None,
    *,
    inductor: bool = True,
) -> Iterator[Compiled]:
    """Run ``pipe``'s denoiser under ``mode`` inside the block; yields its compile record.

    Takes the accelerators applied now (``accelerators.active``) as they are: apply them first.
    ``on_compile(what)`` is told before a call that meets a structure and input shapes for the
    first time, the call that compiles or captures (a progress bar says "compiling" then).
    ``inductor=False`` makes ``cuda-graphs`` capture PyTorch's own kernels, not inductor's.
    """
    from accelopt.pipelines import denoiser

    acc = accelerators.active(pipe)
    check(mode, acc.names if acc is not None else ())
    check_values(mode, acc.configs if acc is not None else {})
    if not inductor and mode != "cuda-graphs":
        raise AccelOptError(f"inductor=False picks the kernels cuda-graphs captures, not {mode}'s")
    net = denoiser(pipe)
    record = compile_stats(pipe)
    if mode == "eager":
        yield record
        return
    if "forward" in vars(net):
        raise AccelOptError(
            f"{type(net).__name__}.forward is patched on this instance; execution mode {mode} "
            f"compiles the class's forward and would lose that patch"
        )
    _configure_dynamo()
    if mode == "compile":
        net.forward = _counting(record, _compiled_forward(net, record), acc, on_compile)
    else:
        if next(net.parameters()).device.type != "cuda":
            raise AccelOptError("execution mode cuda-graphs needs the pipeline on a CUDA device")
        net.forward = _Replayer(net, record, acc, on_compile, inductor)
    try:
        yield record
    finally:
        del net.forward


def _configure_dynamo() -> None:
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < 4 * RECOMPILE_LIMIT:
            setattr(config, name, 4 * RECOMPILE_LIMIT)


def _compiled_forward(net: Any, record: Compiled) -> Callable[..., Any]:
    import torch

    if record.forward is None:
        # Static shapes: one graph per input shape, as a captured graph needs anyway. Dynamo's
        # default makes a dimension dynamic once it has seen two sizes (T-GATE halves the batch
        # after its gate), and dynamic kernels differ from the static ones in the last bits.
        forward = type(net).forward.__get__(net)
        record.forward = torch.compile(forward, fullgraph=False, dynamic=False)
    return record.forward


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _key(acc: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    """What picks a graph: the accelerators' structure now and the call's input signature."""
    return signature(acc.structure() if acc is not None else (), args, kwargs)[0]


def _describe(key: Hashable) -> str:
    """``key``'s structure in words: "deepcache 0 shallow + tome 0.5 1", or "plain"."""
    assert isinstance(key, tuple)  # signature()'s (structure, spec, shapes)
    return " + ".join(" ".join(map(str, part)) for part in key[0]) or "plain"


def _counting(
    record: Compiled,
    fn: Callable[..., Any],
    acc: Any,
    on_compile: Callable[[str], None] | None,
) -> Callable[..., Any]:
    """``fn``, with the calls that made dynamo compile timed into ``record``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if on_compile is not None:
            key = _key(acc, args, kwargs)
            if key not in record.seen:
                record.seen.add(key)
                on_compile(_describe(key))
        before, started = _graph_count(), time.perf_counter()
        out = fn(*args, **kwargs)
        made = _graph_count() - before
        if made:
            record.compiles += made
            record.seconds += time.perf_counter() - started
        return out

    return call


class _Replayer(Replayer):
    """The denoiser's forward under ``cuda-graphs`` (``accelopt.portable.graphs.Replayer``),
    with its graphs and memory pool kept in the denoiser's compile record, so they outlive the
    mode's block, and each capture timed into it."""

    def __init__(
        self,
        net: Any,
        record: Compiled,
        acc: Any,
        on_compile: Callable[[str], None] | None,
        inductor: bool = True,
    ) -> None:
        forward = _compiled_forward(net, record) if inductor else type(net).forward.__get__(net)
        super().__init__(
            _counting(record, forward, acc, None),
            next(net.parameters()).device,
            acc.structure if acc is not None else tuple,
            record.graphs.setdefault("inductor" if inductor else "eager", {}),
            record.pool,
        )
        self.record = record
        self.on_compile = on_compile

    def capture(self, key: Hashable, leaves: list[Any], spec: Any) -> Graph:
        if self.on_compile is not None:
            self.on_compile(_describe(key))
        started, spent = time.perf_counter(), self.record.seconds
        graph = super().capture(key, leaves, spec)
        self.record.pool = self.pool
        self.record.captures += 1
        self.record.seconds = spent + time.perf_counter() - started  # compiling included once
        return graph
