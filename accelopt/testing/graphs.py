"""Graphs for tests on a CPU: a CUDA-graph replayer that runs there, for tests of what replays
and when, the denoiser's whole forward compiled as one graph per structure, and what regional
kernels compile for a method's settings."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from accelopt.portable.graphs import Graph, Replayer


class ReplayedInPython(Replayer):
    """``accelopt.portable.graphs.Replayer`` whose "graph" reruns the forward in Python.

    A capture runs ``forward`` once on static copies of the inputs and keeps its outputs; a
    replay runs it again on the static inputs and copies the result into those outputs, which
    is what a CUDA graph's replay leaves in its output memory. Unlike a graph, a replay runs
    the forward's Python too: tests of state kept on the host use a real graph (tests/features/
    test_gpu.py). Every capture is counted in ``captured`` (a list shared by all instances made
    with the same list), by key.
    """

    def __init__(self, *args: Any, captured: list[Hashable] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("pool", "cpu")  # a CPU has no graph memory pool: any token serves
        super().__init__(*args, **kwargs)
        self.captured = [] if captured is None else captured

    def capture(self, key: Hashable, leaves: list[Any], spec: Any) -> Graph:
        import torch
        from torch.utils._pytree import tree_unflatten

        static = [x.detach().clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        args, kwargs = tree_unflatten(static, spec)
        output = self.forward(*args, **kwargs)
        self.captured.append(key)
        return Graph(_Rerun(self.forward, args, kwargs, output), [
            x for x in static if isinstance(x, torch.Tensor)
        ], output)  # fmt: skip


class _Rerun:
    def __init__(self, forward: Callable[..., Any], args: Any, kwargs: Any, output: Any) -> None:
        self.forward, self.args, self.kwargs, self.output = forward, args, kwargs, output

    def replay(self) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        new, _ = tree_flatten(self.forward(*self.args, **self.kwargs))
        kept, _ = tree_flatten(self.output)
        for into, x in zip(kept, new, strict=True):
            if isinstance(into, torch.Tensor):
                into.copy_(x)


class WholeForward:
    """``pipe``'s denoiser forward through ``torch.compile(fullgraph=True)`` with dynamo's
    "eager" backend (no C++ compiler), where a graph break raises. ``render`` generates with it
    in place of the forward and says how many graphs that made; one instance keeps dynamo's
    cache, so a later configuration of structures met already makes none."""

    def __init__(self, pipe: Any) -> None:
        import torch

        from accelopt.pipelines import denoiser

        self.pipe, self.net = pipe, denoiser(pipe)
        forward = type(self.net).forward.__get__(self.net)
        self.compiled = torch.compile(forward, backend="eager", fullgraph=True, dynamic=False)

    def render(self, steps: int) -> tuple[Any, int]:
        """``accelopt.testing.render``'s images with the compiled forward, and the graphs made."""
        import torch

        from accelopt import execution
        from accelopt.testing.render import render

        before = execution.graph_count()
        self.net.forward = self.compiled
        try:
            with torch._dynamo.config.patch(recompile_limit=64):
                images = render(self.pipe, steps=steps)
        finally:
            del self.net.forward
        return images, execution.graph_count() - before


def regional_compiles(
    pipe: Any, name: str, configs: Iterable[Any], steps: int
) -> tuple[list[int], list[str]]:
    """Accelerator ``name`` at each of ``configs`` in turn, eagerly, then under compile with
    regional kernels on dynamo's "eager" backend (no C++ compiler): asserts that each gives
    eager's images bit for bit. Returns the graphs each setting made (``execution.graph_count``
    before and after) and the structures the mode was told of, in order: a method whose knobs
    only pick among structures makes graphs for its first setting and none for the others.
    Start from a dynamo that forgot earlier compiles (tests' ``fresh_dynamo`` fixture)."""
    import numpy as np

    from accelopt import accelerators, execution
    from accelopt.testing.render import render

    made: list[int] = []
    told: list[str] = []
    for config in configs:
        with accelerators.apply(pipe, {name: config}, steps=steps):
            eager = render(pipe, steps=steps)
            before = execution.graph_count()
            with execution.run(pipe, "compile", told.append, kernels="regional", backend="eager"):
                compiled = render(pipe, steps=steps)
            made.append(execution.graph_count() - before)
        np.testing.assert_array_equal(compiled, eager, err_msg=f"{name} at {config}")
    return made, told
