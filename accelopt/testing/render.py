"""Generate a few small images through whatever accelerators a pipeline has, for comparisons."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from accelopt._types import Pipeline

__all__ = ["ignored_knobs", "render"]


def render(
    pipe: Pipeline,
    prompts: Sequence[str] = ("a red cube on a table", "a dog in the snow"),
    steps: int = 8,
    seed: int = 0,
    guidance_scale: float = 5.0,
) -> np.ndarray:
    """Images as a float array (batch, height, width, 3), from a fixed generator seed.

    Goes through ``accelopt.accelerators.generate``, so applied accelerators take part; two
    calls with the same arguments on the same pipeline state return bit-identical arrays.
    """
    import torch

    from accelopt.accelerators import generate
    from accelopt.pipelines import call_defaults

    out = generate(
        pipe,
        prompt=list(prompts),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **call_defaults(pipe),
    )
    return np.asarray(out.images)


def ignored_knobs(
    pipe: Pipeline, name: str, base: Any, changes: Mapping[str, Any], steps: int = 8
) -> list[str]:
    """The knobs in ``changes`` (knob -> another value) whose change alone, from accelerator
    ``name``'s config ``base``, leaves ``render``'s images bit for bit as they were: knobs the
    method ignores there. ``[]`` when every one changes the images."""
    from accelopt import accelerators

    def images(config: Any) -> np.ndarray:
        with accelerators.apply(pipe, {name: config}, steps=steps):
            return render(pipe, steps=steps)

    first = images(base)
    return [
        knob
        for knob, value in changes.items()
        if np.array_equal(images(dataclasses.replace(base, **{knob: value})), first)
    ]
