"""The seed system's search_params.json layout (accelopt/params_store/seed_layout.py), read by its
own kind of client: a lookup reconstructed from the seed's description, not from our code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from accelopt.cli import main
from accelopt.codegen import read_header
from accelopt.export import entries_for
from accelopt.params_store.file import read_store, seed_key, write_entries
from accelopt.params_store.seed_layout import read_params_file, seed_layout, write_seed
from accelopt.spec import TimingSpec, load_spec
from accelopt.study.loop import run_study
from accelopt.testing import make_entry

STUDY = "TinySD-DDIM-10-deepcache"


def seed_client_lookup(
    search_params: dict[str, Any],
    pipe_name: str,
    sched: str,
    steps: int,
    req_speedup: float | None,
    req_score_loss: float,
    search_targets: list[str],
) -> dict[str, Any]:
    """What the seed's auto_code_gen_v4.py does: build the key string, read best_params."""
    key = str((pipe_name, sched, str(steps), req_speedup, req_score_loss, sorted(search_targets)))
    return search_params[key]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A finished TinySD DeepCache study (nearly every trial feasible) and its storage. Its
    trials are timed unpaired, so export writes them whatever this machine's load did to their
    timing (a loaded machine timed a one-pair DeepCache trial slower than plain, and export
    rightly left it out); the layout is what these tests check."""
    storage = f"sqlite:///{tmp_path_factory.mktemp('seed') / 'studies.db'}"
    spec = load_spec(STUDY).replace(max_score_loss=0.99, timing=TimingSpec(pairs=0))
    run_study(spec, storage=storage, n_trials=3, progress=False, log=lambda s: None)
    return STUDY, storage


def test_export_merges_into_a_seed_file_that_a_seed_client_reads(
    searched: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, storage = searched
    path = tmp_path / "search_params.json"
    theirs = {"cache_interval": 3, "cache_branch_id": 0, "speedup": 2.31}
    old_key = str(("SD1.5", "DDIM", "50", None, 0.02, ["deepcache"]))
    path.write_text(json.dumps({old_key: theirs}))  # written by the seed's traversal_search.py

    argv = ["export", "--study", name, "--storage", storage, "--top-k", "0", "--store",
            str(path), "--format", "seed"]  # fmt: skip
    assert main(argv) == 0
    assert "(seed layout)" in capsys.readouterr().err

    search_params = json.loads(path.read_text())
    assert "format" not in search_params and "entries" not in search_params  # flat, as the seed
    assert seed_client_lookup(search_params, "SD1.5", "DDIM", 50, None, 0.02, ["deepcache"]) == (
        theirs
    )
    (entry,) = entries_for(load_study(name, storage), storage).values()
    best = seed_client_lookup(search_params, "TinySD", "DDIM", 10, None, 0.99, ["deepcache"])
    knobs = entry["accelerators"]["deepcache"]
    assert best == {**knobs, "speedup": round(entry["measured"]["speedup"], 2)}
    # The seed wrote each answer a second time, the achieved speedup in place of req_speedup.
    again = seed_client_lookup(
        search_params, "TinySD", "DDIM", 10, best["speedup"], 0.99, ["deepcache"]
    )
    assert again == best
    assert len(search_params) == 3


def load_study(name: str, storage: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def test_codegen_reads_a_seed_file_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "search_params.json"
    tgate = {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warmup": 2, "speedup": 1.7}
    both = {"cache_interval": 3, "cache_branch_id": 0, "ratio": 0.5, "max_downsample": 2,
            "speedup": 2.4}  # fmt: skip
    path.write_text(json.dumps({
        str(("SDXL", "DDIM", "25", None, 0.02, ["tgate"])): tgate,
        str(("SDXL", "DDIM", "25", None, 0.02, ["deepcache", "tome"])): both,
    }))  # fmt: skip
    out = tmp_path / "fast.py"
    argv = ["codegen", "--pipe", "SDXL", "--sched", "DDIM", "--steps", "25", "--store", str(path)]
    assert main([*argv, "-o", str(out)]) == 0
    assert f"read 2 usable entries of 2 from {path} (seed layout)" in capsys.readouterr().err
    header = read_header(out.read_text())
    assert header["DEEPCACHE"] == {"cache_interval": 3, "cache_branch_id": 0}
    assert header["TOME"] == {"ratio": 0.5, "max_downsample": 2, "use_rand": False, "seed": 0}
    assert header["TGATE"] is None
    assert header["MODEL"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert (header["RESOLUTION"], header["GUIDANCE"]) == (1024, 5.0)  # accelopt's SDXL defaults
    assert "From a seed-layout params file: 2.40x the plain pipeline" in out.read_text()

    assert main([*argv, "--targets", "tgate", "-o", str(tmp_path / "t.py")]) == 0
    header = read_header((tmp_path / "t.py").read_text())
    assert header["TGATE"] == {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2}


@pytest.mark.parametrize(
    ("key", "params", "message"),
    [
        ("not a tuple", {"speedup": 2.0}, "not a tuple literal"),
        (str(("SDXL", "DDIM", 25, None, 0.02, [])), {"speedup": 2.0}, "expected (pipe, sched"),
        (str(("SDXL", "DDIM", "25", None, 0.02, ["deepcache"])), {"cache_interval": 3},
         "its best_params has no speedup"),
        (str(("SDXL", "DDIM", "25", None, 0.02, ["deepcache"])), {"cache_every": 3,
         "speedup": 2.0}, "unknown knob 'cache_every'"),
        (str(("SDXL", "DDIM", "25", None, 0.02, ["deepcache"])), {"ratio": 0.5,
         "speedup": 2.0}, "knobs of tome outside its targets"),
        (str(("SDXL", "DDIM", "25", None, 0.02, ["deepcache"])), {"cache_interval": "3",
         "speedup": 2.0}, "'cache_interval' is not a number"),
        (str(("Kandinsky", "DDIM", "25", None, 0.02, [])), {"speedup": 2.0},
         "accelopt does not know the pipeline 'Kandinsky'"),
        ("(" * 5000, {"speedup": 2.0}, "longer than 1000 characters"),
        (str(("SDXL", "DDIM", "25", None, 0.02, ["deepcache"])), {"cache_interval": 10**400,
         "speedup": 2.0}, "'cache_interval' is not a number"),
    ],
)  # fmt: skip
def test_a_broken_seed_file_exits_2_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, params: dict, message: str
) -> None:
    path = tmp_path / "search_params.json"
    text = json.dumps({key: params})
    path.write_text(text)
    argv = ["codegen", "--pipe", "SDXL", "--sched", "DDIM", "--steps", "25", "--store", str(path)]
    assert main([*argv, "-o", str(tmp_path / "x.py")]) == 2
    err = capsys.readouterr().err
    assert message in err and "left untouched" in err
    assert path.read_text() == text
    assert not (tmp_path / "x.py").exists()


def test_layouts_never_overwrite_each_other(tmp_path: Path) -> None:
    """A seed export into an accelopt store, or an accelopt export into a seed file, is
    refused and leaves the file as it was."""
    entry = make_entry()
    store = tmp_path / "store.json"
    write_entries(store, {entry["key"]: entry})
    before = store.read_text()
    with pytest.raises(Exception, match="is an accelopt params store, not a seed-layout file"):
        write_seed(store, {entry["key"]: entry})
    assert store.read_text() == before

    seed = tmp_path / "seed.json"
    write_seed(seed, {entry["key"]: entry})
    before = seed.read_text()
    with pytest.raises(Exception, match="is not an accelopt params store"):
        write_entries(seed, {entry["key"]: entry})
    assert seed.read_text() == before
    assert read_params_file(seed)[0] == "seed" and read_params_file(store)[0] == "accelopt"
    assert read_params_file(store)[1] == read_store(store)  # existing stores load as before


def test_seed_layout_keeps_own_keys_and_leaves_out_time_requirements() -> None:
    fastest = make_entry(speedup=2.004)
    asked = make_entry(req_speedup=2.0, speedup=2.5)  # its achieved key is 2.5's
    timed = make_entry(req_time=0.5, speedup=3.0)
    entries = {e["key"]: e for e in (fastest, asked, timed)}
    flat, left_out = seed_layout(entries)
    assert left_out == [timed["key"]]
    # fastest's achieved key (2.0) is asked's own key: the entry exported under it wins.
    assert asked["key"] == seed_key("SDXL", "DDIM", 25, ["deepcache"], 0.02, 2.0)
    assert flat[asked["key"]]["speedup"] == 2.5
    assert flat[fastest["key"]]["speedup"] == 2.0
    assert flat[seed_key("SDXL", "DDIM", 25, ["deepcache"], 0.02, 2.5)]["speedup"] == 2.5
    assert set(flat) == {
        fastest["key"],
        asked["key"],
        seed_key("SDXL", "DDIM", 25, ["deepcache"], 0.02, 2.5),
    }


@pytest.mark.parametrize(
    "text",
    ['{"k": ' + "[" * 3000 + "]" * 3000 + "}", '{"k": {"speedup": ' + "9" * 5000 + "}}"],
    ids=["nested 3000 deep", "5000 digits"],
)
def test_json_past_the_parser_limits_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "search_params.json"
    path.write_text(text)
    argv = ["codegen", "--pipe", "SDXL", "--sched", "DDIM", "--steps", "25", "--store", str(path)]
    assert main([*argv, "-o", str(tmp_path / "x.py")]) == 2
    err = capsys.readouterr().err
    assert "is not a params file (not valid JSON" in err and "left untouched" in err
    assert len(err) < 600 and path.read_text() == text
