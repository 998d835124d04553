"""Tests for accelopt/pipelines/schedulers.py: scheduler names, aliases and swapping them on a
pipeline."""

from __future__ import annotations

import types
from typing import Any

import pytest

from accelopt.errors import AccelOptError
from accelopt.pipelines.schedulers import SCHEDULERS, resolve_scheduler, set_scheduler
from accelopt.testing import tiny_pipeline

NAMES = ("DDIM", "DPM-Solver++", "UniPC", "Euler", "PNDM")


def test_scheduler_names() -> None:
    assert tuple(s.name for s in SCHEDULERS) == NAMES


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("DPM++", "DPM-Solver++"),
        ("dpm++", "DPM-Solver++"),
        ("dpm-solver++", "DPM-Solver++"),
        ("DPMSolverMultistepScheduler", "DPM-Solver++"),
        ("UniPCMultistepScheduler", "UniPC"),
        ("unipc", "UniPC"),
        ("ddim", "DDIM"),
        ("DDIMScheduler", "DDIM"),
        ("Euler", "Euler"),
        ("EULER", "Euler"),
        ("eulerdiscretescheduler", "Euler"),
        ("PNDM", "PNDM"),
        ("pndm", "PNDM"),
        (" DDIM ", "DDIM"),
    ],
)
def test_resolve_is_case_insensitive_and_takes_aliases(typed: str, name: str) -> None:
    assert resolve_scheduler(typed).name == name


@pytest.mark.parametrize("info", SCHEDULERS, ids=lambda s: s.name)
def test_every_name_and_alias_resolves_to_itself(info) -> None:
    for spelling in (info.name, *info.aliases):
        assert resolve_scheduler(spelling) is info
        assert resolve_scheduler(spelling.upper()) is info


@pytest.mark.parametrize("info", SCHEDULERS, ids=lambda s: s.name)
def test_class_names_exist_in_diffusers(info) -> None:
    import diffusers

    assert hasattr(diffusers, info.class_name)


@pytest.mark.parametrize("bad", ["LMS", "dpm", "", "DDIM2"])
def test_unknown_scheduler_lists_valid_names(bad: str) -> None:
    with pytest.raises(AccelOptError) as info:
        resolve_scheduler(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in NAMES:
        assert name in message


@pytest.fixture
def sd_pipe():
    return tiny_pipeline("TinySD")


@pytest.mark.parametrize(
    ("name", "class_name"),
    [
        ("DPM++", "DPMSolverMultistepScheduler"),
        ("unipc", "UniPCMultistepScheduler"),
        ("Euler", "EulerDiscreteScheduler"),
        ("PNDM", "PNDMScheduler"),
        ("DDIM", "DDIMScheduler"),
    ],
)
def test_set_scheduler_replaces_class_and_keeps_beta_schedule(
    sd_pipe, name: str, class_name: str
) -> None:
    before = dict(sd_pipe.scheduler.config)
    info = set_scheduler(sd_pipe, name)
    assert info is resolve_scheduler(name)
    assert type(sd_pipe.scheduler).__name__ == class_name
    after = sd_pipe.scheduler.config
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps"):
        assert after[key] == before[key], key


def test_tiny_sd_beta_schedule_is_stable_diffusions() -> None:
    # The premise of the test above: the schedule kept is SD's, not a scheduler default.
    config = tiny_pipeline("TinySD").scheduler.config
    assert (config.beta_start, config.beta_end) == (0.00085, 0.012)
    assert config.beta_schedule == "scaled_linear"


def test_dpm_solver_overrides() -> None:
    from diffusers import DPMSolverMultistepScheduler

    pipe = tiny_pipeline("TinySD")
    # Start from a DPM scheduler with the settings the overrides must undo.
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True
    )
    set_scheduler(pipe, "dpm-solver++")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    assert pipe.scheduler.config.use_karras_sigmas is False
    assert pipe.scheduler.config.beta_start == 0.00085
    assert pipe.scheduler.config.beta_end == 0.012


def test_set_scheduler_unknown_name_leaves_pipeline_alone() -> None:
    pipe = tiny_pipeline("TinySD")
    scheduler = pipe.scheduler
    with pytest.raises(AccelOptError):
        set_scheduler(pipe, "LMS")
    assert pipe.scheduler is scheduler


def test_dpm_solver_timesteps_unique() -> None:
    # Karras sigmas would repeat timesteps, which DeepCache's step lookup cannot handle.
    pipe = tiny_pipeline("TinySD")
    set_scheduler(pipe, "DPM-Solver++")
    # At 50 steps, Karras sigmas on SD's schedule give 49 distinct timesteps.
    pipe.scheduler.set_timesteps(50)
    timesteps = pipe.scheduler.timesteps.tolist()
    assert len(timesteps) == len(set(timesteps)) == 50


def _pixart_config_pipe() -> Any:
    """A pipeline holding PixArt's own scheduler config: DPM-Solver++ on linear betas (no
    ``clip_sample``: DPMSolverMultistepScheduler has no such option)."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    return types.SimpleNamespace(scheduler=scheduler)


@pytest.mark.parametrize("name", NAMES)
def test_a_config_that_never_asked_for_clipping_does_not_clip(name: str) -> None:
    pipe = _pixart_config_pipe()
    assert "clip_sample" not in pipe.scheduler.config
    set_scheduler(pipe, name)
    assert pipe.scheduler.config.get("clip_sample", False) is False  # DDIM's default is True
    assert pipe.scheduler.config.get("thresholding", False) is False
    assert pipe.scheduler.config.beta_schedule == "linear"


@pytest.mark.parametrize("model", ["TinyPixArt", "TinySD"])
def test_ddim_keeps_what_the_config_says_about_clipping(model: str) -> None:
    """TinyPixArt and TinySD carry SD's config (clip_sample False): the DDIM built is the one
    diffusers builds from it, key for key; a config that asks for clipping keeps it."""
    from diffusers import DDIMScheduler

    pipe = tiny_pipeline(model)
    expected = dict(DDIMScheduler.from_config(pipe.scheduler.config).config)
    set_scheduler(pipe, "DDIM")
    assert dict(pipe.scheduler.config) == expected and expected["clip_sample"] is False
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True)
    set_scheduler(pipe, "DDIM")
    assert pipe.scheduler.config.clip_sample is True
