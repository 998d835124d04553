"""Buffers: a part's keys need not name the part (T-GATE's per-module buffers)."""

from __future__ import annotations

import pytest
import torch

from accelopt.portable.buffers import Buffers


def test_a_part_keeps_its_own_buffers_under_one_key_across_calls() -> None:
    buffers = Buffers()
    first, second = buffers.part(("tgate", "a")), buffers.part(("tgate", "b"))
    assert buffers.part(("tgate", "a")) is first  # the same part, so the same addresses
    first.store((2, 3), torch.ones(2, 3))
    second.store((2, 3), torch.zeros(2, 3))
    kept = first.load((2, 3))
    first.store((2, 3), torch.full((2, 3), 5.0))
    assert first.load((2, 3)) is kept and bool((kept == 5).all())
    assert bool((second.load((2, 3)) == 0).all())


def test_a_key_holding_tensors_is_no_part() -> None:
    buffers = Buffers()
    buffers.store("x", torch.ones(1))
    with pytest.raises(AssertionError, match="holds tensors, not a part"):
        buffers.part("x")
