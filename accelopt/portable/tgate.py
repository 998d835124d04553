"""T-GATE's schedule, written to run eagerly, compiled and graph-replayed alike.

T-GATE computes cross-attention until a gate step, keeps its output there (the mean of the
guided batch's two halves) and reuses it after; self-attention is kept every ``sp_interval``
steps before the gate and every ``fi_interval`` steps after it. After the gate, guidance is
dropped: the denoiser runs on the unconditional half of the batch alone.

Upstream (``tgate``) forks each pipeline's call to halve the batch and patches every attention's
forward again at every step. Here the pipeline's own call stays, and everything per call runs
in the denoiser's hooks, outside any graph:

- ``Gate.advance`` (a forward pre-hook) counts denoiser calls, picks what each attention
  computes with upstream's rules (``modes``, and upstream's reading of a scheduler's order and
  warm-up steps), and after the gate passes the first half of every batched input only.
- ``Gate.restore`` (a forward hook) returns that half's prediction twice, so the pipeline's
  guidance ``u + g * (t - u)`` gives it back exactly, as upstream's unguided step does.
- Kept attention outputs go into ``Buffers`` at fixed addresses, one per module and shape.

With ToMe, self-attention whose input ToMe merges computes at every call: its output is in
the merged order of one call's partition, which the next call recomputes from its own hidden
states, so a kept output would reach tokens it was not computed for. Cross-attention (which
tomesd does not merge) and the halved batch follow the gate as everywhere.

With DeepCache, the gate drives DeepCache's schedule: it restarts DeepCache's count at the last
step before the gate and at the gate (both run in full, so every attention is kept), as
upstream's combined loaders do. Attention that a shallow step skips forms its own group: a reuse
that finds nothing kept in this generation computes instead, again as upstream does.

What a call computes is ``Gate.structure()``: guided or halved, and each running group's
cross- and self-attention modes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from accelopt.portable.buffers import Buffers
from accelopt.portable.deepcache import skipped_modules
from accelopt.portable.graphs import dispatch

COMPUTE, KEEP, KEEP_MEAN, REUSE = "compute", "keep", "keep-mean", "reuse"
SHALLOW, DEEP = "shallow", "deep"  # attention a DeepCache shallow step runs, or skips


def modes(
    step: int, gate_step: int, sp_interval: int, fi_interval: int, warm_up: int
) -> tuple[str, str]:
    """(cross-attention, self-attention) modes at ``step``: upstream's ``tgate_scheduler``."""
    if step < gate_step - 1:  # semantics planning: cross-attention runs, self-attention kept
        if step < warm_up:
            return COMPUTE, COMPUTE
        keep = step == warm_up or step % sp_interval == 0
        return COMPUTE, KEEP if keep else REUSE
    if step == gate_step - 1:
        return KEEP_MEAN, KEEP_MEAN
    return REUSE, KEEP if step % fi_interval == 0 else REUSE  # fidelity improving


class Gate:
    """Which denoiser call computes what. ``scheduler()`` is the pipeline's scheduler, read at a
    generation's first call (its timesteps are set by then); ``deepcache`` a DeepCache
    ``Schedule`` this gate drives, or None."""

    def __init__(
        self,
        gate_step: int,
        sp_interval: int,
        fi_interval: int,
        warm_up: int,
        scheduler: Callable[[], Any],
        deepcache: Any = None,
    ) -> None:
        self.config = (gate_step, sp_interval, fi_interval, warm_up)
        self.scheduler = scheduler
        self.deepcache = deepcache
        self.reset(guided=True)

    def reset(self, guided: bool) -> None:
        """Before each generation; ``guided``: it uses classifier-free guidance (a batch of
        unconditional and conditional halves)."""
        self.guided = guided
        self.calls = 0
        self.total = self.order = self.warmup_steps = 0  # read from the scheduler at call 0
        self.halved = False
        self.current: dict[str, tuple[str, ...] | None] = {SHALLOW: None, DEEP: None}
        self.kept: set[tuple[str, bool]] = set()  # (group, cross) kept in this generation
        self.planned = (COMPUTE, COMPUTE)  # upstream's first modes, before any step moves them

    def advance(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Before each denoiser call (a forward pre-hook with kwargs)."""
        self.decide()
        if not self.halved:
            return None
        return halve((args, kwargs), sample_batch(args, kwargs))

    def decide(self) -> None:
        """What the next call computes: every per-call choice, and nothing else (this alone
        gives a configuration's schedule, ``accelopt.accelerators.schedules``)."""
        gate_step = self.config[0]
        if self.calls == 0:
            scheduler = self.scheduler()
            self.total = len(scheduler.timesteps)
            self.order = getattr(scheduler, "order", 1)
            # diffusers' num_warmup_steps (not T-GATE's warm_up): calls before the first step
            self.warmup_steps = self.total - scheduler.num_inference_steps * self.order
        i, self.calls = self.calls, self.calls + 1
        step = i - self.warmup_steps
        # Upstream moves to a step's modes only where its progress bar moves.
        if i == self.total - 1 or (i + 1 > self.warmup_steps and (i + 1) % self.order == 0):
            self.planned = modes(step, *self.config)
        deep_runs = True
        if self.deepcache is not None:
            if step in (gate_step - 1, gate_step):
                self.deepcache.reset()
            self.deepcache.advance()
            deep_runs = not self.deepcache.shallow
        self.current[SHALLOW] = self._settle(SHALLOW)
        if self.deepcache is not None:
            self.current[DEEP] = self._settle(DEEP, deep_runs)
        self.halved = self.guided and step >= gate_step

    def _settle(self, group: str, runs: bool = True) -> tuple[str, ...] | None:
        """``group``'s modes now: a reuse with nothing kept computes; None where it won't run."""
        if not runs:
            return None
        settled = []
        for cross, mode in zip((True, False), self.planned, strict=True):
            if mode == KEEP_MEAN and not self.guided:
                mode = KEEP  # no halves to average
            if mode == REUSE and (group, cross) not in self.kept:
                mode = COMPUTE
            if mode in (KEEP, KEEP_MEAN):
                self.kept.add((group, cross))
            settled.append(mode)
        return tuple(settled)

    def restore(self, module: Any, args: tuple, output: Any) -> Any:
        """After each denoiser call (a forward hook): a halved call's prediction, twice."""
        if not self.halved:
            return None
        import torch
        from torch.utils._pytree import tree_map

        return tree_map(lambda x: torch.cat([x, x]) if isinstance(x, torch.Tensor) else x, output)

    def structure(self) -> Hashable:
        parts = [f"{g} {' '.join(m)}" for g, m in self.current.items() if m is not None]
        return ("tgate", "halved" if self.halved else "guided", *parts)


def sample_batch(args: tuple, kwargs: dict) -> int:
    """The batch of the denoiser's sample: its first argument."""
    sample = args[0] if args else next(iter(kwargs.values()))
    return int(sample.shape[0])


def halve(tree: Any, batch: int, half: int = 0) -> Any:
    """Every tensor in ``tree`` with the sample's batch, cut to its first half (``half`` 0: the
    unconditional one, which T-GATE passes on) or its second (1: the conditional one)."""
    import torch
    from torch.utils._pytree import tree_map

    def cut(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == batch:
            return x[batch // 2 :] if half else x[: batch // 2]
        return x

    return tree_map(cut, tree)


def is_guided(net: Any, guidance_scale: float) -> bool:
    """Whether a generation batches unconditional and conditional halves: diffusers'
    ``do_classifier_free_guidance`` (a guidance-distilled UNet embeds the scale instead)."""
    return guidance_scale > 1 and getattr(net.config, "time_cond_proj_dim", None) is None


def gate_attention(net: Any, gate: Gate, buffers: Buffers) -> list[Any]:
    """Make ``net`` follow ``gate``: wrap every ``Attention`` module's forward (on the instance)
    and hook the calls. Returns the hooks' handles; the attention forwards stay wrapped until
    the caller puts them back. Raises ValueError for attention that adds its own residual."""
    deep: set[int] = set()  # the attention inside modules a DeepCache shallow step skips
    if gate.deepcache is not None and gate.deepcache.interval > 1:
        for _, skipped in skipped_modules(net, gate.deepcache.branch):
            deep |= {id(m) for m in skipped.modules()}
    attention = [(n, m) for n, m in net.named_modules() if type(m).__name__ == "Attention"]
    for name, module in attention:
        if module.residual_connection or module.rescale_output_factor != 1:
            raise ValueError(f"T-GATE keeps attention before its residual; {name} adds one")
    merged = merged_self_attention(net)
    for name, module in attention:
        group = DEEP if id(module) in deep else SHALLOW
        _gate(module, name, group, gate, buffers, always=id(module) in merged)
    return [
        net.register_forward_pre_hook(gate.advance, with_kwargs=True),
        net.register_forward_hook(gate.restore),
    ]


def merged_self_attention(net: Any) -> set[int]:
    """ids of the self-attention modules whose input tomesd merges in ``net``: the ``attn1`` of
    each ToMe block at a downsampling factor up to its ``max_downsample`` (its own rule: the
    factor of a block is that of its UNet level). Empty without ToMe."""
    info = getattr(net, "_tome_info", None)
    if info is None or info["args"]["ratio"] <= 0 or not info["args"]["merge_attn"]:
        return set()
    last = len(net.down_blocks) - 1
    levels = [(2**i, b) for i, b in enumerate(net.down_blocks)] + [(2**last, net.mid_block)]
    levels += [(2 ** (last - i), b) for i, b in enumerate(net.up_blocks)]
    return {
        id(m.attn1)
        for factor, block in levels
        if factor <= info["args"]["max_downsample"]
        for m in block.modules()
        if type(m).__name__ == "ToMeBlock"
    }


def _gate(
    module: Any, name: str, group: str, gate: Gate, buffers: Buffers, always: bool = False
) -> None:
    """Wrap ``module``'s forward to follow ``gate``; ``always``: its self-attention computes at
    every call (ToMe merges its input)."""
    # This module's own buffers, keyed by shape alone: under regional compiling one compiled
    # transformer block serves every instance, and a key naming the module would make dynamo
    # guard on the name and compile the block again for each instance (and again at each
    # buffer's first use).
    own = buffers.part(("tgate", name))

    def route(inner: Callable[..., Any], hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        context = args[0] if args else kwargs.get("encoder_hidden_states")
        cross = context is not None
        now = gate.current[group]
        assert now is not None, f"{name} runs in a call that skips its group"
        mode = now[0 if cross else 1]
        if always and not cross:
            return inner(hidden_states, *args, **kwargs)
        if mode != KEEP_MEAN:
            return attend(own, mode, inner, hidden_states, *args, **kwargs)
        out = inner(hidden_states, *args, **kwargs)  # reused by the halved calls after the gate
        uncond, cond = out.chunk(2)
        half = (len(uncond), *hidden_states.shape[1:])
        own.store((half, hidden_states.dtype), (uncond + cond) / 2)
        return out

    # Under regional kernels the mode is chosen outside the compiled blocks.
    module.forward = dispatch(route, module.forward)


def attend(
    own: Buffers,
    mode: str,
    inner: Callable[..., Any],
    hidden_states: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """An attention module's output as ``mode`` says: the one kept for this input's shape
    (``REUSE``), else ``inner``'s, kept for later calls where ``KEEP``."""
    key = (tuple(hidden_states.shape), hidden_states.dtype)
    if mode == REUSE:
        return own.load(key)
    out = inner(hidden_states, *args, **kwargs)
    if mode == KEEP:
        own.store(key, out)
    return out
