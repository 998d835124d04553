"""Schedules (accelopt/accelerators/schedules.py) against what the tiny pipelines really compute,
per call.

Hooks count, for every UNet call: the batch the UNet computes on, whether the mid block ran
(DeepCache's full step), and which attention modules computed (their ``to_q`` ran) rather than
reusing a kept output, by kind (self or cross) and by group (skipped by a DeepCache shallow step
or not). The schedule, computed without a model, must say the same for every scheduler offered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from accelopt import accelerators
from accelopt._types import Pipeline
from accelopt.accelerators import (
    DBCacheConfig,
    DeepCacheConfig,
    FBCacheConfig,
    TaylorSeerConfig,
    TGateConfig,
    ToMeConfig,
)
from accelopt.accelerators.schedules import Calls, digest, does_at_least, schedule
from accelopt.pipelines.schedulers import SCHEDULERS, set_scheduler
from accelopt.portable.deepcache import skipped_modules
from accelopt.testing import render

STEPS = 8
PLANS: dict[str, dict[str, Any]] = {
    "deepcache": {"deepcache": DeepCacheConfig(3, 1)},
    "tgate": {"tgate": TGateConfig(gate_step=5, sp_interval=2, fi_interval=2, warm_up=1)},
    "deepcache+tgate": {
        "deepcache": DeepCacheConfig(2, 0),
        "tgate": TGateConfig(gate_step=4, sp_interval=3, fi_interval=1, warm_up=1),
    },
    "tome+tgate": {"tome": ToMeConfig(0.5, 1), "tgate": TGateConfig(4, 2, 1, 0)},
}


def observed(pipe: Pipeline, configs: dict[str, Any], guidance: float) -> list[dict[str, Any]]:
    """Per UNet call: its batch, whether the mid block ran, and which attention computed."""
    unet = pipe.unet
    branch = configs["deepcache"].cache_branch_id if "deepcache" in configs else None
    deep: set[int] = set()
    if branch is not None:
        for _, module in skipped_modules(unet, branch):
            deep |= {id(m) for m in module.modules()}
    calls: list[dict[str, Any]] = []
    tokens: dict[int, int] = {}  # block -> tokens it was called with, this call
    handles = [
        unet.conv_in.register_forward_pre_hook(
            lambda _, args: calls.append({"batch": len(args[0]), "mid": False, "computed": set()})
        ),
        # A skipped mid block is still called (its wrapped forward returns the kept output);
        # its first resnet runs only when it computes.
        unet.mid_block.resnets[0].register_forward_pre_hook(lambda *_: calls[-1].update(mid=True)),
    ]

    def computed(key: tuple[str, str], block: int) -> Callable[..., None]:
        def hook(_: Any, args: tuple[Any, ...]) -> None:
            # Self-attention on fewer tokens than its block has: ToMe merged its input.
            merged = key[1] == "self" and args[0].shape[1] < tokens[block]
            calls[-1]["computed"].add(("merged", "self") if merged else key)

        return hook

    for block in unet.modules():
        if hasattr(block, "attn1"):
            handles.append(
                block.register_forward_pre_hook(
                    lambda m, args, kwargs: tokens.update(
                        {id(m): (args[0] if args else kwargs["hidden_states"]).shape[1]}
                    ),
                    with_kwargs=True,
                )
            )
            for kind, module in (("self", block.attn1), ("cross", block.attn2)):
                group = "deep" if id(module) in deep else "shallow"
                handles.append(
                    module.to_q.register_forward_pre_hook(computed((group, kind), id(block)))
                )
    try:
        with accelerators.apply(pipe, configs, steps=STEPS):
            render(pipe, steps=STEPS, prompts=("a cat",), guidance_scale=guidance)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def expected(steps: tuple[Any, ...], guidance: float) -> list[dict[str, Any]]:
    """The same, read from a schedule."""
    found = []
    for call in steps:
        out: dict[str, Any] = {"batch": 2 if guidance > 1 else 1, "mid": True, "computed": set()}
        tgate = merged = None
        for part in call:
            if part[0] == "tome":
                merged = part
            if part[0] == "deepcache":
                out["mid"] = part[-1] == "full"
            if part[0] == "tgate":
                tgate = part
        if tgate is None:  # every attention that runs computes
            groups = ["shallow"] if not out["mid"] else ["shallow", "deep"]
            out["computed"] = {(g, k) for g in groups for k in ("self", "cross")}
        else:
            if tgate[1] == "halved":
                out["batch"] = 1
            for group_modes in tgate[2:]:
                group, cross, self_ = group_modes.split()
                for kind, mode in (("cross", cross), ("self", self_)):
                    if mode != "reuse":
                        out["computed"].add((group, kind))
            if merged is not None:  # T-GATE never reuses self-attention that ToMe merged
                out["computed"].add(("merged", "self"))
        found.append(out)
    return found


@pytest.mark.parametrize("guidance", [5.0, 1.0])
@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("sched", [s.name for s in SCHEDULERS])
def test_schedule_says_what_each_unet_call_computes(
    tiny: Callable[[str], Pipeline], sched: str, plan: str, guidance: float
) -> None:
    pipe = tiny("TinySD")
    set_scheduler(pipe, sched)
    configs = PLANS[plan]
    steps = schedule(configs, Calls.of(pipe.scheduler, STEPS), guided=guidance > 1)
    seen = observed(pipe, configs, guidance)
    assert len(seen) == len(steps)
    if "tgate" in configs and "deepcache" not in configs:
        for call in seen:  # one group: the mid block's attention is "shallow" too
            assert {g for g, _ in call["computed"]} <= {"shallow", "merged"}
    assert seen == expected(steps, guidance)


def test_equal_schedules_are_equal_images(tiny: Callable[[str], Pipeline]) -> None:
    """sp_interval is an absolute step modulus: at gate 7 and warm-up 1, intervals 6 and 7 keep
    self-attention at none of steps 2-5, so they compute the same images; 2 keeps at 2 and 4."""
    pipe = tiny("TinySD")
    set_scheduler(pipe, "DDIM")
    calls = Calls.of(pipe.scheduler, STEPS)
    configs = {sp: {"tgate": TGateConfig(7, sp, 1, 1)} for sp in (6, 7, 2)}
    digests = {sp: digest(schedule(c, calls)) for sp, c in configs.items()}
    assert digests[6] == digests[7] != digests[2]
    images = {}
    for sp, c in configs.items():
        with accelerators.apply(pipe, c, steps=STEPS):
            images[sp] = render(pipe, steps=STEPS)
    assert (images[6] == images[7]).all()
    assert not (images[6] == images[2]).all()


def test_a_branch_that_computes_another_ones_images_has_its_schedule() -> None:
    calls = Calls((999.0, 500.0, 1.0), 1, 3)
    one_layer = (0, 1, 3, 4, 6, 7)  # TinySD: 2 computes 1's images, 5 computes 4's
    named = {
        b: schedule({"deepcache": DeepCacheConfig(2, b)}, calls, branches=one_layer)
        for b in range(6)
    }
    assert named[2] == named[1] != named[0]
    assert named[5] == named[4] != named[3]
    assert named[1][1] == (("deepcache", 1, "shallow"),)
    plain = schedule({"deepcache": DeepCacheConfig(2, 2)}, calls)  # no layout: ids stay
    assert plain[1] == (("deepcache", 2, "shallow"),)


def test_same_schedule_is_skipped_as_identical() -> None:
    import optuna

    from accelopt.trial.space import dominating_trial

    done = optuna.trial.create_trial(
        value=2.0,
        user_attrs={
            "accelerators": {"tgate": {"gate_step": 7, "sp_interval": 6}},
            "schedule": "abc",
            "feasible": False,
        },
    )
    done.number = 4
    mine = {"tgate": {"gate_step": 7, "sp_interval": 7}}
    found = dominating_trial(mine, [done], schedule_of=lambda configs: ("abc",))
    assert found is not None
    assert found[1] == "computes what trial 4 computed at every step (same schedule)"
    assert dominating_trial(mine, [done], schedule_of=lambda configs: (repr(configs),)) is None


CALLS = Calls(tuple(float(t) for t in range(999, 0, -100)), 1, 10)  # 10 calls, DDIM-like


def _tgate(gate: int, sp: int, fi: int = 1, warm_up: int = 1) -> dict[str, Any]:
    return {"tgate": TGateConfig(gate, sp, fi, warm_up)}


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        # DeepCache: interval 2 runs 5 full calls to 3's 4; a deeper branch runs more modules.
        ({"deepcache": DeepCacheConfig(2, 0)}, {"deepcache": DeepCacheConfig(3, 0)}, True),
        ({"deepcache": DeepCacheConfig(3, 0)}, {"deepcache": DeepCacheConfig(2, 0)}, False),
        ({"deepcache": DeepCacheConfig(3, 2)}, {"deepcache": DeepCacheConfig(3, 1)}, True),
        ({"deepcache": DeepCacheConfig(2, 0)}, {"deepcache": DeepCacheConfig(3, 1)}, False),
        # ToMe: a smaller ratio merges fewer tokens.
        ({"tome": ToMeConfig(0.3, 1)}, {"tome": ToMeConfig(0.5, 1)}, True),
        ({"tome": ToMeConfig(0.5, 1)}, {"tome": ToMeConfig(0.3, 2)}, False),
        # T-GATE: a later gate computes cross-attention and guidance at more steps; with
        # fi_interval 1, though, the earlier gate recomputes self-attention at its extra halved
        # steps, which the later one's guided steps do not: neither covers the other then.
        (_tgate(8, 9, fi=5), _tgate(6, 9, fi=5), True),
        (_tgate(6, 9, fi=5), _tgate(8, 9, fi=5), False),
        (_tgate(8, 9, fi=1), _tgate(6, 9, fi=1), False),
        # sp_interval is a step modulus: 3 keeps at steps 3 and 6, 4 at step 4 only, so 3 does
        # more; 4 and 5 keep once each, at different steps: neither covers the other.
        (_tgate(8, 3), _tgate(8, 4), True),
        (_tgate(8, 4), _tgate(8, 5), True),
        (_tgate(8, 5), _tgate(8, 4), True),
        (_tgate(8, 4), _tgate(8, 3), False),
    ],
)
def test_does_at_least_compares_work_not_knob_order(
    mine: dict[str, Any], theirs: dict[str, Any], expected: bool
) -> None:
    assert does_at_least(schedule(mine, CALLS), schedule(theirs, CALLS)) is expected


def test_pndm_counts_deepcache_intervals_in_calls(tiny: Callable[[str], Pipeline]) -> None:
    """Finding 1: with PRK steps, 20 PNDM steps are 29 UNet calls; upstream's timestep lookup
    made interval 2 run 9 full UNets and interval 3 run 10. Counted in calls, interval 2 runs
    more full calls than 3, and the dominance skip's work comparison says so."""
    pipe = tiny("TinySD")
    set_scheduler(pipe, "PNDM")
    calls = Calls.of(pipe.scheduler, 20)
    assert len(calls.timesteps) == 29
    full = {}
    for interval in (2, 3, 4, 5):
        steps = schedule({"deepcache": DeepCacheConfig(interval, 0)}, calls)
        full[interval] = sum(call == (("deepcache", "full"),) for call in steps)
    assert full == {2: 15, 3: 10, 4: 8, 5: 6}
    two, three = (schedule({"deepcache": DeepCacheConfig(i, 0)}, calls) for i in (2, 3))
    assert does_at_least(two, three) and not does_at_least(three, two)


# TaylorSeer: its schedule by hand, and what TinyPixArt's transformer computes at each call.


def _full(order: int, modules: str = "attention") -> tuple[Any, ...]:
    return (("taylorseer", modules, "full", order),)


def _forecast(order: int, modules: str = "attention") -> tuple[Any, ...]:
    return (("taylorseer", modules, "forecast", order),)


F, P = _full, _forecast
TAYLORSEER_BASE = TaylorSeerConfig(cache_interval=3, max_order=1, disable_cache_before_step=2)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # Full calls 0, 1 (before 2), then 3, 6, 9 (every third from before + 1).
        ({}, (F(0), F(1), P(1), F(1), P(1), P(1), F(1), P(1), P(1), F(1))),
        ({"cache_interval": 4}, (F(0), F(1), P(1), F(1), P(1), P(1), P(1), F(1), P(1), P(1))),
        # Order 2 once two full calls came before: call 3 is the first full call at order 2.
        ({"max_order": 2}, (F(0), F(1), P(1), F(2), P(2), P(2), F(2), P(2), P(2), F(2))),
        ({"max_order": 0}, (F(0), F(0), P(0), F(0), P(0), P(0), F(0), P(0), P(0), F(0))),
        ({"disable_cache_before_step": 1},
         (F(0), P(0), F(1), P(1), P(1), F(1), P(1), P(1), F(1), P(1))),
        ({"modules": "blocks"}, (F(0, "blocks"), F(1, "blocks"), P(1, "blocks"), F(1, "blocks"),
                                 P(1, "blocks"), P(1, "blocks"), F(1, "blocks"), P(1, "blocks"),
                                 P(1, "blocks"), F(1, "blocks"))),
        # No forecast at all: the plain images, no part (as interval 1).
        ({"cache_interval": 1}, ((),) * 10),
        ({"disable_cache_before_step": 10}, ((),) * 10),
    ],
    ids=["base", "interval", "order-2", "order-0", "before", "modules", "interval-1", "all-full"],
)  # fmt: skip
def test_taylorseer_schedule_by_hand(change: dict[str, Any], expected: tuple[Any, ...]) -> None:
    """diffusers' rule: call i is full when i < before or (i - before - 1) % interval == 0.
    Every knob changes the schedule; no forecast at all is the plain schedule."""
    config = dataclasses.replace(TAYLORSEER_BASE, **change)
    assert schedule({"taylorseer": config}, CALLS) == expected


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        # Interval 2 runs full calls at 0, 1, 3, 5, 7, 9 and 3 at 0, 1, 3, 6, 9: more work.
        (TaylorSeerConfig(2, 1, 2), TaylorSeerConfig(3, 1, 2), True),
        (TaylorSeerConfig(3, 1, 2), TaylorSeerConfig(2, 1, 2), False),
        # A higher order sums more factors at the same calls.
        (TaylorSeerConfig(3, 2, 2), TaylorSeerConfig(3, 1, 2), True),
        (TaylorSeerConfig(3, 1, 2), TaylorSeerConfig(3, 2, 2), False),
        # Forecasting blocks or attention: neither covers the other's forecasts.
        (TaylorSeerConfig(3, 1, 2, "blocks"), TaylorSeerConfig(3, 1, 2), False),
    ],
)
def test_taylorseer_dominance_compares_work(
    mine: TaylorSeerConfig, theirs: TaylorSeerConfig, expected: bool
) -> None:
    ours, other = (schedule({"taylorseer": c}, CALLS) for c in (mine, theirs))
    assert does_at_least(ours, other) is expected


def computed_calls(pipe: Pipeline, config: TaylorSeerConfig) -> list[int]:
    """Per transformer call: how many of its attention and feed-forward modules computed."""
    net = pipe.transformer
    calls: list[int] = []
    handles = [net.pos_embed.register_forward_pre_hook(lambda *_: calls.append(0))]

    def count(*_: Any) -> None:
        calls[-1] += 1

    for block in net.transformer_blocks:
        for module in (block.attn1.to_q, block.attn2.to_q, block.ff.net[0]):
            handles.append(module.register_forward_pre_hook(count))
    try:
        with accelerators.apply(pipe, {"taylorseer": config}, steps=STEPS):
            render(pipe, steps=STEPS, prompts=("a cat",))
    finally:
        for handle in handles:
            handle.remove()
    return calls


@pytest.mark.parametrize("modules", ["attention", "blocks"])
@pytest.mark.parametrize("sched", [s.name for s in SCHEDULERS])
def test_taylorseer_skips_the_block_work_its_schedule_says(
    tiny: Callable[[str], Pipeline], sched: str, modules: str
) -> None:
    """Every scheduler, PNDM's repeated calls included: a full call runs each block's two
    attentions and feed-forward, a forecast none of them (either modules choice)."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, sched)
    config = TaylorSeerConfig(3, 2, 2, modules)
    steps = schedule({"taylorseer": config}, Calls.of(pipe.scheduler, STEPS))
    per_full = 3 * len(pipe.transformer.transformer_blocks)
    expected = [per_full if call[0][2] == "full" else 0 for call in steps]
    assert computed_calls(pipe, config) == expected
    assert 0 < expected.count(0) < len(expected)


def test_taylorseer_equal_schedules_are_equal_images(tiny: Callable[[str], Pipeline]) -> None:
    """At 8 calls with calls 0, 1 and 3 full, intervals 5 and 6 forecast every call after 3
    (their next full calls would be 8 and 9): one schedule, the same images; 4 computes call 7."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    calls = Calls.of(pipe.scheduler, STEPS)
    configs = {n: {"taylorseer": TaylorSeerConfig(n, 2, 2)} for n in (5, 6, 4)}
    digests = {n: digest(schedule(c, calls)) for n, c in configs.items()}
    assert digests[5] == digests[6] != digests[4]
    images = {}
    for n, c in configs.items():
        with accelerators.apply(pipe, c, steps=STEPS):
            images[n] = render(pipe, steps=STEPS)
    assert (images[5] == images[6]).all()
    assert not (images[5] == images[4]).all()


# FirstBlockCache and DBCache: decided per call on the device, so no host-known schedule.

DECIDED = "decided per call"
DB_BASE = DBCacheConfig(1, 0, 0.1, max_warmup_steps=2)


def _db(**change: Any) -> dict[str, Any]:
    return {"dbcache": dataclasses.replace(DB_BASE, **change)}


def test_decided_caches_name_every_deciding_knob() -> None:
    """Warm-up calls compute; every later call is decided per call and names the knobs that
    decide it, so configurations that differ in any of them differ in every deciding call."""
    steps = schedule(_db(), CALLS)
    assert steps[:2] == ((("dbcache", "compute"),),) * 2
    assert steps[2:] == ((("dbcache", DECIDED, 1, 0, 0.1, 2, -1, -1),),) * 8
    fb = schedule({"fbcache": FBCacheConfig(0.1)}, CALLS)
    decided = ("fbcache", DECIDED, 1, 0, 0.1, 1, -1, -1)  # its first call: nothing to compare
    assert fb == ((("fbcache", "compute"),),) + ((decided,),) * 9
    changes = [{"residual_diff_threshold": t} for t in (0.08, 0.12, 0.1000001)] + [
        {"Fn_compute_blocks": 2}, {"Bn_compute_blocks": 1}, {"max_warmup_steps": 3},
        {"max_cached_steps": 4}, {"max_continuous_cached_steps": 2},
    ]  # fmt: skip
    digests = {digest(schedule(_db(**c), CALLS)) for c in changes}
    assert len(digests) == len(changes) and digest(steps) not in digests
    assert digest(fb) != digest(schedule(_db(max_warmup_steps=0), CALLS))  # <= against <


@pytest.mark.parametrize(
    "same",
    [
        {"max_cached_steps": 8},  # 8 calls after the warm-up: a cap of 8 never binds
        {"max_continuous_cached_steps": 99},
        {"max_cached_steps": 8, "max_continuous_cached_steps": 8},
    ],
)
def test_a_cap_no_run_can_reach_decides_as_no_cap(same: dict[str, Any]) -> None:
    assert schedule(_db(**same), CALLS) == schedule(_db(), CALLS)
    assert schedule(_db(max_cached_steps=7), CALLS) != schedule(_db(), CALLS)


@pytest.mark.parametrize(
    "off",
    [
        {"residual_diff_threshold": 0.0},
        {"max_cached_steps": 0},
        {"max_continuous_cached_steps": 0},
        {"max_warmup_steps": 10},  # every call warms up
    ],
)
def test_a_decided_cache_that_cannot_reuse_is_the_plain_schedule(off: dict[str, Any]) -> None:
    assert schedule(_db(**off), CALLS) == ((),) * 10
    assert schedule({"fbcache": FBCacheConfig(0.0)}, CALLS) == ((),) * 10


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [
        (_db(residual_diff_threshold=0.08), _db()),  # a lower threshold: not known to do more
        (_db(), _db(residual_diff_threshold=0.08)),
        (_db(max_warmup_steps=4), _db()),  # a longer warm-up either
        (_db(Fn_compute_blocks=2), _db()),
        ({"fbcache": FBCacheConfig(0.05)}, {"fbcache": FBCacheConfig(0.1)}),
    ],
)
def test_no_decided_configuration_covers_another(
    mine: dict[str, Any], theirs: dict[str, Any]
) -> None:
    """What a call computes depends on what earlier ones did: a lower threshold may still reuse
    more, so no work order is claimed (the dominance skip never skips one for another)."""
    assert not does_at_least(schedule(mine, CALLS), schedule(theirs, CALLS))
    assert does_at_least(schedule(mine, CALLS), schedule(mine, CALLS))


def test_decided_equal_schedules_are_equal_images(tiny: Callable[[str], Pipeline]) -> None:
    """TinyPixArt, 8 calls, warm-up 2: caps of 6 and more never bind, one schedule, the same
    images as no cap; a different threshold is another schedule and other images."""
    pipe = tiny("TinyPixArt")
    set_scheduler(pipe, "DDIM")
    calls = Calls.of(pipe.scheduler, STEPS)
    base = DBCacheConfig(1, 0, 0.2, max_warmup_steps=2)
    configs = {
        "none": base,
        "cap 6": dataclasses.replace(base, max_cached_steps=6),
        "0.1": dataclasses.replace(base, residual_diff_threshold=0.1),
    }
    digests = {k: digest(schedule({"dbcache": c}, calls)) for k, c in configs.items()}
    assert digests["none"] == digests["cap 6"] != digests["0.1"]
    images = {}
    for key, config in configs.items():
        with accelerators.apply(pipe, {"dbcache": config}, steps=STEPS):
            images[key] = render(pipe, steps=STEPS)
    assert (images["none"] == images["cap 6"]).all()
    assert not (images["none"] == images["0.1"]).all()
