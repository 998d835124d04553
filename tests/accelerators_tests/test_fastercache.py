"""FasterCache on TinyPixArt (accelopt/accelerators/fastercache.py): what diffusers' hooks
compute, bit for bit; every knob changes the images; compiled, one graph per structure and none
for new knobs; without guidance, the plain images. The contract every accelerator keeps is
test_accelerators.py's."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.accelerators import FasterCacheConfig
from accelopt.accelerators._base import host_timesteps_of
from accelopt.accelerators._snapshot import Snapshot
from accelopt.accelerators.schedules import Calls, does_at_least, schedule
from accelopt.errors import AccelOptError
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.portable.fastercache import (
    COMPUTE,
    EXTRAPOLATE,
    EXTRAPOLATE_KEEP,
    GUIDED,
    HALVED,
    KEEP,
    KEEP_FIRST,
    faster_plan,
)
from accelopt.testing import ignored_knobs, render
from accelopt.testing.graphs import WholeForward, regional_compiles
from accelopt.testing.upstream import ours_and_upstream

STEPS = 8
# diffusers' defaults; its documented example; every call in both windows, the attention every
# other call, other scales; a late narrow window and attention every 3rd call; the CFG-Cache
# alone (attention computed at every call).
SETTINGS = [
    FasterCacheConfig(),
    FasterCacheConfig(unconditional_batch_timestep_skip_high=781, attention_weight=0.3),
    FasterCacheConfig(2, -1, 1000, 2, -1, 1000, 0.7, 1.2, 1.0),
    FasterCacheConfig(3, 100, 700, 3, 0, 800, 0.5, 1.0, 1.2),
    FasterCacheConfig(2, -1, 1000, 1),
]


@pytest.mark.parametrize("sched", ["DDIM", "DPM-Solver++", "PNDM"])
def test_fastercache_computes_what_diffusers_hooks_do(
    tiny: Callable[[str], Pipeline], sched: str
) -> None:
    """Ours against ``apply_faster_cache`` (its denoiser hook and its attention hooks) with the
    same knobs and a callback that reads each call's timestep, bit for bit (PNDM: 8 steps are
    11 calls, its warm-up included)."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, sched)
    for config in SETTINGS:
        ours, upstream = ours_and_upstream(pipe, "fastercache", config, STEPS)
        np.testing.assert_array_equal(ours, upstream, err_msg=str(config))


def test_every_knob_changes_the_images(tiny: Callable[[str], Pipeline]) -> None:
    """From one configuration, a change of any one knob gives other images: none is ignored."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")  # 8 steps: timesteps 876, 751, ..., 1
    base = FasterCacheConfig(2, -1, 1000, 2, -1, 1000, 0.5, 1.1, 1.1)
    changes: dict[str, Any] = {
        "unconditional_batch_skip_range": 3,
        "unconditional_batch_timestep_skip_low": 300,
        "unconditional_batch_timestep_skip_high": 700,
        "spatial_attention_block_skip_range": 3,
        "spatial_attention_timestep_skip_low": 300,
        "spatial_attention_timestep_skip_high": 700,
        "attention_weight": 0.3,
        "alpha_low_frequency": 1.2,
        "alpha_high_frequency": 1.2,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(FasterCacheConfig)}
    assert ignored_knobs(pipe, "fastercache", base, changes, STEPS) == []


def test_the_plan_follows_diffusers_rules_by_hand() -> None:
    """A call halves at i > 0 inside the window unless i % skip == 0; its attention
    extrapolates in a halved call inside its window unless i % skip == 0; a call keeps its
    output where one of the next two extrapolates (the first call for both of the two)."""
    timesteps = (900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 100.0)
    # The unconditional window (-1, 750) holds calls 2-6, call 5 on the skip; the attention
    # window (-1, 550) holds 4-6, where only call 4 is halved and off its skip of 3: it
    # extrapolates from calls 2 and 3, which keep their outputs.
    assert faster_plan(timesteps, 5, (-1, 750), 3, (-1, 550)) == (
        (GUIDED, COMPUTE), (GUIDED, COMPUTE), (HALVED, KEEP), (HALVED, KEEP),
        (HALVED, EXTRAPOLATE), (GUIDED, COMPUTE), (HALVED, COMPUTE),
    )  # fmt: skip
    # Every call halves but the first; attention extrapolates at every odd call (call 5's
    # output serves none: call 6 computes).
    assert faster_plan(timesteps, 1000, (-1, 1000), 2, (-1, 1000)) == (
        (GUIDED, KEEP_FIRST), (HALVED, EXTRAPOLATE_KEEP), (HALVED, KEEP),
        (HALVED, EXTRAPOLATE_KEEP), (HALVED, KEEP), (HALVED, EXTRAPOLATE), (HALVED, COMPUTE),
    )  # fmt: skip
    assert faster_plan(timesteps, 1000, (-1, 1000), 1, (-1, 1000))[1:] == ((HALVED, COMPUTE),) * 6
    assert {b for b, _ in faster_plan(timesteps, 1, (-1, 1000), 2, (-1, 1000))} == {GUIDED}


def test_without_guidance_every_call_computes_the_plain_images(
    tiny: Callable[[str], Pipeline],
) -> None:
    """No unconditional half to rebuild: the plain pipeline's images, and a schedule of no
    halved call (the plain pipeline's)."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    plain = render(pipe, steps=STEPS, guidance_scale=1.0)
    config = FasterCacheConfig(2, -1, 1000, 2, -1, 1000)
    with accelerators.apply(pipe, {"fastercache": config}, steps=STEPS):
        np.testing.assert_array_equal(render(pipe, steps=STEPS, guidance_scale=1.0), plain)
    calls = Calls.of(pipe.scheduler, STEPS)
    assert schedule({"fastercache": config}, calls, guided=False) == schedule({}, calls)


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_blocks_match_eager_and_new_knobs_compile_nothing(
    tiny: Callable[[str], Pipeline],
) -> None:
    """Regional kernels, dynamo's "eager" backend (no C++ compiler): eager's images bit for
    bit; the shapes met (the first setting's halved calls run attention too) are compiled once,
    and other skips, windows and scales only pick among them."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    configs = (
        FasterCacheConfig(2, -1, 1000, 3, -1, 1000),
        FasterCacheConfig(3, -1, 1000, 2, -1, 1000, 0.3, 1.0, 1.2),
        FasterCacheConfig(2, 100, 900, 2, -1, 800, 0.5, 1.2, 1.0),
    )
    made, told = regional_compiles(pipe, "fastercache", configs, STEPS)
    assert made[0] > 0 and made[1:] == [0, 0], made
    assert len(told) == len(set(told)) and all(t.startswith("fastercache ") for t in told), told


def test_the_whole_forward_traces_as_one_graph_per_structure_and_shape(
    tiny: Callable[[str], Pipeline],
) -> None:
    """``torch.compile(fullgraph=True)`` of the transformer's forward: no graph break, one
    graph per structure the schedule names (the halving and the rebuild run in the hooks,
    outside it), eager's images."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    config = FasterCacheConfig(2, -1, 1000, 2, -1, 1000)
    calls = schedule({"fastercache": config}, Calls.of(pipe.scheduler, STEPS))
    # A halved call's scales (its last two entries) are the hooks', not the graph's.
    structures = {part[:-2] if part[1] == HALVED else part for (part,) in calls}
    with accelerators.apply(pipe, {"fastercache": config}, steps=STEPS):
        eager = render(pipe, steps=STEPS)
        compiled, made = WholeForward(pipe).render(STEPS)
    np.testing.assert_array_equal(compiled, eager)
    assert made == len(structures) > 2


def test_off_and_plain_report_no_structure(tiny: Callable[[str], Pipeline]) -> None:
    """A skip of 1 patches nothing, so it changes no graph; a real setting names its call."""
    pipe = tiny("TinyPixArt")
    before = Snapshot.take(pipe)
    off = accelerators.get("fastercache").off(STEPS)
    with accelerators.apply(pipe, {"fastercache": off}, steps=STEPS) as acc:
        assert acc.structure() == ()
        assert Snapshot.take(pipe) == before
    with accelerators.apply(pipe, {"fastercache": FasterCacheConfig()}, steps=STEPS) as acc:
        assert acc.structure() == (("fastercache", GUIDED, COMPUTE),)


def test_a_guided_call_does_at_least_a_halved_one(tiny: Callable[[str], Pipeline]) -> None:
    """The dominance skip's order: a wider window halves more calls, so it does less work;
    an attention that computes covers one that extrapolates."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    calls = Calls.of(pipe.scheduler, STEPS)
    narrow = schedule({"fastercache": FasterCacheConfig(2, -1, 500, 1)}, calls)
    wide = schedule({"fastercache": FasterCacheConfig(2, -1, 1000, 1)}, calls)
    attention = schedule({"fastercache": FasterCacheConfig(2, -1, 1000, 2)}, calls)
    assert does_at_least(narrow, wide) and not does_at_least(wide, narrow)
    assert does_at_least(wide, attention) and not does_at_least(attention, wide)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"unconditional_batch_skip_range": 0}, "unconditional_batch_skip_range=0 is out of "
         "range; valid: 1..8"),
        ({"spatial_attention_timestep_skip_low": -2}, "spatial_attention_timestep_skip_low=-2 "
         "is out of range; valid: -1..999"),
        ({"unconditional_batch_timestep_skip_low": 500,
          "unconditional_batch_timestep_skip_high": 400}, "unconditional_batch_timestep_skip_high"
         "=400 is out of range; valid: 501..1000 (above unconditional_batch_timestep_skip_low)"),
        ({"alpha_low_frequency": 3.0}, "alpha_low_frequency=3.0 is out of range; valid: 0.5..2.0"),
        ({"attention_weight": "0.5"}, "must be float, got '0.5'"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_clear_error(
    tiny: Callable[[str], Pipeline], given: dict[str, Any], message: str
) -> None:
    pipe = tiny("TinyPixArt")
    before = Snapshot.take(pipe)
    with pytest.raises(AccelOptError, match=r"fastercache\.") as err:
        accelerators.apply(pipe, {"fastercache": given}, steps=STEPS)
    assert message in str(err.value)
    assert Snapshot.take(pipe) == before


def test_a_call_run_three_times_leaves_the_same_state(tiny: Callable[[str], Pipeline]) -> None:
    """A CUDA graph's first call runs the forward three times after one pre-hook (two warm-ups
    and the capture's replay): each keep writes a slot no extrapolation of that call reads, so
    the images are a single run's bit for bit (two slots shifted at each keep would not be)."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    config = FasterCacheConfig(2, -1, 1000, 2, -1, 1000)  # extrapolates from extrapolations
    net = pipe.transformer
    with accelerators.apply(pipe, {"fastercache": config}, steps=STEPS):
        once = render(pipe, steps=STEPS)
        forward = type(net).forward.__get__(net)
        net.forward = lambda *a, **k: [forward(*a, **k) for _ in range(3)][-1]
        try:
            thrice = render(pipe, steps=STEPS)
        finally:
            del net.forward
    np.testing.assert_array_equal(thrice, once)


def test_timesteps_the_host_cannot_read_are_one_error_naming_the_method(
    tiny: Callable[[str], Pipeline],
) -> None:
    """A pipeline that set timesteps of its own where they live off the host ("meta" here):
    FasterCache's first call stops with one error that says whose and why."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    pipe.scheduler.set_timesteps(STEPS)
    pipe.scheduler.timesteps = torch.zeros(3, device="meta")
    with pytest.raises(AccelOptError) as err:
        host_timesteps_of(pipe, "fastercache")
    assert str(err.value) == (
        "fastercache: the timesteps are read on the host from a DDIMScheduler set up from its "
        "config: 8 of them, where the pipeline set 3 (timesteps or sigmas of its own)"
    )
