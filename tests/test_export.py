"""Exporting studies into the params store: which trials, under which keys, with what."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from accelopt.cli import main
from accelopt.export import entries_for
from accelopt.params_store.file import read_store, seed_key
from accelopt.spec import load_spec, record_of
from accelopt.study.loop import Requirement, run_study

quiet = {"progress": False, "log": lambda s: None}


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str]:
    """A TinySD study that searched which accelerators to use; nearly every trial feasible."""
    storage = f"sqlite:///{tmp_path_factory.mktemp('export') / 'studies.db'}"
    spec = load_spec("TinySD-DDIM-10").replace(max_score_loss=0.99)
    return run_study(spec, storage=storage, n_trials=8, **quiet).study, storage


def test_best_overall_and_best_of_every_set_tried(searched: tuple[optuna.Study, str]) -> None:
    study, storage = searched
    entries = entries_for(study, storage)
    # Feasible ones only: the tiny random CLIP can score an image below zero, a loss over 0.99.
    complete = [t for t in study.trials
                if t.state == TrialState.COMPLETE and t.user_attrs["feasible"]]  # fmt: skip
    sets = {tuple(sorted(t.user_attrs["accelerators"])) for t in complete}
    best = max(complete, key=lambda t: t.user_attrs["speedup"])
    overall = seed_key("TinySD", "DDIM", 10, ["deepcache", "tgate", "tome"], 0.99)
    assert set(entries) == {overall} | {seed_key("TinySD", "DDIM", 10, s, 0.99) for s in sets}
    assert entries[overall]["study"]["trial"] == best.number
    for used in sets - {("deepcache", "tgate", "tome")}:  # that set's key is the study's
        entry = entries[seed_key("TinySD", "DDIM", 10, used, 0.99)]
        same = [t for t in complete if tuple(sorted(t.user_attrs["accelerators"])) == used]
        assert entry["study"]["trial"] == max(same, key=lambda t: t.user_attrs["speedup"]).number
        assert sorted(entry["accelerators"]) == list(used)


def test_entry_holds_what_the_store_promises(searched: tuple[optuna.Study, str]) -> None:
    study, storage = searched
    entry = next(iter(entries_for(study, storage).values()))
    trial = study.trials[entry["study"]["trial"]]
    assert entry["pipeline"] == "TinySD" and entry["scheduler"] == "DDIM" and entry["steps"] == 10
    assert entry["requirement"] == {"req_speedup": None, "max_score_loss": 0.99, "req_time": None}
    assert entry["accelerators"] == trial.user_attrs["accelerators"]
    flat = {k: v for knobs in trial.user_attrs["accelerators"].values() for k, v in knobs.items()}
    if "warm_up" in flat:  # the seed's spelling in the flat view
        flat["warmup"] = flat.pop("warm_up")
    assert entry["params"] == flat
    for key in ("speedup", "time_per_image", "score", "score_loss", "peak_memory", "device"):
        assert entry["measured"][key] == trial.user_attrs[key]
    assert entry["baseline"]["scores"] == study.user_attrs["baseline_scores"]
    assert entry["generation"] == {
        "resolution": 32,
        "guidance": 5.0,
        "dtype": "float32",
        "prompt_set": "accelopt",
    }  # fmt: skip  (scripts' examples)
    assert entry["versions"]["diffusers"] and entry["versions"]["torch"]
    assert entry["study"] == {"name": "TinySD-DDIM-10", "storage": storage,
                              "trial": trial.number}  # fmt: skip
    assert "frontier" not in entry and "objective" not in entry  # only pareto studies have one
    json.dumps(entry, allow_nan=False)  # plain JSON


def test_entries_never_hold_storage_passwords(searched: tuple[optuna.Study, str]) -> None:
    study, _ = searched
    entries = entries_for(study, "postgresql://alice:s3cret-pw@db.example/optuna")
    text = json.dumps(entries)
    assert "s3cret-pw" not in text
    assert "postgresql://alice:***@db.example/optuna" in text


def test_requirement_export_takes_the_trial_that_met_it(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec("TinySD-DDIM-10-deepcache").replace(max_score_loss=0.99)
    req = Requirement(speedup=0.001)
    study = run_study(spec, storage=storage, n_trials=3, requirement=req, **quiet).study
    entries = entries_for(study, storage, req)
    key = seed_key("TinySD", "DDIM", 10, ["deepcache"], 0.99, req_speedup=0.001)
    assert list(entries) == [key] and entries[key]["study"]["trial"] == 0
    assert entries[key]["requirement"]["req_speedup"] == 0.001


def test_cli_export_writes_the_store_and_refuses_foreign_files(  # type: ignore[no-untyped-def]
    searched, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study, storage = searched
    store = tmp_path / "store" / "new" / "params.json"
    argv = ["export", "--study", study.study_name, "--storage", storage, "--top-k", "0",
            "--store", str(store)]  # fmt: skip
    assert main(argv) == 0
    assert set(read_store(store)) == set(entries_for(study, storage))
    err = capsys.readouterr().err.splitlines()
    created = f"created folder {tmp_path / 'store'}/ for the params store"
    assert err[0] == created and err[1].startswith("exported ('TinySD', 'DDIM', '10'")
    assert [p.name for p in store.parent.iterdir()] == ["params.json"]  # no lock file left
    assert main(argv) == 0  # the folder is there now: nothing said of it
    assert created not in capsys.readouterr().err
    assert [p.name for p in store.parent.iterdir()] == ["params.json"]

    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"hello": "world"}\n')
    argv[-1] = str(foreign)
    assert main(argv) == 2
    assert "is not an accelopt params store" in capsys.readouterr().err
    assert foreign.read_text() == '{"hello": "world"}\n'


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("folder", "folder is a folder; name a file to write"),
        ("a" * 300 + ".json", "File name too long: give a shorter name"),
        ("file/store.json", "Not a directory: a folder in the path is a file; give another path"),
    ],
    ids=["folder", "long-name", "through-a-file"],
)
def test_cli_export_refuses_a_store_path_the_os_refuses_in_one_line(  # type: ignore[no-untyped-def]
    searched, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, why: str
) -> None:
    study, storage = searched
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("kept\n")
    argv = ["export", "--study", study.study_name, "--storage", storage, "--top-k", "0",
            "--store", str(tmp_path / name)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("accelopt: error: ") and err.count("\n") == 1, err
    assert "--store " in err and why in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert (tmp_path / "file").read_text() == "kept\n"


def test_run_export_and_nothing_feasible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACCELOPT_STORAGE", raising=False)
    monkeypatch.delenv("ACCELOPT_STORE", raising=False)
    argv = ["run", "--study", "TinySD-DDIM-10-tome", "--n-trials", "1", "--quiet", "--export",
            "--top-k", "0"]  # fmt: skip
    monkeypatch.setattr(
        "accelopt.trial.objective.loss_bound", lambda baseline, scores, z: (0.5, 0.5)
    )
    assert main(argv) == 0
    assert "nothing to export: none is feasible" in capsys.readouterr().err
    assert not (tmp_path / "search_params.json").exists()
    monkeypatch.setattr(
        "accelopt.trial.objective.loss_bound", lambda baseline, scores, z: (0.0, 0.0)
    )
    argv[2] = "TinySD-DDIM-10-deepcache"
    assert main(argv) == 0
    assert list(read_store(tmp_path / "search_params.json")) == [
        seed_key("TinySD", "DDIM", 10, ["deepcache"], 0.02)
    ]


def test_the_study_key_goes_to_the_fastest_trial_when_it_used_fewer_accelerators(
    searched: tuple[optuna.Study, str], tmp_path: Path
) -> None:
    """The set of every accelerator searched shares the study's key; its own best must not
    replace the study's best, which used only DeepCache here."""
    from optuna.distributions import CategoricalDistribution

    study, _ = searched
    template = next(t for t in study.trials if t.state == TrialState.COMPLETE)
    storage = f"sqlite:///{tmp_path / 'copy.db'}"
    copy = optuna.create_study(storage=storage, study_name=study.study_name)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    every = {"deepcache": {"cache_interval": 2, "cache_branch_id": 0},
             "tgate": {"gate_step": 5, "sp_interval": 2, "fi_interval": 1, "warm_up": 1},
             "tome": {"ratio": 0.5, "max_downsample": 1}}  # fmt: skip
    params = {"deepcache.cache_interval": 2, "tgate.gate_step": 5, "tome.ratio": 0.5}
    dists = {k: CategoricalDistribution([v]) for k, v in params.items()}
    for accelerators, speedup in ((every, 2.0), ({"deepcache": every["deepcache"]}, 3.0)):
        attrs = {**template.user_attrs, "accelerators": accelerators, "speedup": speedup,
                 "feasible": True}  # fmt: skip
        copy.add_trial(optuna.trial.create_trial(
            value=speedup, params=params, distributions=dists, user_attrs=attrs
        ))  # fmt: skip
    entries = entries_for(copy, storage)
    overall = entries[seed_key("TinySD", "DDIM", 10, ["deepcache", "tgate", "tome"], 0.99)]
    assert overall["measured"]["speedup"] == 3.0
    assert overall["accelerators"] == {"deepcache": every["deepcache"]}
    assert entries[seed_key("TinySD", "DDIM", 10, ["deepcache"], 0.99)]["study"]["trial"] == 1


def test_an_entry_measured_under_load_says_so_with_the_numbers(tmp_path: Path) -> None:
    """``measured.under_load``: the study's load warnings, which the entry check accepts; a
    study measured on a quiet machine has none."""
    from accelopt.measure.load import CpuReading
    from accelopt.spec import record_of

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="TinySD-DDIM-10", storage=storage,
                                direction="maximize")  # fmt: skip
    study.set_user_attr("spec", record_of(load_spec("TinySD-DDIM-10")))
    attrs = {"accelerators": {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}},
             "speedup": 2.0, "feasible": True, "score": 0.3, "score_loss": 0.01,
             "time_per_image": 0.3, "device": "cpu (2 threads)"}  # fmt: skip
    params = {"deepcache.cache_interval": 3, "tome.ratio": 0.0}  # searched both, used one
    dists = {k: optuna.distributions.CategoricalDistribution([v]) for k, v in params.items()}
    study.add_trial(optuna.trial.create_trial(value=2.0, params=params, distributions=dists,
                                              user_attrs=attrs))  # fmt: skip
    entries = entries_for(study, storage)  # the study's and DeepCache's
    assert len(entries) == 2 and all("under_load" not in e["measured"] for e in entries.values())

    records = [{**CpuReading(3.94, 2, 2, 0.48).record(), "worker": "host:1"}]
    study.set_user_attr("load_warnings", records)
    entries = entries_for(study, storage)  # checked as every reader checks them
    assert [e["measured"]["under_load"] for e in entries.values()] == [records, records]


def test_numbers_a_storage_holds_badly_never_reach_the_store(tmp_path: Path) -> None:
    """A journal may hold Infinity or NaN, and a trial's attributes may be lost or wrong: the
    entry leaves out what is no positive number (a store holds JSON, and the check refuses it),
    and a trial whose accelerators are no object adds no accelerator to the searched set."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="TinySD-DDIM-10", storage=storage,
                                direction="maximize")  # fmt: skip
    study.set_user_attr("spec", record_of(load_spec("TinySD-DDIM-10")))
    baselines = {"eager": 0.5, "compile": float("inf")}
    study.set_user_attr("execution", {"mode": "compile", "baselines": baselines})
    attrs = {"accelerators": {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}},
             "speedup": 2.0, "feasible": True, "score": 0.3, "score_loss": 0.01,
             "execution": "compile", "speedup_vs_eager": float("inf")}  # fmt: skip
    dists = {"deepcache.cache_interval": optuna.distributions.CategoricalDistribution([3])}
    study.add_trial(optuna.trial.create_trial(value=2.0, params={"deepcache.cache_interval": 3},
                                              distributions=dists, user_attrs=attrs))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL,
                                              user_attrs={"accelerators": True}))  # fmt: skip
    (entry,) = entries_for(study, storage).values()
    assert entry["execution"] == {"mode": "compile", "plain_baselines": {"eager": 0.5},
                                  "speedup_vs_eager": None}  # fmt: skip
    assert main(["export", "--study", "TinySD-DDIM-10", "--storage", storage,
                 "--store", str(tmp_path / "store.json"), "--top-k", "0"]) == 0  # fmt: skip
    json.loads((tmp_path / "store.json").read_text())  # strict JSON: no Infinity
