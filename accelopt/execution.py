"""Execution modes: how the denoiser runs once accelerators have patched it.

>>> from accelopt import accelerators, execution
>>> with accelerators.apply(pipe, {"deepcache": {"cache_interval": 3}}):
...     with execution.run(pipe, "cuda-graphs"):
...         images = accelerators.generate(pipe, prompt="a red cube").images

- ``eager``: PyTorch as written.
- ``compile``: the denoiser's forward compiled by inductor (``torch.compile``, no CUDA graphs).
- ``cuda-graphs``: inductor's kernels, captured by accelopt as CUDA graphs and replayed, so a
  step costs no kernel launches on the host. CUDA only.

Which kernels a mode runs (``KERNELS``): the plain pipeline's forward is compiled whole by
inductor, the fastest plain pipeline a user can run and so the baseline. An accelerated one
runs under ``cuda-graphs`` on *regional* kernels (``accelopt.portable.graphs.Regions``): each
repeated block compiled on its own, the code between them PyTorch's, the whole forward captured
per structure. A new structure then costs a capture of blocks compiled already, about 1-7 s
where the whole forward's compile took 51 s (SD1.5 on an H100, docs/BENCHMARKS.md), for a
forward 3.9% slower than the whole one compiled: speedups measured so are a little below what a
whole compile of the winner would give, never above. Generated scripts run the same kernels.
A call that reads a device value mid-forward (FirstBlockCache's and DBCache's deciding calls)
is never captured whole: its blocks replay one graph each, the read between two of them
(``accelopt.portable.graphs.decides``).

The order is fixed: accelerators patch the modules, then a mode compiles or captures what they
left. A graph is made once per *structure* (what a call computes: ``Accelerated.structure()``,
e.g. DeepCache's full step, or its shallow step at branch 2) and input shapes, and kept on the
denoiser across applications, so trials that differ only in a schedule (DeepCache's interval)
never compile again. Per-call logic (which step is full) runs in forward pre-hooks, in Python,
outside every graph: that is the contract an accelerator keeps to run here. Those that cannot
are refused by name with the reason (``REFUSED``), never run eagerly behind the user's back;
so are single knob values a mode cannot run (``REFUSED_VALUES``), which the search leaves out.

Each structure's graphs are timed as they are made (``Compiled.costs``), and dynamo's own
warnings (``torch._dynamo.utils.warn_once``: a graph break at a ``torch.Generator`` ...) are
kept off the terminal unless asked for (``DYNAMO_WARNINGS`` or ``$TORCH_LOGS``).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.accelerators._base import forget
from accelopt.accelerators._snapshot import COMPILED
from accelopt.errors import AccelOptError, choices
from accelopt.portable.graphs import Graph, Regions, Replayer, signature

__all__ = [
    "DYNAMO_WARNINGS",
    "KERNELS",
    "MODES",
    "REFUSED",
    "REFUSED_VALUES",
    "Compiled",
    "Cost",
    "allowed",
    "by_structure",
    "cache_home",
    "check",
    "check_values",
    "compile_stats",
    "dynamo_warnings_asked",
    "graph_count",
    "kernels_for",
    "modes_to_measure",
    "quiet_dynamo",
    "release",
    "run",
    "use_cache_dir",
]

MODES = ("eager", "compile", "cuda-graphs")  # spec.EXECUTIONS adds "auto"
GRAPH_MODES = ("compile", "cuda-graphs")
# How a graph mode's kernels are made: the whole forward by inductor, each repeated block by
# inductor (regional), or PyTorch's own (cuda-graphs only: capture without compiling).
KERNELS = ("inductor", "regional", "eager")

# (mode, accelerator) -> why that accelerator cannot run under that mode. DeepCache, T-GATE,
# MagCache and TaylorSeer keep their caches in owned buffers and decide per call in hooks, and
# ToMe's merge is one static shape per ratio. FirstBlockCache and DBCache decide after their
# first blocks from a value read off the device (accelopt.portable.dbcache): under cuda-graphs
# such a call replays block by block (``accelopt.portable.graphs.decides``). A method that
# cannot keep the contract is declared here, with why.
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
# UNet's forward; under regional kernels ``nn.Module._call_impl``, every block class and shape
# and each accelerator's changes to them): a study needs more than the default limit of 8.
RECOMPILE_LIMIT = 512

# Set (to anything but "" or "0") to see dynamo's own warnings; so does any $TORCH_LOGS.
DYNAMO_WARNINGS = "ACCELOPT_DYNAMO_WARNINGS"
# Where dynamo's warnings come from: warn_once calls warnings.warn from dynamo's modules, so
# a user's own warnings, replayed by dynamo from traced code, still show.
_DYNAMO_MODULES = r"torch\._(dynamo|inductor)(\.|$)"


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


def cache_home(env: Mapping[str, str] = os.environ) -> Path:
    """Where inductor's compiled kernels live for every study and worker of this user on this
    host: ``$XDG_CACHE_HOME/accelopt/inductor``, by default ``~/.cache/accelopt/inductor``."""
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "accelopt" / "inductor"


def use_cache_dir(folder: Path | None = None, env: MutableMapping[str, str] = os.environ) -> Path:
    """Keep inductor's compiled kernels in ``folder`` (``cache_home()`` unless given), so that
    re-runs, the other workers and the other studies on this host load a block or a forward
    compiled before instead of compiling it again. A ``$TORCHINDUCTOR_CACHE_DIR`` of the user's
    wins; torch's own default does not: importing torch writes it into the environment
    (``/tmp/torchinductor_$USER``), so the variable being set says nothing. Inductor reads the
    variable at each compile, so setting it after torch's import holds. Captured CUDA graphs
    live in the process: a worker captures its own, which costs seconds where compiling cost
    minutes."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    given = env.get("TORCHINDUCTOR_CACHE_DIR")
    if not given or os.path.abspath(given) == os.path.abspath(default_cache_dir()):
        env["TORCHINDUCTOR_CACHE_DIR"] = str(folder or cache_home(env))
    chosen = Path(env["TORCHINDUCTOR_CACHE_DIR"])
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


@dataclass
class Cost:
    """What one structure's graphs for one input signature cost to make."""

    structure: str  # in words (``_describe``): "deepcache 0 shallow", "plain"
    seconds: float = 0.0  # compiling and capturing them
    graphs: int = 0  # dynamo's graphs under compile; CUDA graphs captured under cuda-graphs


def by_structure(costs: Iterable[Cost]) -> list[dict[str, Any]]:
    """``costs`` summed per structure over its input signatures, in the order first met:
    ``[{"structure": "deepcache 0 shallow", "seconds": 7.1, "graphs": 2}]``."""
    out: dict[str, dict[str, Any]] = {}
    for cost in costs:
        row = out.setdefault(cost.structure, {"structure": cost.structure, "seconds": 0.0,
                                              "graphs": 0})  # fmt: skip
        row["seconds"] += cost.seconds
        row["graphs"] += cost.graphs
    return list(out.values())


@dataclass
class Compiled:
    """What one denoiser has compiled or captured, kept across trials (``compile_stats``)."""

    forward: Callable[..., Any] | None = None  # the inductor-compiled forward
    graphs: dict[str, dict[Hashable, Graph]] = field(default_factory=dict)  # by kernels
    pool: Any = None  # one memory pool for every graph of this denoiser
    seconds: float = 0.0  # spent compiling and capturing, all told
    compiles: int = 0  # graphs inductor made (dynamo's count) for this denoiser
    captures: int = 0
    seen: set[Hashable] = field(default_factory=set)  # keys met under compile, or deciding
    # Per key (a structure and input signature), in the order made: what its graphs cost.
    costs: dict[Hashable, Cost] = field(default_factory=dict)
    regions: dict[str | None, Regions] = field(default_factory=dict)  # by torch.compile backend


T = TypeVar("T")


def compile_stats(pipe: Pipeline) -> Compiled:
    """What ``pipe``'s denoiser has compiled and captured so far, and what it cost.

    The record lives on the denoiser itself (``COMPILED``, an attribute a ``Snapshot`` leaves
    alone), not in a table keyed by it: the record holds the denoiser (its compiled forward,
    its regions), so a table entry would keep every denoiser compiled in the process alive,
    with its graphs and its caches' buffers; on the denoiser the two go together."""
    from accelopt.pipelines import denoiser

    record: Compiled = vars(denoiser(pipe)).setdefault(COMPILED, Compiled())
    return record


def release(pipe: Pipeline, keep: Iterable[str]) -> tuple[str, ...]:
    """Free what the methods not in ``keep`` hold on ``pipe``'s denoiser for later trials: their
    buffers and every captured graph of a structure that names them; the methods released.

    A method's buffers and its graphs go together: a graph reads its method's buffers at fixed
    addresses. Kept, they make a later trial of the method capture nothing new; released, it
    captures its structures again (the regional kernels stay compiled, so that is a capture, not
    a compile). A study of groups releases the other groups' when a trial draws its group: what
    they keep only grows (TaylorSeer's factors for 84 modules are about 24 GiB at 1024 px).

    >>> release(pipe, keep=("magcache",))  # after TaylorSeer's trials
    ('taylorseer',)
    """
    from accelopt.pipelines import denoiser

    keep = frozenset(keep)
    record = compile_stats(pipe)
    named: set[str] = set()
    for graphs in record.graphs.values():
        for key in [k for k in graphs if not _methods(k) <= keep]:
            named |= _methods(key) - keep
            del graphs[key]
            record.costs.pop(key, None)  # a capture again is the next trial's new cost
    return tuple(sorted(named | set(forget(denoiser(pipe), keep))))


def _methods(key: Hashable) -> frozenset[str]:
    """The methods a graph's key names: the first word of each part of its structure."""
    assert isinstance(key, tuple)  # signature()'s (structure, spec, shapes)
    return frozenset(part[0] for part in key[0])


@contextmanager
def run(
    pipe: Pipeline,
    mode: str,
    on_compile: Callable[[str], None] | None = None,
    *,
    kernels: str | None = None,
    on_compiled: Callable[[str, float], None] | None = None,
    backend: str = "inductor",
) -> Iterator[Compiled]:
    """Run ``pipe``'s denoiser under ``mode`` inside the block; yields its compile record.

    Takes the accelerators applied now (``accelerators.active``) as they are: apply them first.
    ``on_compile(what)`` is told before a call that meets a structure and input shapes for the
    first time, the call that compiles or captures (a progress bar says "compiling" then), and
    ``on_compiled(what, seconds)`` after it, with what it cost.
    ``kernels`` (``KERNELS``) overrides ``kernels_for``'s choice; ``backend`` is
    ``torch.compile``'s for regional kernels (tests use "eager": no C++ compiler).
    """
    from accelopt.pipelines import denoiser

    acc = accelerators.active(pipe)
    check(mode, acc.names if acc is not None else ())
    check_values(mode, acc.configs if acc is not None else {})
    kernels = kernels or kernels_for(mode, acc is not None and bool(acc.names))
    if kernels not in KERNELS:
        raise AccelOptError(f"unknown kernels {kernels!r}; valid: {choices(KERNELS)}")
    if kernels == "eager" and mode == "compile":
        raise AccelOptError("eager kernels are what cuda-graphs captures, not compile's")
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
    told = _Told(on_compile, on_compiled)
    forward = _forward(net, record, kernels)
    blocks = None
    if kernels == "regional" or (mode == "cuda-graphs" and kernels == "eager"):
        # Regional kernels compile each block; PyTorch's own under cuda-graphs compile none,
        # but replay block by block where a call decides (accelopt.portable.graphs.decides).
        label = backend if kernels == "regional" else None
        if label not in record.regions:  # made once: torch.compile wraps each block anew
            record.regions[label] = Regions(net, label)
        blocks = record.regions[label]
    if mode == "compile":
        net.forward = _counting(record, forward, acc, told)
    else:
        if next(net.parameters()).device.type != "cuda":
            raise AccelOptError("execution mode cuda-graphs needs the pipeline on a CUDA device")
        net.forward = _Replayer(net, record, acc, told, forward, kernels, blocks)
    regions = blocks.on() if blocks is not None else contextlib.nullcontext()
    try:
        # The whole block, not each call: entering catch_warnings resets every module's record
        # of warnings shown once, and a call per denoiser step would show them again each step.
        with quiet_dynamo(not dynamo_warnings_asked()), regions:
            yield record
    finally:
        del net.forward


def kernels_for(mode: str, accelerated: bool) -> str:
    """The kernels ``mode`` runs: under ``cuda-graphs`` an accelerated pipeline's are regional
    (a new structure costs a capture), the plain pipeline's the whole forward's (the fastest
    plain pipeline, the baseline); ``compile`` always compiles the whole forward; ``eager``
    runs PyTorch's own."""
    if mode == "eager":
        return "eager"
    return "regional" if mode == "cuda-graphs" and accelerated else "inductor"


def _forward(net: Any, record: Compiled, kernels: str) -> Callable[..., Any]:
    """The forward a graph mode calls: compiled whole, or the class's own (whose repeated
    blocks run compiled under regional kernels)."""
    if kernels == "inductor":
        return _compiled_forward(net, record)
    return type(net).forward.__get__(net)


def dynamo_warnings_asked(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the user asked for dynamo's own warnings: ``$ACCELOPT_DYNAMO_WARNINGS`` set
    (not "" or "0"), or any ``$TORCH_LOGS`` (whoever sets torch's logging wants its output)."""
    return env.get(DYNAMO_WARNINGS, "") not in ("", "0") or bool(env.get("TORCH_LOGS"))


@contextmanager
def quiet_dynamo(quiet: bool = True) -> Iterator[None]:
    """Inside the block, ``warnings.warn`` from dynamo and inductor shows nothing (``quiet``).

    Dynamo warns through ``torch._dynamo.utils.warn_once``, which calls ``warnings.warn`` from
    its own modules (a graph break at a builtin it cannot trace, ``torch.Generator``'s
    included); the break itself is logged at debug level only (``TORCH_LOGS=graph_breaks``)."""
    if not quiet:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=_DYNAMO_MODULES)
        yield


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


def graph_count() -> int:
    """Graphs dynamo has made in this process so far (its ``unique_graphs`` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _key(acc: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    """What picks a graph: the accelerators' structure now and the call's input signature."""
    return signature(acc.structure() if acc is not None else (), args, kwargs)[0]


def _describe(key: Hashable) -> str:
    """``key``'s structure in words: "deepcache 0 shallow + tome 0.5 1", or "plain"."""
    assert isinstance(key, tuple)  # signature()'s (structure, spec, shapes)
    return " + ".join(" ".join(map(str, part)) for part in key[0]) or "plain"


@dataclass(frozen=True)
class _Told:
    """Who hears that a structure's graphs are being made, and what they cost when made."""

    on_compile: Callable[[str], None] | None = None
    on_compiled: Callable[[str, float], None] | None = None

    def compiling(self, what: str) -> None:
        if self.on_compile is not None:
            self.on_compile(what)

    def compiled(self, what: str, seconds: float) -> None:
        if self.on_compiled is not None:
            self.on_compiled(what, seconds)


def _counting(
    record: Compiled,
    fn: Callable[..., Any],
    acc: Any,
    told: _Told | None = None,
    *,
    per_key: bool = True,
    graph_count: Callable[[], int] = graph_count,
    clock: Callable[[], float] = time.perf_counter,
) -> Callable[..., Any]:
    """``fn``, with the calls that made dynamo compile timed into ``record`` and, ``per_key``,
    into the cost of the call's structure and input signature (``Compiled.costs``); ``told``
    hears of a key's first call before and after it, and after any later call that compiled
    (dynamo compiles a key again when a guard fails: DeepCache's full step, on TinySD).
    ``graph_count`` and ``clock`` are dynamo's graph counter and the clock, unless a test
    injects its own."""
    told = told or _Told()

    def call(*args: Any, **kwargs: Any) -> Any:
        key = _key(acc, args, kwargs) if per_key else None
        new = key is not None and key not in record.seen
        if new:
            record.seen.add(key)
            told.compiling(_describe(key))
        before, started = graph_count(), clock()
        out = fn(*args, **kwargs)
        made = graph_count() - before
        spent = clock() - started if made else 0.0
        if made:
            record.compiles += made
            record.seconds += spent
            if key is not None:
                cost = record.costs.setdefault(key, Cost(_describe(key)))
                cost.seconds += spent
                cost.graphs += made
        if new or (made and key is not None):  # a seen key compiled again: its cost too
            told.compiled(_describe(key), spent)
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
        told: _Told,
        forward: Callable[..., Any],
        kernels: str,
        regions: Regions | None = None,
    ) -> None:
        super().__init__(
            # the capture below times and tells per key, its compiling included
            _counting(record, forward, acc, per_key=False),
            next(net.parameters()).device,
            acc.structure if acc is not None else tuple,
            record.graphs.setdefault(kernels, {}),
            record.pool,
            regions,
        )
        self.record = record
        self.told = told
        self.acc = acc

    def piecewise(self, *args: Any, **kwargs: Any) -> Any:
        """A deciding call, block by block (``Replayer.piecewise``); its key's first call,
        which captures the blocks' graphs, timed into the record like a capture."""
        key = _key(self.acc, args, kwargs)
        if key in self.record.seen:
            return super().piecewise(*args, **kwargs)
        self.record.seen.add(key)
        regions = self.regions
        assert regions is not None

        def replay() -> tuple[Any, int]:
            before = sum(map(len, regions.graphs.values()))
            out = super(_Replayer, self).piecewise(*args, **kwargs)
            return out, sum(map(len, regions.graphs.values())) - before

        return self._made(key, replay)

    def capture(self, key: Hashable, leaves: list[Any], spec: Any) -> Graph:
        return self._made(key, lambda: (super(_Replayer, self).capture(key, leaves, spec), 1))

    def _made(self, key: Hashable, make: Callable[[], tuple[T, int]]) -> T:
        """``make()``'s result; what it returns with it, the CUDA graphs it captured, and the
        seconds it took (compiling included once) go into the record and ``key``'s cost, and
        ``told`` hears before and after."""
        what = _describe(key)
        self.told.compiling(what)
        started, spent = time.perf_counter(), self.record.seconds
        out, made = make()
        took = time.perf_counter() - started
        self.record.pool = self.pool
        self.record.captures += made
        self.record.seconds = spent + took  # compiling included once
        cost = self.record.costs.setdefault(key, Cost(what))
        cost.seconds += took
        cost.graphs += made
        self.told.compiled(what, took)
        return out
