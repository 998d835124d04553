"""PAB on TinyPixArt (accelopt/accelerators/pab.py): what diffusers' hook computes, bit for bit;
every knob changes the images; compiled, one graph per structure and none for new knobs; the
timesteps read on the host. The contract every accelerator keeps is test_accelerators.py's."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.accelerators import PABConfig
from accelopt.accelerators._snapshot import Snapshot
from accelopt.accelerators.schedules import Calls, schedule
from accelopt.errors import AccelOptError
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.portable.pab import COMPUTE, KEEP, REUSE, broadcast_modes, host_timesteps
from accelopt.testing import ignored_knobs, render
from accelopt.testing.graphs import WholeForward, regional_compiles
from accelopt.testing.upstream import ours_and_upstream

STEPS = 8
# (spatial, cross, low, high): diffusers' documented example, cross-attention broadcast alone,
# long skips, a window every call falls in, one that holds none of them.
SETTINGS = [(2, 1, 100, 800), (1, 3, 100, 800), (4, 6, 0, 1000), (3, 2, 200, 700), (2, 2, 0, 1)]


@pytest.mark.parametrize("sched", ["DDIM", "DPM-Solver++", "PNDM"])
def test_pab_computes_what_diffusers_hook_does(
    tiny: Callable[[str], Pipeline], sched: str
) -> None:
    """Ours against ``apply_pyramid_attention_broadcast`` with the same knobs and a callback
    that reads each call's timestep, bit for bit (PNDM: 8 steps are 11 calls, its warm-up
    included; each call at its own timestep)."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, sched)
    for spatial, cross, low, high in SETTINGS:
        config = PABConfig(spatial, cross, low, high)
        ours, upstream = ours_and_upstream(pipe, "pab", config, STEPS)
        np.testing.assert_array_equal(ours, upstream, err_msg=str(config))


def test_every_knob_changes_the_images(tiny: Callable[[str], Pipeline]) -> None:
    """From one configuration, a change of any one knob gives other images: none is ignored."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")  # 8 steps: timesteps 876, 751, ..., 1
    base = PABConfig(2, 2, 100, 800)
    changes: dict[str, Any] = {
        "spatial_attention_block_skip_range": 3,
        "cross_attention_block_skip_range": 3,
        "timestep_skip_low": 300,
        "timestep_skip_high": 700,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(PABConfig)}
    assert ignored_knobs(pipe, "pab", base, changes, STEPS) == []


def test_modes_follow_diffusers_rule_by_hand() -> None:
    """Call i computes at i == 0, outside the open window or at i % skip == 0, and keeps its
    output only where the next call reuses it."""
    timesteps = (900.0, 800.0, 700.0, 600.0, 500.0, 100.0, 50.0)
    # 800 and 100 are outside the open window; calls 3 and 6 fall on the skip.
    assert broadcast_modes(timesteps, 3, 100, 800) == (
        COMPUTE, KEEP, REUSE, KEEP, REUSE, COMPUTE, COMPUTE
    )  # fmt: skip
    assert broadcast_modes(timesteps, 2, 0, 1000) == (
        KEEP,
        REUSE,
        KEEP,
        REUSE,
        KEEP,
        REUSE,
        COMPUTE,
    )
    assert broadcast_modes(timesteps, 1, 0, 1000) == (COMPUTE,) * 7


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_blocks_match_eager_and_new_knobs_compile_nothing(
    tiny: Callable[[str], Pipeline],
) -> None:
    """Regional kernels, dynamo's "eager" backend (no C++ compiler): eager's images bit for
    bit; the structures met are compiled once, and other skips and windows only pick among
    them."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    configs = (PABConfig(2, 3), PABConfig(3, 2, 0, 1000), PABConfig(4, 4, 200, 900))
    made, told = regional_compiles(pipe, "pab", configs, STEPS)
    assert made[0] > 0 and made[1:] == [0, 0], made
    assert len(told) == len(set(told)) and all(t.startswith("pab ") for t in told), told


def test_the_whole_forward_traces_as_one_graph_per_structure(
    tiny: Callable[[str], Pipeline],
) -> None:
    """``torch.compile(fullgraph=True)`` of the transformer's forward: no graph break, one
    graph per structure the schedule names, eager's images."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    config = PABConfig(2, 3)
    structures = set(schedule({"pab": config}, Calls.of(pipe.scheduler, STEPS)))
    with accelerators.apply(pipe, {"pab": config}, steps=STEPS):
        eager = render(pipe, steps=STEPS)
        compiled, made = WholeForward(pipe).render(STEPS)
    np.testing.assert_array_equal(compiled, eager)
    assert made == len(structures) > 2


def test_host_timesteps_equal_the_pipelines_without_reading_them(
    tiny: Callable[[str], Pipeline],
) -> None:
    """Where the scheduler's timesteps live on another device (here "meta", which holds no
    values at all), they are set up again on the CPU from its config: the same values."""
    pipe = tiny("TinyPixArt")
    for sched in ("DDIM", "DPM-Solver++", "PNDM"):
        set_scheduler(pipe, sched)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(STEPS)
        on_cpu = host_timesteps(scheduler)
        scheduler.timesteps = scheduler.timesteps.to("meta")
        assert host_timesteps(scheduler) == on_cpu == Calls.of(scheduler, STEPS).timesteps
    scheduler.timesteps = torch.zeros(3, device="meta")  # a pipeline's own timesteps
    with pytest.raises(ValueError, match="where the pipeline set 3 "):
        host_timesteps(scheduler)


def test_off_and_plain_report_no_structure(tiny: Callable[[str], Pipeline]) -> None:
    """Skips of 1 wrap nothing, so they change no graph; a real setting names its call."""
    pipe = tiny("TinyPixArt")
    off = accelerators.get("pab").off(STEPS)
    with accelerators.apply(pipe, {"pab": off}, steps=STEPS) as acc:
        assert acc.structure() == ()
    with accelerators.apply(pipe, {"pab": PABConfig()}, steps=STEPS) as acc:
        assert acc.structure() == (("pab", COMPUTE, COMPUTE),)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"spatial_attention_block_skip_range": 0}, "spatial_attention_block_skip_range=0 is "
         "out of range; valid: 1..8"),
        ({"timestep_skip_low": 1000}, "timestep_skip_low=1000 is out of range; valid: 0..999"),
        ({"timestep_skip_low": 500, "timestep_skip_high": 400}, "timestep_skip_high=400 is out "
         "of range; valid: 501..1000 (above timestep_skip_low)"),
        ({"cross_attention_block_skip_range": 2.0}, "must be int, got 2.0"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_clear_error(
    tiny: Callable[[str], Pipeline], given: dict[str, Any], message: str
) -> None:
    pipe = tiny("TinyPixArt")
    before = Snapshot.take(pipe)
    with pytest.raises(AccelOptError, match="pab." if "int" in message else None) as err:
        accelerators.apply(pipe, {"pab": given}, steps=STEPS)
    assert message in str(err.value)
    assert Snapshot.take(pipe) == before


def test_the_schedule_names_each_call_and_nothing_where_nothing_is_reused(
    tiny: Callable[[str], Pipeline],
) -> None:
    """DDIM's 8 timesteps (876, 751, ..., 1); calls 1-6 in diffusers' window. A window no
    timestep falls in reuses nothing: the plain pipeline's schedule, so the search measures it
    as the plain pipeline."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    calls = Calls.of(pipe.scheduler, STEPS)
    crosses = (KEEP, REUSE, REUSE, KEEP, REUSE, REUSE, COMPUTE, COMPUTE)
    selfs = (KEEP, REUSE, KEEP, REUSE, KEEP, REUSE, COMPUTE, COMPUTE)
    assert schedule({"pab": PABConfig(2, 3)}, calls) == tuple(
        (("pab", c, s),) for c, s in zip(crosses, selfs, strict=True)
    )
    assert schedule({"pab": PABConfig(2, 3, 0, 1)}, calls) == schedule({}, calls)
