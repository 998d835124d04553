"""Warm start: which neighbours count, how their best configurations translate, enqueued once."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from accelopt.accelerators import PipeTraits
from accelopt.spec import load_spec, record_of
from accelopt.storage import open_storage
from accelopt.study.warmstart import (
    footholds,
    neighbours,
    probe,
    summary,
    translate,
    warm_start,
)
from accelopt.testing import tiny_pipeline
from accelopt.trial.space import Space

Storage = optuna.storages.BaseStorage
Config = dict[str, dict[str, Any]]


@functools.cache
def _traits(pipeline: str) -> PipeTraits:
    return PipeTraits.of(tiny_pipeline(pipeline))


def _space(name: str) -> Space:
    spec = load_spec(name)
    return Space.build(_traits(spec.pipeline), spec.steps, spec.targets)


def _tgate(gate: int, sp: int = 3, fi: int = 2, warm_up: int = 2) -> dict[str, int]:
    return {"gate_step": gate, "sp_interval": sp, "fi_interval": fi, "warm_up": warm_up}


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return open_storage(str(tmp_path / "studies.log"))[0]


def _stored(storage: Storage, name: str, trials: list[tuple[Config, float, bool]]) -> None:
    """A finished study as ``accelopt run`` leaves it: its spec, trials with their numbers."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("spec", record_of(load_spec(name)))
    for config, speedup, feasible in trials:
        attrs = {"accelerators": config, "speedup": speedup, "feasible": feasible}
        study.add_trial(optuna.trial.create_trial(value=speedup, user_attrs=attrs))


def _new(storage: Storage, name: str) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("spec", record_of(load_spec(name)))
    return study


@pytest.fixture
def sd_storage(storage: Storage) -> Storage:
    """Neighbours of TinySD-DDIM-10, and studies that are not."""
    _stored(storage, "TinySD-DDIM-20", [
        ({"deepcache": {"cache_interval": 5, "cache_branch_id": 0}}, 3.0, False),  # infeasible
        ({"tgate": _tgate(14)}, 1.8, True),  # the best feasible
        ({"tome": {"ratio": 0.2, "max_downsample": 1}}, 1.2, True),
    ])  # fmt: skip
    _stored(storage, "TinySD-UniPC-10", [
        ({"deepcache": {"cache_interval": 3, "cache_branch_id": 1},
          "tome": {"ratio": 0.5, "max_downsample": 2}}, 2.5, True),
    ])  # fmt: skip
    _stored(storage, "TinySD-DDIM-10-deepcache", [
        ({"deepcache": {"cache_interval": 5, "cache_branch_id": 0}}, 2.0, True),
    ])  # fmt: skip
    # 7.5 steps at 10: snaps to 7, the same configuration as TinySD-DDIM-20's, which is faster.
    _stored(storage, "TinySD-Euler-20", [({"tgate": _tgate(15)}, 1.7, True)])
    _stored(storage, "TinySD-PNDM-10", [({"tgate": _tgate(6)}, 9.0, False)])  # none feasible
    # Other pipeline: a neighbour only at the same steps and scheduler.
    _stored(storage, "TinySDXL-DDIM-20", [({"tgate": _tgate(9)}, 4.0, True)])
    _stored(storage, "TinySDXL-UniPC-10", [({"tgate": _tgate(9)}, 4.0, True)])
    _stored(storage, "TinySDXL-DDIM-10", [({"tome": {"ratio": 0.3, "max_downsample": 4}},
                                            1.1, True)])  # fmt: skip
    plain = optuna.create_study(study_name="not-accelopt", storage=storage)  # no spec
    attrs = {"speedup": 9.0, "feasible": True, "accelerators": {"tgate": _tgate(5)}}
    plain.add_trial(optuna.trial.create_trial(value=9.0, user_attrs=attrs))
    return storage


def _params(dc: tuple[int, int], tome: tuple[float, int], tg: tuple[int, ...]) -> dict[str, Any]:
    return {
        "deepcache.cache_interval": dc[0],
        "deepcache.cache_branch_id": dc[1],
        "tome.ratio": tome[0],
        "tome.max_downsample": tome[1],
        "tome.use_rand": False,  # the neighbours ran before the knob: the fixed partition
        "tgate.gate_step": tg[0],
        "tgate.sp_interval": tg[1],
        "tgate.fi_interval": tg[2],
        "tgate.warm_up": tg[3],
    }


def test_neighbours_are_same_pipeline_or_same_steps_and_scheduler(sd_storage: Storage) -> None:
    _stored(sd_storage, "TinySD-DDIM-10", [({"tgate": _tgate(5)}, 5.0, True)])  # itself
    found = neighbours(sd_storage, load_spec("TinySD-DDIM-10"))
    assert [(n.name, n.speedup) for n in found] == [
        ("TinySD-UniPC-10", 2.5),
        ("TinySD-DDIM-10-deepcache", 2.0),
        ("TinySD-DDIM-20", 1.8),
        ("TinySD-Euler-20", 1.7),
        ("TinySDXL-DDIM-10", 1.1),
    ]
    assert found[2].config == {"tgate": _tgate(14)}  # the best feasible, not the fastest
    assert (found[2].pipeline, found[2].scheduler, found[2].steps) == ("TinySD", "DDIM", 20)


def test_warm_start_enqueues_best_first_translated_and_deduplicated(sd_storage: Storage) -> None:
    study = _new(sd_storage, "TinySD-DDIM-10")
    space = _space("TinySD-DDIM-10")
    starts = warm_start(study, sd_storage, load_spec("TinySD-DDIM-10"), space)
    off_tgate = (10, 2, 1, 1)  # gate at the last step; the other knobs are not applied
    assert [(s.source, s.params) for s in starts] == [
        ("TinySD-UniPC-10", _params((3, 1), (0.5, 2), off_tgate)),
        ("TinySD-DDIM-10-deepcache", _params((5, 0), (0.0, 1), off_tgate)),
        ("TinySD-DDIM-20", _params((1, 0), (0.0, 1), (7, 3, 2, 2))),  # gate 14 of 20 -> 7 of 10
        ("TinySDXL-DDIM-10", _params((1, 0), (0.3, 4), off_tgate)),
    ]
    assert summary(starts) == (
        "warm start: 4 configurations from TinySD-UniPC-10, TinySD-DDIM-10-deepcache, "
        "TinySD-DDIM-20, TinySDXL-DDIM-10"
    )
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["warm_start"] for t in waiting] == [s.source for s in starts]
    # The sampler hands them out as they are, and the space reads back the neighbours' configs.
    for s in starts:
        trial = study.ask()
        assert space.suggest(trial) == s.params
        study.tell(trial, 1.0)
    assert space.configs(starts[2].params) == {"tgate": _tgate(7)}
    assert space.configs(starts[1].params) == {"deepcache": {"cache_interval": 5,
                                                             "cache_branch_id": 0}}  # fmt: skip


def test_warm_start_happens_once(sd_storage: Storage) -> None:
    spec, space = load_spec("TinySD-DDIM-10"), _space("TinySD-DDIM-10")
    study = _new(sd_storage, spec.name)
    assert len(warm_start(study, sd_storage, spec, space)) == 4
    again = optuna.load_study(study_name=spec.name, storage=sd_storage)  # a second worker
    assert warm_start(again, sd_storage, spec, space) == []
    assert len(again.trials) == 4
    # A study that already ran trials (resumed) is left alone, neighbours or not.
    resumed = _new(sd_storage, "TinySD-DDIM-15")
    resumed.add_trial(optuna.trial.create_trial(value=1.0))
    assert warm_start(resumed, sd_storage, load_spec("TinySD-DDIM-15"), _space(
        "TinySD-DDIM-15")) == []  # fmt: skip
    assert len(resumed.trials) == 1


def test_warm_start_respects_limit_and_budget(sd_storage: Storage) -> None:
    spec, space = load_spec("TinySD-DDIM-10"), _space("TinySD-DDIM-10")
    study = _new(sd_storage, spec.name)
    assert [s.source for s in warm_start(study, sd_storage, spec, space, limit=2)] == [
        "TinySD-UniPC-10",
        "TinySD-DDIM-10-deepcache",
    ]
    small = _new(sd_storage, "TinySD-PNDM-20")
    small.set_user_attr("budget", 1)  # queued trials run whatever the budget: never more
    starts = warm_start(small, sd_storage, load_spec("TinySD-PNDM-20"), _space("TinySD-PNDM-20"))
    assert [s.source for s in starts] == ["TinySD-UniPC-10"]
    assert len(small.trials) == 1


def test_fixed_targets_take_only_configurations_of_exactly_those(sd_storage: Storage) -> None:
    spec = load_spec("TinySD-DDIM-10-tgate")
    study = _new(sd_storage, spec.name)
    starts = warm_start(study, sd_storage, spec, _space(spec.name))
    assert [(s.source, s.params) for s in starts] == [
        ("TinySD-DDIM-20", {"tgate.gate_step": 7, "tgate.sp_interval": 3,
                            "tgate.fi_interval": 2, "tgate.warm_up": 2}),
    ]  # fmt: skip


def test_sdxl_snaps_values_to_its_own_space(storage: Storage) -> None:
    _stored(storage, "TinySD-DDIM-30", [  # SDXL has no attention at downsample 1
        ({"tome": {"ratio": 0.6, "max_downsample": 1}}, 1.5, True),
    ])  # fmt: skip
    _stored(storage, "TinySDXL-DDIM-20", [  # gate 19 of 20 steps is 28.5 of 30: the last on is 19
        ({"deepcache": {"cache_interval": 2, "cache_branch_id": 3}, "tgate": _tgate(19, 9, 5, 3)},
         1.4, True),
    ])  # fmt: skip
    spec = load_spec("TinySDXL-DDIM-30")
    study = _new(storage, spec.name)
    starts = warm_start(study, storage, spec, _space(spec.name))
    assert [(s.source, s.params) for s in starts] == [
        ("TinySD-DDIM-30", _params((1, 0), (0.6, 2), (30, 2, 1, 1))),
        ("TinySDXL-DDIM-20", _params((2, 3), (0.0, 2), (19, 9, 5, 3))),
    ]


def test_accelerators_the_pipeline_cannot_take_are_dropped(storage: Storage) -> None:
    _stored(storage, "TinySD-DDIM-10", [
        ({"deepcache": {"cache_interval": 4, "cache_branch_id": 2}, "tgate": _tgate(6, 4, 3, 1)},
         2.2, True),
    ])  # fmt: skip
    _stored(storage, "TinySDXL-DDIM-10", [  # nothing PixArt can take: skipped
        ({"deepcache": {"cache_interval": 5, "cache_branch_id": 0}}, 3.0, True),
    ])  # fmt: skip
    _stored(storage, "TinyPixArt-DDIM-20", [({"tgate": _tgate(12)}, 1.3, True)])
    spec = load_spec("TinyPixArt-DDIM-10")
    study = _new(storage, spec.name)
    starts = warm_start(study, storage, spec, _space(spec.name))
    assert [(s.source, s.params) for s in starts] == [
        ("TinySD-DDIM-10", {"plan": "tgate", "tgate.gate_step": 6, "tgate.sp_interval": 4,
                            "tgate.fi_interval": 3, "tgate.warm_up": 1}),
        ("TinyPixArt-DDIM-20", {"plan": "tgate", "tgate.gate_step": 6, "tgate.sp_interval": 3,
                                "tgate.fi_interval": 2, "tgate.warm_up": 2}),
    ]  # fmt: skip


def test_footholds_start_each_family_of_a_space_of_groups_once(storage: Storage) -> None:
    """TinyPixArt-DDIM-10 chooses among five families: each is queued once, alone at its
    mildest, marked so; a second call, or a study that measured something, queues nothing; a
    space of one group (SD) gets none."""
    spec = load_spec("TinyPixArt-DDIM-10")
    space = _space(spec.name)
    study = _new(storage, spec.name)
    assert footholds(study, space) == list(space.names)
    queued = study.get_trials(deepcopy=False)
    assert [t.system_attrs["fixed_params"] for t in queued] == [
        space.mildest(n) for n in space.names
    ]
    assert [t.user_attrs["foothold"] for t in queued] == list(space.names)
    assert footholds(study, space) == [] and len(study.trials) == len(space.names)
    other = _new(storage, "TinyPixArt-DDIM-20")
    other.add_trial(optuna.trial.create_trial(value=1.0))
    assert footholds(other, space) == []
    sd = _new(storage, "TinySD-DDIM-10")
    assert footholds(sd, _space("TinySD-DDIM-10")) == [] and sd.trials == []


def test_probes_queue_each_accelerator_alone_at_its_fastest_once(storage: Storage) -> None:
    """TinySD-DDIM-10 searches which to use: each of DeepCache, ToMe and T-GATE is queued
    once at its fastest, marked so, after any warm start; a space of fixed targets gets none."""
    space = _space("TinySD-DDIM-10")
    study = _new(storage, "TinySD-DDIM-10")
    assert probe(study, space) == ["deepcache", "tome", "tgate"]
    queued = study.get_trials(deepcopy=False)
    assert [t.system_attrs["fixed_params"] for t in queued] == [
        space.fastest(n) for n in ("deepcache", "tome", "tgate")
    ]
    assert [t.user_attrs["probe"] for t in queued] == ["deepcache", "tome", "tgate"]
    assert probe(study, space) == [] and len(study.trials) == 3
    fixed = _new(storage, "TinySD-DDIM-10-deepcache")
    assert probe(fixed, _space("TinySD-DDIM-10-deepcache")) == [] and fixed.trials == []


def test_no_neighbours_enqueues_nothing(storage: Storage) -> None:
    spec = load_spec("TinySD-DDIM-10")
    study = _new(storage, spec.name)
    assert warm_start(study, storage, spec, _space(spec.name)) == []
    assert study.trials == [] and study.user_attrs["warm_start"] == []
    assert summary([]).startswith("warm start: nothing to start from")


def test_translate_skips_what_it_cannot_read() -> None:
    space = _space("TinySD-DDIM-10")
    assert translate({}, 10, space) is None  # the baseline
    assert translate({"tgate": {"gate_step": 6}}, 10, space) is None  # knobs missing
    assert translate({"deepcache": {"cache_interval": 9, "cache_branch_id": 7}}, 10, space) == (
        _params((5, 3), (0.0, 1), (10, 2, 1, 1))
    )


def test_translate_carries_a_warm_up_over_unscaled() -> None:
    """TaylorSeer's disable_cache_before_step is a warm-up, like T-GATE's warm_up: from 50
    steps to 20 it stays 3 (scaled as gate_step is, it would be 1), snapped into the space."""
    knobs = {"cache_interval": 4, "max_order": 2, "disable_cache_before_step": 3,
             "modules": "blocks"}  # fmt: skip
    params = {f"taylorseer.{k}": v for k, v in knobs.items()}
    pixart = PipeTraits("pixart-alpha")
    assert translate({"taylorseer": knobs}, 50, Space.build(pixart, 20, ["taylorseer"])) == params
    three = Space.build(pixart, 3, ["taylorseer"])  # interval 2..3, warm-up 1..2
    assert translate({"taylorseer": knobs}, 50, three) == {
        **params,
        "taylorseer.cache_interval": 3,
        "taylorseer.disable_cache_before_step": 2,
    }
    # A PixArt study that searches which to use chooses TaylorSeer's group: the plan says so;
    # T-GATE beside it is in no group of that space.
    assert translate({"taylorseer": knobs}, 50, Space.build(pixart, 20, None)) == {
        "plan": "taylorseer",
        **params,
    }
    both = {"taylorseer": knobs, "tgate": {"gate_step": 10, "sp_interval": 2, "fi_interval": 1,
                                           "warm_up": 1}}  # fmt: skip
    assert translate(both, 50, Space.build(pixart, 20, None)) is None


# Wired into accelopt run: a new study's first trials come from its neighbour, unless told not.


@pytest.mark.parametrize("flag", [[], ["--no-warm-start"]])
def test_run_starts_a_new_study_from_its_neighbour(
    flag: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelopt.cli import main

    monkeypatch.chdir(tmp_path)
    # Every trial feasible, whatever the tiny pipeline's noise images score.
    monkeypatch.setattr("accelopt.trial.objective.loss_bound", lambda b, s, z: (0.0, 0.0))
    common = ["--storage", "studies.journal", "--quiet"]
    assert main(["run", "--study", "TinySD-DDIM-10-deepcache", "--n-trials", "3", *common]) == 0
    assert main(["run", "--study", "TinySD-UniPC-10-deepcache", "--n-trials", "2", *common,
                 *flag]) == 0  # fmt: skip
    storage = open_storage("studies.journal")[0]
    first = optuna.load_study(study_name="TinySD-DDIM-10-deepcache", storage=storage)
    second = optuna.load_study(study_name="TinySD-UniPC-10-deepcache", storage=storage)
    started = [t.user_attrs.get("warm_start") for t in second.trials]
    if flag:
        assert started == [None, None]
    else:
        best = max(first.trials, key=lambda t: t.user_attrs.get("speedup", 0))
        assert started[0] == "TinySD-DDIM-10-deepcache"
        assert second.trials[0].user_attrs["accelerators"] == best.user_attrs["accelerators"]
    assert len(second.trials) == 2  # the warm start counts in the budget
