"""diffusers' own block-cache hooks on a PixArt transformer, as a user would run them raw: the
reference our caches are tested against bit for bit, and the upstream rows of the GPU table
(bench/execution.py).

diffusers 0.42.1 needs two things on PixArt that its pipeline does not do (FINDINGS): a cache
context (the hooks raise "No cache context is set" without one; PixArt's transformer is no
``CacheMixin``, so its pipeline opens none) and a reset of the hooks' state between generations
(a ``CacheMixin`` model's pipeline resets it; PixArt's carries it into the next generation).
TaylorSeer's default module patterns match nothing on PixArt, so the patterns are given.
Removal goes through the hooks' registry by name; diffusers then still leaves an instance
``forward`` and a registry on each hooked module, which a ``Snapshot`` taken before puts back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from accelopt._types import Pipeline
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
}
METHODS = tuple(_HOOKS)


@contextmanager
def upstream_cache(
    pipe: Pipeline, name: str, knobs: Mapping[str, Any], steps: int
) -> Iterator[Callable[[], None]]:
    """diffusers' hook for ``name`` (``METHODS``) on ``pipe``'s transformer with our knobs
    (MagCache's calibrated ``ratios`` included), its cache context set; yields what starts a
    generation afresh (reset the hooks' state, set the context again: call it between
    generations). On exit the hooks are removed and the pipeline restored exactly."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    if name not in _HOOKS:
        raise ValueError(f"no upstream hook for {name!r}; known: {', '.join(METHODS)}")
    net = pipe.transformer
    snapshot = Snapshot.take(pipe)
    _apply(net, name, knobs, steps)
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
        snapshot.restore(pipe)


def _apply(net: Any, name: str, knobs: Mapping[str, Any], steps: int) -> None:
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
    else:
        taylor = hooks.TaylorSeerCacheConfig(
            cache_interval=knobs["cache_interval"],
            disable_cache_before_step=knobs["disable_cache_before_step"],
            max_order=knobs["max_order"],
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[TAYLORSEER_PATTERNS[knobs.get("modules", "attention")]],
        )
        hooks.apply_taylorseer_cache(net, taylor)
