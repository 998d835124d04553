"""TaylorSeer's rule and forecast (accelopt/portable/taylorseer.py) on dummy modules whose
outputs are arithmetic in the call index, so every expected value is computable by hand, and
against diffusers' own ``TaylorSeerState`` for the same history."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from accelopt.portable.buffers import Buffers
from accelopt.portable.taylorseer import Forecast, cached_modules, forecast_modules, is_full_call


class Poly(nn.Module):
    """Output a + b t + c t**2 of its input t (the call index)."""

    def __init__(self, a: float, b: float, c: float) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.a + self.b * t + self.c * t * t


class Table(nn.Module):
    """Output row t of a fixed random table: a history with no pattern at all."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.rows = torch.randn(calls, 3, 4, generator=torch.Generator().manual_seed(0))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.rows[int(t[0])] * 1.0  # a new tensor, as a module's output is


class Net(nn.Module):
    """A denoiser with one transformer block."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList([block])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.transformer_blocks[0](t)


def run(net: Net, calls: int) -> list[torch.Tensor]:
    return [net(torch.full((2,), float(t))) for t in range(calls)]


def ours(block: nn.Module, interval: int, order: int, before: int, calls: int) -> list[Any]:
    net = Net(block)
    forecast_modules(net, Forecast(interval, order, before, "blocks"), Buffers())
    return run(net, calls)


def firsts(outputs: list[torch.Tensor]) -> list[float]:
    return [float(x.flatten()[0]) for x in outputs]


def test_full_calls_follow_diffusers_rule() -> None:
    """disable_cache_before_step 3, interval 5 (diffusers' defaults): calls 0, 1, 2 build the
    history, call 3 forecasts, call 4 computes, then every fifth call."""
    full = [c for c in range(20) if is_full_call(c, interval=5, before=3)]
    assert full == [0, 1, 2, 4, 9, 14, 19]
    assert all(is_full_call(c, interval=1, before=1) for c in range(20))  # interval 1: off


def test_each_call_says_what_it_computes_and_at_what_order() -> None:
    """The first full calls are structures of their own (the order grows with the history);
    forecasts of one order are one structure whatever the distance."""
    forecast = Forecast(interval=3, max_order=2, before=2, modules="blocks")
    seen = []
    for _ in range(9):
        forecast.decide()
        seen.append((*forecast.structure()[2:], forecast.distance))
    assert seen == [
        ("full", 0, 0), ("full", 1, 1), ("forecast", 1, 1), ("full", 2, 2),
        ("forecast", 2, 1), ("forecast", 2, 2), ("full", 2, 3), ("forecast", 2, 1),
        ("forecast", 2, 2),
    ]  # fmt: skip
    forecast.reset()
    forecast.decide()
    assert forecast.structure() == ("taylorseer", "blocks", "full", 0)


# Interval 3, three calls first: full calls 0, 1, 2, 4, 7; forecasts at 3, 5, 6, 8, 9.
SQUARES = {
    # Reuse: the last full output.
    0: [0, 1, 4, 4, 16, 16, 16, 49, 49, 49],
    # F1 = (4 - 1) / 1 = 3 at call 2; (16 - 4) / 2 = 6 at call 4; (49 - 16) / 3 = 11 at call 7.
    1: [0, 1, 4, 7, 16, 22, 28, 49, 60, 71],
    # F2 = (3 - 1) / 1 = 2 at call 2; (6 - 3) / 2 = 1.5 at call 4; (11 - 6) / 3 = 5/3 at 7:
    # call 5 is 16 + 6 + 1.5 / 2, call 9 is 49 + 11 * 2 + (5/3) * 2**2 / 2.
    2: [0, 1, 4, 8, 16, 22.75, 31, 49, 49 + 11 + 5 / 6, 49 + 22 + 10 / 3],
}


@pytest.mark.parametrize("order", [0, 1, 2])
def test_the_order_changes_the_forecast_as_hand_arithmetic_says(order: int) -> None:
    """On t**2: backward differences make order 2 closer than order 1, and order 1 closer than
    reuse, but not exact (the paper's and diffusers' arithmetic: F2 at call 2 is 2 = f'', yet
    F1 = 3 is the slope at 1.5, not at 2)."""
    got = firsts(ours(Poly(0.0, 0.0, 1.0), interval=3, order=order, before=3, calls=10))
    assert got == pytest.approx(SQUARES[order], rel=1e-6, abs=0)
    truth = [t * t for t in range(10)]
    errors = [abs(g - s) for g, s in zip(got, truth, strict=True)]
    assert [t for t, e in enumerate(errors) if e] == [3, 5, 6, 8, 9]  # the forecasts, all off
    if order:
        lower = firsts(ours(Poly(0.0, 0.0, 1.0), interval=3, order=order - 1, before=3, calls=10))
        assert all(e < abs(w - s) for e, w, s in zip(errors, lower, truth, strict=True) if e)


@pytest.mark.parametrize(("order", "exact"), [(0, False), (1, True), (2, True)])
def test_a_line_is_forecast_exactly_from_order_one(order: int, exact: bool) -> None:
    got = firsts(ours(Poly(2.0, 3.0, 0.0), interval=4, order=order, before=2, calls=12))
    assert (got == [2.0 + 3.0 * t for t in range(12)]) is exact


CONFIGS = list(itertools.product((2, 3, 5), (0, 1, 2, 4), (1, 3)))  # interval, order, before


@pytest.mark.parametrize(("interval", "order", "before"), CONFIGS)
def test_same_forecast_as_diffusers_for_the_same_history(
    interval: int, order: int, before: int
) -> None:
    """diffusers' own hook (float32 factors) on the same module and history, bit for bit."""
    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache
    from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

    calls = 16
    mine = ours(Table(calls), interval, order, before, calls)
    net = Net(Table(calls))
    config = TaylorSeerCacheConfig(
        cache_interval=interval,
        disable_cache_before_step=before,
        max_order=order,
        taylor_factors_dtype=torch.float32,
        cache_identifiers=[r"transformer_blocks\.\d+"],
    )
    apply_taylorseer_cache(net, config)
    HookRegistry.check_if_exists_or_initialize(net).invalidate_child_registries_cache()
    _set_cache_context(net, CacheContext("cond"))  # PixArt's pipeline opens none
    theirs = run(net, calls)
    for call, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert torch.equal(a, b), call


def test_a_full_call_run_three_times_leaves_the_same_state() -> None:
    """A CUDA graph's first call runs the forward three times after one pre-hook (two warm-ups
    and the capture's replay): a full call reads factors it does not write, so the forecasts
    after it are the same."""
    once = ours(Table(12), interval=3, order=2, before=2, calls=12)
    net = Net(Table(12))
    forecast_modules(net, Forecast(3, 2, 2, "blocks"), Buffers())
    forward = net.forward
    net.forward = lambda t: [forward(t) for _ in range(3)][-1]  # type: ignore[method-assign]
    thrice = run(net, 12)
    assert all(torch.equal(a, b) for a, b in zip(once, thrice, strict=True))


def test_coefficients_stay_at_fixed_addresses_across_calls_and_generations() -> None:
    """What a captured graph reads: the same tensors every call, written on the host's side."""
    net, forecast, buffers = Net(Poly(0.0, 1.0, 1.0)), Forecast(3, 2, 1, "blocks"), Buffers()
    forecast_modules(net, forecast, buffers)
    addresses = set()
    for _ in range(2):
        forecast.reset()
        for t in range(8):
            net(torch.full((2,), float(t)))
            addresses.add((forecast.powers.data_ptr(), forecast.step.data_ptr()))
    assert len(addresses) == 1
    again = Forecast(4, 1, 2, "blocks")  # another application, with the denoiser's buffers
    other = Net(Poly(0.0, 1.0, 1.0))
    forecast_modules(other, again, buffers)
    unset = (again.powers, again.step)
    assert unset == (None, None)  # until a call's pre-hook points it at them
    run(other, 1)
    assert (again.powers.data_ptr(), again.step.data_ptr()) in addresses


def test_interval_one_wraps_nothing() -> None:
    net = Net(Poly(0.0, 0.0, 1.0))
    assert forecast_modules(net, Forecast(1, 2, 3, "blocks"), Buffers()) is None
    assert "forward" not in vars(net.transformer_blocks[0])
    assert not net._forward_pre_hooks


@pytest.mark.parametrize(
    ("make", "modules", "message"),
    [
        (lambda: nn.Linear(2, 2), "blocks", "Linear has no transformer_blocks to cache"),
        (lambda: Net(Poly(0, 0, 1)), "all", "unknown modules 'all'; valid: attention, blocks"),
    ],
)
def test_what_cannot_be_cached_is_refused(
    make: Callable[[], nn.Module], modules: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cached_modules(make(), modules)
