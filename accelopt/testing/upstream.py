"""diffusers' own block-cache hooks and cache-dit's DBCache on a PixArt pipeline, as a user would
run them raw: the references our caches are tested against bit for bit, and the upstream rows of
the GPU table (bench/execution.py).

diffusers 0.42.1 needs two things on PixArt that its pipeline does not do (FINDINGS): a cache
context (the hooks raise "No cache context is set" without one; PixArt's transformer is no
``CacheMixin``, so its pipeline opens none) and a reset of the hooks' state between generations
(a ``CacheMixin`` model's pipeline resets it; PixArt's carries it into the next generation).
TaylorSeer's default module patterns match nothing on PixArt, so the patterns are given.
Pyramid Attention Broadcast and FasterCache ask a ``current_timestep_callback``, which PixArt's
pipeline cannot answer (it keeps no current timestep): a forward pre-hook on the transformer
reads the timestep each call is given, the value the callback returns.
Removal goes through the hooks' registry by name; diffusers then still leaves an instance
``forward`` and a registry on each hooked module, which a ``Snapshot`` taken before puts back.

cache-dit 1.5.3 (``pip install cache-dit==1.5.3``, the test extra) patches the pipeline's class
``__call__``, which refreshes its context at every generation; ``disable_cache`` puts the class
back but leaves an instance ``forward`` on the transformer, its statistics on the block list and
the block list moved to the end of the transformer's children: the ``Snapshot`` puts those back.
Its log says at INFO what it patched and, per generation, its statistics; it is kept to warnings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from accelopt._types import Pipeline
from accelopt.accelerators import FasterCacheConfig, PABConfig
from accelopt.accelerators._snapshot import Snapshot

# diffusers' cache_identifiers for each of TaylorSeer's module choices (re.fullmatch on names).
TAYLORSEER_PATTERNS = {
    "attention": r"transformer_blocks\.\d+\.(attn1|attn2|ff)",
    "blocks": r"transformer_blocks\.\d+",
}
# What each hook registers, by name, for removal.
_HOOKS = {
    "fbcache": ("fbc_leader_block_hook", "fbc_block_hook"),
    "magcache": ("mag_cache_leader_block_hook", "mag_cache_block_hook"),
    "taylorseer": ("taylorseer_cache",),
    "pab": ("pyramid_attention_broadcast",),
    "fastercache": ("faster_cache_denoiser", "faster_cache_block"),
}
METHODS = (*_HOOKS, "dbcache")  # dbcache: cache-dit's


@contextmanager
def upstream_cache(
    pipe: Pipeline, name: str, knobs: Mapping[str, Any], steps: int
) -> Iterator[Callable[[], None]]:
    """Upstream's ``name`` (``METHODS``) on ``pipe`` with our knobs (MagCache's calibrated
    ``ratios`` included): diffusers' hook on the transformer, its cache context set, or
    cache-dit's DBCache on the pipeline. Yields what starts a generation afresh (diffusers: reset
    the hooks' state, set the context again; cache-dit refreshes by itself): call it between
    generations. On exit the cache is removed and the pipeline restored exactly."""
    if name == "dbcache":
        with _cache_dit(pipe, knobs, steps) as refresh:
            yield refresh
        return
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    if name not in _HOOKS:
        raise ValueError(f"no upstream hook for {name!r}; known: {', '.join(METHODS)}")
    net = pipe.transformer
    snapshot = Snapshot.take(pipe)
    timestep = _Timestep(net) if name in ("pab", "fastercache") else None
    _apply(net, name, knobs, steps, timestep)
    registry = HookRegistry.check_if_exists_or_initialize(net)
    registry.invalidate_child_registries_cache()

    def fresh() -> None:
        registry.reset_stateful_hooks()  # also clears the context: set it again
        _set_cache_context(net, CacheContext("cond"))

    fresh()
    try:
        yield fresh
    finally:
        for hook in _HOOKS[name]:
            registry.remove_hook(hook, recurse=True)
        if timestep is not None:
            timestep.handle.remove()
        snapshot.restore(pipe)


def ours_and_upstream(pipe: Pipeline, name: str, config: Any, steps: int) -> tuple[Any, Any]:
    """One generation (``accelopt.testing.render``) with our ``name`` at ``config`` (its config
    dataclass) and one with upstream's at the same knobs; asserts the pipeline is as before
    after upstream's removal. Returns both image arrays."""
    from accelopt import accelerators
    from accelopt.testing.render import render

    with accelerators.apply(pipe, {name: config}, steps=steps):
        ours = render(pipe, steps=steps)
    snapshot = Snapshot.take(pipe)
    with upstream_cache(pipe, name, dataclasses.asdict(config), steps):
        upstream = render(pipe, steps=steps)
    assert snapshot.matches(pipe), f"upstream {name} left the pipeline changed"
    return ours, upstream


class _Timestep:
    """The timestep of the transformer's current call, as a PAB callback reads it."""

    def __init__(self, net: Any) -> None:
        self.value = 0.0
        self.handle = net.register_forward_pre_hook(self._read, with_kwargs=True)

    def _read(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.value = float(kwargs["timestep"].flatten()[0])

    def __call__(self) -> float:
        return self.value


def _apply(
    net: Any, name: str, knobs: Mapping[str, Any], steps: int, timestep: Any = None
) -> None:
    import torch
    from diffusers import hooks

    if name == "fbcache":
        hooks.apply_first_block_cache(net, hooks.FirstBlockCacheConfig(knobs["threshold"]))
    elif name == "magcache":
        mag = hooks.MagCacheConfig(
            threshold=knobs["threshold"],
            max_skip_steps=knobs["max_skip_steps"],
            retention_ratio=knobs["retention_ratio"],
            num_inference_steps=steps,
            mag_ratios=list(knobs["ratios"]),
        )
        hooks.apply_mag_cache(net, mag)
    elif name == "pab":  # the knobs not given at our defaults (diffusers' window)
        knobs = {**dataclasses.asdict(PABConfig()), **knobs}
        window = (knobs["timestep_skip_low"], knobs["timestep_skip_high"])
        pab = hooks.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=knobs["spatial_attention_block_skip_range"],
            cross_attention_block_skip_range=knobs["cross_attention_block_skip_range"],
            spatial_attention_timestep_skip_range=window,
            cross_attention_timestep_skip_range=window,
            current_timestep_callback=timestep,
        )
        hooks.apply_pyramid_attention_broadcast(net, pab)
    elif name == "fastercache":  # the knobs not given at our defaults (diffusers' own)
        knobs = {**dataclasses.asdict(FasterCacheConfig()), **knobs}
        weight = knobs["attention_weight"]
        faster = hooks.FasterCacheConfig(
            spatial_attention_block_skip_range=knobs["spatial_attention_block_skip_range"],
            spatial_attention_timestep_skip_range=(
                knobs["spatial_attention_timestep_skip_low"],
                knobs["spatial_attention_timestep_skip_high"],
            ),
            unconditional_batch_skip_range=knobs["unconditional_batch_skip_range"],
            unconditional_batch_timestep_skip_range=(
                knobs["unconditional_batch_timestep_skip_low"],
                knobs["unconditional_batch_timestep_skip_high"],
            ),
            alpha_low_frequency=knobs["alpha_low_frequency"],
            alpha_high_frequency=knobs["alpha_high_frequency"],
            attention_weight_callback=lambda _: weight,
            current_timestep_callback=timestep,
            tensor_format="BCHW",  # PixArt's latents: no frames
        )
        hooks.apply_faster_cache(net, faster)
    else:
        taylor = hooks.TaylorSeerCacheConfig(
            cache_interval=knobs["cache_interval"],
            disable_cache_before_step=knobs["disable_cache_before_step"],
            max_order=knobs["max_order"],
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[TAYLORSEER_PATTERNS[knobs.get("modules", "attention")]],
        )
        hooks.apply_taylorseer_cache(net, taylor)


@contextmanager
def _cache_dit(
    pipe: Pipeline, knobs: Mapping[str, Any], steps: int
) -> Iterator[Callable[[], None]]:
    import logging

    import cache_dit
    from cache_dit import logger as logs

    # Each cache-dit module logs through its own logger (not propagated) into one handler.
    handler = logs._default_handler or logging.NullHandler()
    level = handler.level
    pipe_class = type(pipe)
    call = pipe_class.__call__
    snapshot = Snapshot.take(pipe)
    knobs = dict(knobs)
    order = knobs.pop("taylorseer_order", 0)  # a calibrator of its own config in cache-dit
    config = cache_dit.DBCacheConfig(**knobs, num_inference_steps=steps)
    calibrator = {}
    if order:
        calibrator["calibrator_config"] = cache_dit.TaylorSeerCalibratorConfig(
            taylorseer_order=order
        )
    handler.setLevel(logging.WARNING)
    try:
        cache_dit.enable_cache(pipe, cache_config=config, **calibrator)
        try:
            yield lambda: None
        finally:
            cache_dit.disable_cache(pipe)
            snapshot.restore(pipe)
    finally:
        handler.setLevel(level)
    if pipe_class.__call__ is not call:  # cache-dit's own undo: checked, not repaired
        raise RuntimeError(f"cache-dit left {pipe_class.__name__}.__call__ patched")
