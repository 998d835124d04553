"""DBCache's and FirstBlockCache's rule (accelopt/portable/dbcache.py), worked out by hand on a
stack of arithmetic blocks.

Block ``i`` adds ``weight_i * v`` to its input, where ``v`` is the call's value (one per call,
exact binary fractions, so every change below is exact in float32). The first blocks' residual
is then ``(their weights) * v``, and its relative change against the last computing call is
``|v - v_prev| / v_prev``. Values: 1, 1.0625, 1.125, 1.5, 1.5625, 1.625, 1.6875, 2.5.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from accelopt.portable.buffers import Buffers
from accelopt.portable.dbcache import Decision, cache_middle_blocks

VALUES = (1.0, 1.0625, 1.125, 1.5, 1.5625, 1.625, 1.6875, 2.5)
C, R = False, True  # compute, reuse


class Block(torch.nn.Module):
    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.calls = 0

    def forward(self, hidden_states: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return hidden_states + self.weight * value


class Stack(torch.nn.Module):
    def __init__(self, weights: tuple[float, ...]) -> None:
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(Block(w) for w in weights)

    def forward(self, hidden_states: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, value)
        return hidden_states


def run(
    decision: Decision, weights: tuple[float, ...] = (1.0, 1.0)
) -> tuple[list[bool], list[torch.Tensor], Stack]:
    """One generation of ``VALUES``: which calls reused, their outputs, and the stack."""
    net = Stack(weights)
    cache_middle_blocks(net, decision, Buffers())
    decision.reset()
    reused, outputs = [], []
    for v in VALUES:
        outputs.append(net(torch.zeros(2, 4), torch.full((2, 4), v)))
        reused.append(decision.reuse)
    return reused, outputs, net


@pytest.mark.parametrize(
    ("knobs", "expected", "read"),
    [
        # 0.1: call 1 changes 1/16 from call 0: reuse (r_prev stays 1); call 2 changes 1/8:
        # compute; call 3 1/3: compute; calls 4, 5 change 1/24, 1/12 from call 3: reuse; call
        # 6 1/8: compute; call 7 .48: compute.
        (dict(threshold=0.1), [C, R, C, C, R, R, C, C], 7),
        # 0.5: call 2 changes 1/8 from call 0: reuse; call 3 exactly 1/2: not below, compute;
        # then 1/24, 1/12, 1/8 from call 3: reuse; call 7 2/3: compute.
        (dict(threshold=0.5), [C, R, R, C, R, R, R, C], 7),
        # diffusers' comparison: call 3's exact 1/2 is not above 0.5: reuse; call 4 changes
        # 9/16 from call 0: compute; 1/25, 2/25 from call 4: reuse; call 7 3/5: compute.
        (dict(threshold=0.5, strict=False), [C, R, R, R, C, R, R, C], 7),
        # max_continuous 1: a call after a reuse computes unread: call 2 (r_prev 1.125), call 5
        # (r_prev 1.625), call 7; call 3 changes 1/3: compute; call 4 1/24 and call 6 1/26:
        # reuse.
        (dict(threshold=0.1, max_continuous=1), [C, R, C, C, R, C, R, C], 4),
        # max_cached 2: calls 1 and 4 reuse; every call after computes unread.
        (dict(threshold=0.1, max_cached=2), [C, R, C, C, R, C, C, C], 4),
        # warm-up 2: calls 0 and 1 compute (r_prev 1.0625); call 2 changes 1/17: reuse; call 3
        # .41: compute; then as at 0.1 above.
        (dict(threshold=0.1, warmup=2), [C, C, R, C, R, R, C, C], 6),
        # threshold 0 and a cap of 0: off, nothing is read.
        (dict(threshold=0.0), [C] * 8, 0),
        (dict(threshold=0.5, max_cached=0), [C] * 8, 0),
        (dict(threshold=0.5, max_continuous=0), [C] * 8, 0),
    ],
)
def test_which_calls_reuse_worked_by_hand(
    knobs: dict[str, Any], expected: list[bool], read: int
) -> None:
    decision = Decision("dbcache", 1, 0, **knobs)
    reused, _, _ = run(decision)
    assert reused == expected
    assert len(decision.changes) == read  # one device read per call that may reuse, no more
    assert decision.cached == sum(expected)


def test_first_and_last_blocks_always_compute_and_the_middle_residual_is_reused() -> None:
    """Fn=1, Bn=1 on four blocks weighted 1, 2, 3, 4: a computing call adds 10 v; a reusing one
    adds v (block 0), the middle's 5 v_c of the last computing call c, and 4 v (block 3)."""
    decision = Decision("dbcache", 1, 1, 0.1)
    reused, outputs, net = run(decision, (1.0, 2.0, 3.0, 4.0))
    assert reused == [C, R, C, C, R, R, C, C]
    last_computed = 0.0
    for v, reuse, out in zip(VALUES, reused, outputs, strict=True):
        if not reuse:
            last_computed = v
        want = v + 5 * last_computed + 4 * v if reuse else 10 * v
        assert torch.equal(out, torch.full((2, 4), want)), (v, reuse)
    calls = [block.calls for block in net.transformer_blocks]
    assert calls == [8, 5, 5, 8]  # the middle blocks ran at the five computing calls only


def test_the_first_blocks_residual_decides() -> None:
    """Fn=2: the decision reads blocks 0 and 1 together; with the weights 1 and -1 their
    residual is 0 at every call, its change 0/0: nan, below no threshold, and so never reused
    (diffusers' comparison, not above it, would reuse)."""
    decision = Decision("dbcache", 2, 0, 0.5)
    reused, _, _ = run(decision, (1.0, -1.0, 3.0))
    assert reused == [C] * 8
    assert all(change != change for change in decision.changes)  # nan


def test_each_generation_starts_empty() -> None:
    decision = Decision("dbcache", 1, 0, 0.1)
    first, _, net = run(decision)
    decision.reset()
    again = []
    for v in VALUES:
        net(torch.zeros(2, 4), torch.full((2, 4), v))
        again.append(decision.reuse)
    assert again == first  # call 0 computes: nothing of the last generation is compared with


def test_structures_name_what_the_host_knows() -> None:
    decision = Decision("dbcache", 1, 0, 0.1, warmup=2)
    net = Stack((1.0, 1.0))
    cache_middle_blocks(net, decision, Buffers(), counted=False)
    seen = []
    for v in VALUES[:4]:
        decision.advance()
        seen.append(decision.structure())
        net(torch.zeros(1, 2), torch.full((1, 2), v))
    assert seen == [("dbcache", 1, 0, "compute")] * 2 + [("dbcache", 1, 0, "decides")] * 2


def test_the_host_knows_what_a_call_may_do_without_the_blocks_python() -> None:
    """A call replayed from a CUDA graph runs no Python of the blocks: the counting pre-hook
    alone knows that a computing call left its residual, so the next may decide (warm-up 2:
    calls 0 and 1 compute, 2 decides), and a reset forgets it."""
    decision = Decision("dbcache", 1, 0, 0.1, warmup=2)
    seen = []
    for _ in range(3):
        decision.advance()  # no block runs: as if each call were a replayed graph
        seen.append(decision.structure()[-1])
    assert seen == ["compute", "compute", "decides"]
    decision.reset()
    decision.advance()
    assert not decision.may


@pytest.mark.parametrize(
    ("fn", "bn", "message"),
    [
        (2, 0, "Fn_compute_blocks 2 and Bn_compute_blocks 0 leave no middle block of Stack's 2"),
        (1, 1, "(Fn >= 1, Fn + Bn <= 1)"),
        (0, 0, "Fn_compute_blocks 0"),
    ],
)
def test_a_stack_without_a_middle_block_is_refused(fn: int, bn: int, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cache_middle_blocks(Stack((1.0, 1.0)), Decision("dbcache", fn, bn, 0.1), Buffers())


@pytest.mark.parametrize(
    ("knobs", "calls", "expected"),
    [
        ((1, 0, 0.1, 0, -1, -1), 8, (1, 0, 0.1, 1, -1, -1)),  # warm-up 0 decides as 1
        ((1, 0, 0.1, 2, 6, 7), 8, (1, 0, 0.1, 2, -1, -1)),  # caps past the 6 calls left
        ((1, 0, 0.1, 2, 5, 3), 8, (1, 0, 0.1, 2, 5, 3)),
        ((1, 0, 0.1, 8, -1, -1), 8, None),  # warm-up over every call
        ((1, 0, 0.0, 0, -1, -1), 8, None),
    ],
)
def test_deciding_knobs_are_written_as_they_decide(
    knobs: tuple[Any, ...], calls: int, expected: tuple[Any, ...] | None
) -> None:
    assert Decision("dbcache", *knobs).deciding_knobs(calls) == expected
