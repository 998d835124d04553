"""DeepCache's "uniform" schedule, written to run eagerly, compiled and graph-replayed alike.

A full UNet call copies the outputs that shallow calls reuse into ``Buffers`` at fixed addresses;
a shallow call skips the deep modules and reads those buffers. ``Schedule`` counts UNet calls
in a forward pre-hook, outside any graph, and says which call is full: every ``interval``-th,
starting with the first. What a call computes is ``Schedule.structure()``: full, or shallow at
this branch; the interval only picks among those.

Module keys and the branch numbering are upstream's (``DeepCache.DeepCacheSDHelper``):
``(down|mid|up, kind, block, layer)``, and branch id = 3 x down block + layer.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

from accelopt.portable.buffers import Buffers

Key = tuple[str, str, int, int]  # (down|mid|up, kind, block, layer), upstream's numbering


def is_skipped(key: Key, block_id: int, layer_id: int) -> bool:
    """Upstream's ``is_skip_step`` for a shallow step (``skip_mode="uniform"``)."""
    blocktype, _, block_i, layer_i = key
    if block_i > block_id or blocktype == "mid":
        return True
    if block_i < block_id:
        return False
    return layer_i >= layer_id if blocktype == "down" else layer_i > layer_id


def unet_modules(unet: Any) -> Iterator[tuple[Key, Any, Key | None]]:
    """Every module upstream wraps, with its key and the key of the block that calls it."""
    for block_i, block in enumerate(unet.down_blocks):
        parent: Key = ("down", "block", block_i, 0)
        yield parent, block, None
        for layer_i, m in enumerate(getattr(block, "attentions", None) or ()):
            yield ("down", "attentions", block_i, layer_i), m, parent
        resnets = getattr(block, "resnets", None) or ()
        for layer_i, m in enumerate(resnets):
            yield ("down", "resnet", block_i, layer_i), m, parent
        for m in getattr(block, "downsamplers", None) or ():
            yield ("down", "downsampler", block_i, len(resnets)), m, parent
    yield ("mid", "mid_block", 0, 0), unet.mid_block, None
    count = len(unet.up_blocks)
    for i, block in enumerate(unet.up_blocks):
        block_i = count - i - 1
        parent = ("up", "block", block_i, 0)
        yield parent, block, None
        resnets = getattr(block, "resnets", None) or ()
        for layer_i, m in enumerate(getattr(block, "attentions", None) or ()):
            yield ("up", "attentions", block_i, len(resnets) - layer_i - 1), m, parent
        for layer_i, m in enumerate(resnets):
            yield ("up", "resnet", block_i, len(resnets) - layer_i - 1), m, parent
        for m in getattr(block, "upsamplers", None) or ():
            yield ("up", "upsampler", block_i, 0), m, parent


def skipped_modules(unet: Any, branch_id: int) -> list[tuple[Key, Any]]:
    """The modules a shallow step at ``branch_id`` does not run: the outermost ones, whose
    calling block still runs (a skipped block's own layers are never called)."""
    block_id, layer_id = divmod(branch_id, 3)
    return [
        (key, m)
        for key, m, parent in unet_modules(unet)
        if is_skipped(key, block_id, layer_id)
        and (parent is None or not is_skipped(parent, block_id, layer_id))
    ]


def _input_shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """What fixes a module's output shapes: the shapes and dtypes of its tensor inputs."""
    found: list[Any] = []

    def visit(v: Any) -> None:
        if isinstance(v, tuple | list):
            for item in v:
                visit(item)
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            found.append((tuple(v.shape), v.dtype))

    visit(args)
    visit(list(kwargs.values()))
    return tuple(found)


class Schedule:
    """Which UNet call is full: every ``interval``-th since ``reset``, the first included."""

    def __init__(self, interval: int, branch: int) -> None:
        self.interval = interval
        self.branch = branch
        self.calls = 0
        self.shallow = False

    def advance(self, *_: Any) -> None:
        """Before each UNet call (a forward pre-hook)."""
        self.shallow = self.calls % self.interval != 0
        self.calls += 1

    def reset(self) -> None:
        self.calls = 0  # every generation starts with a full step

    def structure(self) -> Hashable:
        return ("deepcache", self.branch, "shallow" if self.shallow else "full")


def cache_deep_features(
    unet: Any, schedule: Schedule, buffers: Buffers, *, counted: bool = True
) -> Any:
    """Make ``unet`` follow ``schedule``: wrap the modules a shallow step skips (on the
    instances) and count calls in a forward pre-hook, whose handle it returns. The module
    forwards stay wrapped until the caller puts them back. ``counted=False`` leaves calling
    ``schedule.advance`` to the caller (T-GATE's schedule drives DeepCache's when combined)."""
    if schedule.interval > 1:  # interval 1 is every step in full: nothing to wrap
        for key, module in skipped_modules(unet, schedule.branch):
            _cache_outputs(module, key, schedule, buffers)
    return unet.register_forward_pre_hook(schedule.advance) if counted else None


def _cache_outputs(module: Any, key: Key, schedule: Schedule, buffers: Buffers) -> None:
    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        where = (schedule.branch, key, _input_shapes(args, kwargs))
        if schedule.shallow:
            return buffers.load(where)
        return buffers.store(where, inner(*args, **kwargs))

    module.forward = forward
