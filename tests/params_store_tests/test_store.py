"""Tests for accelopt/params_store/file.py: seed keys, the store's path, reads, merges and
refusals."""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from accelopt.errors import AccelOptError
from accelopt.params_store import file as store
from accelopt.params_store.file import read_store, seed_key, store_path, write_entries
from accelopt.testing import entries as _entries


def make_entry(
    pipeline: str = "SDXL",
    scheduler: str = "DDIM",
    steps: int = 25,
    accelerators: dict[str, dict[str, Any]] | None = None,
    **kwargs: Any,
) -> tuple[str, dict[str, Any]]:
    """A (key, entry) pair shaped exactly as accelopt/export.py makes entries."""
    entry = _entries.make_entry(pipeline, scheduler, steps, accelerators, **kwargs)
    return entry["key"], entry


def entries(*pairs: tuple[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return dict(pairs)


def leftovers(folder: Path) -> list[str]:
    """Files other than the store and its lock: temporary files a write left behind."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".json", ".lock")))


# ---- seed_key -------------------------------------------------------------------------------


def test_seed_key_exact_string() -> None:
    key = seed_key("SDXL", "DDIM", 25, ["tgate", "deepcache"], 0.02)
    assert key == "('SDXL', 'DDIM', '25', None, 0.02, ['deepcache', 'tgate'])"


@pytest.mark.parametrize(
    ("pipeline", "short"),
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", "SDXL"),
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "SD1.5"),
        ("stabilityai/stable-diffusion-2-1", "SD2.1"),
        ("STABILITYAI/Stable-Diffusion-XL-Base-1.0", "SDXL"),
        ("sdxl", "SDXL"),
        ("SD1.5", "SD1.5"),
    ],
)
def test_seed_key_maps_hub_ids_to_short_names(pipeline: str, short: str) -> None:
    assert seed_key(pipeline, "DDIM", 20, [], 0.02) == f"('{short}', 'DDIM', '20', None, 0.02, [])"


@pytest.mark.parametrize(
    ("typed", "seed"),
    [
        ("unipc", "UniPCMultistepScheduler"),
        ("UniPC", "UniPCMultistepScheduler"),
        ("UniPCMultistepScheduler", "UniPCMultistepScheduler"),
        ("dpm++", "DPM-Solver++"),
        ("DPMSolverMultistepScheduler", "DPM-Solver++"),
        ("ddim", "DDIM"),
        ("DDIMScheduler", "DDIM"),
    ],
)
def test_seed_key_uses_the_seed_scheduler_spellings(typed: str, seed: str) -> None:
    assert seed_key("SD2.1", typed, 50, ["tome"], 0.02) == (
        f"('SD2.1', '{seed}', '50', None, 0.02, ['tome'])"
    )


def test_seed_key_requirements() -> None:
    assert seed_key("SDXL", "DDIM", 25, ["deepcache"], 0.02, req_speedup=2) == (
        "('SDXL', 'DDIM', '25', 2.0, 0.02, ['deepcache'])"
    )
    assert seed_key("SDXL", "DDIM", 25, ["deepcache"], 0.02, req_time=1.5) == (
        "('SDXL', 'DDIM', '25', None, 0.02, ['deepcache'], ('req_time', 1.5))"
    )
    assert seed_key("SDXL", "DDIM", 25, [], 0, req_speedup=1.5, req_time=2) == (
        "('SDXL', 'DDIM', '25', 1.5, 0.0, [], ('req_time', 2.0))"
    )


def test_seed_key_keeps_unknown_pipelines_as_given() -> None:
    key = seed_key("./my-finetune", "ddim", 30, ["tome", "deepcache"], 0.05)
    assert key == "('./my-finetune', 'DDIM', '30', None, 0.05, ['deepcache', 'tome'])"


def test_seed_key_refuses_unknown_schedulers() -> None:
    with pytest.raises(AccelOptError, match="unknown scheduler 'LMS'"):
        seed_key("SDXL", "LMS", 25, [], 0.02)


TARGET_SETS = ([], ["deepcache"], ["tgate", "deepcache"], ["tome", "tgate", "deepcache"])
HUB_IDS = {
    "SD1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "SD2.1": "stabilityai/stable-diffusion-2-1",
    "SDXL": "stabilityai/stable-diffusion-xl-base-1.0",
}
# Our spellings a user may type -> the seed's spelling in keys.
TYPED_SCHEDULERS = {"ddim": "DDIM", "dpm++": "DPM-Solver++", "UniPC": "UniPCMultistepScheduler"}


@pytest.mark.parametrize("pipe_name", sorted(HUB_IDS))
def test_seed_key_equals_the_seed_systems_key(pipe_name: str) -> None:
    requirements = ((None, 0.02), (2.0, 0.02), (1.5, 0.005))
    cases = itertools.product(TYPED_SCHEDULERS.items(), (20, 25, 50), TARGET_SETS, requirements)
    checked = 0
    for (typed, sched), steps, targets, (req_speedup, req_score_loss) in cases:
        seed = str((pipe_name, sched, str(steps), req_speedup, req_score_loss, sorted(targets)))
        for pipeline in (pipe_name, HUB_IDS[pipe_name]):
            for scheduler in (typed, sched):
                key = seed_key(pipeline, scheduler, steps, targets, req_score_loss, req_speedup)
                assert key == seed
                checked += 1
    assert checked == 3 * 3 * 4 * 3 * 4


# ---- store_path -----------------------------------------------------------------------------


def test_store_path_explicit_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ACCELOPT_STORE", str(tmp_path / "env.json"))
    assert store_path(tmp_path / "mine.json") == tmp_path / "mine.json"
    assert store_path("other.json") == Path("other.json")


def test_store_path_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELOPT_STORE", "/somewhere/params.json")
    assert store_path() == Path("/somewhere/params.json")
    assert store_path(None) == Path("/somewhere/params.json")
    monkeypatch.delenv("ACCELOPT_STORE")
    assert store_path() == Path("search_params.json")
    assert isinstance(store_path(), Path)


# ---- reading and writing --------------------------------------------------------------------


def test_read_missing_store_is_empty(tmp_path: Path) -> None:
    assert read_store(tmp_path / "absent.json") == {}
    assert list(tmp_path.iterdir()) == []


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "search_params.json"
    written = entries(
        make_entry("SDXL", "DDIM", 25),
        make_entry(
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "dpm++",
            20,
            {"tgate": {"gate_step": 10, "warm_up": 2}, "deepcache": {"cache_interval": 5}},
            req_speedup=2.0,
        ),
        make_entry('./my "finetune" ünïcödé 🚀\n', "unipc", 50, {}, req_time=0.5),
    )
    write_entries(path, written)
    assert read_store(path) == written
    assert leftovers(tmp_path) == []


def test_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "search_params.json"
    pairs = [
        make_entry("SDXL", "DDIM", 25, {"tome": {"ratio": 0.5}}),
        make_entry("SD1.5", "DDIM", 20),
        make_entry("SDXL", "DDIM", 25, req_speedup=3.0),
    ]
    write_entries(path, dict(reversed(pairs)))
    text = path.read_text("utf-8")
    assert text.endswith("}\n")
    data = json.loads(text)
    assert list(data) == ["format", "version", "entries"]
    assert data["format"] == "accelopt-params-store"
    assert data["version"] == 1
    assert list(data["entries"]) == sorted(key for key, _ in pairs)
    assert data["entries"] == dict(pairs)


def test_second_write_merges(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    k1, e1 = make_entry("SDXL", "DDIM", 25, speedup=2.0)
    k2, e2 = make_entry("SD1.5", "DDIM", 20, speedup=1.5)
    write_entries(path, {k1: e1, k2: e2})
    k1b, e1b = make_entry("SDXL", "DDIM", 25, speedup=3.5)
    assert k1b == k1
    k3, e3 = make_entry("SD2.1", "UniPC", 50)
    write_entries(path, {k1: e1b, k3: e3})
    assert read_store(path) == {k1: e1b, k2: e2, k3: e3}
    assert read_store(path)[k1]["measured"]["speedup"] == 3.5
    assert list(json.loads(path.read_text("utf-8"))["entries"]) == sorted([k1, k2, k3])
    assert leftovers(tmp_path) == []


def test_write_makes_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.json"
    write_entries(path, entries(make_entry()))
    assert len(read_store(path)) == 1


def test_empty_write_creates_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    write_entries(path, {})
    assert json.loads(path.read_text("utf-8")) == {
        "format": "accelopt-params-store",
        "version": 1,
        "entries": {},
    }


def test_failed_replace_keeps_old_file_and_removes_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.json"
    write_entries(path, entries(make_entry("SDXL")))
    before = path.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_entries(path, entries(make_entry("SD1.5")))
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_written_store_keeps_the_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    umask = os.umask(0)
    os.umask(umask)
    write_entries(path, entries(make_entry()))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# ---- refusals -------------------------------------------------------------------------------

NOT_STORES = {
    "corrupt": b'{"format": "accelopt-params-store", "version": 1, "entries": {',
    "list": b"[1, 2, 3]\n",
    "foreign": b'{"hello": 1}\n',
    "newer": b'{"format": "accelopt-params-store", "version": 2, "entries": {}}\n',
    "entries-not-a-dict": b'{"format": "accelopt-params-store", "version": 1, "entries": []}',
    "not-utf8": b'{"format": "accelopt-params-store", "x": "\xff\xfe"}',
}
MESSAGES = {
    "corrupt": "is not a params store (not valid JSON",
    "list": "is not an accelopt params store",
    "foreign": "is not an accelopt params store",
    "newer": "is params store version 2; this accelopt reads version 1 only",
    "entries-not-a-dict": 'is a broken params store ("entries" is not an object)',
    "not-utf8": "is not a params store (not valid JSON",
}


@pytest.mark.parametrize("kind", sorted(NOT_STORES))
def test_read_refuses_what_is_not_a_store(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "search_params.json"
    path.write_bytes(NOT_STORES[kind])
    with pytest.raises(AccelOptError) as err:
        read_store(path)
    message = str(err.value)
    assert message.startswith(f"{path} ")
    assert MESSAGES[kind] in message
    assert "left untouched" in message
    assert path.read_bytes() == NOT_STORES[kind]


@pytest.mark.parametrize("kind", sorted(NOT_STORES))
def test_write_refuses_what_is_not_a_store(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "search_params.json"
    path.write_bytes(NOT_STORES[kind])
    with pytest.raises(AccelOptError) as err:
        write_entries(path, entries(make_entry()))
    assert str(err.value).startswith(f"{path} ")
    assert MESSAGES[kind] in str(err.value)
    assert "left untouched" in str(err.value)
    assert path.read_bytes() == NOT_STORES[kind]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_and_file_kept(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "search_params.json"
    write_entries(path, entries(make_entry("SDXL")))
    before = path.read_bytes()
    key, entry = make_entry("SD1.5")
    entry["measured"]["score_loss"] = bad
    with pytest.raises(ValueError, match="JSON compliant"):
        write_entries(path, {key: entry})
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_non_finite_first_write_creates_no_file(tmp_path: Path) -> None:
    path = tmp_path / "search_params.json"
    key, entry = make_entry()
    entry["generation"]["guidance"] = float("nan")
    with pytest.raises(ValueError):
        write_entries(path, {key: entry})
    assert not path.exists()
    assert leftovers(tmp_path) == []


# ---- concurrency ----------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from accelopt.params_store.file import write_entries

    i, path, gate = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    deadline = time.monotonic() + 30
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    for j in range(25):
        write_entries(path, {f"p{i}-{j}": {"writer": i, "n": j}})
    """
)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "search_params.json"
    gate = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(i), str(path), str(gate)])
        for i in range(8)
    ]
    gate.touch()  # all eight start writing together
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0] * 8
    data = json.loads(path.read_text("utf-8"))
    assert data["format"] == "accelopt-params-store"
    expected = {f"p{i}-{j}": {"writer": i, "n": j} for i in range(8) for j in range(25)}
    assert data["entries"] == expected
    assert list(data["entries"]) == sorted(expected)
    # Each writer removed the lock file as it let go (and checked, once it held a lock, that
    # its file was still there: 200 writes that remove it lost nothing above).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "search_params.json"]
