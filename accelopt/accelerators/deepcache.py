"""DeepCache: reuse the UNet's deep features between steps, recomputing only the shallow branch.

accelopt's own implementation of ``DeepCache.DeepCacheSDHelper``'s "uniform" schedule, written
so that it also runs compiled and graph-replayed (``accelopt.execution``). On every scheduler
whose UNet calls have distinct timesteps it computes exactly what upstream does, bit for bit
(tests/test_accelerators.py checks this against the helper). Three things differ by design:

- Which call is full is counted in UNet calls since the generation began, in a forward pre-hook,
  outside any graph. Upstream looks each call's timestep up with ``timesteps.index(t)`` and a
  host sync; repeated timesteps (PNDM's PRK steps, Heun) break that lookup.
- A full step copies the outputs that shallow steps reuse into buffers this module owns, one set
  per (UNet, branch, shape), kept across applications. Upstream keeps references to the outputs,
  which a CUDA graph overwrites on its next replay; a buffer at a fixed address is what a
  captured graph can read and write.
- Only the outermost modules a shallow step skips are wrapped and cached, not every block.

What a call computes is its ``structure``: full, or shallow at this branch. The interval only
picks which of those graphs each call replays, so changing it never recompiles.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from accelopt._types import Pipeline
from accelopt.accelerators._base import Accelerator, Param, Patch, PipeTraits, Reference, in_range
from accelopt.errors import AccelOptError

__all__ = ["DeepCache", "DeepCacheConfig", "skipped_modules"]


@dataclass(frozen=True)
class DeepCacheConfig:
    """``cache_interval``: full UNet every N steps (1 = off); ``cache_branch_id``: where the
    shallow branch ends, packed as 3 x down block + layer (0 = shallowest, fastest)."""

    cache_interval: int = 3
    cache_branch_id: int = 0


Key = tuple[str, str, int, int]  # (down|mid|up, kind, block, layer), upstream's numbering


def _is_skipped(key: Key, block_id: int, layer_id: int) -> bool:
    """Upstream's ``is_skip_step`` for a shallow step (``skip_mode="uniform"``)."""
    blocktype, _, block_i, layer_i = key
    if block_i > block_id or blocktype == "mid":
        return True
    if block_i < block_id:
        return False
    return layer_i >= layer_id if blocktype == "down" else layer_i > layer_id


def _modules(unet: Any) -> Iterator[tuple[Key, Any, Key | None]]:
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
        for key, m, parent in _modules(unet)
        if _is_skipped(key, block_id, layer_id)
        and (parent is None or not _is_skipped(parent, block_id, layer_id))
    ]


class _Buffers:
    """Where full steps leave the features shallow steps reuse, at fixed addresses: one set per
    (branch, module, input shapes), so a graph captured for one batch size never reads another's.
    """

    def __init__(self) -> None:
        self.saved: dict[Hashable, Any] = {}

    def store(self, key: Hashable, value: Any) -> Any:
        """Copy ``value`` (a tensor or a tuple of them) into ``key``'s buffers; returns it."""
        import torch

        buffers = self.saved.get(key)
        if buffers is None:
            buffers = self.saved[key] = _map(torch.empty_like, value)
        _copy(buffers, value)
        return value

    def load(self, key: Hashable) -> Any:
        try:
            return self.saved[key]
        except KeyError:  # an invariant: a full call with these shapes always comes first
            raise AssertionError(f"deepcache: no full step was cached for {key}") from None


def _map(fn: Callable[[Any], Any], value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_map(fn, v) for v in value)
    return fn(value) if hasattr(value, "shape") else value


def _copy(buffers: Any, value: Any) -> None:
    if isinstance(value, tuple):
        for b, v in zip(buffers, value, strict=True):
            _copy(b, v)
    elif hasattr(value, "shape"):
        buffers.copy_(value)


def _shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
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


# One set of buffers per UNet, shared by every application to it: a graph captured for a branch
# reads and writes these addresses, so they must outlive the patch that first filled them.
_BUFFERS: WeakKeyDictionary[Any, _Buffers] = WeakKeyDictionary()


class _State:
    """What the patch knows between calls: the call count and whether this call is shallow."""

    def __init__(self, config: DeepCacheConfig) -> None:
        self.interval = config.cache_interval
        self.branch = config.cache_branch_id
        self.calls = 0
        self.shallow = False

    def advance(self, *_: Any) -> None:
        """Before each UNet call (a forward pre-hook): full every ``interval`` calls."""
        self.shallow = self.calls % self.interval != 0
        self.calls += 1


def _wrap(module: Any, key: Key, state: _State, buffers: _Buffers) -> None:
    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        where = (state.branch, key, _shapes(args, kwargs))
        if state.shallow:
            return buffers.load(where)
        return buffers.store(where, inner(*args, **kwargs))

    module.forward = forward


class _DeepCachePatch(Patch):
    def __init__(self, unet: Any, config: DeepCacheConfig) -> None:
        self.state = _State(config)
        if config.cache_interval > 1:  # interval 1 is every step in full: nothing to wrap
            buffers = _BUFFERS.setdefault(unet, _Buffers())
            for key, module in skipped_modules(unet, config.cache_branch_id):
                _wrap(module, key, self.state, buffers)
        self._hook = unet.register_forward_pre_hook(self.state.advance)

    def reset(self) -> None:
        self.state.calls = 0  # every generation starts with a full step

    def structure(self) -> Hashable:
        return ("deepcache", self.state.branch, "shallow" if self.state.shallow else "full")

    def remove(self) -> None:
        self._hook.remove()  # the snapshot puts the modules' own forwards back


class DeepCache(Accelerator[DeepCacheConfig]):
    name = "deepcache"
    config_cls = DeepCacheConfig
    families = frozenset({"sd", "sdxl"})
    references = (
        Reference(
            "DeepCache: Accelerating Diffusion Models for Free (Ma, Fang, Wang; CVPR 2024)",
            "https://arxiv.org/abs/2312.00858",
            "https://github.com/horseee/DeepCache",
        ),
    )

    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        if steps < 2:
            raise AccelOptError(f"deepcache needs at least 2 steps to cache anything; got {steps}")
        return {
            "cache_interval": Param(tuple(range(2, min(5, steps) + 1))),
            # Ids past 3 x down blocks - 1 raise nothing upstream and cache only the mid block.
            "cache_branch_id": Param(tuple(range(min(3, _max_branch(traits)) + 1))),
        }

    def off(self, steps: int) -> DeepCacheConfig:
        return DeepCacheConfig(cache_interval=1, cache_branch_id=0)

    def check(self, config: DeepCacheConfig, traits: PipeTraits, steps: int | None) -> None:
        in_range(self.name, "cache_interval", config.cache_interval, 1, steps or 1000)
        in_range(
            self.name,
            "cache_branch_id",
            config.cache_branch_id,
            0,
            _max_branch(traits),
            f"3 x {traits.down_blocks} down blocks - 1",
        )

    def apply(self, pipe: Pipeline, config: DeepCacheConfig, traits: PipeTraits) -> Patch:
        return _DeepCachePatch(pipe.unet, config)


def _max_branch(traits: PipeTraits) -> int:
    return 3 * traits.down_blocks - 1
