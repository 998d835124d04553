"""TaylorSeer on TinyPixArt (accelopt/accelerators/taylorseer.py): what diffusers' hook
computes, bit for bit; every knob changes the images; compiled, one graph per structure and
none for a new interval. The contract every accelerator keeps is test_accelerators.py's, the
schedule by hand test_schedules.py's, the forecast's arithmetic
tests/portable_tests/test_taylorseer.py's."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.accelerators import TaylorSeerConfig
from accelopt.errors import AccelOptError
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.testing import ignored_knobs, render
from accelopt.testing.graphs import WholeForward, regional_compiles
from accelopt.testing.upstream import TAYLORSEER_PATTERNS, ours_and_upstream

STEPS = 8
# (interval, max_order, before): diffusers' defaults, reuse, order 2 from one full call, ...
SETTINGS = [(5, 1, 3), (4, 0, 3), (3, 2, 1), (2, 1, 2)]


@pytest.mark.parametrize("modules", sorted(TAYLORSEER_PATTERNS))
@pytest.mark.parametrize("sched", ["DDIM", "DPM-Solver++", "UniPC"])
def test_taylorseer_computes_what_diffusers_hook_does(
    tiny: Callable[[str], Pipeline], sched: str, modules: str
) -> None:
    """Ours against ``apply_taylorseer_cache`` with the same knobs and the modules named by
    pattern, bit for bit, over diffusers' defaults and settings around them."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, sched)
    for interval, order, before in SETTINGS:
        config = TaylorSeerConfig(interval, order, before, modules)
        ours, upstream = ours_and_upstream(pipe, "taylorseer", config, STEPS)
        np.testing.assert_array_equal(ours, upstream, err_msg=str(config))


def test_every_knob_changes_the_images(tiny: Callable[[str], Pipeline]) -> None:
    """From one configuration, a change of any one knob gives other images: none is ignored."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    base = TaylorSeerConfig(cache_interval=3, max_order=1, disable_cache_before_step=2)
    changes: dict[str, Any] = {
        "cache_interval": 2,
        "max_order": 2,
        "disable_cache_before_step": 1,
        "modules": "blocks",
    }
    assert set(changes) == {f.name for f in dataclasses.fields(TaylorSeerConfig)}
    assert ignored_knobs(pipe, "taylorseer", base, changes, STEPS) == []


@pytest.mark.parametrize("modules", ["attention", "blocks"])
@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_blocks_match_eager_and_a_new_interval_compiles_nothing(
    tiny: Callable[[str], Pipeline], modules: str
) -> None:
    """Regional kernels, dynamo's "eager" backend (no C++ compiler): the same images as eager,
    bit for bit; each structure compiled once (its full calls' orders 0, 1, 2 and its
    forecasts' orders 1 and 2), and other intervals only pick among them."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    configs = [
        TaylorSeerConfig(interval, max_order=2, disable_cache_before_step=2, modules=modules)
        for interval in (3, 2, 4)
    ]
    made, told = regional_compiles(pipe, "taylorseer", configs, STEPS)
    assert made[0] > 0 and made[1:] == [0, 0], made
    assert told == [
        f"taylorseer {modules} {kind} {order}"
        for kind, order in (("full", 0), ("full", 1), ("forecast", 1), ("full", 2),
                            ("forecast", 2))
    ]  # fmt: skip


def test_the_whole_forward_traces_as_one_graph_per_structure(
    tiny: Callable[[str], Pipeline],
) -> None:
    """``torch.compile(fullgraph=True)`` of the transformer's forward: no graph break (diffusers'
    hook breaks the graph at every decision), five structures, five graphs, eager's images."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    config = TaylorSeerConfig(cache_interval=3, max_order=2, disable_cache_before_step=2)
    with accelerators.apply(pipe, {"taylorseer": config}, steps=STEPS):
        eager = render(pipe, steps=STEPS)
        compiled, made = WholeForward(pipe).render(STEPS)
    np.testing.assert_array_equal(compiled, eager)
    assert made == 5


def test_off_and_plain_report_no_structure(tiny: Callable[[str], Pipeline]) -> None:
    """Interval 1 wraps nothing, so it changes no graph; a real setting names its call."""
    pipe = tiny("TinyPixArt")
    off = accelerators.get("taylorseer").off(STEPS)
    with accelerators.apply(pipe, {"taylorseer": off}, steps=STEPS) as acc:
        assert acc.structure() == ()
    with accelerators.apply(pipe, {"taylorseer": TaylorSeerConfig()}, steps=STEPS) as acc:
        assert acc.structure() == (("taylorseer", "attention", "full", 0),)


def test_the_search_space_cites_its_ranges_cut_to_the_steps(
    tiny: Callable[[str], Pipeline],
) -> None:
    traits = accelerators.PipeTraits.of(tiny("TinyPixArt"))
    space = accelerators.search_space(traits, 20, "taylorseer")
    assert {k: v.values for k, v in space.items()} == {
        "taylorseer.cache_interval": (2, 3, 4, 5, 6),
        "taylorseer.max_order": (0, 1, 2),
        "taylorseer.disable_cache_before_step": (1, 2, 3, 4),
        "taylorseer.modules": ("attention", "blocks"),
    }
    short = accelerators.search_space(traits, 3, "taylorseer")
    assert short["taylorseer.cache_interval"].values == (2, 3)
    assert short["taylorseer.disable_cache_before_step"].values == (1, 2)
    with pytest.raises(AccelOptError, match="taylorseer needs at least 2 steps"):
        accelerators.search_space(traits, 1, "taylorseer")
