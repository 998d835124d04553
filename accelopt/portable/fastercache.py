"""FasterCache's schedule, written to run eagerly, compiled and graph-replayed.

FasterCache (Lv et al. 2024) saves work two ways, both in diffusers' hooks
(0.42.1, ``diffusers/hooks/faster_cache.py``), whose rules this follows:

- **CFG-Cache**, on the whole denoiser: at call ``i`` with timestep ``t`` in the open window
  ``(uncond_low, uncond_high)``, unless ``i`` is 0 or a multiple of ``uncond_skip``, the
  transformer runs on the conditional half of the batch only. The unconditional half is rebuilt
  from it: the difference between the two halves' spectra, split into low frequencies (a disc of
  radius ``min(h, w) // 5`` around the centre of the shifted 2-D FFT) and high, is kept at the
  last call that ran both, and each halved call adds it to its conditional output's spectrum,
  after scaling it by ``alpha_low`` where ``99 < t < 901`` and by ``alpha_high`` where
  ``-1 < t < 301`` (the paper's equation 11; the scaling compounds over consecutive halved
  calls, as diffusers' state does).
- **Attention reuse**, on each self-attention of the transformer blocks: in a halved call with
  ``t`` in ``(attention_low, attention_high)``, unless ``i`` is a multiple of
  ``attention_skip``, the attention is not run: its output is extrapolated from the
  conditional outputs of the last two calls, ``o[i-1] + (o[i-1] - o[i-2]) * weight``
  (``o[-1]`` is ``o[0]``). Every other call computes it.

diffusers decides both inside the hooks, from a ``current_timestep_callback`` that PixArt's
pipeline cannot answer. Here every call's choice is known before the generation starts, from
the scheduler's timesteps read on the host (``accelopt.portable.pab.host_timesteps``), so
nothing is read from the device. Where it differs from diffusers' hooks, by design:

- The halving cuts every tensor argument whose batch is the sample's (PixArt-alpha's
  resolution and aspect-ratio conditions too); diffusers cuts only the named keyword
  arguments and positional tensors, which breaks on PixArt-alpha at 1024 px.
- A generation without guidance (no unconditional half) computes every call; diffusers' hook
  would cut a batch that has no halves.
- An attention output is kept only where a later call extrapolates from it, in ``Buffers`` at
  fixed addresses (a captured graph's reads and writes), one of three slots by the call's index;
  diffusers keeps a reference to every output.

What a call computes (``Faster.structure``) is whether the batch is halved and what the
attention does: compute, compute and keep, or extrapolate (with its weight), and the slots it
reads and writes. The halving and
the rebuild of the unconditional half run in the transformer's forward pre-hook and forward
hook, outside its compiled code and captured graphs (a few FFT kernels per call on the
latents, as T-GATE's halving does); the attention's choice runs inside them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from accelopt.portable.buffers import Buffers
from accelopt.portable.graphs import dispatch
from accelopt.portable.tgate import COMPUTE, KEEP, halve, sample_batch

GUIDED, HALVED = "guided", "halved"  # the batch a call runs: both halves, or the conditional
# What a self-attention does besides T-GATE's COMPUTE and KEEP: keep a generation's first
# output, which stands for the one before it too; extrapolate, and keep that output too.
KEEP_FIRST, EXTRAPOLATE, EXTRAPOLATE_KEEP = "keep-first", "extrapolate", "extrapolate-keep"
# The stored knobs (accelopt's ``FasterCacheConfig``), in the order ``Faster`` takes them.
FASTER_KNOBS = (
    "unconditional_batch_skip_range",
    "unconditional_batch_timestep_skip_low",
    "unconditional_batch_timestep_skip_high",
    "spatial_attention_block_skip_range",
    "spatial_attention_timestep_skip_low",
    "spatial_attention_timestep_skip_high",
    "attention_weight",
    "alpha_low_frequency",
    "alpha_high_frequency",
)
# The paper's indicator windows for scaling the low- and high-frequency differences (eq. 11),
# diffusers' defaults, which its config has no knob for either in practice.
LOW_FREQUENCY_WINDOW = (99, 901)
HIGH_FREQUENCY_WINDOW = (-1, 301)


def faster_plan(
    timesteps: Sequence[float],
    uncond_skip: int,
    uncond_window: tuple[float, float],
    attention_skip: int,
    attention_window: tuple[float, float],
) -> tuple[tuple[str, str], ...]:
    """Each call's batch (``GUIDED`` or ``HALVED``) and what its self-attention does.

    >>> faster_plan([999, 800, 600, 400, 200, 50], 5, (-1, 641), 2, (-1, 681))
    (('guided', 'compute'), ('guided', 'compute'), ('halved', 'keep'), ('halved', 'extrapolate'), \
('guided', 'compute'), ('halved', 'extrapolate'))
    """
    halved = [
        i > 0 and uncond_window[0] < t < uncond_window[1] and i % uncond_skip != 0
        for i, t in enumerate(timesteps)
    ]
    extrapolates = [
        h and attention_window[0] < t < attention_window[1] and i % attention_skip != 0
        for i, (h, t) in enumerate(zip(halved, timesteps, strict=True))
    ]
    n = len(timesteps)
    # Call j keeps its output where a call extrapolates from it (the next two calls).
    keeps = [any(extrapolates[j + 1 : j + 3]) for j in range(n)]
    plan = []
    for i in range(n):
        if extrapolates[i]:
            mode = EXTRAPOLATE_KEEP if keeps[i] else EXTRAPOLATE
        elif keeps[i]:
            mode = KEEP_FIRST if i == 0 else KEEP
        else:
            mode = COMPUTE
        plan.append((HALVED if halved[i] else GUIDED, mode))
    return tuple(plan)


class Faster:
    """Which denoiser call halves its batch and which extrapolates attention (the module
    docstring's rules). ``knobs``: every one of ``FASTER_KNOBS`` by name (the stored
    configuration); ``timesteps()``: the generation's timesteps, read at its first call."""

    def __init__(self, knobs: Mapping[str, Any], timesteps: Callable[[], Sequence[float]]):
        self.config: tuple[Any, ...] = tuple(knobs[name] for name in FASTER_KNOBS)
        self.timesteps = timesteps
        self.reset()

    @property
    def halves(self) -> bool:
        """Whether any call may halve its batch (a skip above 1); none extrapolates otherwise."""
        return self.config[0] > 1

    def reset(self, guided: bool = True) -> None:
        """Before each generation; ``guided``: it batches unconditional and conditional halves
        (without them every call computes)."""
        self.guided = guided
        self.calls = 0
        self.plan: list[tuple[str, str]] = []
        self.times: Sequence[float] = ()
        self.current = (GUIDED, COMPUTE)
        self.low: Any = None  # the spectra's differences, kept at the last guided call
        self.high: Any = None

    def decide(self) -> None:
        """What the next call computes (this alone gives a configuration's schedule,
        ``accelopt.accelerators.schedules``)."""
        if self.calls == 0:
            uncond_skip, ul, uh, attention_skip, al, ah = self.config[:6]
            self.times = self.timesteps()
            plan = faster_plan(self.times, uncond_skip, (ul, uh), attention_skip, (al, ah))
            self.plan = list(plan)
            if not (self.guided and self.halves):
                self.plan = [(GUIDED, COMPUTE)] * len(self.plan)
        if self.calls >= len(self.plan):
            raise ValueError(
                f"the denoiser was called more often than the scheduler has timesteps "
                f"({len(self.plan)}); FasterCache's schedule has one entry per call"
            )
        self.current = self.plan[self.calls]
        self.calls += 1

    def scales(self) -> tuple[float, float]:
        """What a halved call scales the kept low- and high-frequency differences by: the
        alphas inside their windows, 1.0 outside."""
        t = self.times[self.calls - 1]
        (low_start, low_end), (high_start, high_end) = LOW_FREQUENCY_WINDOW, HIGH_FREQUENCY_WINDOW
        alpha_low, alpha_high = self.config[7:]
        return (
            alpha_low if low_start < t < low_end else 1.0,
            alpha_high if high_start < t < high_end else 1.0,
        )

    @property
    def slot(self) -> int:
        """Where this call keeps its attention output: the call's index modulo 3."""
        return (self.calls - 1) % 3

    def structure(self) -> tuple[Hashable, ...]:
        batch, mode = self.current
        if mode == COMPUTE:
            return ("fastercache", batch, mode)
        if mode.startswith(EXTRAPOLATE):  # the weight is in the captured arithmetic
            return ("fastercache", batch, mode, self.slot, self.config[6])
        return ("fastercache", batch, mode, self.slot)

    def advance(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Before each denoiser call (a forward pre-hook with kwargs): a halved call gets the
        conditional half of every batched input."""
        self.decide()
        if self.current[0] != HALVED:
            return None
        return halve((args, kwargs), sample_batch(args, kwargs), half=1)

    def rebuild(self, module: Any, args: tuple, output: Any) -> Any:
        """After each denoiser call (a forward hook): a halved call's unconditional half,
        rebuilt; a guided call before a halved one keeps the halves' spectral differences."""
        import torch

        batch, _ = self.current
        states = output if isinstance(output, torch.Tensor) else output[0]
        if batch == GUIDED:
            if HALVED in (b for b, _ in self.plan[self.calls :]):
                uncond, cond = states.chunk(2, dim=0)
                low_u, high_u = split_frequencies(uncond.float())
                low_c, high_c = split_frequencies(cond.float())
                self.low, self.high = low_u - low_c, high_u - high_c
            return None
        low_scale, high_scale = self.scales()
        self.low = self.low * low_scale
        self.high = self.high * high_scale
        low_c, high_c = split_frequencies(states.float())
        uncond_freq = (self.low + low_c) + (self.high + high_c)
        uncond = torch.fft.ifft2(torch.fft.ifftshift(uncond_freq)).real.to(states.dtype)
        states = torch.cat([uncond, states], dim=0)
        if isinstance(output, torch.Tensor):
            return states
        if isinstance(output, tuple):
            return (states, *output[1:])
        output.sample = states
        return output


_MASKS: dict[tuple[int, int, Any], Any] = {}


def split_frequencies(x: Any) -> tuple[Any, Any]:
    """The centred 2-D spectrum of ``x`` (over its last two dimensions), cut into a disc of
    radius ``min(h, w) // 5`` (low frequencies) and the rest: FasterCache's
    ``_split_low_high_freq``, with the mask made once per size and device."""
    import torch

    shifted = torch.fft.fftshift(torch.fft.fft2(x))
    height, width = x.shape[-2:]
    key = (height, width, x.device)
    low = _MASKS.get(key)
    if low is None:
        radius = min(height, width) // 5
        y, x_grid = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        disc = (x_grid - width // 2) ** 2 + (y - height // 2) ** 2 <= radius**2
        low = _MASKS[key] = disc[None, None].to(x.device)
    return shifted * low, shifted * ~low


def faster_attention(net: Any, faster: Faster, buffers: Buffers) -> list[Any]:
    """Make ``net`` follow ``faster``: wrap the self-attention of every transformer block (on
    the instances; the caller puts them back) and hook the calls. Returns the hooks' handles:
    the pre-hook that decides and halves, and the hook that rebuilds the unconditional half."""
    blocks = list(getattr(net, "transformer_blocks", None) or ())
    if not blocks:
        raise ValueError(f"{type(net).__name__} has no transformer_blocks to cache")
    for i, block in enumerate(blocks):
        attention = getattr(block, "attn1", None)
        if attention is not None and not getattr(attention, "is_cross_attention", False):
            _extrapolate(attention, buffers.part(("fastercache", i)), faster)
    return [
        net.register_forward_pre_hook(faster.advance, with_kwargs=True),
        net.register_forward_hook(faster.rebuild),
    ]


def _extrapolate(module: Any, own: Buffers, faster: Faster) -> None:
    # Keys name no module (see T-GATE's): one compiled attention serves every block. Call i's
    # output goes to slot i % 3, so an extrapolation reads slots (i - 1) % 3 and (i - 2) % 3 and
    # writes a third: a capture's warm-up runs repeat the same writes (idempotent), where
    # shifting two slots would not be.
    def route(inner: Callable[..., Any], hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        batch, mode = faster.current
        if mode == COMPUTE:
            return inner(hidden_states, *args, **kwargs)
        rows = hidden_states.shape[0] // (2 if batch == GUIDED else 1)
        key = ((rows, *hidden_states.shape[1:]), hidden_states.dtype)
        slot = faster.slot
        if mode.startswith(EXTRAPOLATE):
            before, last = own.load((*key, (slot + 1) % 3)), own.load((*key, (slot + 2) % 3))
            out = last + (last - before) * faster.config[6]
        else:
            out = inner(hidden_states, *args, **kwargs)
        if mode == EXTRAPOLATE:
            return out
        cond = out[out.shape[0] - rows :]  # the conditional half, or the halved batch
        own.store((*key, slot), cond)
        if mode == KEEP_FIRST:  # it stands for the call before the first too
            own.store((*key, 2), cond)
        return out

    module.forward = dispatch(route, module.forward)
