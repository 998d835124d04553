"""MagCache's skip mask and its block-stack cache, written to run eagerly, compiled and
graph-replayed alike.

MagCache (Ma et al. 2025) skips whole transformer calls: a skipped call returns its input plus
the residual (stack output minus stack input) of the last call that computed. Whether call ``i``
skips follows from magnitude ratios ``r_i`` calibrated once on the plain pipeline (the mean
over tokens of ``|residual_i| / |residual_i-1|``, 1.0 for the first call), as
diffusers 0.42.1's ``hooks/mag_cache.py`` (``MagCacheHeadHook.new_forward``) and the MagCache
repository's ``MagCache4FLUX/magcache_flux.py`` decide it:

- the first ``int(retention_ratio * calls + 0.5)`` calls compute and leave the accumulators
  alone;
- every later call multiplies ``ratio`` by ``r_i``, adds one to ``steps`` and
  ``|1 - ratio|`` to ``err``; it skips when a residual was kept, ``err <= threshold`` and
  ``steps <= max_skip_steps``; otherwise it computes and resets ratio, steps and err to 1, 0, 0.

The decision depends on the ratios and the three knobs only, so the host knows every call's
before the generation starts (``mag_skip_mask``): nothing is read from the device, and what a
call computes (``MagSchedule.structure``: compute or skip) is one static graph each. Where this
differs from diffusers' hook, by design:

- The accumulators are Python floats (float64), as the repository's numpy arrays; diffusers
  keeps them as float32 tensors, so a mask can differ where the accumulated error lies within
  float32 rounding of the threshold.
- One ratio per denoiser call, exactly: diffusers interpolates ratios of another length to its
  ``num_inference_steps`` (nearest) and uses 1.0 past their end. Ratios are specific to the
  model, scheduler and step count, and accelopt measures them for each study, so a mismatch is
  an error at the generation's first call.
- Calls are counted in a forward pre-hook on the transformer, from each generation's start;
  diffusers counts them in its last block and resets after ``num_inference_steps`` of them.
- The residual is copied into ``Buffers`` at a fixed address (a captured graph's reads and
  writes); diffusers keeps a reference to it.
- The repository's FLUX script also forces its call 11 (of 28) to compute, a tweak for that
  model which diffusers leaves out; so does this module.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from accelopt.portable.buffers import Buffers

MAG_COMPUTE, MAG_SKIP = "compute", "skip"


def mag_skip_mask(
    ratios: tuple[float, ...] | list[float],
    threshold: float,
    max_skip_steps: int,
    retention_ratio: float,
) -> tuple[bool, ...]:
    """Which denoiser calls skip the block stack (True), one per calibrated ratio.

    >>> mag_skip_mask([1.0, 1.0, 0.98, 0.98, 0.98, 1.0], 0.1, 2, 0.2)
    (False, True, True, False, True, True)
    """
    retained = int(retention_ratio * len(ratios) + 0.5)
    ratio, err, steps = 1.0, 0.0, 0
    kept = False  # a residual was computed in this generation (diffusers' previous_residual)
    mask = []
    for i, r in enumerate(ratios):
        skip = False
        if i >= retained:
            ratio *= r
            steps += 1
            err += abs(1.0 - ratio)
            if kept and err <= threshold and steps <= max_skip_steps:
                skip = True
            else:
                ratio, err, steps = 1.0, 0.0, 0
        kept = kept or not skip
        mask.append(skip)
    return tuple(mask)


class MagSchedule:
    """Which denoiser call skips: ``mag_skip_mask`` of the ratios, read call by call.

    ``calls()`` is the number of denoiser calls the generation makes (the pipeline scheduler's
    timesteps), read at its first call, when they are set; it must equal the number of ratios.
    ``max_skip_steps == 0`` never skips and needs no ratios."""

    def __init__(
        self,
        threshold: float,
        max_skip_steps: int,
        retention_ratio: float,
        ratios: tuple[float, ...] | list[float],
        calls: Callable[[], int],
    ) -> None:
        self.config = (threshold, max_skip_steps, retention_ratio)
        self.ratios = tuple(float(r) for r in ratios)
        self.calls = calls
        self.mask = mag_skip_mask(self.ratios, *self.config) if self.skips else ()
        self.reset()

    @property
    def skips(self) -> bool:
        """Whether any call may skip: with ``max_skip_steps`` 0 none does."""
        return self.config[1] > 0

    def reset(self) -> None:
        """Before each generation: its first call computes."""
        self.call = 0
        self.skip = False

    def advance(self, *_: Any) -> None:
        """Before each denoiser call (a forward pre-hook). Raises ValueError when the
        generation's calls are not one per ratio."""
        if self.call == 0 and self.skips:
            total = self.calls()
            if total != len(self.ratios):
                raise ValueError(
                    f"{len(self.ratios)} calibrated ratios for a generation of {total} denoiser "
                    f"calls; ratios hold only for the scheduler and step count they were "
                    f"measured with: calibrate again for these"
                )
        self.skip = self.skips and self.call < len(self.mask) and self.mask[self.call]
        self.call += 1

    def structure(self) -> Hashable:
        return ("magcache", MAG_SKIP if self.skip else MAG_COMPUTE)


def mag_blocks(net: Any) -> list[Any]:
    """The transformer's block stack (PixArt's ``transformer_blocks``); ValueError if none."""
    blocks = list(getattr(net, "transformer_blocks", None) or ())
    if not blocks:
        raise ValueError(f"{type(net).__name__} has no transformer_blocks to cache")
    return blocks


def cache_block_residuals(
    net: Any, schedule: MagSchedule, buffers: Buffers, *, counted: bool = True
) -> Any:
    """Make ``net``'s block stack follow ``schedule``: wrap every block's forward (on the
    instances) and count calls in a forward pre-hook, whose handle it returns (None with
    ``counted=False``: the caller calls ``schedule.advance``). A computing call keeps the
    stack's residual in ``buffers``; a skipping one passes the input through every block and
    adds that residual in the last. The forwards stay wrapped until the caller puts them back.
    """
    blocks = mag_blocks(net)
    if schedule.skips:  # otherwise every call computes: nothing to wrap
        held: dict[str, Any] = {}  # the stack's input, from its first block to its last
        for i, block in enumerate(blocks):
            _mag_wrap(block, i == 0, i == len(blocks) - 1, schedule, buffers, held)
    return net.register_forward_pre_hook(schedule.advance) if counted else None


def _mag_wrap(
    block: Any,
    first: bool,
    last: bool,
    schedule: MagSchedule,
    buffers: Buffers,
    held: dict[str, Any],
) -> None:
    inner = block.forward

    def forward(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        # Keyed by shape alone: one residual per batch and size, whichever block stores it.
        key = ("magcache", tuple(hidden_states.shape), hidden_states.dtype)
        if schedule.skip:
            return hidden_states + buffers.load(key) if last else hidden_states
        if first:
            held["input"] = hidden_states
        out = inner(hidden_states, *args, **kwargs)
        if last:
            buffers.store(key, out - held.pop("input"))
        return out

    block.forward = forward


def mag_ratios(net: Any, generate: Callable[[], Any]) -> list[float]:
    """Calibrate: run ``generate()`` (one plain generation) with hooks on ``net``'s block stack
    and return, per denoiser call, the mean over tokens of the residual's norm over the previous
    call's (1.0 for the first call): diffusers' ``MagCacheBlockHook._perform_calibration_step``
    formula, in float32. The hooks are removed after, whatever happens."""
    import torch

    blocks = mag_blocks(net)
    ratios: list[float] = []
    seen: dict[str, Any] = {}

    def keep_input(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["input"] = args[0] if args else kwargs["hidden_states"]

    def measure(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        norm = torch.linalg.norm((out - seen.pop("input")).float(), dim=-1)
        before = seen.get("norm")
        ratios.append(1.0 if before is None else float((norm / (before + 1e-8)).mean()))
        seen["norm"] = norm

    handles = [
        blocks[0].register_forward_pre_hook(keep_input, with_kwargs=True),
        blocks[-1].register_forward_hook(measure, with_kwargs=True),
    ]
    try:
        generate()
    finally:
        for handle in handles:
            handle.remove()
    return ratios
