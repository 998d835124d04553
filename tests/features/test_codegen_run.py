"""Generated scripts, run: export -> codegen -> a subprocess that builds the tiny pipeline.

The script must apply exactly the stored parameters (it reports what the upstream objects hold)
and produce the images accelopt produces with the same configuration.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import accelopt
from accelopt import accelerators
from accelopt.cli import main
from accelopt.codegen import read_header, render_script
from accelopt.export import entries_for
from accelopt.params_store.file import read_store, write_entries
from accelopt.pipelines.tiny import TINY_RESOLUTION
from accelopt.spec import load_spec
from accelopt.study.loop import run_study
from accelopt.study.results import Requirement
from accelopt.testing import entry_images, make_entry, tiny_pipeline

PROMPTS = ["a red cube on a table", 'a sign that says "OPEN"']
CHECKOUT = Path(accelopt.__file__).resolve().parents[1]  # the accelopt the scripts build with
STUDIES = {
    "TinySD": "TinySD-DDIM-10-deepcache+tome+tgate",
    "TinySDXL": "TinySDXL-DDIM-10-deepcache+tgate",
    "TinyPixArt": "TinyPixArt-DDIM-10-tgate",
}
# More methods on a pipeline already above: (pipeline, study). MagCache's script carries the
# study's calibrated ratios as data; FirstBlockCache's and DBCache's decide per call; PAB's and
# FasterCache's read their timesteps from the scheduler.
MORE_STUDIES = [
    ("TinyPixArt", "TinyPixArt-DDIM-10-magcache"),
    ("TinyPixArt", "TinyPixArt-DDIM-10-taylorseer"),
    ("TinyPixArt", "TinyPixArt-DDIM-10-fbcache"),
    ("TinyPixArt", "TinyPixArt-DDIM-10-dbcache"),
    ("TinyPixArt", "TinyPixArt-DDIM-10-pab"),
    ("TinyPixArt", "TinyPixArt-DDIM-10-fastercache"),
]


@pytest.mark.parametrize(("pipe_name", "study_name"), [*STUDIES.items(), *MORE_STUDIES])
def test_export_codegen_run_matches_accelopt(
    pipe_name: str, study_name: str, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = load_spec(study_name).replace(max_score_loss=0.99)
    study = run_study(spec, storage=storage, n_trials=2, progress=False, log=lambda s: None).study
    store = tmp_path / "search_params.json"
    # At least half the baseline's speed, not "surely faster": two trials of a tiny cache at
    # 1.03-1.15x on a loaded CI machine may not show that (DBCache's did not, once), and what
    # this test checks is the script, not the speed.
    write_entries(store, entries_for(study, storage, Requirement(speedup=0.5)))
    (entry,) = read_store(store).values()
    if "tome" in entry["accelerators"]:  # the seeded random partition must be reproduced too
        entry["accelerators"]["tome"]["use_rand"] = True

    folder = tmp_path / pipe_name
    tiny_pipeline(pipe_name).save_pretrained(folder)
    script = tmp_path / "generated.py"
    script.write_text(render_script(entry))
    assert "accelopt" not in "".join(
        line for line in script.read_text().splitlines() if line.startswith(("import", "from"))
    )
    array = tmp_path / "images.npy"
    # No --model: the script builds the tiny pipeline with this checkout's accelopt, and its
    # images below match accelopt's from the saved folder, so the weights are the same.
    pythonpath = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    result = subprocess.run(
        [sys.executable, str(script), *PROMPTS, "--device", "cpu", "--save-array", str(array),
         "--out-dir", str(tmp_path / "png"), "--show-applied"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]

    applied = json.loads(result.stdout.splitlines()[0])
    stored = entry["accelerators"]
    if "deepcache" in stored:
        assert applied["deepcache"] == stored["deepcache"]
    if "tome" in stored:
        assert applied["tome"] == {**stored["tome"], "seed": 0}
    if "tgate" in stored:
        assert {k: applied["tgate"][k] for k in stored["tgate"]} == stored["tgate"]
    if "magcache" in stored:  # its ratios too, read back from the script's literals exactly
        assert applied["magcache"] == stored["magcache"]
        assert len(stored["magcache"]["ratios"]) == 10
    for name in ("taylorseer", "pab"):
        if name in stored:
            assert applied[name] == stored[name]
    # A knob the study did not search (DBCache's caps, FasterCache's windows' lower edges):
    # upstream's default.
    for name in ("fbcache", "dbcache", "fastercache"):
        if name in stored:
            assert {k: applied[name][k] for k in stored[name]} == stored[name]
            default = dataclasses.asdict(accelerators.get(name).config())
            assert applied[name] == {**default, **stored[name]}
    assert set(applied) == set(stored)
    assert len(list((tmp_path / "png").glob("*.png"))) == len(PROMPTS)

    theirs, ours = np.load(array), entry_images(folder, entry, PROMPTS)
    assert theirs.shape == ours.shape == (2, 32, 32, 3)
    # Same weights, same kernels: identical up to reload rounding (FINDINGS: 7e-7).
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)


# The CLI over a hand-made store: the four request kinds, batches, and a missing entry.


def _entry(targets: dict, speedup: float, loss: float, seconds: float) -> dict:  # type: ignore[type-arg]
    from accelopt.params_store.file import seed_key

    key = seed_key("SDXL", "DDIM", 25, list(targets), 0.02) + f"#{speedup}"
    return {
        "key": key, "pipeline": "SDXL", "model": "stabilityai/stable-diffusion-xl-base-1.0",
        "scheduler": "DDIM", "seed_scheduler": "DDIM", "steps": 25, "targets": sorted(targets),
        "requirement": {"req_speedup": None, "max_score_loss": 0.02, "req_time": None},
        "accelerators": targets, "params": {},
        "generation": {"resolution": 1024, "guidance": 5.0, "dtype": "float16"},
        "measured": {"speedup": speedup, "time_per_image": seconds, "score": 30.0,
                     "score_loss": loss, "peak_memory": None, "device": "NVIDIA H200"},
        "baseline": {}, "versions": {}, "study": {"name": "x", "storage": "y", "trial": 0},
        "exported_at": "2026-11-28T00:00:00+00:00",
    }  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "search_params.json"
    dc = {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}}
    dct = {**dc, "tgate": {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2}}
    entries = [_entry(dc, 2.1, 0.010, 0.8), _entry(dct, 2.6, 0.018, 0.65),
               _entry(dc, 3.2, 0.030, 0.5)]  # fmt: skip
    write_entries(path, {e["key"]: e for e in entries})
    return path


@pytest.mark.parametrize(
    ("flags", "speedup"),
    [
        ([], 2.6),  # the best you have within the default 2% budget
        (["--req-speedup", "2.5"], 2.6),
        (["--max-score-loss", "0.012"], 2.1),  # a tighter quality budget
        (["--req-time", "0.7"], 2.6),
        (["--max-score-loss", "0.05"], 3.2),
        (["--targets", "deepcache"], 2.1),
    ],
)
def test_codegen_answers_each_kind_of_request(
    store: Path, tmp_path: Path, flags: list[str], speedup: float
) -> None:
    out = tmp_path / "fast.py"
    argv = ["codegen", "--pipe", "SDXL", "--sched", "ddim", "--steps", "25", "--store", str(store)]
    assert main([*argv, *flags, "-o", str(out)]) == 0
    assert f"{speedup:.2f}x the plain pipeline" in out.read_text()
    assert read_header(out.read_text())["MODEL"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert main([*argv, *flags, "-o", str(out)]) == 2  # exists: --force to overwrite
    assert main([*argv, *flags, "-o", str(out), "--force"]) == 0


def test_codegen_missing_entry_says_what_to_run(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["codegen", "--pipe", "SDXL", "--sched", "DDIM", "--steps", "25", "--store", str(store)]
    argv += ["--req-speedup", "5", "--targets", "deepcache,tgate", "-o", str(tmp_path / "x.py")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "no entry answers SDXL DDIM 25 steps, deepcache+tgate, speedup >= 5x" in err
    assert "nearest: SDXL DDIM 25 deepcache+tgate: 2.60x, loss 1.80%" in err
    assert "accelopt run --study SDXL-DDIM-25-deepcache+tgate --req-speedup 5 --export" in err
    assert not (tmp_path / "x.py").exists()


@pytest.mark.parametrize("kind", ["json", "toml"])
def test_codegen_batch_from_a_task_file(store: Path, tmp_path: Path, kind: str) -> None:
    tasks = [
        {"pipe": "SDXL", "sched": "DDIM", "steps": 25, "output": "best.py"},
        {"pipe": "SDXL", "sched": "DDIM", "steps": 25, "req_speedup": 2.5},
        {"pipe": "SDXL", "sched": "DDIM", "steps": 25, "targets": ["deepcache"],
         "max_score_loss": 0.05},
    ]  # fmt: skip
    if kind == "json":
        path = tmp_path / "tasks.json"
        path.write_text(json.dumps(tasks))
    else:
        path = tmp_path / "tasks.toml"
        path.write_text(
            '[[task]]\npipe = "SDXL"\nsched = "DDIM"\nsteps = 25\noutput = "best.py"\n\n'
            '[[task]]\npipe = "SDXL"\nsched = "DDIM"\nsteps = 25\nreq_speedup = 2.5\n\n'
            '[[task]]\npipe = "SDXL"\nsched = "DDIM"\nsteps = 25\ntargets = ["deepcache"]\n'
            "max_score_loss = 0.05\n"
        )
    out = tmp_path / "scripts"
    assert main(["codegen", "--tasks", str(path), "--store", str(store), "-o", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["SDXL-DDIM-25-deepcache.py", "SDXL-DDIM-25.py", "best.py"]
    assert "3.20x" in (out / "SDXL-DDIM-25-deepcache.py").read_text()


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ("[]", "expected a non-empty list of tasks"),
        ('[{"pipe": "SDXL", "sched": "DDIM"}]', "task 0 lacks 'steps'"),
        ('[{"pipe": "SDXL", "sched": "DDIM", "steps": "25"}]', "steps has the wrong type"),
        ('[{"pipe": "SDXL", "sched": "DDIM", "steps": 25, "speed": 2}]', "unknown key 'speed'"),
        ("{not json", "not a task list"),
    ],
)
def test_bad_task_files_exit_2(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tasks: str, message: str
) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(tasks)
    argv = ["codegen", "--tasks", str(path), "--store", str(store), "-o", str(tmp_path / "o")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# A compile-mode script on the CPU. The entry asks for what tests/test_execution.py compiles
# (TinySD, DeepCache branch 0, four steps, two prompts with guidance), and runs in the same test
# process as those tests (conftest.py: TOGETHER), so inductor's on-disk cache serves both.
COMPILE_TOLERANCE = 1e-4  # tests/test_execution.py measured 2.3e-6 at most


def test_a_compile_mode_script_runs_on_the_cpu_and_matches_eager(tmp_path: Path) -> None:
    entry = make_entry(
        "TinySD",
        steps=4,
        accelerators={"deepcache": {"cache_interval": 3, "cache_branch_id": 0}},
        generation={"resolution": TINY_RESOLUTION, "guidance": 5.0, "dtype": "float32"},
        execution="compile",
    )
    folder = tmp_path / "TinySD"
    tiny_pipeline("TinySD").save_pretrained(folder)
    script = tmp_path / "generated.py"
    script.write_text(render_script(entry))

    array = tmp_path / "images.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), *PROMPTS, "--model", str(folder), "--device", "cpu",
         "--save-array", str(array), "--out-dir", str(tmp_path / "png"), "--repeats", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    timing, wrote = result.stdout.splitlines()
    number = r"(\d+\.\d{4})"
    found = re.fullmatch(
        rf"{number} s per image, median of 2 \({number}-{number}; "
        r"compile on cpu, after 1 warm-up generations\)",
        timing,
    )
    assert found, timing
    median, low, high = map(float, found.groups())
    assert 0 < low <= median <= high
    assert wrote == f"wrote {len(PROMPTS)} images to {tmp_path / 'png'}"

    compiled, eager = np.load(array), entry_images(folder, entry, PROMPTS)
    assert compiled.shape == eager.shape == (2, TINY_RESOLUTION, TINY_RESOLUTION, 3)
    assert float(np.abs(compiled - eager).max()) < COMPILE_TOLERANCE


@pytest.mark.parametrize(
    "acc",
    [{"fbcache": {"threshold": 0.1}},
     {"dbcache": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.1,
                  "max_warmup_steps": 2, "max_cached_steps": -1,
                  "max_continuous_cached_steps": -1}}],
)  # fmt: skip
def test_a_decided_cache_script_refuses_cuda_graphs_in_one_line(
    acc: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    """Its entry runs eagerly; asked for CUDA graphs, the script refuses by name before it
    loads anything (and before the device: the reason holds on any machine)."""
    script = tmp_path / "generated.py"
    script.write_text(render_script(make_entry("TinyPixArt", "DDIM", 10, acc)))
    result = subprocess.run(
        [sys.executable, str(script), "--execution", "cuda-graphs", "--device", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    (name,) = acc
    assert result.returncode == 2
    assert result.stderr == (
        f"generated.py: error: --execution cuda-graphs: {name} decides per call from a device "
        f"value (its residual threshold), which a captured graph cannot read; use --execution "
        f"eager or compile\n"
    )


HOSTILE = ['"""; open("pwned", "w"); """', "\x1b[2J\r\nforged",
           "'); import os; os.system('touch pwned2'); ('"]  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1])
def test_scripts_of_hostile_entries_create_only_their_images(tmp_path: Path, seed: int) -> None:
    """A sample of the codegen fuzz, run: hostile text in every free-text field of a valid
    entry, and the script writes its images and nothing else anywhere in its folder."""
    import random

    rng = random.Random(seed)
    text = lambda: "".join(rng.sample(HOSTILE, 2))  # noqa: E731
    folder = tmp_path / "model"
    tiny_pipeline("TinySD").save_pretrained(folder)
    entry = make_entry(
        "TinySD", "DDIM", 2, {"tgate": {"gate_step": 1, "sp_interval": 1, "fi_interval": 1,
                                       "warm_up": 0}}, device=text(),
        study_name=text(), storage=text(), key=text(),
        generation={"resolution": 32, "guidance": 5.0, "dtype": "float32"},
    )  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    script = work / "generated.py"
    script.write_text(render_script(entry, [text()]), encoding="utf-8")
    before = {p for p in tmp_path.rglob("*")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), "--model", str(folder), "--device", "cpu",
         "--warmup", "0", "--repeats", "1", "--out-dir", "out"],
        capture_output=True, env=env, cwd=work, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert b"\r" not in result.stderr  # no loading bar off a terminal (bytes: no newline mapping)
    created = {p for p in tmp_path.rglob("*")} - before
    assert {p.relative_to(work) for p in created if "__pycache__" not in p.parts} == {
        Path("out"),
        Path("out/000.png"),
    }
