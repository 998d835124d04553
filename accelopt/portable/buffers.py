"""Tensors kept between denoiser calls at fixed addresses, what a captured CUDA graph can use.

A cache that keeps a *reference* to a module's output breaks under graph replay: the next replay
overwrites that memory. ``Buffers`` copies each kept output into tensors it owns, allocated on
first use and written in place after, so a graph captured once reads and writes the same
addresses on every replay.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any


class Buffers:
    """Outputs kept for later calls at fixed addresses, one set per key (a module and its input
    shapes), so a graph captured for one batch size never reads another's."""

    def __init__(self) -> None:
        self.saved: dict[Hashable, Any] = {}

    def store(self, key: Hashable, value: Any) -> Any:
        """Copy ``value`` (a tensor or a tuple of them) into ``key``'s buffers; returns it."""
        import torch

        buffers = self.saved.get(key)
        if buffers is None:
            buffers = self.saved[key] = _map_tensors(torch.empty_like, value)
        _copy_into(buffers, value)
        return value

    def part(self, key: Hashable) -> Buffers:
        """The buffers of one part (a module), kept here under ``key``. Keys inside a part need
        not name it: compiled code that several modules share then reads no module's name, so
        dynamo guards on shapes and not on which module runs (T-GATE under regional compiling)."""
        part = self.saved.get(key)
        if part is None:
            part = self.saved[key] = Buffers()
        assert isinstance(part, Buffers), f"{key} holds tensors, not a part"
        return part

    def load(self, key: Hashable) -> Any:
        try:
            return self.saved[key]
        except KeyError:  # an invariant: the call that stores comes first
            raise AssertionError(f"nothing was cached for {key} before its reuse") from None


def _map_tensors(fn: Callable[[Any], Any], value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_map_tensors(fn, v) for v in value)
    return fn(value) if hasattr(value, "shape") else value


def _copy_into(buffers: Any, value: Any) -> None:
    if isinstance(value, tuple):
        for b, v in zip(buffers, value, strict=True):
            _copy_into(b, v)
    elif hasattr(value, "shape"):
        buffers.copy_(value)
