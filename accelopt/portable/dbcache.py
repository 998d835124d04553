"""DBCache's and FirstBlockCache's block cache, decided per call from a value read off the device.

Both run a transformer's first blocks at every call and measure how much their residual (their
output minus the stack's input) changed since the last call that computed in full; a small
change means the middle blocks would add about what they added then, so they are skipped and
that residual is added instead. The rule is cache-dit 1.5.3's DBCache (``caching/cache_blocks/
pattern_base.py``, ``CachedBlocks_Pattern_Base.forward``; ``caching/cache_contexts/
cache_manager.py``, ``can_cache`` and ``similarity``; ``cache_context.py``, ``mark_step_begin``
and ``warmup_steps``), and diffusers 0.42.1's FirstBlockCache (``hooks/first_block_cache.py``,
``FBCHeadBlockHook``; ParaAttention's First Block Cache) is its case ``Fn=1, Bn=0`` with no
warm-up, no caps and its own comparison. At call ``i`` of a generation:

1. The first ``fn`` blocks compute; ``r`` is their output minus the stack's input.
2. Whether the call may reuse is known on the host before it starts: the threshold is above 0
   (cache-dit: 0 disables), ``i >= warmup`` (cache-dit's ``max_warmup_steps``: the first calls
   always compute), fewer than ``max_cached`` calls of this generation reused and fewer than
   ``max_continuous`` in a row just before this one (-1: no cap; 0: never), and a call of this
   generation computed (it left ``r_prev``).
3. If it may, the change ``d = mean|r - r_prev| / mean|r_prev|`` (one scalar over the whole
   batch, in the residual's dtype: both upstreams' formula) is read to the host with ``.item()``,
   the call's only device-to-host sync. DBCache reuses when ``d < threshold`` (cache-dit);
   FirstBlockCache unless ``d > threshold`` (diffusers; the two differ only at equality).
4. Reuse: the middle blocks return their input and the last of them adds the middle residual
   kept from the last computing call. Compute: ``r_prev = r``, the middle blocks run, and their
   residual (their output minus their input) is kept.
5. The last ``bn`` blocks always compute, on what the middle left.

``r_prev`` moves only at computing calls, in both upstreams: each reuse is judged against the
last computed call, so the change grows over a run of reuses until one computes again.

Where this differs from upstream, by design:

- What a call may do (step 2) is decided in the transformer's forward pre-hook, on the host;
  the change is computed and read in one function that ``torch.compiler.disable`` keeps out of
  compiled code (``_judge``): the one graph break of a call, where cache-dit decides in many
  ``torch.compiler.disable`` regions per call and diffusers in one per hooked block. With each
  block compiled on its own (regional kernels), the block that decides breaks there and what
  follows compiles once per outcome (reuse or compute). With the whole forward compiled, the
  break falls inside the forward's loop over the blocks, where dynamo (torch 2.14) cannot
  resume: at a deciding call it runs the forward itself eagerly and compiles each block's call
  as a frame of its own; a computing call (warm-up, capped) stays one graph. A CUDA
  graph cannot read a device value in the middle of its replay, so under CUDA graphs a call
  that decides is not captured whole: its forward runs in Python and each block replays a
  graph of its own (``accelopt.portable.graphs.Regions.replaying``; the wrapped blocks are
  ``dispatch`` forwards, so the decision runs between the replays), and the read is the only
  sync of the call. A call that computes in full (warm-up, capped) replays one graph.
- Threshold 0 never reuses and reads nothing: cache-dit's rule. diffusers' FirstBlockCache at
  threshold 0 would still reuse at a change of exactly 0; here 0 is its off switch.
- The kept residuals live in ``Buffers`` at fixed addresses, keyed by shape; upstream keeps
  references. A generation's calls share their input shapes (a diffusers pipeline's do);
  cache-dit would compute at a shape change. Nothing is kept across generations: each starts
  with the cache empty, as cache-dit's context refresh leaves it and diffusers'
  ``reset_stateful_hooks`` (which a pipeline calls after a generation only for a ``CacheMixin``
  model: PixArt's transformer is none, so diffusers' hook carries its state into the next).
- Calls are counted in the transformer's forward pre-hook from each generation's start, as
  cache-dit counts transformer steps without separate CFG (PixArt batches both halves).
- Not offered: cache-dit's ``warmup_interval``, ``steps_computation_mask``,
  ``max_accumulated_residual_diff_threshold``, separate-CFG counting, its extra options
  (``l1_hidden_states_diff_threshold``, ``important_condition_threshold``,
  ``downsample_factor``) and its calibrators other than TaylorSeer's on the residual.

DBCache's TaylorSeer calibrator (``order`` above 0; cache-dit's ``TaylorSeerCalibratorConfig``,
``caching/cache_contexts/calibrators/taylorseer.py``, on the middle blocks' residual): a
reusing call adds a Taylor forecast of that residual instead of the last one kept. cache-dit
updates a ladder of differences at each computing call ``c`` (level ``i + 1`` is level ``i``
minus the previous computing call's level ``i``, over the calls between them; only where the
previous one had level ``i`` and its step counter, which runs one call behind the call index
because its state is made at the first update, is above 1, that is ``c >= 3``) and forecasts
``sum_i level_i * elapsed**i / i!`` with ``elapsed`` the calls since the last computing one.
Here the residuals of the last ``order + 1`` computing calls are kept in as many buffers, the
one a call writes named by how many computed before it (a computing call captured whole knows
it on the host, part of its structure), and the ladder is rebuilt from them, with cache-dit's
arithmetic in its order, when a call reuses: that call runs its middle blocks in Python (a
deciding call, see above), so nothing of the forecast is inside a graph. Without a derivative
(fewer than two computing calls from call 3 on) the forecast is the last residual: DBCache's.

What a call computes is ``Decision.structure()``: every block (``compute``, the warm-up's and
the capped calls') or the first blocks and then a decision (``decides``). Which calls reuse is
known only after their first blocks ran, so a configuration has no host-known schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

from accelopt.portable.buffers import Buffers
from accelopt.portable.graphs import DECIDES, dispatch

COMPUTES = "compute"


class Decision:
    """Which denoiser calls may reuse the middle blocks' residual, and which did.

    ``name``: the method ("dbcache", "fbcache"), in its structures; ``fn`` / ``bn``: the blocks
    that always compute first / last; ``threshold``: the relative change below which a call
    reuses (0: never); ``warmup``: calls that always compute first; ``max_cached`` /
    ``max_continuous``: at most this many reusing calls per generation / in a row (-1: no cap);
    ``order``: DBCache's TaylorSeer calibrator (0: none; the module docstring);
    ``strict``: reuse when the change is below the threshold (cache-dit), else when it is not
    above it (diffusers' FirstBlockCache).
    """

    def __init__(
        self,
        name: str,
        fn: int,
        bn: int,
        threshold: float,
        warmup: int = 0,
        max_cached: int = -1,
        max_continuous: int = -1,
        order: int = 0,
        *,
        strict: bool = True,
    ) -> None:
        self.name = name
        self.fn, self.bn = fn, bn
        self.threshold = threshold
        self.warmup = warmup
        self.max_cached, self.max_continuous = max_cached, max_continuous
        self.order = order
        self.strict = strict
        self.reset()

    @property
    def caches(self) -> bool:
        """Whether any call may reuse: not at threshold 0 or a cap of 0."""
        return self.threshold > 0 and self.max_cached != 0 and self.max_continuous != 0

    def reset(self) -> None:
        """Before each generation: nothing is kept, no call has reused."""
        self.call = 0
        self.cached = 0  # calls of this generation that reused
        self.streak = 0  # calls that reused in a row, up to the last one
        self.kept = False  # a computing call of this generation left its first blocks' residual
        self.may = False  # this call may reuse (step 2)
        self.reuse = False  # this call reuses (step 3)
        self.changes: list[float] = []  # the changes read in this generation, in call order
        self.computed: list[int] = []  # the calls of this generation that ran the middle blocks
        self.slot = 0  # where this call keeps its middle residual if it computes (``order``)

    def advance(self, *_: Any) -> None:
        """Before each denoiser call (a forward pre-hook): what it may do, on the host. Kept
        here, not in the blocks, so that a call replayed from a CUDA graph, which runs no
        Python, counts too."""
        if not self.reuse:  # the last call computed: the run of reuses is broken
            self.streak = 0
            self.kept = self.kept or (self.caches and self.call > 0)  # it left its residual
            if self.call > 0:
                self.computed.append(self.call - 1)
        self.slot = len(self.computed) % (self.order + 1)
        call, self.call = self.call, self.call + 1
        self.reuse = False
        self.may = (
            self.caches
            and self.kept
            and call >= self.warmup
            and (self.max_cached < 0 or self.cached < self.max_cached)
            and (self.max_continuous < 0 or self.streak < self.max_continuous)
        )

    def decide(self, change: float) -> None:
        """After the first blocks of a call that may reuse: whether it does."""
        self.changes.append(change)
        self.reuse = change < self.threshold if self.strict else not change > self.threshold
        if self.reuse:
            self.cached += 1
            self.streak += 1

    def structure(self) -> Hashable:
        if self.may:
            return (self.name, self.fn, self.bn, DECIDES)
        if self.order:  # a computing call writes the buffer its slot names
            return (self.name, self.fn, self.bn, COMPUTES, self.slot)
        return (self.name, self.fn, self.bn, COMPUTES)

    def forecast(self, kept: Callable[[int], Any]) -> Any:
        """What a reusing call adds with the TaylorSeer calibrator: the forecast of the middle
        residual from the last ``order + 1`` computing calls' (``kept(slot)``), with cache-dit's
        ladder and sum in its order of operations (the module docstring)."""
        calls = self.computed[-(self.order + 1) :]
        first = len(self.computed) - len(calls)
        ladder: list[Any] = []
        previous = 0
        for k, call in enumerate(calls):
            rung = [kept((first + k) % (self.order + 1))]
            if ladder and call - 1 > 1:  # cache-dit's step counter: one behind the call
                window = call - previous
                for i in range(min(self.order, len(ladder))):
                    rung.append((rung[i] - ladder[i]) / window)
            ladder, previous = rung, call
        elapsed = self.call - 1 - calls[-1]
        output: Any = 0
        for i, derivative in enumerate(ladder):
            output += (1 / math.factorial(i)) * derivative * (elapsed**i)
        return output

    def deciding_knobs(self, calls: int) -> tuple[Any, ...] | None:
        """The knobs that decide a generation of ``calls`` calls, each written so that values
        deciding alike are equal (a cap no run can reach is -1; warm-up 0 is 1: the first call
        computes anyway); None when no call can reuse (its images are the plain pipeline's).
        The calibrator's order ends the tuple where it is on (a study's stored schedules of
        DBCache without it keep their digests)."""
        first = max(self.warmup, 1)
        if not self.caches or first >= calls:
            return None
        room = calls - first  # the calls that may reuse, at most

        def cap(value: int) -> int:
            return -1 if value >= room else value

        caps = (cap(self.max_cached), cap(self.max_continuous))
        calibrated = (self.order,) if self.order else ()
        return (self.fn, self.bn, self.threshold, first, *caps, *calibrated)


def stack_blocks(net: Any, fn: int, bn: int) -> list[Any]:
    """The transformer's block stack (PixArt's ``transformer_blocks``). Raises ValueError
    without one, or when ``fn`` first and ``bn`` last blocks leave no middle block to cache."""
    blocks = list(getattr(net, "transformer_blocks", None) or ())
    if not blocks:
        raise ValueError(f"{type(net).__name__} has no transformer_blocks to cache")
    if fn < 1 or bn < 0 or fn + bn >= len(blocks):
        raise ValueError(
            f"Fn_compute_blocks {fn} and Bn_compute_blocks {bn} leave no middle block of "
            f"{type(net).__name__}'s {len(blocks)} to cache (Fn >= 1, Fn + Bn <= "
            f"{len(blocks) - 1})"
        )
    return blocks


def cache_middle_blocks(
    net: Any, decision: Decision, buffers: Buffers, *, counted: bool = True
) -> Any:
    """Make ``net``'s block stack follow ``decision``: wrap the forwards (on the instances) of
    the first ``fn`` blocks and the middle ones, and count calls in a forward pre-hook, whose
    handle it returns (None with ``counted=False``: the caller calls ``decision.advance``).
    Where no call can reuse (``decision.caches`` false) nothing is wrapped. The forwards stay
    wrapped until the caller puts them back. Raises ValueError as ``stack_blocks``."""
    blocks = stack_blocks(net, decision.fn, decision.bn)
    if decision.caches:
        import torch

        # Outside every graph: the one value read to the host per call (see the docstring).
        judge = torch.compiler.disable(_judge)
        last = len(blocks) - decision.bn - 1  # the last middle block
        held: dict[str, Any] = {}  # the stack's input, from its first block to block fn - 1
        for i, block in enumerate(blocks[: last + 1]):
            _wrap(block, i, last, decision, buffers, held, judge)
    return net.register_forward_pre_hook(decision.advance) if counted else None


def _judge(decision: Decision, previous: Any, residual: Any) -> None:
    """Read the relative change of the first blocks' residual and decide the call."""
    change = ((residual - previous).abs().mean() / previous.abs().mean()).item()
    decision.decide(change)


def _wrap(
    block: Any,
    index: int,
    last: int,
    decision: Decision,
    buffers: Buffers,
    held: dict[str, Any],
    judge: Any,
) -> None:
    first_blocks = decision.fn

    def route(inner: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        # Keyed by shape alone: one pair of residuals per batch and size.
        shape = (tuple(hidden_states.shape), hidden_states.dtype)
        if index >= first_blocks:  # a middle block
            if decision.reuse:
                if index != last:
                    return hidden_states
                if decision.order:  # in Python: a deciding call's
                    return hidden_states + decision.forecast(
                        lambda slot: buffers.load(("middle", shape, slot))
                    )
                return hidden_states + buffers.load(("middle", shape, 0))  # the one slot
            out = inner(hidden_states, *args, **kwargs)
            if index == last:
                buffers.store(("middle", shape, decision.slot), out - held.pop("middle"))
            return out
        if index == 0:
            held["input"] = hidden_states
        out = inner(hidden_states, *args, **kwargs)
        if index == first_blocks - 1:
            residual = out - held.pop("input")
            if decision.may:
                judge(decision, buffers.load(("first", shape)), residual)
            if not decision.reuse:
                buffers.store(("first", shape), residual)
                held["middle"] = out
        return out

    # The block's own forward runs compiled, or replays its own graph, where the route cannot.
    block.forward = dispatch(route, block.forward)
