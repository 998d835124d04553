"""A CUDA-graph replayer that runs on a CPU, for tests of what replays and when."""

from __future__ import annotations

from collections.abc import Callable, Hashable
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
