"""FirstBlockCache on TinyPixArt (accelopt/accelerators/fbcache.py): what diffusers' hook
computes, bit for bit, and its threshold is no dead knob. The rule worked by hand is
tests/portable_tests/test_dbcache_rule.py's; compile and the refusal under CUDA graphs,
test_dbcache.py's (one mechanism); the contract every accelerator keeps, test_accelerators.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.accelerators import FBCacheConfig
from accelopt.accelerators._snapshot import Snapshot
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.testing import render
from accelopt.testing.upstream import upstream_cache

STEPS = 8


@contextmanager
def last_block_runs(pipe: Pipeline) -> Iterator[list[bool]]:
    """Per transformer call, whether its last block ran (a reusing call runs only the first)."""
    runs: list[bool] = []
    net = pipe.transformer
    handles = [
        net.register_forward_pre_hook(lambda *_: runs.append(False)),
        net.transformer_blocks[-1].attn1.register_forward_pre_hook(
            lambda *_: runs.__setitem__(-1, True)
        ),
    ]
    try:
        yield runs
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("sched", ["DDIM", "DPM-Solver++", "UniPC", "PNDM"])
def test_fbcache_computes_what_diffusers_hook_does(
    tiny: Callable[[str], Pipeline], sched: str
) -> None:
    """Ours against ``apply_first_block_cache`` at diffusers' default, ParaAttention's FLUX
    setting and one above, bit for bit, two generations each (other prompts between: each
    starts empty); each threshold reuses some calls and not all."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, sched)
    baseline = render(pipe, steps=STEPS)
    for threshold in (0.05, 0.08, 0.2):
        with accelerators.apply(pipe, {"fbcache": FBCacheConfig(threshold)}, steps=STEPS):
            with last_block_runs(pipe) as runs:
                ours = render(pipe, steps=STEPS)
            assert runs[0] and not all(runs), (threshold, runs)  # the first call computes
            render(pipe, steps=STEPS, prompts=("something else",), seed=3)
            again = render(pipe, steps=STEPS)
        snapshot = Snapshot.take(pipe)
        with upstream_cache(pipe, "fbcache", {"threshold": threshold}, STEPS) as fresh:
            upstream = render(pipe, steps=STEPS)
            fresh()
            render(pipe, steps=STEPS, prompts=("something else",), seed=3)
            fresh()
            upstream_again = render(pipe, steps=STEPS)
        assert snapshot.matches(pipe)
        assert not np.array_equal(ours, baseline)
        np.testing.assert_array_equal(ours, upstream, err_msg=f"{threshold}")
        np.testing.assert_array_equal(again, upstream_again, err_msg=f"{threshold}")
        np.testing.assert_array_equal(again, ours)


def test_the_threshold_changes_the_images(tiny: Callable[[str], Pipeline]) -> None:
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    images = []
    for threshold in (0.05, 0.1, 0.2):
        with accelerators.apply(pipe, {"fbcache": FBCacheConfig(threshold)}, steps=STEPS):
            images.append(render(pipe, steps=STEPS))
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[1], images[2])


def test_the_search_space_cites_its_range(tiny: Callable[[str], Pipeline]) -> None:
    traits = accelerators.PipeTraits.of(tiny("TinyPixArt"))
    space = accelerators.search_space(traits, 20, "fbcache")
    assert {k: v.values for k, v in space.items()} == {
        "fbcache.threshold": (0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2, 0.3),
    }
