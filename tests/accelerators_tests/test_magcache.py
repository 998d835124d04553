"""MagCache (accelopt/accelerators/magcache.py) on TinyPixArt: what diffusers' hook computes,
its calibration, the blocks it skips, and one graph per structure under compile.

The contract every accelerator keeps (removal, clean calls, off settings ...) is
test_accelerators.py's; the mask's rule is tests/portable_tests/test_magcache.py's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.accelerators import MagCacheConfig
from accelopt.accelerators._snapshot import Snapshot
from accelopt.accelerators.magcache import calibrate
from accelopt.errors import AccelOptError
from accelopt.pipelines import call_defaults
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.portable.magcache import mag_skip_mask
from accelopt.testing import render
from accelopt.testing.graphs import WholeForward, regional_compiles
from accelopt.testing.upstream import upstream_cache

STEPS = 8
RATIOS = (1.0, 0.96, 0.95, 0.99, 0.99, 1.0, 1.0, 1.0)
PROMPTS = ("a red cube on a table", "a dog in the snow")  # render()'s


def _calibrated(pipe: Pipeline, steps: int = STEPS) -> tuple[float, ...]:
    """Ratios for ``pipe`` as render() calls it."""
    return calibrate(
        pipe,
        prompt=list(PROMPTS),
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **call_defaults(pipe),
    )


@pytest.mark.parametrize(("sched", "calls"), [("DDIM", 8), ("UniPC", 8), ("PNDM", 17)])
def test_calibration_measures_each_call_once_and_repeats(
    tiny: Callable[[str], Pipeline], sched: str, calls: int
) -> None:
    """One ratio per transformer call (PNDM's 8 steps are 17 calls), the first 1.0, all finite
    and positive, the same on a second run; the pipeline is left as it was."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, sched)
    before = Snapshot.take(pipe)
    ratios = _calibrated(pipe)
    assert len(ratios) == calls and ratios[0] == 1.0
    assert all(np.isfinite(r) and r > 0 for r in ratios)
    assert len(set(ratios)) > 2  # measured, not a constant
    assert _calibrated(pipe) == ratios
    assert Snapshot.take(pipe) == before


def test_calibration_is_of_the_plain_pipeline(tiny: Callable[[str], Pipeline]) -> None:
    pipe = tiny("TinyPixArt")
    with (
        accelerators.apply(pipe, {"magcache": MagCacheConfig(ratios=RATIOS)}, steps=STEPS),
        pytest.raises(AccelOptError, match="calibrates the plain pipeline"),
    ):
        _calibrated(pipe)


@pytest.mark.parametrize("sched", ["DDIM", "DPM-Solver++", "UniPC"])
def test_magcache_computes_what_diffusers_hook_does(
    tiny: Callable[[str], Pipeline], sched: str
) -> None:
    """accelopt's graph-safe MagCache against diffusers' ``apply_mag_cache`` with the same
    calibrated ratios and knobs, bit for bit (the masks agree, and a skipped call adds the same
    residual); removing diffusers' hooks by name leaves what the snapshot restores."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, sched)
    baseline = render(pipe, steps=STEPS)
    ratios = _calibrated(pipe)
    for threshold, skips, retention in ((0.06, 3, 0.2), (0.3, 2, 0.1), (0.12, 1, 0.0)):
        config = MagCacheConfig(threshold, skips, retention, ratios)
        assert any(mag_skip_mask(ratios, threshold, skips, retention))
        with accelerators.apply(pipe, {"magcache": config}, steps=STEPS):
            ours = render(pipe, steps=STEPS)
        before = Snapshot.take(pipe)
        knobs = {"threshold": threshold, "max_skip_steps": skips, "retention_ratio": retention,
                 "ratios": ratios}  # fmt: skip
        with upstream_cache(pipe, "magcache", knobs, STEPS):
            upstream = render(pipe, steps=STEPS)
        assert before.matches(pipe)
        assert not np.array_equal(ours, baseline)
        np.testing.assert_array_equal(ours, upstream, err_msg=str(config))


def test_skipped_calls_run_no_block(tiny: Callable[[str], Pipeline]) -> None:
    """Each block's attention runs exactly at the calls the mask computes, both blocks alike."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    computed: list[int] = []
    calls: list[int] = []
    net = pipe.transformer
    handles = [net.register_forward_pre_hook(lambda *_: calls.append(len(calls)))]
    handles += [
        block.attn1.register_forward_pre_hook(lambda *_: computed.append(calls[-1]))
        for block in net.transformer_blocks
    ]
    config = MagCacheConfig(0.3, 2, 0.2, RATIOS)
    try:
        with accelerators.apply(pipe, {"magcache": config}, steps=STEPS):
            render(pipe, steps=STEPS)
    finally:
        for handle in handles:
            handle.remove()
    mask = mag_skip_mask(RATIOS, 0.3, 2, 0.2)
    assert mask == (False, False, True, True, False, True, True, False)
    blocks = len(net.transformer_blocks)
    assert computed == [i for i, skip in enumerate(mask) if not skip for _ in range(blocks)]


def test_ratios_of_another_call_count_are_refused_at_the_first_call(
    tiny: Callable[[str], Pipeline],
) -> None:
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    baseline = render(pipe, steps=STEPS)
    config = MagCacheConfig(0.3, 2, 0.2, (*RATIOS, 1.0, 1.0))  # 10 ratios: 10-step ones
    with accelerators.apply(pipe, {"magcache": config}, steps=STEPS):
        with pytest.raises(AccelOptError, match="magcache: 10 calibrated ratios for a "
                                                "generation of 8 denoiser calls"):  # fmt: skip
            render(pipe, steps=STEPS)
        render(pipe, steps=10)  # what they were measured for
    np.testing.assert_array_equal(render(pipe, steps=STEPS), baseline)


@pytest.mark.usefixtures("fresh_dynamo")
def test_one_graph_per_structure_under_compile(tiny: Callable[[str], Pipeline]) -> None:
    """Under compile (each block compiled by dynamo, eager backend: no C++ compiler here) the
    images are eager's bit for bit, and a second configuration whose calls compute and skip,
    the same two structures, makes no new graph: the knobs only pick which one a call runs."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    configs = (MagCacheConfig(0.3, 2, 0.2, RATIOS), MagCacheConfig(0.06, 1, 0.1, RATIOS))
    masks = [
        mag_skip_mask(RATIOS, c.threshold, c.max_skip_steps, c.retention_ratio) for c in configs
    ]
    made, told = regional_compiles(pipe, "magcache", configs, STEPS)
    assert masks[0] != masks[1] and all(any(m) and not all(m) for m in masks)
    assert made[0] > 0 and made[1] == 0
    assert told == ["magcache compute", "magcache skip"]


def test_the_whole_forward_compiles_without_a_graph_break(
    tiny: Callable[[str], Pipeline],
) -> None:
    """What compile mode compiles (the transformer's whole forward, here with the eager backend
    and ``fullgraph=True``, which raises at any graph break): one graph per structure, the
    second configuration none, eager's images bit for bit."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    whole = WholeForward(pipe)
    made = []
    for config in (MagCacheConfig(0.3, 2, 0.2, RATIOS), MagCacheConfig(0.06, 1, 0.1, RATIOS)):
        with accelerators.apply(pipe, {"magcache": config}, steps=STEPS):
            eager = render(pipe, steps=STEPS)
            compiled, graphs = whole.render(STEPS)
            made.append(graphs)
        np.testing.assert_array_equal(compiled, eager)
    assert made == [2, 0]


def test_the_schedule_is_what_each_call_computes(tiny: Callable[[str], Pipeline]) -> None:
    """``schedules.schedule`` gives, without a model, the structure every call ran with; two
    settings with equal masks have equal schedules (a study measures one of them), and one that
    skips less does at least the other's work."""
    from accelopt.accelerators.schedules import Calls, does_at_least, schedule

    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    calls = Calls.of(pipe.scheduler, STEPS)
    seen: list[object] = []
    config = MagCacheConfig(0.3, 2, 0.2, RATIOS)
    with accelerators.apply(pipe, {"magcache": config}, steps=STEPS) as applied:
        handle = pipe.transformer.register_forward_pre_hook(
            lambda *_: seen.append(applied.structure())  # after the patch's own pre-hook
        )
        try:
            render(pipe, steps=STEPS)
        finally:
            handle.remove()
    steps = schedule({"magcache": config}, calls)
    assert list(steps) == seen
    kinds = ["compute", "compute", "skip", "skip", "compute", "skip", "skip", "compute"]
    assert [s[0][1] for s in steps] == kinds
    same_mask = MagCacheConfig(0.25, 2, 0.2, RATIOS)  # call 3's error .1095 passes both
    assert schedule({"magcache": same_mask}, calls) == steps
    fewer = schedule({"magcache": MagCacheConfig(0.3, 1, 0.2, RATIOS)}, calls)
    assert fewer != steps
    assert does_at_least(fewer, steps) and not does_at_least(steps, fewer)
    off = accelerators.get("magcache").off(STEPS)
    assert schedule({"magcache": off}, calls) == ((),) * STEPS  # the plain pipeline's
