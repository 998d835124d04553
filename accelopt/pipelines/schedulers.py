"""Scheduler names users type, mapped to diffusers scheduler classes and their settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from accelopt._types import Pipeline
from accelopt.errors import AccelOptError, choices

__all__ = ["SCHEDULERS", "SchedulerInfo", "resolve_scheduler", "set_scheduler"]


@dataclass(frozen=True)
class SchedulerInfo:
    """A scheduler by its study name: the diffusers class and the config it overrides."""

    name: str
    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SCHEDULERS: tuple[SchedulerInfo, ...] = (
    SchedulerInfo("DDIM", "DDIMScheduler", aliases=("DDIMScheduler",)),
    SchedulerInfo(
        "DPM-Solver++",
        "DPMSolverMultistepScheduler",
        # Karras sigmas are another schedule (and repeat timesteps): offered by none of ours.
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False},
        aliases=("DPM++", "DPMSolverMultistepScheduler", "DPMSolver++"),
    ),
    SchedulerInfo("UniPC", "UniPCMultistepScheduler", aliases=("UniPCMultistepScheduler",)),
    SchedulerInfo("Euler", "EulerDiscreteScheduler", aliases=("EulerDiscreteScheduler",)),
    SchedulerInfo("PNDM", "PNDMScheduler", aliases=("PNDMScheduler",)),
)

_BY_NAME = {n.lower(): s for s in SCHEDULERS for n in (s.name, *s.aliases)}


def resolve_scheduler(name: str) -> SchedulerInfo:
    """Look a scheduler up by name or alias, case-insensitively.

    >>> resolve_scheduler("dpm++").name
    'DPM-Solver++'
    """
    try:
        return _BY_NAME[name.strip().lower()]
    except KeyError:
        valid = choices(f"{s.name} (or {', '.join(s.aliases)})" for s in SCHEDULERS)
        raise AccelOptError(f"unknown scheduler {name!r}; valid: {valid}") from None


def set_scheduler(pipe: Pipeline, name: str) -> SchedulerInfo:
    """Replace ``pipe.scheduler`` with the named one, built from the pipeline's own config."""
    import diffusers

    info = resolve_scheduler(name)
    cls = getattr(diffusers, info.class_name)
    pipe.scheduler = cls.from_config(_source_config(pipe.scheduler.config), **info.overrides)
    return info


def _source_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline's scheduler config as the source of another scheduler class: a config that
    never asked for clipping does not get it.

    A key the config lacks takes the new class's default, and DDIM's ``clip_sample`` defaults
    to True, clipping the predicted x0 to [-1, 1]: a habit of pixel-space DDPMs, wrong for the
    latents every pipeline here denoises. PixArt's config (DPM-Solver++, which has no such
    option) and SDXL-shaped Euler ones built without the key would get it; SD's and SDXL's own
    configs say False, and diffusers' SD pipeline resets a True to False itself. A config that
    does set it keeps its value. (Thresholding, the other output-range option, is off by
    default in every class we build.) Generated scripts apply the same rule
    (``accelopt.portable.script``).

    >>> _source_config({"beta_schedule": "linear"})["clip_sample"]
    False
    """
    return {"clip_sample": False, **config}
