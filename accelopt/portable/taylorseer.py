"""TaylorSeer's schedule and forecast, written to run eagerly, compiled and graph-replayed alike.

TaylorSeer (Liu et al., ICCV 2025, arXiv 2503.06923) runs the denoiser in full every
``interval`` calls and, in the calls between, forecasts each cached module's output with a
Taylor series whose derivatives are finite differences of that output over the last full calls.
The rule and the arithmetic are diffusers 0.42.1's (``diffusers/hooks/taylorseer_cache.py``):

- which call is full (``TaylorSeerCacheHook._measure_should_compute``): call ``i`` of a
  generation computes when ``i < before`` or ``(i - before - 1) % interval == 0``, so
  ``before=3, interval=5`` computes calls 0, 1, 2, 4, 9, 14 ... (``is_full_call``);
- what a full call keeps (``TaylorSeerState.update``): F0 = the output and, up to ``max_order``
  and as far as the generation's full calls so far allow, F(j+1) = (Fj - the last full call's
  Fj) / (the calls between the two): backward divided differences. The order a full call
  reaches is its structure's, so the first full calls are structures of their own;
- a forecast (``TaylorSeerState.predict``): F0 + F1 d + F2 d**2 / 2! + ..., with ``d`` the
  calls since the last full one, the terms summed in that order.

Given the same outputs, ours forecasts the same values as diffusers' state, bit for bit on the
CPU in float32 (tests/portable_tests/test_taylorseer.py). Note that with backward differences
the order-2 forecast is not exact on a quadratic: on t**2 with full calls at 0, 1 and 2, it
forecasts call 3 as 4 + 3 + 2/2 = 8 (order 1: 7, order 0: 4; the truth is 9); the paper's code
(``taylor_utils.derivative_approximation``) computes the same. What differs, by design:

- Everything per call is decided in the denoiser's forward pre-hook, outside any graph, counted
  in denoiser calls (diffusers counts each hooked module's own calls: the same count, decided
  inside ``torch.compiler.disable`` regions, which break every graph). The distance to divide
  by and the forecast's coefficients (``d**j / j!``) are written into small device tensors there
  (``fill_``: no host-device sync), so every forecast of one order is one graph whatever its
  distance, and every full call of one order another; no value is read back to the host.
- Factors live in ``Buffers`` at fixed addresses, in the module output's dtype. diffusers' default
  ``taylor_factors_dtype`` is bfloat16, which rounds float16 and float32 outputs (its own
  example passes float32); with that dtype equal to the output's, the forecasts agree.
- A full call reads the factors it differences against from a second set of buffers, which the
  pre-hook fills from the first (one ``torch._foreach_copy_``) before a full call that reads
  them; it writes only the first set. So running a full call twice keeps the same state: a CUDA
  graph's warm-up and capture run it three times. diffusers replaces its factors in a dict.
  That second set costs ``max_order`` more buffers per cached module than diffusers keeps.
- On CUDA, diffusers divides by a host integer, which PyTorch turns into a multiplication by its
  reciprocal; ours divides by a device tensor: the factors may differ in the last bit there.
- Modules are named choices, not regexes (``TAYLORSEER_MODULES``): "attention" caches each
  transformer block's self-attention, cross-attention and feed-forward outputs (``attn1``,
  ``attn2``, ``ff``: the paper's per-block attention and MLP features), "blocks" each block's
  output (coarser: the paper's FLUX forecasts a single-stream block's whole attention-and-MLP
  branch in one piece). diffusers reaches both with ``cache_identifiers``; its default patterns
  (``^transformer_blocks.*attn``, full match) match nothing on PixArt, whose modules are
  ``attn1`` and ``attn2``: a silent no-op.
- Not offered: ``disable_cache_after_step`` (full calls at the end) and the lite mode; the
  paper's code (TaylorSeer-FLUX ``cal_type``) puts the first full call after the warm-up at
  ``before + interval - 1``, diffusers at ``before + 1``: this follows diffusers.

What a call computes is ``Forecast.structure()``: full or forecast, the modules, and the order.
"""

from __future__ import annotations

import math
from typing import Any

from accelopt.portable.buffers import Buffers

TAYLORSEER_MODULES = ("attention", "blocks")  # what is cached: see the module docstring
MAX_TAYLOR_ORDER = 4  # the paper's DiT runs order 4 (TaylorSeer-DiT.md); the coefficients' room


def is_full_call(call: int, interval: int, before: int) -> bool:
    """Whether call ``call`` of a generation computes in full: diffusers' rule."""
    return call < before or (call - before - 1) % interval == 0


class Forecast:
    """Which denoiser call computes in full and which forecasts, and at what order.

    ``interval``: diffusers' ``cache_interval``; ``max_order``: the Taylor order of a forecast
    (0 reuses the last full call's output); ``before``: ``disable_cache_before_step``, calls
    that compute in full first (at least 1: a forecast needs a full call before it);
    ``modules``: one of ``TAYLORSEER_MODULES``.
    """

    def __init__(self, interval: int, max_order: int, before: int, modules: str) -> None:
        self.interval = interval
        self.max_order = max_order
        self.before = before
        self.modules = modules
        # Device tensors the pre-hook writes and the cached modules read (``forecast_modules``).
        self.powers: Any = None  # d**j / j! for j = 0 .. MAX_TAYLOR_ORDER
        self.step: Any = None  # calls between this full call and the last
        self.reset()

    def reset(self) -> None:
        """Before each generation: its first call computes in full, at order 0."""
        self.calls = 0
        self.fulls = 0  # full calls so far in this generation
        self.last = 0  # the last full call
        self.full = True
        self.order = 0  # a full call's order, and the order of the forecasts after it
        self.distance = 0  # calls since the last full call (a full call: between the two)

    def decide(self) -> None:
        """What the next call computes: every per-call choice, and nothing else (this alone
        gives a configuration's schedule, ``accelopt.accelerators.schedules``)."""
        call, self.calls = self.calls, self.calls + 1
        self.full = is_full_call(call, self.interval, self.before)
        assert self.full or self.fulls, "a forecast needs a full call before it (before >= 1)"
        self.distance = call - self.last
        if self.full:
            self.order = min(self.max_order, self.fulls)
            self.fulls += 1
            self.last = call

    def structure(self) -> tuple[str, str, str, int]:
        kind = "full" if self.full else "forecast"
        return ("taylorseer", self.modules, kind, self.order)


def cached_modules(net: Any, modules: str) -> list[tuple[str, Any]]:
    """The modules ``modules`` caches in ``net``, with their names. Raises ValueError for a
    denoiser without transformer blocks or an unknown choice."""
    blocks = getattr(net, "transformer_blocks", None)
    if blocks is None:
        raise ValueError(f"{type(net).__name__} has no transformer_blocks to cache")
    if modules == "blocks":
        return [(f"transformer_blocks.{i}", block) for i, block in enumerate(blocks)]
    if modules == "attention":
        return [
            (f"transformer_blocks.{i}.{name}", getattr(block, name))
            for i, block in enumerate(blocks)
            for name in ("attn1", "attn2", "ff")
            if getattr(block, name, None) is not None
        ]
    raise ValueError(f"unknown modules {modules!r}; valid: {', '.join(TAYLORSEER_MODULES)}")


def forecast_modules(net: Any, forecast: Forecast, buffers: Buffers) -> Any:
    """Make ``net`` follow ``forecast``: wrap the cached modules' forwards (on the instances) and
    decide each call in a forward pre-hook, whose handle it returns. The forwards stay wrapped
    until the caller puts them back. At interval 1 every call is full: nothing is wrapped, and
    it returns None."""
    if forecast.interval <= 1:
        return None
    parts = []
    for name, module in cached_modules(net, forecast.modules):
        # Keyed by shape alone inside the module's own part, as T-GATE's: compiled code that
        # several blocks share then guards on shapes, not on which module runs.
        own = buffers.part(("taylorseer", name))
        parts.append(own)
        _forecast_outputs(module, forecast, own)
    coefficients = buffers.part(("taylorseer", "coefficients"))

    def advance(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        forecast.decide()
        sample = args[0] if args else next(v for v in kwargs.values() if hasattr(v, "device"))
        _write_coefficients(forecast, coefficients, sample.device)
        if forecast.full and forecast.order:
            _keep_previous(parts, forecast.order, len(sample))

    return net.register_forward_pre_hook(advance, with_kwargs=True)


def _write_coefficients(forecast: Forecast, coefficients: Buffers, device: Any) -> None:
    """Point ``forecast`` at ``device``'s coefficient tensors (made once, at fixed addresses)
    and write this call's values into them, on the host's side of every graph."""
    import torch

    where = str(device)
    if ("powers", where) not in coefficients.saved:
        coefficients.store(("powers", where), torch.ones(MAX_TAYLOR_ORDER + 1, device=device))
        coefficients.store(("step", where), torch.ones((), device=device))
    forecast.powers = coefficients.load(("powers", where))
    forecast.step = coefficients.load(("step", where))
    if forecast.full:
        if forecast.order:
            forecast.step.fill_(float(forecast.distance))
        return
    for j in range(1, forecast.order + 1):  # j = 0 is 1 always
        forecast.powers[j].fill_(forecast.distance**j / math.factorial(j))


def _keep_previous(parts: list[Buffers], order: int, batch: int) -> None:
    """Before a full call of ``order``: copy the factors below that order into the buffers the
    call differences against, so that the call itself writes only what it does not read. Only
    this call's batch: another batch's factors (a study's timing pairs) are no cost of it."""
    import torch

    targets, sources = [], []
    for own in parts:
        for key, current in list(own.saved.items()):
            if not (isinstance(key, tuple) and key[0] == "current"):
                continue
            (shape, _), j = key[1], key[2]
            if j < order and shape[0] == batch:
                previous = ("previous", *key[1:])
                if previous not in own.saved:
                    own.saved[previous] = torch.empty_like(current)
                targets.append(own.saved[previous])
                sources.append(current)
    if targets:
        torch._foreach_copy_(targets, sources)


def _forecast_outputs(module: Any, forecast: Forecast, own: Buffers) -> None:
    inner = module.forward

    def forward(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        shape = (tuple(hidden_states.shape), hidden_states.dtype)
        if not forecast.full:
            out = own.load(("current", shape, 0)) * forecast.powers[0]
            for j in range(1, forecast.order + 1):
                out = out + own.load(("current", shape, j)) * forecast.powers[j]
            return out
        out = inner(hidden_states, *args, **kwargs)
        factors = [out]
        for j in range(forecast.order):
            previous = own.load(("previous", shape, j))
            factors.append((factors[j] - previous) / forecast.step)
        for j, factor in enumerate(factors):
            own.store(("current", shape, j), factor)
        return out

    module.forward = forward
