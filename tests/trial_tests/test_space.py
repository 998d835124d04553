"""Tests for accelopt/trial/space.py: the study's search space as Optuna parameters, and the skip
of trials a finished one already dominates. Traits are built by hand: no pipeline is loaded."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FixedTrial, FrozenTrial, TrialState, create_trial

from accelopt.accelerators import Param, PipeTraits, search_space
from accelopt.errors import AccelOptError
from accelopt.trial.space import PLAN, Space, _groups, dominating_trial, lost_accelerator

SD = PipeTraits("sd", 3, (1, 2, 4))
SDXL = PipeTraits("sdxl", 3, (2, 4))  # no attention at full resolution
PIXART = PipeTraits("pixart-alpha")
ALL = ("deepcache", "tome", "tgate")
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75)

# The seed ranges for an SD UNet at 10 steps, every accelerator on.
SD_10: dict[str, tuple[Any, ...]] = {
    "deepcache.cache_interval": (2, 3, 4, 5),
    "deepcache.cache_branch_id": (0, 1, 2, 3),
    "tome.ratio": RATIOS,
    "tome.max_downsample": (1, 2, 4),
    "tome.use_rand": (False, True),
    "tgate.gate_step": (5, 6, 7, 8, 9),
    "tgate.sp_interval": (2, 3, 4, 5, 6, 7, 8, 9),
    "tgate.fi_interval": (1, 2, 3, 4, 5),
    "tgate.warm_up": (1, 2, 3),
}


@pytest.fixture(autouse=True)
def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def values(space: Space) -> dict[str, tuple[Any, ...]]:
    return {k: p.values for k, p in space.params.items()}


# --- build ------------------------------------------------------------------------------------


def test_build_with_targets_is_the_accelerators_space() -> None:
    space = Space.build(SD, 10, ALL)
    assert space.params == search_space(SD, 10, ALL)
    assert values(space) == SD_10
    assert list(space.params) == list(SD_10)  # deepcache, tome, tgate order
    assert space.optional is False
    assert space.steps == 10


@pytest.mark.parametrize(
    ("targets", "keys"),
    [
        (
            ("tgate",),
            ["tgate.gate_step", "tgate.sp_interval", "tgate.fi_interval", "tgate.warm_up"],
        ),
        (("tome", "deepcache"), [k for k in SD_10 if not k.startswith("tgate")]),
        (["TOME"], ["tome.ratio", "tome.max_downsample", "tome.use_rand"]),
    ],
)
def test_build_with_some_targets(targets: Any, keys: list[str]) -> None:
    space = Space.build(SD, 10, targets)
    assert list(space.params) == keys
    assert values(space) == {k: SD_10[k] for k in keys}
    assert space.optional is False


def test_build_with_targets_follows_the_traits() -> None:
    space = Space.build(SDXL, 25, ("tome", "tgate"))
    assert values(space)["tome.max_downsample"] == (2, 4)
    assert values(space)["tgate.gate_step"] == tuple(range(5, 20))


def test_build_refuses_a_target_the_pipeline_cannot_take() -> None:
    with pytest.raises(AccelOptError) as info:
        Space.build(PIXART, 10, ("deepcache",))
    assert str(info.value) == (
        "deepcache cannot accelerate a pixart-alpha pipeline; it can take: tgate, magcache, "
        "taylorseer, fbcache, dbcache, pab, fastercache"
    )


# PixArt's, one at a time
EVERY = ("tgate", "magcache", "taylorseer", "fbcache", "dbcache", "pab", "fastercache")


def test_build_without_targets_chooses_among_what_does_not_combine() -> None:
    """T-GATE and the block caches combine with nothing on PixArt (PLANS): a space that searches
    which to use chooses one per trial (``plan``), each in its own group, leaving out what the
    step count cannot run (T-GATE at 5 steps); each is searched alone when named; naming two
    that no plan declares together is refused."""
    every = EVERY
    space = Space.build(PIXART, 10, None)
    assert space.names == every and space.groups == tuple((n,) for n in every)
    assert space.distributions()[PLAN] == CategoricalDistribution(list(every))
    assert Space.build(PIXART, 5, None).names == every[1:]
    assert Space.build(PIXART, 10, None, "cuda-graphs").groups == space.groups
    assert Space.build(PIXART, 10, ("magcache",)).names == ("magcache",)
    assert Space.build(PIXART, 10, ("magcache",)).groups == ()
    assert Space.build(PIXART, 10, ("taylorseer",)).names == ("taylorseer",)
    for pair in (("tgate", "magcache"), ("tgate", "taylorseer"), ("magcache", "taylorseer")):
        with pytest.raises(AccelOptError) as info:
            Space.build(PIXART, 10, pair)
        assert str(info.value).startswith(f"{'+'.join(pair)} is not a declared combination; ")


def test_a_space_of_groups_draws_a_plan_then_only_its_knobs() -> None:
    """A trial that drew MagCache draws MagCache's knobs and nothing of T-GATE's; configs apply
    only its group; the grid walks every group's product once; a plan not in the space is one
    clear error."""
    space = Space.build(PIXART, 10, None, "cuda-graphs")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space.suggest(study.ask()) for _ in range(30)]
    for params in drawn:
        group = params[PLAN]
        assert {k.split(".", 1)[0] for k in params if k != PLAN} == {group}
    assert {p[PLAN] for p in drawn} == set(EVERY)
    points = space.points()
    assert (
        len(points)
        == space.size
        == sum(
            math.prod(len(space.params[k].values) for k in space.params if k.startswith(f"{n}."))
            for n in EVERY
        )
    )
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    on = {"plan": "magcache", "magcache.threshold": 0.1, "magcache.max_skip_steps": 2,
          "magcache.retention_ratio": 0.2, "tgate.gate_step": 5}  # fmt: skip
    assert space.configs(on) == {
        "magcache": {"threshold": 0.1, "max_skip_steps": 2, "retention_ratio": 0.2}
    }
    wrong = "plan 'deepcache' is not one of this space's: " + ", ".join(EVERY)
    with pytest.raises(AccelOptError, match=wrong):
        space.configs({PLAN: "deepcache"})


PIXART_NAMES = ("tgate", "magcache", "taylorseer")
ALONE = [frozenset({n}) for n in PIXART_NAMES]


@pytest.mark.parametrize(
    ("declared", "groups"),
    [
        ([], ()),
        (ALONE, (("tgate",), ("magcache",), ("taylorseer",))),  # today's PLANS on PixArt
        # Declaring T-GATE with MagCache makes them one group, TaylorSeer another.
        ([*ALONE, frozenset({"tgate", "magcache"})], (("tgate", "magcache"), ("taylorseer",))),
        # Larger groups first, each in canonical order.
        (
            [*ALONE, frozenset({"magcache", "taylorseer"})],
            (("magcache", "taylorseer"), ("tgate",)),
        ),
        # A set is a group only with every subset declared: switching T-GATE off would leave
        # MagCache alone, undeclared here.
        ([frozenset({"tgate"}), frozenset({"tgate", "magcache"})], (("tgate",),)),
        # Groups may share a member: T-GATE goes with either cache, the caches not together.
        (
            [*ALONE, frozenset({"tgate", "magcache"}), frozenset({"tgate", "taylorseer"})],
            (("tgate", "magcache"), ("tgate", "taylorseer")),
        ),
        # All three, with every pair and single: one group, as on SD.
        (
            [*ALONE, frozenset(PIXART_NAMES), frozenset({"tgate", "magcache"}),
             frozenset({"tgate", "taylorseer"}), frozenset({"magcache", "taylorseer"})],
            (PIXART_NAMES,),
        ),
    ],
)  # fmt: skip
def test_groups_are_the_largest_sets_closed_under_switching_off(
    declared: list[frozenset[str]], groups: tuple[tuple[str, ...], ...]
) -> None:
    assert _groups(PIXART_NAMES, declared) == groups


def test_sd_searches_every_unet_accelerator_as_before() -> None:
    assert Space.build(SD, 10, None).names == ALL


def test_configs_carry_the_calibrated_knobs() -> None:
    """A study's calibration (MagCache's ratios) joins every config that turns MagCache on."""
    ratios = [1.0, 0.98, 0.99, 1.01, 1.0]
    space = replace(Space.build(PIXART, 5, None), calibration={"magcache": {"ratios": ratios}})
    knobs = {"threshold": 0.1, "max_skip_steps": 2, "retention_ratio": 0.2}
    params = {PLAN: "magcache", **{f"magcache.{k}": v for k, v in knobs.items()}}
    assert space.configs(params) == {"magcache": {**knobs, "ratios": ratios}}
    assert space.configs({**params, "magcache.max_skip_steps": 0}) == {}  # off: not applied


def test_build_without_targets_adds_off_values_first() -> None:
    space = Space.build(SD, 10, None)
    assert space.optional is True
    expected = dict(SD_10)
    expected["deepcache.cache_interval"] = (1, 2, 3, 4, 5)
    expected["tome.ratio"] = (0.0, *RATIOS)
    expected["tgate.gate_step"] = (10, 5, 6, 7, 8, 9)
    assert values(space) == expected
    assert list(space.params) == list(SD_10)


def test_build_without_targets_gates_at_the_step_count() -> None:
    assert values(Space.build(SD, 25, None))["tgate.gate_step"] == (25, *range(5, 20))


def test_a_named_knob_is_drawn_as_a_category() -> None:
    distributions = Space.build(PIXART, 10, ("taylorseer",)).distributions()
    assert distributions["taylorseer.modules"] == CategoricalDistribution(["attention", "blocks"])
    assert distributions["taylorseer.cache_interval"] == IntDistribution(2, 6)


def test_build_does_not_change_the_accelerators_space() -> None:
    Space.build(SD, 10, None)
    assert search_space(SD, 10, ALL)["deepcache.cache_interval"] == Param((2, 3, 4, 5))


# --- size and grid ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "targets", "size"),
    [
        (SD, ALL, 4 * 4 * 8 * 3 * 2 * 5 * 8 * 5 * 3),
        (SD, None, 5 * 4 * 9 * 3 * 2 * 6 * 8 * 5 * 3),
        (SD, ("deepcache",), 4 * 4),
    ],
)
def test_size_is_the_product_of_value_counts(
    traits: PipeTraits, targets: tuple[str, ...] | None, size: int
) -> None:
    space = Space.build(traits, 10, targets)
    assert space.size == size


def test_grid_returns_lists() -> None:
    grid = Space.build(SD, 10, None).grid()
    assert all(type(v) is list for v in grid.values())
    assert grid["tome.ratio"] == [0.0, *RATIOS]


def test_points_are_every_combination_of_values_once() -> None:
    points = Space.build(SD, 10, ("deepcache",)).points()
    pairs = sorted((p["deepcache.cache_interval"], p["deepcache.cache_branch_id"]) for p in points)
    assert pairs == [(i, b) for i in (2, 3, 4, 5) for b in (0, 1, 2, 3)]


def test_enqueued_points_are_drawn_as_they_are_in_a_space_of_groups() -> None:
    """The grid enqueues each point (``GridOrder``); a trial then draws exactly it: the plan,
    its group's knobs and nothing else."""
    space = Space(
        {"tgate.gate_step": Param((10, 5)), "magcache.threshold": Param((0.1, 0.2)),
         "magcache.max_skip_steps": Param((0, 2, 3))},
        10, True, groups=(("tgate",), ("magcache",)),
    )  # fmt: skip
    points = space.points()
    assert len(points) == space.size == 2 + 2 * 3
    study = optuna.create_study()
    for point in points:
        study.enqueue_trial(point)
        assert space.suggest(study.ask()) == point


# --- configs ----------------------------------------------------------------------------------

ALL_OFF = {
    "deepcache.cache_interval": 1,
    "deepcache.cache_branch_id": 2,
    "tome.ratio": 0.0,
    "tome.max_downsample": 2,
    "tome.use_rand": False,
    "tgate.gate_step": 10,
    "tgate.sp_interval": 3,
    "tgate.fi_interval": 2,
    "tgate.warm_up": 1,
}


def test_configs_groups_keys_by_accelerator() -> None:
    params = {**ALL_OFF, "deepcache.cache_interval": 3, "tome.ratio": 0.5, "tgate.gate_step": 7}
    assert Space.build(SD, 10, None).configs(params) == {
        "deepcache": {"cache_interval": 3, "cache_branch_id": 2},
        "tome": {"ratio": 0.5, "max_downsample": 2, "use_rand": False},
        "tgate": {"gate_step": 7, "sp_interval": 3, "fi_interval": 2, "warm_up": 1},
    }


def test_optional_configs_drop_accelerators_that_are_off() -> None:
    space = Space.build(SD, 10, None)
    assert space.configs(ALL_OFF) == {}
    assert space.configs({**ALL_OFF, "tome.ratio": 0.3}) == {
        "tome": {"ratio": 0.3, "max_downsample": 2, "use_rand": False}
    }
    assert space.configs({**ALL_OFF, "deepcache.cache_interval": 2, "tgate.gate_step": 9}) == {
        "deepcache": {"cache_interval": 2, "cache_branch_id": 2},
        "tgate": {"gate_step": 9, "sp_interval": 3, "fi_interval": 2, "warm_up": 1},
    }


def test_configs_with_targets_keep_every_accelerator() -> None:
    space = Space.build(SD, 10, ALL)
    assert space.configs(ALL_OFF) == {
        "deepcache": {"cache_interval": 1, "cache_branch_id": 2},
        "tome": {"ratio": 0.0, "max_downsample": 2, "use_rand": False},
        "tgate": {"gate_step": 10, "sp_interval": 3, "fi_interval": 2, "warm_up": 1},
    }


def test_optional_tgate_is_off_at_the_space_step_count() -> None:
    tgate = {
        "tgate.gate_step": 9,
        "tgate.sp_interval": 2,
        "tgate.fi_interval": 1,
        "tgate.warm_up": 1,
    }
    tgate = {PLAN: "tgate", **tgate}
    assert Space.build(PIXART, 9, None).configs(tgate) == {}
    assert Space.build(PIXART, 10, None).configs(tgate) == {
        "tgate": {"gate_step": 9, "sp_interval": 2, "fi_interval": 1, "warm_up": 1}
    }


# --- suggest ----------------------------------------------------------------------------------

CHOSEN = {
    "deepcache.cache_interval": 4,
    "deepcache.cache_branch_id": 2,
    "tome.ratio": 0.75,
    "tome.max_downsample": 2,
    "tome.use_rand": True,
    "tgate.gate_step": 10,
    "tgate.sp_interval": 4,
    "tgate.fi_interval": 2,
    "tgate.warm_up": 3,
}


def test_suggest_returns_enqueued_values_and_the_right_distributions() -> None:
    space = Space.build(SD, 10, None)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(CHOSEN)
    trial = study.ask()
    drawn = space.suggest(trial)
    assert drawn == CHOSEN
    assert type(drawn["deepcache.cache_interval"]) is int
    assert trial.params == CHOSEN
    assert trial.distributions == {
        "deepcache.cache_interval": IntDistribution(1, 5, step=1),
        "deepcache.cache_branch_id": IntDistribution(0, 3, step=1),
        "tome.ratio": CategoricalDistribution((0.0, *RATIOS)),
        "tome.max_downsample": CategoricalDistribution((1, 2, 4)),  # 1, 2, 4: not evenly spaced
        "tome.use_rand": CategoricalDistribution((False, True)),  # not an integer range
        "tgate.gate_step": CategoricalDistribution((10, 5, 6, 7, 8, 9)),  # off value first
        "tgate.sp_interval": IntDistribution(2, 9, step=1),
        "tgate.fi_interval": IntDistribution(1, 5, step=1),
        "tgate.warm_up": IntDistribution(1, 3, step=1),
    }


def test_suggest_uses_the_step_of_an_even_integer_range() -> None:
    space = Space.build(SDXL, 10, ("tome",))
    study = optuna.create_study()
    study.enqueue_trial({"tome.ratio": 0.2, "tome.max_downsample": 4, "tome.use_rand": False})
    trial = study.ask()
    assert space.suggest(trial) == {
        "tome.ratio": 0.2,
        "tome.max_downsample": 4,
        "tome.use_rand": False,
    }
    assert trial.distributions["tome.max_downsample"] == IntDistribution(2, 4, step=2)


def test_suggest_with_a_single_value() -> None:
    space = Space({"x.n": Param((7,))}, 10, False)
    trial = optuna.create_study().ask()
    assert space.suggest(trial) == {"x.n": 7}
    assert trial.distributions == {"x.n": IntDistribution(7, 7, step=1)}


def test_suggest_with_a_fixed_trial() -> None:
    space = Space.build(SD, 10, None)
    assert space.suggest(FixedTrial(CHOSEN)) == CHOSEN


def test_suggested_values_stay_in_the_space() -> None:
    space = Space.build(SD, 10, None)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        drawn = space.suggest(study.ask())
        assert set(drawn) == set(space.params)
        for key, value in drawn.items():
            assert value in space.params[key].values, key


# --- dominating_trial -------------------------------------------------------------------------


def finished(
    number: int, configs: dict[str, dict[str, Any]], feasible: bool, speedup: float = 1.5
) -> FrozenTrial:
    trial = create_trial(
        state=TrialState.COMPLETE,
        value=speedup,
        user_attrs={"accelerators": configs, "feasible": feasible, "speedup": speedup},
    )
    trial.number = number
    return trial


def dc(interval: int, branch: int) -> dict[str, dict[str, Any]]:
    return {"deepcache": {"cache_interval": interval, "cache_branch_id": branch}}


def tg(gate: int = 8, sp: int = 4, fi: int = 2, warm: int = 2) -> dict[str, dict[str, Any]]:
    return {"tgate": {"gate_step": gate, "sp_interval": sp, "fi_interval": fi, "warm_up": warm}}


def test_identical_configuration_is_never_run_twice() -> None:
    infeasible = finished(4, dc(3, 0), feasible=False)
    found = dominating_trial(dc(3, 0), [finished(1, dc(2, 0), feasible=False), infeasible])
    assert found is not None
    assert found[0] is infeasible
    assert found[1] == "same configuration as trial 4"


def test_identical_to_a_feasible_trial_is_also_the_same_configuration() -> None:
    feasible = finished(2, dc(3, 0), feasible=True)
    assert dominating_trial(dc(3, 0), [feasible]) == (feasible, "same configuration as trial 2")


def test_no_more_aggressive_than_a_feasible_trial_is_skipped() -> None:
    feasible = finished(3, dc(3, 0), feasible=True, speedup=1.8)
    found = dominating_trial(dc(2, 1), [feasible])
    assert found is not None
    assert found[0] is feasible
    assert found[1] == "cannot beat feasible trial 3 (1.80x): no knob more aggressive"


def test_more_aggressive_in_one_knob_is_run() -> None:
    assert dominating_trial(dc(4, 1), [finished(3, dc(3, 0), feasible=True)]) is None


def test_less_aggressive_than_an_infeasible_trial_is_run() -> None:
    assert dominating_trial(dc(2, 1), [finished(3, dc(3, 0), feasible=False)]) is None


def test_different_accelerator_sets_are_not_compared() -> None:
    both = {**dc(4, 0), "tome": {"ratio": 0.5, "max_downsample": 4}}
    assert dominating_trial(dc(2, 1), [finished(0, both, feasible=True)]) is None
    assert dominating_trial(both, [finished(0, dc(2, 1), feasible=True)]) is None
    assert dominating_trial(tg(), [finished(0, dc(2, 1), feasible=True)]) is None


def test_trials_without_accelerators_are_ignored() -> None:
    plain = create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={"feasible": True})
    assert dominating_trial(dc(2, 1), [plain]) is None
    assert dominating_trial({}, [plain]) is None


def test_the_first_dominating_trial_is_returned() -> None:
    done = [
        finished(0, dc(2, 0), feasible=True),  # the candidate's interval is more aggressive
        finished(1, dc(3, 0), feasible=True),
        finished(2, dc(5, 0), feasible=True),
    ]
    found = dominating_trial(dc(3, 1), done)
    assert found is not None
    assert found[0].number == 1


@pytest.mark.parametrize(
    ("candidate", "dominated"),
    [
        (tg(gate=9), True),  # gating later computes more: slower
        (tg(gate=7), False),  # gating earlier skips more
        (tg(warm=3), True),  # a longer warm-up computes more
        (tg(warm=1), False),
        (tg(sp=3), True),  # refreshing self-attention more often computes more
        (tg(sp=5), False),
        (tg(fi=1), True),
        (tg(fi=3), False),
        (tg(gate=9, sp=3, fi=1, warm=3), True),
        (tg(gate=9, sp=5), False),
    ],
)
def test_tgate_directions(candidate: dict[str, dict[str, Any]], dominated: bool) -> None:
    feasible = finished(5, tg(), feasible=True)
    found = dominating_trial(candidate, [feasible])
    assert (found is not None) is dominated
    if dominated:
        assert found == (feasible, "cannot beat feasible trial 5 (1.50x): no knob more aggressive")


@pytest.mark.parametrize(
    ("ratio", "max_downsample", "dominated"),
    [(0.3, 2, True), (0.5, 1, True), (0.6, 2, False), (0.5, 4, False)],
)
def test_tome_directions(ratio: float, max_downsample: int, dominated: bool) -> None:
    feasible = finished(0, {"tome": {"ratio": 0.5, "max_downsample": 2}}, feasible=True)
    candidate = {"tome": {"ratio": ratio, "max_downsample": max_downsample}}
    assert (dominating_trial(candidate, [feasible]) is not None) is dominated


def test_dominance_over_several_accelerators_needs_every_knob() -> None:
    feasible = finished(7, {**dc(3, 0), **tg()}, feasible=True, speedup=2.25)
    found = dominating_trial({**dc(2, 0), **tg(gate=9)}, [feasible])
    assert found == (feasible, "cannot beat feasible trial 7 (2.25x): no knob more aggressive")
    assert dominating_trial({**dc(2, 0), **tg(gate=7)}, [feasible]) is None


def test_without_targets_a_short_schedule_leaves_out_what_it_cannot_search() -> None:
    traits = PipeTraits("sd", 3, (1, 2, 4))
    space = Space.build(traits, 5, None)  # T-GATE's gate range starts at step 5
    assert {key.split(".")[0] for key in space.params} == {"deepcache", "tome"}
    with pytest.raises(AccelOptError, match="no accelerator can be searched at 1 steps"):
        Space.build(PipeTraits("pixart-alpha"), 1, None)
    with pytest.raises(AccelOptError, match="deepcache needs at least 2 steps"):
        Space.build(traits, 1, ("deepcache",))


# --- what the layout and the mode leave out, and stored studies ------------------------------

ONE_LAYER = PipeTraits("sd", 3, (1, 2, 4), branches=(0, 1, 3, 4, 6, 7))  # TinySD's layout


def test_branch_ids_that_repeat_a_smaller_ones_images_are_left_out() -> None:
    space = Space.build(ONE_LAYER, 10, ("deepcache",))
    assert values(space)["deepcache.cache_branch_id"] == (0, 1, 3)
    trial = optuna.create_study().ask()
    space.suggest(trial)
    assert trial.distributions["deepcache.cache_branch_id"] == CategoricalDistribution((0, 1, 3))


@pytest.mark.parametrize("mode", ["compile", "cuda-graphs"])
def test_graph_modes_leave_the_random_partition_out(mode: str) -> None:
    assert values(Space.build(SD, 10, ("tome",), mode))["tome.use_rand"] == (False,)
    assert values(Space.build(SD, 10, ("tome",), "eager"))["tome.use_rand"] == (False, True)


def test_a_stored_study_keeps_the_distributions_it_was_made_with() -> None:
    # A study from before the space left out repeated branch ids drew them as an integer range;
    # Optuna refuses a categorical under the same name, so resuming keeps the stored range.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    old = Space({"deepcache.cache_interval": Param((2, 3)),
                 "deepcache.cache_branch_id": Param((0, 1, 2, 3))}, 10, False)  # fmt: skip
    study.enqueue_trial({"deepcache.cache_interval": 2, "deepcache.cache_branch_id": 2})
    first = study.ask()
    old.suggest(first)
    study.tell(first, 1.0)
    new = Space.build(ONE_LAYER, 10, ("deepcache",))
    with pytest.raises(ValueError, match="different distribution"):
        new.suggest(study.ask())
    resumed = new.adopt(study.get_trials())
    assert resumed.stored == {"deepcache.cache_branch_id": IntDistribution(0, 3)}
    trial = study.ask()
    assert resumed.suggest(trial)["deepcache.cache_branch_id"] in (0, 1, 2, 3)
    assert new.adopt(optuna.create_study().get_trials()) is new  # nothing stored: as built


def test_a_scheduler_that_breaks_an_accelerator_leaves_it_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from accelopt.accelerators import DeepCache

    monkeypatch.setattr(DeepCache, "refused_schedulers", {"PNDM": "its PRK steps repeat"})
    keys = set(Space.build(SD, 10, None, scheduler="PNDM").params)
    assert {k.split(".")[0] for k in keys} == {"tome", "tgate"}
    assert "deepcache.cache_interval" in Space.build(SD, 10, None, scheduler="DDIM").params
    with pytest.raises(AccelOptError, match="deepcache cannot follow scheduler PNDM"):
        Space.build(SD, 10, ("deepcache",), scheduler="PNDM")


# --- the probes: each accelerator alone at its fastest, and who lost -------------------------


def test_fastest_is_one_accelerator_alone_with_every_knob_at_its_faster_end() -> None:
    space = Space.build(SD, 10, None, "compile")  # ToMe's use_rand=True left out: compile
    assert space.configs(space.fastest("deepcache")) == {
        "deepcache": {"cache_interval": 5, "cache_branch_id": 0}
    }
    assert space.configs(space.fastest("tome")) == {
        "tome": {"ratio": 0.75, "max_downsample": 4, "use_rand": False}
    }
    assert space.configs(space.fastest("tgate")) == {
        "tgate": {"gate_step": 5, "sp_interval": 9, "fi_interval": 5, "warm_up": 1}
    }
    with pytest.raises(ValueError, match="fixed targets"):
        Space.build(SD, 10, ("tome",)).fastest("tome")


def test_mildest_is_one_accelerator_alone_with_every_knob_at_its_slower_end() -> None:
    """The foothold a space of groups starts each family from: on PixArt the lowest MagCache
    threshold and skip cap with the most calls kept first, DBCache's most blocks computed."""
    space = Space.build(PIXART, 20, None)
    magcache = space.mildest("magcache")
    assert magcache[PLAN] == "magcache" and set(magcache) == {PLAN} | {
        k for k in space.params if k.startswith("magcache.")
    }
    assert space.configs(magcache) == {
        "magcache": {"threshold": 0.02, "max_skip_steps": 1, "retention_ratio": 0.3}
    }
    db = space.configs(space.mildest("dbcache"))["dbcache"]
    assert (db["Fn_compute_blocks"], db["residual_diff_threshold"]) == (8, 0.04)
    assert space.configs(space.mildest("tgate")) == {
        "tgate": {"gate_step": 19, "sp_interval": 2, "fi_interval": 1, "warm_up": 3}
    }


def _measured(number: int, configs: dict[str, Any], speedup: float) -> FrozenTrial:
    trial = create_trial(value=speedup, user_attrs={"accelerators": configs, "speedup": speedup})
    trial.number = number
    return trial


def test_an_accelerator_slower_than_plain_alone_at_its_fastest_has_lost() -> None:
    space = Space.build(SD, 10, None, "compile")
    tome = space.configs(space.fastest("tome"))
    deepcache = {"cache_interval": 3, "cache_branch_id": 0}
    done = [_measured(0, {"deepcache": deepcache}, 2.1), _measured(1, tome, 0.66)]
    with_tome = {"deepcache": deepcache, "tome": {**tome["tome"], "ratio": 0.3}}
    assert lost_accelerator(with_tome, done, space) == (
        "tome",
        "tome lost: alone at its fastest (ratio 0.75, max_downsample 4, use_rand False) trial 1 "
        "ran 0.66x the plain pipeline, so it only slows what it joins",
    )
    assert lost_accelerator({"deepcache": deepcache}, done, space) is None
    # At its fastest it won, or only a milder setting was measured: nothing is lost.
    assert lost_accelerator(with_tome, [_measured(1, tome, 1.2)], space) is None
    milder = {"tome": {**tome["tome"], "ratio": 0.5}}
    assert lost_accelerator(with_tome, [_measured(1, milder, 0.7)], space) is None
    # Named targets are the user's to keep.
    fixed = Space.build(SD, 10, ("deepcache", "tome"))
    assert lost_accelerator(with_tome, done, fixed) is None


def test_decided_caches_are_skipped_only_as_the_same_decisions() -> None:
    """FirstBlockCache and DBCache have no host-known schedule (schedules.schedule names every
    deciding knob): another threshold is measured, whichever way it goes, even beside a feasible
    trial; a cap no run can reach is the same schedule as no cap, and is skipped."""
    from accelopt import accelerators
    from accelopt.accelerators.schedules import Calls, schedule

    calls = Calls(tuple(float(t) for t in range(999, 0, -100)), 1, 10)

    def schedule_of(configs: Mapping[str, Mapping[str, Any]]) -> tuple[Any, ...]:
        built = {n: accelerators.get(n).config(k) for n, k in configs.items()}
        return schedule(built, calls)

    def db(**knobs: Any) -> dict[str, dict[str, Any]]:
        base = {"Fn_compute_blocks": 1, "residual_diff_threshold": 0.1, "max_warmup_steps": 2}
        return {"dbcache": {**base, **knobs}}

    feasible = finished(3, db(), feasible=True, speedup=1.4)
    for threshold in (0.08, 0.12):
        assert dominating_trial(db(residual_diff_threshold=threshold), [feasible],
                                schedule_of=schedule_of) is None  # fmt: skip
    assert dominating_trial(db(max_warmup_steps=4), [feasible], schedule_of=schedule_of) is None
    found = dominating_trial(db(max_cached_steps=9), [feasible], schedule_of=schedule_of)
    assert found == (feasible, "computes what trial 3 computed at every step (same schedule)")
    fb = finished(4, {"fbcache": {"threshold": 0.1}}, feasible=True)
    for threshold in (0.05, 0.2):
        candidate = {"fbcache": {"threshold": threshold}}
        assert dominating_trial(candidate, [fb], schedule_of=schedule_of) is None
