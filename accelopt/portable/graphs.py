"""CUDA-graph replay of a module's forward: one captured graph per (structure, input signature).

A *structure* is what a call computes (DeepCache's full step, or its shallow step at branch 2),
told by a callable the replayer asks before every call; the input signature is the shapes and
dtypes of the call's tensors and its other values. Per-call logic that picks a structure runs in
Python, outside every graph. Each call copies its tensors into the chosen graph's static inputs,
replays it, and clones the outputs: the next replay of that graph overwrites its output memory,
and a scheduler may keep a model output across steps.

A structure that *decides* (a part of it ending in ``DECIDES``: FirstBlockCache's and DBCache's
calls that read a value off the device after their first blocks) cannot be one graph: a graph
cannot stop mid-replay for the host. Such a call runs the forward in Python, and each repeated
block replays a graph of its own (``Regions.replaying``): the code between the blocks runs
eagerly (a few small kernels: embeddings, the output layers), the decision between two replays.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# The blocks a denoiser repeats, by class name: regional compilation compiles each instance on
# its own (diffusers' ``compile_repeated_blocks`` does it for the transformer blocks), and every
# instance of a class with the same input shapes reuses one compiled graph. Matched on the
# class's bases too, so a block whose class an accelerator swapped (ToMe's) still is one.
REGIONS = ("BasicTransformerBlock", "ResnetBlock2D", "Downsample2D", "Upsample2D")
# The last word of a structure's part that reads a device value mid-forward (``decides``).
DECIDES = "decides"


def decides(structure: Hashable) -> bool:
    """Whether a call of ``structure`` reads a device value on the host mid-forward: then it
    replays block by block (``Regions.replaying``), never as one graph.

    >>> decides((("dbcache", 8, 0, "decides"),)), decides((("dbcache", 8, 0, "compute"),))
    (True, False)
    """
    parts = structure if isinstance(structure, tuple) else ()
    return any(isinstance(p, tuple) and p[-1:] == (DECIDES,) for p in parts)


def signature(
    structure: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Hashable, list[Any], Any]:
    """What picks a graph for this call, and the call's flattened inputs and their tree spec."""
    import torch
    from torch.utils._pytree import tree_flatten

    leaves, spec = tree_flatten((args, kwargs))
    shapes = tuple(
        (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else ("value", x) for x in leaves
    )
    return (structure, str(spec), shapes), leaves, spec


@dataclass
class Graph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: list[Any]  # static input tensors, in flattened order
    output: Any


class Replayer:
    """Call it like ``forward``; it captures a graph the first time it meets a key, and replays.

    ``graphs`` and ``pool`` may be shared by several replayers of one module, so graphs outlive
    a replayer and all of them draw on one memory pool. With ``regions`` (the module's blocks
    compiled regionally, ``forward`` running them), a call whose structure ``decides`` runs
    ``forward`` with each block replaying its own graph instead (``Regions.replaying``).
    """

    WARMUP = 2  # eager runs on a side stream before capture: inductor's compile, cuBLAS init

    def __init__(
        self,
        forward: Callable[..., Any],
        device: Any,
        structure: Callable[[], Hashable] = tuple,
        graphs: dict[Hashable, Graph] | None = None,
        pool: Any = None,
        regions: Regions | None = None,
    ) -> None:
        self.forward = forward
        self.device = device
        self.structure = structure
        self.graphs = {} if graphs is None else graphs
        self.pool = pool
        self.regions = regions

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch
        from torch.utils._pytree import tree_map

        structure = self.structure()
        if decides(structure):
            if self.regions is None:
                raise RuntimeError(
                    f"a call of {structure} reads the device mid-forward: it replays block by "
                    f"block, which needs the blocks' Regions (regional or PyTorch's kernels)"
                )
            return self.piecewise(*args, **kwargs)
        key, leaves, spec = signature(structure, args, kwargs)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self.capture(key, leaves, spec)
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        for static, x in zip(graph.inputs, tensors, strict=True):
            static.copy_(x, non_blocking=True)
        graph.graph.replay()
        return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, graph.output)

    def capture(self, key: Hashable, leaves: list[Any], spec: Any) -> Graph:
        """Warm ``forward`` up on a side stream, then capture one call of it with ``leaves``."""
        import torch
        from torch.utils._pytree import tree_unflatten

        # Static inputs live on the graph's device: a host tensor (a CPU timestep) would be a
        # host-to-device copy inside the graph.
        static = [
            x.detach().to(self.device, copy=True) if isinstance(x, torch.Tensor) else x
            for x in leaves
        ]
        args, kwargs = tree_unflatten(static, spec)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self.forward(*args, **kwargs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.forward(*args, **kwargs)
        return Graph(graph, [x for x in static if isinstance(x, torch.Tensor)], output)

    def piecewise(self, *args: Any, **kwargs: Any) -> Any:
        """``forward`` run in Python, each block replaying its own graph (captured at its
        first call with each input signature), all of them in this replayer's memory pool."""
        import torch

        assert self.regions is not None
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with self.regions.replaying(self.device, self.pool):
            return self.forward(*args, **kwargs)


def dispatch(route: Callable[..., Any], inner: Callable[..., Any]) -> Callable[..., Any]:
    """A module's forward that picks in Python, at each call, what the module computes around
    its own forward ``inner`` (T-GATE's attention: compute, keep or reuse a kept output) by
    calling ``route(inner, *args, **kwargs)``.

    Compiled inside a block, such a choice is a guard: every choice a block meets compiles the
    block again (T-GATE's first configuration in the SD1.5 study compiled for 141.8 s on an H100
    that way, 71.8 s with its modes routed so; docs/BENCHMARKS.md). Under
    ``Regions`` the route runs outside every compiled block and ``inner`` runs compiled on its
    own, so a new choice compiles nothing. Eager and whole-forward compiles call it as it is.
    """

    def forward(*args: Any, **kwargs: Any) -> Any:
        return route(inner, *args, **kwargs)

    forward.route, forward.inner = route, inner  # type: ignore[attr-defined]
    return forward


class Regions:
    """Regional compilation of ``net``: inductor's kernels for each repeated block (``REGIONS``)
    and PyTorch's own for the code between them, in force only inside ``with regions.on():`` so
    that a whole forward compiled elsewhere never traces into them.

    What an accelerator changes between structures is mostly the code between the blocks
    (DeepCache skips some blocks and reads its buffers instead), so capturing a new structure's
    graph reuses blocks compiled already: it costs a capture, not a compile of the whole
    forward. A block that does change (ToMe's merge) compiles once per class, shape and change,
    never per instance; a choice made per call inside a block (T-GATE's attention modes, a
    ``dispatch`` forward) is made outside the compiled code. ``backend`` is ``torch.compile``'s;
    None compiles nothing (PyTorch's own kernels), for the block-by-block replay alone.
    """

    def __init__(self, net: Any, backend: str | None = "inductor") -> None:
        import torch

        self.blocks = [
            m for m in net.modules() if any(c.__name__ in REGIONS for c in type(m).__mro__)
        ]
        # torch.compile is lazy: nothing compiles before a block's first call with regions on.
        self.compiled = [
            m._call_impl if backend is None else
            torch.compile(m._call_impl, dynamic=False, backend=backend)
            for m in self.blocks
        ]  # fmt: skip
        self.net = net
        self.backend = backend
        # Under ``replaying``: where calls replay graphs, and the graphs each block's call and
        # each routed module's own forward captured, by module (kept across calls and trials:
        # a graph holds only its module's own computation).
        self.replay: tuple[Any, Any] | None = None  # (device, memory pool)
        self.graphs: dict[tuple[int, str], dict[Hashable, Graph]] = {}
        self.make_replayer: Callable[..., Callable[..., Any]] = Replayer

    @contextmanager
    def on(self) -> Iterator[None]:
        """Inside the block, each repeated block runs its compiled code (how ``nn.Module``'s
        own ``compile()`` does it) and each ``dispatch`` forward routes outside it, to its
        module's own forward compiled; after it, what each had before. A block whose own
        forward is routed compiles only that forward, not its whole call."""
        forwards = [(m, vars(m).get("forward")) for m in self.net.modules()]
        routed = [(m, f) for m, f in forwards if hasattr(f, "route")]
        skipped = {id(m) for m, _ in routed}
        before = [m._compiled_call_impl for m in self.blocks]
        for module, compiled in zip(self.blocks, self.compiled, strict=True):
            if id(module) not in skipped:
                module._compiled_call_impl = self._call(module, compiled)
        for module, forward in routed:
            module.forward = self._outside(module, forward)
        try:
            yield
        finally:
            for module, was in zip(self.blocks, before, strict=True):
                module._compiled_call_impl = was
            for module, forward in routed:
                module.forward = forward

    @contextmanager
    def replaying(self, device: Any, pool: Any) -> Iterator[None]:
        """Inside the block (and ``on``), each block's compiled call and each routed module's
        compiled forward replays a CUDA graph of its own on ``device``, drawn from ``pool``:
        the forward around them runs in Python, so a route may read the device between two
        replays (``decides``)."""
        self.replay = (device, pool)
        try:
            yield
        finally:
            self.replay = None

    def _replayed(self, module: Any, what: str, compiled: Callable[..., Any]) -> Any:
        """``compiled`` for ``module`` (its whole call or its own forward), replayed."""
        assert self.replay is not None
        device, pool = self.replay
        graphs = self.graphs.setdefault((id(module), what), {})
        return self.make_replayer(compiled, device, graphs=graphs, pool=pool)

    def _call(self, module: Any, compiled: Callable[..., Any]) -> Callable[..., Any]:
        """A block's call: compiled, or its graph replayed under ``replaying``."""

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.replay is None:
                return compiled(*args, **kwargs)
            return self._replayed(module, "call", compiled)(*args, **kwargs)

        return call

    def _outside(self, module: Any, routed: Any) -> Callable[..., Any]:
        """A ``dispatch`` forward's route run eagerly (a graph break in the block that calls
        it) around its ``inner`` compiled, one graph per shape shared by every instance, or
        under ``replaying`` around its own replayed graph."""
        import torch

        inner = routed.inner
        if self.backend is not None:
            inner = torch.compile(inner, dynamic=False, backend=self.backend)

        @torch.compiler.disable
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.replay is None:
                return routed.route(inner, *args, **kwargs)
            return routed.route(self._replayed(module, "forward", inner), *args, **kwargs)

        return forward
