"""DBCache on a four-block TinyPixArt (accelopt/accelerators/dbcache.py): every knob changes the
images, a reusing call runs only its first and last blocks, compiled runs give eager's images
with the decision as their one graph break, and under CUDA graphs a deciding call replays
block by block (FirstBlockCache is the same mechanism), and cache-dit's own DBCache computes
the same images bit for bit. The rule worked by hand is
tests/portable_tests/test_dbcache_rule.py's; the contract every accelerator keeps,
test_accelerators.py's (on TinyPixArt's two blocks).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import accelopt
from accelopt import accelerators, execution
from accelopt._types import Pipeline
from accelopt.accelerators import DBCacheConfig, PipeTraits
from accelopt.accelerators._snapshot import Snapshot
from accelopt.errors import AccelOptError
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.spec import load_spec
from accelopt.testing import ignored_knobs, render, tiny_pipeline
from accelopt.testing.graphs import regional_compiles
from accelopt.testing.upstream import upstream_cache
from accelopt.trial.space import Space

STEPS = 8
BLOCKS = 4
CHECKOUT = Path(accelopt.__file__).resolve().parents[1]
BASE = DBCacheConfig(1, 1, 0.2, 1, -1, -1)


def four_blocks() -> Pipeline:
    """TinyPixArt with four transformer blocks (seeded): room for first, middle and last ones."""
    from diffusers import PixArtTransformer2DModel

    pipe = tiny_pipeline("TinyPixArt")
    torch.manual_seed(0)
    config = pipe.transformer.config
    pipe.transformer = PixArtTransformer2DModel.from_config(config, num_layers=BLOCKS).eval()
    set_scheduler(pipe, "DDIM")
    return pipe


@pytest.fixture(scope="module")
def deep() -> Pipeline:
    return four_blocks()


@contextmanager
def blocks_run(pipe: Pipeline) -> Iterator[list[list[int]]]:
    """Per transformer call, the blocks whose self-attention ran, in order."""
    runs: list[list[int]] = []
    net = pipe.transformer
    handles = [net.register_forward_pre_hook(lambda *_: runs.append([]))]
    for i, block in enumerate(net.transformer_blocks):
        handles.append(block.attn1.register_forward_pre_hook(lambda *_, i=i: runs[-1].append(i)))
    try:
        yield runs
    finally:
        for handle in handles:
            handle.remove()


def test_every_knob_changes_the_images(deep: Pipeline) -> None:
    """From F1B1 at 0.2 with four warm-up calls, a change of any one knob gives other images.
    (The calibrator needs the warm-up: its first difference is taken at call 3, so after one
    warm-up call every reusing call adds the last residual, as without it.)"""
    base = dataclasses.replace(BASE, max_warmup_steps=4)
    changes: dict[str, Any] = {
        "Fn_compute_blocks": 2,
        "Bn_compute_blocks": 0,
        "residual_diff_threshold": 0.05,
        "max_warmup_steps": 2,
        "max_cached_steps": 2,
        "max_continuous_cached_steps": 1,
        "taylorseer_order": 1,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(DBCacheConfig)}
    assert ignored_knobs(deep, "dbcache", base, changes, STEPS) == []


@pytest.mark.parametrize(("fn", "bn"), [(1, 1), (2, 0), (1, 2)])
def test_a_reusing_call_runs_its_first_and_last_blocks_only(
    deep: Pipeline, fn: int, bn: int
) -> None:
    """The first call and the warm-up compute every block; later calls either compute all or
    run only blocks < Fn and >= 4 - Bn; the caps hold (at most 3 reusing calls, 2 in a row)."""
    config = DBCacheConfig(fn, bn, 0.3, 2, 3, 2)
    with accelerators.apply(deep, {"dbcache": config}, steps=STEPS), blocks_run(deep) as runs:
        render(deep, steps=STEPS)
    every = list(range(BLOCKS))
    kept = [i for i in every if i < fn or i >= BLOCKS - bn]
    assert runs[:2] == [every, every]
    assert all(run in (every, kept) for run in runs)
    reused = [run == kept for run in runs]
    assert 0 < sum(reused) <= 3
    assert not any(reused[i : i + 3] == [True] * 3 for i in range(len(reused)))


@pytest.mark.parametrize("sched", ["DDIM", "DPM-Solver++"])
def test_dbcache_computes_what_cache_dit_does(deep: Pipeline, sched: str) -> None:
    """Ours against cache-dit 1.5.3's ``enable_cache`` at the same knobs, bit for bit, two
    generations each (cache-dit refreshes its context per generation; ours starts empty), every
    setting reusing some calls and not all; after ``disable_cache`` and the snapshot the
    pipeline is as it was (cache-dit alone leaves a moved block list, statistics and a
    ``forward``: accelopt.testing.upstream). The last two put cache-dit's TaylorSeer calibrator
    on top (its ``calibrator_config``), orders 1 and 2, with computing calls between reusing
    ones: a forecast across calls that reused."""
    set_scheduler(deep, sched)
    before = Snapshot.take(deep)
    for config in (
        BASE,
        DBCacheConfig(2, 0, 0.12, 2, -1, 2),
        DBCacheConfig(1, 2, 0.3, 3, 3, -1),
        DBCacheConfig(1, 1, 0.2, 3, -1, 1, taylorseer_order=1),
        DBCacheConfig(2, 0, 0.12, 3, -1, 2, taylorseer_order=2),
    ):
        with accelerators.apply(deep, {"dbcache": config}, steps=STEPS):
            with blocks_run(deep) as runs:
                ours = render(deep, steps=STEPS)
            again = render(deep, steps=STEPS)
        reused = [len(run) < BLOCKS for run in runs]
        assert any(reused) and not all(reused), (config, runs)
        with upstream_cache(deep, "dbcache", dataclasses.asdict(config), STEPS) as fresh:
            upstream = render(deep, steps=STEPS)
            fresh()
            upstream_again = render(deep, steps=STEPS)
        assert Snapshot.take(deep) == before
        np.testing.assert_array_equal(ours, upstream, err_msg=f"{config}")
        np.testing.assert_array_equal(again, upstream_again, err_msg=f"{config}")


@pytest.mark.usefixtures("fresh_dynamo")
def test_regional_kernels_match_eager_and_a_new_threshold_compiles_nothing(
    deep: Pipeline,
) -> None:
    """Dynamo's "eager" backend (no C++ compiler): eager's images bit for bit; a call that
    computes everything and one that decides are two structures, each told once; the decision
    breaks the block that reads it, whose two continuations compile once; other thresholds only
    pick among those graphs."""
    configs = [dataclasses.replace(BASE, residual_diff_threshold=t) for t in (0.2, 0.1, 0.3)]
    made, told = regional_compiles(deep, "dbcache", configs, STEPS)
    assert made[0] > 0 and made[1:] == [0, 0], made
    assert told == ["dbcache 1 1 compute", "dbcache 1 1 decides"]


@pytest.mark.usefixtures("fresh_dynamo")
def test_with_the_calibrator_a_computing_call_names_the_buffer_it_writes() -> None:
    """TaylorSeer on top at order 2 keeps three residuals: each of the warm-up's computing
    calls writes the one its slot names, a structure of its own (a graph captured whole reads
    no Python), then calls decide; regional kernels give eager's images and another threshold
    compiles nothing. (A pipeline of its own: the shared one was told of "decides" before.)"""
    configs = [DBCacheConfig(1, 1, t, 4, -1, -1, taylorseer_order=2) for t in (0.3, 0.2)]
    made, told = regional_compiles(four_blocks(), "dbcache", configs, STEPS)
    assert made[0] > 0 and made[1] == 0, made
    assert told == [*(f"dbcache 1 1 compute {slot}" for slot in range(3)), "dbcache 1 1 decides"]


def whole_forward_check() -> None:
    """Run by the test below in a process of its own: dynamo keeps what it compiled (and what it
    gave up on) per code object for the process, so this would change what other tests'
    transformer forwards compile, and theirs what this one does."""
    from torch._dynamo.utils import counters

    deep = four_blocks()
    net = deep.transformer
    whole = torch.compile(type(net).forward.__get__(net), backend="eager", dynamic=False)
    made = []
    calibrated = DBCacheConfig(1, 1, 0.3, 4, -1, -1, taylorseer_order=2)
    for config in (BASE, dataclasses.replace(BASE, residual_diff_threshold=0.1), calibrated):
        with accelerators.apply(deep, {"dbcache": config}, steps=STEPS):
            eager = render(deep, steps=STEPS)
            before = execution.graph_count()
            net.forward = whole
            try:
                compiled = render(deep, steps=STEPS)
            finally:
                del net.forward
        np.testing.assert_array_equal(compiled, eager)
        made.append(execution.graph_count() - before)
    assert made[0] > 0 and made[1] == 0, made
    assert made[2] > 0  # the calibrator's computing calls: one graph per residual buffer
    reasons = list(counters["graph_break"])
    assert len(reasons) == 1 and "_judge" in reasons[0], reasons


def test_the_whole_forward_breaks_only_at_the_decision() -> None:
    """``torch.compile`` of the transformer's forward: eager's images bit for bit, graphs made
    for the first threshold and none for another, and one graph break, at the function that
    reads the change (diffusers' FirstBlockCache broke a tiny FLUX's forward 6 times:
    FINDINGS). The break falls in the forward's loop over the blocks, which dynamo cannot
    resume inside: at a deciding call it runs the forward itself eagerly and compiles each
    block's call as a frame of its own. With the calibrator on top too: its forecast is added
    at reusing calls, which run eagerly, and breaks nothing."""
    here = Path(__file__).parent
    code = f"import sys; sys.path.insert(0, {str(here)!r}); import test_dbcache as t; "
    code += "t.whole_forward_check()"
    pythonpath = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("name", ["dbcache", "fbcache"])
def test_cuda_graphs_take_them(name: str, tmp_path: Path) -> None:
    """The mode check alone (CPU): a study's spec under cuda-graphs loads, its search space
    holds them, and a study that searches which to use may choose them."""
    traits = PipeTraits.of(tiny_pipeline("TinyPixArt"))
    path = tmp_path / f"TinyPixArt-DDIM-10-{name}.toml"
    path.write_text('execution = "cuda-graphs"\n')
    assert load_spec(path=path).execution == "cuda-graphs"
    assert Space.build(traits, 10, (name,), "cuda-graphs").names == (name,)
    assert (name,) in Space.build(traits, 10, None, "cuda-graphs").groups


@pytest.mark.parametrize("backend", ["eager", None])
def test_under_cuda_graphs_a_deciding_call_replays_block_by_block(
    deep: Pipeline, backend: str | None
) -> None:
    """What cuda-graphs does, on the CPU: graphs are ``ReplayedInPython``, blocks compiled by
    dynamo's "eager" backend (regional kernels) or not at all (PyTorch's). A call that computes
    in full replays the whole forward's graph; a call that decides is never captured whole:
    its forward runs in Python and each block replays a graph of its own, the decision
    between two replays. Eager's images bit for bit; one whole graph and one graph per block,
    captured once across generations and thresholds; a reusing call replays only its first
    and last blocks (seen where no block is compiled). With the calibrator on top, a whole
    graph for each residual buffer the warm-up writes, and the same block graphs."""
    from accelopt.portable.graphs import Regions
    from accelopt.testing.graphs import ReplayedInPython

    net = deep.transformer
    whole: list[Any] = []
    blocks: list[Any] = []
    regions = Regions(net, backend)
    regions.make_replayer = functools.partial(ReplayedInPython, captured=blocks)
    graphs: dict[Any, Any] = {}
    own = type(net).forward.__get__(net)
    every = list(range(BLOCKS))
    calibrated = DBCacheConfig(1, 1, 0.3, 4, -1, -1, taylorseer_order=2)
    for config in (BASE, dataclasses.replace(BASE, residual_diff_threshold=0.3), calibrated):
        with accelerators.apply(deep, {"dbcache": config}, steps=STEPS) as acc:
            eager = render(deep, steps=STEPS)
            net.forward = ReplayedInPython(own, "cpu", acc.structure, graphs, regions=regions,
                                           captured=whole)  # fmt: skip
            try:
                with regions.on():
                    first = render(deep, steps=STEPS)
                    with blocks_run(deep) as runs:  # replays only: each block ran once
                        again = render(deep, steps=STEPS)
            finally:
                del net.forward
        np.testing.assert_array_equal(first, eager)
        np.testing.assert_array_equal(again, eager)
        if backend is None:  # hooks added after dynamo traced a block do not run in its code
            assert runs[0] == every and [0, BLOCKS - 1] in runs
            assert all(run in (every, [0, BLOCKS - 1]) for run in runs)
    slots = [(("dbcache", 1, 1, "compute", slot),) for slot in range(3)]  # the calibrator's
    assert [key[0] for key in whole] == [(("dbcache", 1, 1, "compute"),), *slots]
    assert len(blocks) == BLOCKS


def test_off_names_no_structure_and_a_real_setting_names_its_call(deep: Pipeline) -> None:
    off = accelerators.get("dbcache").off(STEPS)
    with accelerators.apply(deep, {"dbcache": off}, steps=STEPS) as acc:
        assert acc.structure() == ()
    with accelerators.apply(deep, {"dbcache": BASE}, steps=STEPS) as acc:
        assert acc.structure() == (("dbcache", 1, 1, "compute"),)  # before any call


@pytest.mark.parametrize(
    ("blocks", "steps", "expected"),
    [
        # PixArt's 28 blocks at 20 steps: every published range.
        (28, 20, {"Fn_compute_blocks": (1, 2, 4, 8), "Bn_compute_blocks": (0, 2, 4, 8),
                  "max_warmup_steps": (1, 2, 4, 8),
                  "max_continuous_cached_steps": (-1, 1, 2, 3, 4, 6),
                  "taylorseer_order": (0, 1, 2)}),
        # ToyPixArt's 12: Fn at most 5, Bn what 4 first blocks leave; 6 steps cut the rest.
        (12, 6, {"Fn_compute_blocks": (1, 2, 4), "Bn_compute_blocks": (0, 2, 4),
                 "max_warmup_steps": (1, 2, 4), "max_continuous_cached_steps": (-1, 1, 2, 3, 4),
                 "taylorseer_order": (0, 1, 2)}),
        # TinyPixArt's 2: one first block, no last one.
        (2, 10, {"Fn_compute_blocks": (1,), "Bn_compute_blocks": (0,),
                 "max_warmup_steps": (1, 2, 4, 8),
                 "max_continuous_cached_steps": (-1, 1, 2, 3, 4, 6),
                 "taylorseer_order": (0, 1, 2)}),
    ],
)  # fmt: skip
def test_the_search_space_cites_its_ranges_cut_to_the_stack_and_steps(
    blocks: int, steps: int, expected: dict[str, tuple[int, ...]]
) -> None:
    traits = PipeTraits("pixart-sigma", transformer_blocks=blocks)
    space = {k: v.values for k, v in accelerators.search_space(traits, steps, "dbcache").items()}
    thresholds = space.pop("dbcache.residual_diff_threshold")
    assert thresholds == (0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.32)
    assert space == {f"dbcache.{k}": v for k, v in expected.items()}
    with pytest.raises(AccelOptError, match="dbcache needs at least 2 steps"):
        accelerators.search_space(traits, 1, "dbcache")


def test_the_stack_is_read_from_the_pipeline(deep: Pipeline) -> None:
    assert PipeTraits.of(deep).transformer_blocks == BLOCKS
    assert PipeTraits.of(tiny_pipeline("TinySD")).transformer_blocks == 0  # a UNet
