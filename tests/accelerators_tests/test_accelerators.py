"""The contract every accelerator and combination keeps, on every tiny pipeline and scheduler."""

from __future__ import annotations

import dataclasses
import functools
import gc
from collections.abc import Callable

import numpy as np
import pytest
import torch

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.accelerators import (
    PLANS,
    DBCacheConfig,
    DeepCacheConfig,
    FasterCacheConfig,
    FBCacheConfig,
    MagCacheConfig,
    PABConfig,
    PipeTraits,
    TaylorSeerConfig,
    TGateConfig,
    ToMeConfig,
    applicable,
)
from accelopt.accelerators._snapshot import Snapshot
from accelopt.accelerators.tome import effective_downsamples
from accelopt.errors import AccelOptError
from accelopt.pipelines import denoiser
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.testing import WorkCounter, render

STEPS = 8
# Settings that really change the computation on the tiny pipelines.
REAL = {
    "deepcache": DeepCacheConfig(cache_interval=3, cache_branch_id=0),
    "tome": ToMeConfig(ratio=0.5, max_downsample=4),
    "tgate": TGateConfig(gate_step=4, sp_interval=2, fi_interval=1, warm_up=1),
    # Ratios shaped like a calibration of TinyPixArt at 8 steps (the mask depends on nothing
    # else): calls 2, 3, 5 and 6 skip.
    "magcache": MagCacheConfig(0.3, 2, 0.2, (1.0, 0.96, 0.95, 0.99, 0.99, 1.0, 1.0, 1.0)),
    # Full calls 0, 1, 3, 6 at orders 0, 1, 2, 2; forecasts at orders 1 and 2 between.
    "taylorseer": TaylorSeerConfig(cache_interval=3, max_order=2, disable_cache_before_step=2),
    # TinyPixArt's first block changes its residual by 0.04-0.16 per call (8 steps): some calls
    # reuse under each scheduler (tests/accelerators_tests/test_dbcache.py shows which).
    "fbcache": FBCacheConfig(threshold=0.1),
    # Its two blocks leave one first block and no last one; a warm-up and a cap of 2 in a row.
    "dbcache": DBCacheConfig(1, 0, 0.16, max_warmup_steps=2, max_continuous_cached_steps=2),
    # diffusers' window (100, 800) holds calls 1-6 of 8: self-attention reused at calls 1, 3 and
    # 5, cross-attention at 1, 2, 4 and 5.
    "pab": PABConfig(spatial_attention_block_skip_range=2, cross_attention_block_skip_range=3),
    # diffusers' defaults: DDIM's 8 calls halve the batch at calls 2, 3, 4, 6 and 7 (timesteps
    # below 641, not call 5) and extrapolate self-attention at 3 and 7.
    "fastercache": FasterCacheConfig(),
}
FAMILIES = {"TinySD": "sd", "TinySDXL": "sdxl", "TinyPixArt": "pixart-alpha"}
SCHEDULERS = ("DDIM", "DPM-Solver++", "UniPC")
CASES = [
    pytest.param((pipe, sched, tuple(sorted(plan))), id=f"{pipe}-{sched}-{'+'.join(sorted(plan))}")
    for pipe, family in FAMILIES.items()
    for sched in SCHEDULERS
    for plan in PLANS
    if plan <= set(applicable(family))
]
# What each method visibly skips: DeepCache whole blocks (convolutions), ToMe merged tokens and
# T-GATE gated cross-attention and guidance (attention score entries).
SKIPS = {"deepcache": "conv_calls", "tome": "attention_scores", "tgate": "attention_scores",
         "taylorseer": "attention_scores"}  # fmt: skip
SKIPS["magcache"] = "attention_calls"  # whole blocks: two attention calls each
SKIPS["fbcache"] = SKIPS["dbcache"] = "attention_calls"  # the middle blocks
SKIPS["pab"] = "attention_calls"  # the attention it reuses
SKIPS["fastercache"] = "attention_scores"  # the halved batch's and the extrapolated attention


def configs(plan: tuple[str, ...], which: str = "real") -> dict[str, object]:
    if which == "real":
        return {name: REAL[name] for name in plan}
    return {name: accelerators.get(name).off(STEPS) for name in plan}


_baselines: dict[tuple[str, str], tuple[np.ndarray, WorkCounter]] = {}


Case = tuple[Pipeline, np.ndarray, WorkCounter, tuple[str, ...]]


@pytest.fixture
def case(request: pytest.FixtureRequest, tiny: Callable[[str], Pipeline]) -> Case:
    name, sched, plan = request.param
    pipe = tiny(name)
    set_scheduler(pipe, sched)
    if (name, sched) not in _baselines:
        with WorkCounter() as work:
            _baselines[name, sched] = render(pipe, steps=STEPS), work
    return (pipe, *_baselines[name, sched], plan)


def test_cases_cover_every_plan_pipeline_and_scheduler() -> None:
    # 7 plans on each UNet pipeline, T-GATE, MagCache, TaylorSeer, FirstBlockCache, DBCache,
    # PAB and FasterCache alone on PixArt, each under three schedulers.
    assert len(CASES) == (7 + 7 + 7) * 3


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_remove_restores_bit_identical_output(case: Case) -> None:
    pipe, baseline, _, plan = case
    before = Snapshot.take(pipe)
    accelerated = accelerators.apply(pipe, configs(plan), steps=STEPS)
    assert not np.array_equal(render(pipe, steps=STEPS), baseline)
    accelerated.remove()
    assert Snapshot.take(pipe) == before
    assert accelerators.active(pipe) is None
    np.testing.assert_array_equal(render(pipe, steps=STEPS), baseline)


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_every_call_starts_from_clean_state(case: Case) -> None:
    pipe, _, _, plan = case
    with accelerators.apply(pipe, configs(plan), steps=STEPS):
        first = render(pipe, steps=STEPS)
        render(pipe, steps=STEPS, prompts=("something else entirely",), seed=7)
        np.testing.assert_array_equal(render(pipe, steps=STEPS), first)


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_applying_twice_equals_applying_once(case: Case) -> None:
    pipe, _, _, plan = case
    before = Snapshot.take(pipe)
    with accelerators.apply(pipe, configs(plan), steps=STEPS):
        once = render(pipe, steps=STEPS)
    accelerators.apply(pipe, configs(plan), steps=STEPS)
    accelerators.apply(pipe, configs(plan), steps=STEPS)
    twice = render(pipe, steps=STEPS)
    accelerators.remove(pipe)
    np.testing.assert_array_equal(twice, once)
    assert Snapshot.take(pipe) == before


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_off_settings_reproduce_the_baseline(case: Case) -> None:
    pipe, baseline, _, plan = case
    with accelerators.apply(pipe, configs(plan, "off"), steps=STEPS):
        np.testing.assert_array_equal(render(pipe, steps=STEPS), baseline)


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_real_settings_skip_work(case: Case) -> None:
    pipe, _, base, plan = case
    with accelerators.apply(pipe, configs(plan), steps=STEPS), WorkCounter() as work:
        render(pipe, steps=STEPS)
    for name in plan:
        assert getattr(work, SKIPS[name]) < getattr(base, SKIPS[name]), name
    if "deepcache" not in plan:  # nothing else skips whole blocks
        assert work.conv_calls == base.conv_calls


def test_combination_skips_more_than_its_members(tiny: Callable[[str], Pipeline]) -> None:
    pipe = tiny("TinySD")
    set_scheduler(pipe, "DDIM")
    scores = {}
    for plan in (("tome",), ("tgate",), ("tome", "tgate")):
        with accelerators.apply(pipe, configs(plan), steps=STEPS), WorkCounter() as work:
            render(pipe, steps=STEPS)
        scores[plan] = work.attention_scores
    assert scores["tome", "tgate"] < min(scores["tome",], scores["tgate",])


def test_removal_leaves_no_upstream_residue(tiny: Callable[[str], Pipeline]) -> None:
    pipe = tiny("TinySD")
    hooks = _footprint(pipe)[1]
    with accelerators.apply(pipe, configs(("deepcache", "tome", "tgate")), steps=STEPS):
        render(pipe, steps=STEPS)
        assert _footprint(pipe)[1] == hooks + 3  # ToMe's pre-hook; T-GATE's pre-hook and hook
    assert not hasattr(pipe, "tgate") and not hasattr(pipe, "deepcache")
    assert _footprint(pipe)[1] == hooks
    for module in pipe.unet.modules():
        assert type(module).__name__ != "ToMeBlock"
        assert not {"forward", "cache", "_tome_info"} & set(vars(module))


def test_the_snapshot_puts_back_a_child_registered_again(
    tiny: Callable[[str], Pipeline],
) -> None:
    """What cache-dit's ``disable_cache`` leaves: the block list registered again (now last
    among the transformer's children), statistics on it, an instance ``forward``. Each module's
    state is found by name, so the blocks after the moved list get their own back."""
    pipe = tiny("TinyPixArt")
    net = pipe.transformer
    before = Snapshot.take(pipe)
    order = list(net._modules)
    blocks = net.transformer_blocks
    del net.transformer_blocks
    net.transformer_blocks = blocks
    blocks._cached_steps = [1, 2]
    net.forward = net.forward
    assert list(net._modules) != order and not before.matches(pipe)
    before.restore(pipe)
    assert list(net._modules) == order
    assert before.matches(pipe)


def _footprint(pipe: Pipeline) -> tuple[int, int, int]:
    modules = list(denoiser(pipe).modules()) + list(pipe.text_encoder.modules())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)
    attrs = sum(len(vars(m)) for m in modules) + len(vars(pipe))
    return len(modules), hooks, attrs


def _live_tensors() -> int:
    gc.collect()
    # type(o), not isinstance: isinstance reads o.__class__ too, and the deprecated object
    # torch.distributed.reduce_op warns (a FutureWarning) on every attribute read.
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.parametrize("plan", sorted(tuple(sorted(p)) for p in PLANS), ids="+".join)
def test_thirty_cycles_leave_no_growth(
    tiny: Callable[[str], Pipeline], plan: tuple[str, ...]
) -> None:
    # The first tiny pipeline that takes the plan (MagCache, TaylorSeer: PixArt).
    pipe = tiny(next(n for n, f in FAMILIES.items() if set(plan) <= set(applicable(f))))
    set_scheduler(pipe, "DDIM")
    steps, cfg = 4, {**configs(plan), "tgate": TGateConfig(2, 2, 1, 1),
                     "magcache": MagCacheConfig(0.3, 1, 0.0, (1.0,) * 4),
                     "fastercache": FasterCacheConfig(2)}  # fmt: skip
    cfg = {k: v for k, v in cfg.items() if k in plan}

    def cycle() -> None:
        with accelerators.apply(pipe, cfg, steps=steps):
            render(pipe, steps=steps, prompts=("a cat",))

    for _ in range(5):  # first calls fill caches that are meant to stay (tokenizer, kernels)
        cycle()
    footprint, tensors = _footprint(pipe), _live_tensors()
    gc.collect()
    objects = len(gc.get_objects())
    for _ in range(25):  # the counts below are exact: one leaked tensor or hook would show
        cycle()
    assert _footprint(pipe) == footprint
    assert _live_tensors() == tensors
    gc.collect()
    assert len(gc.get_objects()) - objects < 25  # a leak of one object per cycle would show


# Bad input: one clear error that names the valid choices; nothing patched.


@pytest.mark.parametrize(
    ("pipe_name", "given", "message"),
    [
        (
            "TinySD",
            {"fastcache": {}},
            "unknown accelerator 'fastcache'; valid: deepcache, tome, tgate",
        ),
        (
            "TinyPixArt",
            {"tome": {}},
            "tome cannot accelerate a pixart-alpha pipeline; it can take: tgate",
        ),
        ("TinyPixArt", {"deepcache": {}}, "it can take: tgate"),
        (
            "TinySD",
            {"deepcache": {"cache_branch_id": 9}},
            "deepcache.cache_branch_id=9 is out of range; valid: 0..8",
        ),
        (
            "TinySD",
            {"deepcache": {"cache_interval": 0}},
            "deepcache.cache_interval=0 is out of range; valid: 1..8",
        ),
        (
            "TinySD",
            {"deepcache": {"cache_interval": "3"}},
            "deepcache.cache_interval must be int, got '3'",
        ),
        ("TinySD", {"deepcache": {"cache_interval": 2.5}}, "deepcache.cache_interval must be int"),
        (
            "TinySD",
            {"deepcache": {"interval": 3}},
            "unknown deepcache parameter(s) interval; valid: cache_interval, cache_branch_id",
        ),
        ("TinySD", {"tome": {"ratio": 0.8}}, "tome.ratio=0.8 is out of range; valid: 0.0..0.75"),
        (
            "TinySDXL",
            {"tome": {"max_downsample": 1}},
            "tome.max_downsample=1 is not valid here; valid: 2, 4",
        ),
        ("TinySD", {"tgate": {"gate_step": 9}}, "tgate.gate_step=9 is out of range; valid: 1..8"),
        (
            "TinySD",
            {"taylorseer": {}},
            "taylorseer cannot accelerate a sd pipeline; it can take: deepcache, tome, tgate",
        ),
        (
            "TinyPixArt",
            {"taylorseer": {"cache_interval": 9}},
            "taylorseer.cache_interval=9 is out of range; valid: 1..8",
        ),
        (
            "TinyPixArt",
            {"taylorseer": {"max_order": 5}},
            "taylorseer.max_order=5 is out of range; valid: 0..4",
        ),
        (
            "TinyPixArt",
            {"taylorseer": {"disable_cache_before_step": 0}},
            "taylorseer.disable_cache_before_step=0 is out of range; valid: 1..8 (a forecast "
            "needs a full call before it)",
        ),
        (
            "TinyPixArt",
            {"taylorseer": {"modules": "attn1"}},
            "taylorseer.modules='attn1' is not valid here; valid: attention, blocks",
        ),
        ("TinyPixArt", {"taylorseer": {"modules": 1}}, "taylorseer.modules must be str, got 1"),
        (
            "TinyPixArt",
            {"tgate": {}, "taylorseer": {}},
            "tgate+taylorseer is not a declared combination; combinations: deepcache+tome, "
            "deepcache+tgate, tome+tgate, deepcache+tome+tgate",
        ),
        (
            "TinySD",
            {"tgate": {"gate_step": 4, "warm_up": -1}},
            "tgate.warm_up=-1 is out of range; valid: 0..8",
        ),
        (
            "TinySD",
            {"magcache": {}},
            "magcache cannot accelerate a sd pipeline; it can take: deepcache, tome, tgate",
        ),
        (
            "TinyPixArt",
            {"magcache": {"threshold": 0.1}},
            "magcache needs calibrated ratios, one per denoiser call",
        ),
        (
            "TinyPixArt",
            {"magcache": {"ratios": [1.0] * 7 + [float("nan")]}},
            "magcache.ratios must be finite and positive; got nan",
        ),
        (
            "TinyPixArt",
            {"magcache": {"ratios": [1.0, 0.0] * 4}},
            "magcache.ratios must be finite and positive; got 0.0",
        ),
        (
            "TinyPixArt",
            {"magcache": {"ratios": [1.0] * 7}},
            "magcache.ratios has 7 entries; 8 steps make 8..25 denoiser calls",
        ),
        ("TinyPixArt", {"magcache": {"ratios": "1.0"}}, "magcache.ratios must be tuple[float"),
        ("TinyPixArt", {"magcache": {"ratios": [True] * 8}}, "magcache.ratios must be tuple"),
        (
            "TinyPixArt",
            {"magcache": {"threshold": 1.5, "ratios": [1.0] * 8}},
            "magcache.threshold=1.5 is out of range; valid: 0.0..1.0",
        ),
        (
            "TinyPixArt",
            {"tgate": {}, "magcache": {"ratios": [1.0] * 8}},
            "tgate+magcache is not a declared combination; combinations: deepcache+tome, "
            "deepcache+tgate, tome+tgate, deepcache+tome+tgate",
        ),
        (
            "TinySD",
            {"dbcache": {}},
            "dbcache cannot accelerate a sd pipeline; it can take: deepcache, tome, tgate",
        ),
        (
            "TinyPixArt",
            {"dbcache": {}},  # cache-dit's defaults: F8 on two blocks
            "dbcache.Fn_compute_blocks=8 is out of range; valid: 1..1 (a middle block must be "
            "left to skip)",
        ),
        (
            "TinyPixArt",
            {"dbcache": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 1}},
            "dbcache.Bn_compute_blocks=1 is out of range; valid: 0..0 (a middle block must be "
            "left to skip)",
        ),
        (
            "TinyPixArt",
            {"dbcache": {"Fn_compute_blocks": 1, "residual_diff_threshold": 1.0}},
            "dbcache.residual_diff_threshold=1.0 is out of range; valid: 0.0 up to 1.0 "
            "exclusive (cache-dit's range: at 1 or more it reuses every call it may without "
            "reading the change)",
        ),
        (
            "TinyPixArt",
            {"dbcache": {"Fn_compute_blocks": 1, "max_warmup_steps": -1}},
            "dbcache.max_warmup_steps=-1 is out of range; valid: 0..8",
        ),
        (
            "TinyPixArt",
            {"dbcache": {"Fn_compute_blocks": 1, "max_continuous_cached_steps": -2}},
            "dbcache.max_continuous_cached_steps=-2 is out of range; valid: -1..8 (-1: no cap)",
        ),
        (
            "TinyPixArt",
            {"dbcache": {"Fn_compute_blocks": 1.0}},
            "dbcache.Fn_compute_blocks must be int, got 1.0",
        ),
        (
            "TinyPixArt",
            {"fbcache": {"threshold": 1.5}},
            "fbcache.threshold=1.5 is out of range; valid: 0.0..1.0",
        ),
        ("TinyPixArt", {"fbcache": {"threshold": "0.1"}}, "fbcache.threshold must be float"),
        (
            "TinyPixArt",
            {"fbcache": {}, "dbcache": {"Fn_compute_blocks": 1}},
            "fbcache+dbcache is not a declared combination",
        ),
        ("TinyPixArt", {"tgate": {}, "fbcache": {}}, "tgate+fbcache is not a declared"),
    ],
)
def test_bad_input_is_refused_before_patching(
    tiny: Callable[[str], Pipeline], pipe_name: str, given: dict[str, object], message: str
) -> None:
    pipe = tiny(pipe_name)
    before = Snapshot.take(pipe)
    with pytest.raises(AccelOptError) as err:
        accelerators.apply(pipe, given, steps=STEPS)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert Snapshot.take(pipe) == before


def test_a_refused_apply_keeps_what_was_applied(tiny: Callable[[str], Pipeline]) -> None:
    pipe = tiny("TinySD")
    accelerated = accelerators.apply(pipe, {"deepcache": REAL["deepcache"]}, steps=STEPS)
    with pytest.raises(AccelOptError):
        accelerators.apply(pipe, {"tome": {"ratio": 2.0}}, steps=STEPS)
    assert accelerators.active(pipe) is accelerated
    accelerated.remove()


def test_calling_after_remove_is_an_error(tiny: Callable[[str], Pipeline]) -> None:
    pipe = tiny("TinySD")
    accelerated = accelerators.apply(pipe, {"tome": {}})
    accelerated.remove()
    with pytest.raises(RuntimeError, match="removed"):
        accelerated(prompt="a cat", num_inference_steps=2)


def test_configs_accept_dicts_and_the_seed_spelling() -> None:
    tgate = accelerators.get("TGate")
    assert tgate.config({"gate_step": 7, "warmup": 3}) == TGateConfig(gate_step=7, warm_up=3)
    assert accelerators.get("tome").config(ratio=0.5) == ToMeConfig(ratio=0.5)


@pytest.mark.parametrize(("guidance", "batches"), [(5.0, [4] * 3 + [2] * 5), (1.0, [2] * 8)])
def test_tgate_halves_the_batch_after_the_gate_only_under_guidance(
    tiny: Callable[[str], Pipeline], guidance: float, batches: list[int]
) -> None:
    """Two prompts: a guided step runs both halves (4); after gate 3 only the unconditional
    half (2), through the pipeline's own call. Unguided calls are never halved."""
    pipe = tiny("TinySD")
    set_scheduler(pipe, "DDIM")
    seen: list[int] = []
    first = pipe.unet.conv_in  # what the UNet computes on, after T-GATE's hook
    handle = first.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    try:
        cfg = TGateConfig(gate_step=3, sp_interval=2, fi_interval=1, warm_up=1)
        with accelerators.apply(pipe, {"tgate": cfg}):
            images = render(pipe, steps=STEPS, guidance_scale=guidance)
    finally:
        handle.remove()
    assert seen == batches
    assert images.shape[0] == 2


# Search spaces: the seed system's ranges, cut to what a pipeline can use.


def test_parse_targets_is_canonical() -> None:
    assert accelerators.parse_targets("tgate+DeepCache") == ("deepcache", "tgate")
    assert accelerators.parse_targets(["tome", "tgate", "tome"]) == ("tome", "tgate")
    with pytest.raises(AccelOptError, match="no accelerator named"):
        accelerators.parse_targets("")
    with pytest.raises(AccelOptError, match="valid: deepcache, tome, tgate"):
        accelerators.parse_targets("deepcache+tomesd")


def test_search_space_uses_the_seed_ranges(tiny: Callable[[str], Pipeline]) -> None:
    traits = PipeTraits.of(tiny("TinySD"))
    space = accelerators.search_space(traits, 25, "deepcache+tome+tgate")
    assert {k: v.values for k, v in space.items()} == {
        "deepcache.cache_interval": (2, 3, 4, 5),
        "deepcache.cache_branch_id": (0, 1, 3),  # one layer per block: 2 computes 1's images
        "tome.ratio": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75),
        "tome.max_downsample": (1, 2, 4),
        "tome.use_rand": (False, True),
        "tgate.gate_step": tuple(range(5, 20)),
        "tgate.sp_interval": tuple(range(2, 10)),
        "tgate.fi_interval": tuple(range(1, 6)),
        "tgate.warm_up": (1, 2, 3),
    }


def test_search_space_is_cut_to_the_pipeline_and_steps(tiny: Callable[[str], Pipeline]) -> None:
    sdxl = PipeTraits.of(tiny("TinySDXL"))
    assert sdxl.attention_downsamples == (2, 4)
    space = accelerators.search_space(sdxl, 10, "tome+tgate")
    assert space["tome.max_downsample"].values == (2, 4)  # 1 merges nothing on SDXL
    assert space["tgate.gate_step"].values == (5, 6, 7, 8, 9)  # never at or beyond the last step
    shallow = PipeTraits("sd", down_blocks=1, attention_downsamples=(1,))
    assert accelerators.search_space(shallow, 25, "deepcache")[
        "deepcache.cache_branch_id"
    ].values == (0, 1, 2)
    with pytest.raises(AccelOptError, match="tgate needs more than 5 steps"):
        accelerators.search_space(sdxl, 5, "tgate")
    with pytest.raises(AccelOptError, match="can take: tgate"):
        accelerators.search_space(PipeTraits.of(tiny("TinyPixArt")), 20, "deepcache")


@pytest.mark.parametrize("name", ["TinySD", "TinySDXL"])
def test_branch_ids_left_out_compute_the_images_of_the_one_before(
    tiny: Callable[[str], Pipeline], name: str
) -> None:
    """One layer per block: ids 2, 5 and 8 shallow-step exactly as 1, 4 and 7 (their own
    downsampler feeds only skipped blocks); every id kept computes images of its own."""
    pipe = tiny(name)
    set_scheduler(pipe, "DDIM")
    traits = PipeTraits.of(pipe)
    assert traits.branches == (0, 1, 3, 4, 6, 7)
    images = []
    for branch in range(3 * traits.down_blocks):
        with accelerators.apply(pipe, {"deepcache": DeepCacheConfig(3, branch)}):
            images.append(render(pipe, steps=STEPS))
    for branch in range(1, len(images)):
        same = np.array_equal(images[branch], images[branch - 1])
        assert same == (branch not in traits.branches), branch


@pytest.mark.parametrize(
    ("levels", "expected"),
    [((1, 2, 4, 8), (1, 2, 4)), ((2, 4), (2, 4)), ((4,), (4,)), ((8,), ())],
)
def test_max_downsample_choices_drop_no_ops_and_duplicates(
    levels: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    assert effective_downsamples(PipeTraits("sd", 3, levels)) == expected


def test_every_accelerator_declares_its_interface() -> None:
    for name, accel in accelerators.ACCELERATORS.items():
        assert accel.name == name
        assert accel.references and all(r.paper.startswith("https://") for r in accel.references)
        assert accel.families <= {"sd", "sdxl", "pixart-alpha", "pixart-sigma"}
        assert accel.config_cls.__dataclass_params__.frozen


@pytest.mark.parametrize("name", ["TinySD", "TinySDXL"])
@pytest.mark.parametrize("sched", SCHEDULERS)
@pytest.mark.parametrize(("interval", "branch"), [(3, 0), (2, 1), (4, 2), (2, 8)])
def test_deepcache_computes_what_upstream_helper_does(
    tiny: Callable[[str], Pipeline], name: str, sched: str, interval: int, branch: int
) -> None:
    """accelopt's graph-friendly DeepCache against ``DeepCacheSDHelper``, bit for bit, on every
    scheduler whose timesteps are distinct (upstream's ``timesteps.index`` lookup holds)."""
    from DeepCache import DeepCacheSDHelper

    pipe = tiny(name)
    set_scheduler(pipe, sched)
    config = DeepCacheConfig(cache_interval=interval, cache_branch_id=branch)
    with accelerators.apply(pipe, {"deepcache": config}):
        ours = render(pipe, steps=STEPS)
    before = Snapshot.take(pipe)
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        upstream = render(pipe, steps=STEPS)
    finally:
        helper.disable()
        before.restore(pipe)  # upstream leaves instance forwards on every wrapped module
    assert before.matches(pipe)
    np.testing.assert_array_equal(ours, upstream)


TGATE_LOADERS = {
    "TinySD": ("TgateSDLoader", "TgateSDDeepCacheLoader"),
    "TinySDXL": ("TgateSDXLLoader", "TgateSDXLDeepCacheLoader"),
    "TinyPixArt": ("TgatePixArtAlphaLoader", None),
}
TGATE_SETTINGS = [
    TGateConfig(gate_step=4, sp_interval=2, fi_interval=1, warm_up=1),
    TGateConfig(gate_step=5, sp_interval=3, fi_interval=2, warm_up=2),
    TGateConfig(gate_step=2, sp_interval=2, fi_interval=3, warm_up=0),
]


@pytest.mark.parametrize(
    ("name", "sched", "with_deepcache"),
    [(n, s, False) for n in TGATE_LOADERS for s in SCHEDULERS]
    + [("TinySD", "PNDM", False), ("TinySD", "Euler", False)]
    + [(n, s, True) for n in ("TinySD", "TinySDXL") for s in SCHEDULERS],
)
def test_tgate_computes_what_upstream_does(
    tiny: Callable[[str], Pipeline], name: str, sched: str, with_deepcache: bool
) -> None:
    """accelopt's graph-safe T-GATE against upstream's forked ``pipe.tgate(...)``, bit for bit,
    alone (PNDM's warm-up step and Euler's input scaling included) and with DeepCache through
    upstream's combined loader (schedulers with distinct timesteps, as DeepCache's own test)."""
    import tgate
    from DeepCache import DeepCacheSDHelper

    pipe = tiny(name)
    set_scheduler(pipe, sched)
    deepcache = DeepCacheConfig(cache_interval=3, cache_branch_id=1)
    plain = type(pipe).__call__
    for config in TGATE_SETTINGS:
        applied: dict[str, object] = {"tgate": config}
        if with_deepcache:
            applied["deepcache"] = deepcache
        with accelerators.apply(pipe, applied, steps=STEPS):
            ours = render(pipe, steps=STEPS)
        before = Snapshot.take(pipe)
        loader = getattr(tgate, TGATE_LOADERS[name][with_deepcache])
        if with_deepcache:
            loader(pipe, cache_interval=3, cache_branch_id=1)
        else:
            loader(pipe)
        # render() calls the pipeline; route that call through upstream's fork.
        forked = functools.partial(pipe.tgate, **dataclasses.asdict(config))
        try:
            type(pipe).__call__ = lambda self, **kw: forked(**kw)  # noqa: B023 (used at once)
            upstream = render(pipe, steps=STEPS)
        finally:
            type(pipe).__call__ = plain
            helper = vars(pipe).pop("deepcache", None)
            if isinstance(helper, DeepCacheSDHelper):
                helper.disable()
            vars(pipe).pop("tgate")
            before.restore(pipe)  # upstream leaves a forward and a cache on every attention
        assert before.matches(pipe)
        np.testing.assert_array_equal(ours, upstream, err_msg=str(config))


def test_deepcache_counts_unet_calls_not_timesteps(
    tiny: Callable[[str], Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PNDM repeats timesteps in its PRK steps (20 steps: 29 UNet calls); a full UNet runs
    every ``cache_interval`` calls all the same: the mid block computes only in full calls."""
    pipe = tiny("TinySD")
    set_scheduler(pipe, "PNDM")
    calls: list[str] = []
    mid = type(pipe.unet.mid_block)
    computed = mid.forward

    def counting(self: object, *args: object, **kwargs: object) -> object:
        calls.append("mid")
        return computed(self, *args, **kwargs)

    monkeypatch.setattr(mid, "forward", counting)
    handle = pipe.unet.register_forward_pre_hook(lambda *_: calls.append("unet"))
    try:
        for interval in (2, 3, 4, 5):
            calls.clear()
            config = DeepCacheConfig(cache_interval=interval, cache_branch_id=0)
            with accelerators.apply(pipe, {"deepcache": config}):
                render(pipe, steps=20)
            assert calls.count("unet") == 29
            assert calls.count("mid") == -(-29 // interval)  # ceil: calls 0, N, 2N, ...
    finally:
        handle.remove()


def test_tome_random_partition_is_seeded(tiny: Callable[[str], Pipeline]) -> None:
    """use_rand draws each 2x2 cell's destination from a generator seeded at every call: the
    same seed gives the same images every time (tomesd's own generator advances across calls),
    another seed or the fixed partition gives others, and removal leaves the baseline."""
    pipe = tiny("TinySD")
    set_scheduler(pipe, "DDIM")
    base = render(pipe, steps=STEPS)
    images = {}
    for use_rand, seed in ((True, 0), (True, 1), (False, 0)):
        tome = {"ratio": 0.5, "max_downsample": 1, "use_rand": use_rand, "seed": seed}
        with accelerators.apply(pipe, {"tome": tome}, steps=STEPS):
            first, second = render(pipe, steps=STEPS), render(pipe, steps=STEPS)
        assert (first == second).all(), (use_rand, seed)
        images[use_rand, seed] = first
    assert not (images[True, 0] == images[True, 1]).all()
    assert not (images[True, 0] == images[False, 0]).all()
    assert (render(pipe, steps=STEPS) == base).all()


def test_tome_random_partition_is_refused_under_graphs(tiny: Callable[[str], Pipeline]) -> None:
    from accelopt import execution

    pipe = tiny("TinySD")
    refused = r"tome\.use_rand=True cannot run under execution mode compile"
    with (
        accelerators.apply(pipe, {"tome": {"ratio": 0.5, "use_rand": True}}, steps=STEPS),
        pytest.raises(AccelOptError, match=refused),
        execution.run(pipe, "compile"),
    ):
        pass
    with pytest.raises(AccelOptError, match=r"tome\.use_rand must be bool, got 1"):
        accelerators.apply(pipe, {"tome": {"use_rand": 1}})


@pytest.mark.parametrize(
    ("pipe_name", "ratio", "max_downsample"),
    [
        ("TinySD", 0.3, 1),
        ("TinySD", 0.5, 2),
        ("TinySD", 0.75, 4),
        ("TinySDXL", 0.5, 2),
        ("TinySDXL", 0.75, 4),
    ],  # fmt: skip  (SDXL has no attention at factor 1)
)
def test_tome_merges_the_tokens_its_knobs_say(
    tiny: Callable[[str], Pipeline], pipe_name: str, ratio: float, max_downsample: int
) -> None:
    """Each transformer block's self-attention sees ``n - int(n * ratio)`` of its ``n`` tokens
    where the block's downsampling factor (read from its token count) is at most
    ``max_downsample``, and all ``n`` elsewhere; cross-attention always sees all of them."""
    pipe = tiny(pipe_name)
    full = pipe.unet.config.sample_size**2  # latent tokens at factor 1 (the default size)
    seen: list[tuple[int, int, int]] = []  # (block tokens, self-attention's, cross-attention's)
    handles = []
    for block in pipe.unet.modules():
        if hasattr(block, "attn1") and hasattr(block, "norm1"):
            handles += [
                block.norm1.register_forward_hook(lambda _, a, out: seen.append((out.shape[1],))),
                block.attn1.to_q.register_forward_pre_hook(
                    lambda _, a: seen.append((*seen.pop(), a[0].shape[1]))
                ),
                block.attn2.to_q.register_forward_pre_hook(
                    lambda _, a: seen.append((*seen.pop(), a[0].shape[1]))
                ),
            ]
    tome = {"ratio": ratio, "max_downsample": max_downsample}
    try:
        with accelerators.apply(pipe, {"tome": tome}, steps=2):
            render(pipe, steps=2, prompts=("a cat",))
    finally:
        for handle in handles:
            handle.remove()
    assert seen and all(len(s) == 3 for s in seen)
    merged_any = False
    for n, self_tokens, cross_tokens in seen:
        factor = round((full / n) ** 0.5)
        merged = factor <= max_downsample
        merged_any |= merged
        assert self_tokens == (n - int(n * ratio) if merged else n), (n, factor)
        assert cross_tokens == n
    assert merged_any
