"""The demo's own flow, as a new user meets it: a study, its export, codegen, and the generated
script run as generated (no --model: accelopt builds TinySD for it), which leaves an image on
disk. Then the script's bad arguments, each one line and exit code 2, its --compare, and the
exactness of taking its accelerators off and putting them back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import accelopt
from accelopt._types import Pipeline
from accelopt.accelerators._snapshot import Snapshot
from accelopt.cli import main
from accelopt.codegen import read_header, render_script
from accelopt.pipelines import (
    MODELS,
    TOY_PIPELINES,
    denoiser,
    load_pipeline,
    toy_folder,
    toy_shipped,
)
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.pipelines.tiny import TINY_RESOLUTION
from accelopt.testing import make_entry

# The checkout this test imports accelopt from: the scripts build TinySD with the same code,
# as they would run from the checkout's venv.
CHECKOUT = Path(accelopt.__file__).resolve().parents[1]


def run_script(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter, with this checkout's accelopt first on its path."""
    pythonpath = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip


def test_the_demo_flow_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --study TinySD-DDIM-10 --export`, `codegen`, the script: an image on disk. One trial
    and no held-out re-timing keep it short; the study is the demo's own."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "search_params.json"
    storage = f"sqlite:///{tmp_path / 'accelopt.db'}"
    run = ["run", "--study", "TinySD-DDIM-10", "--n-trials", "1", "--top-k", "0", "--quiet"]
    assert main([*run, "--export", "--store", str(store), "--storage", storage]) == 0
    codegen = ["codegen", "--store", str(store), "--pipe", "TinySD", "--sched", "DDIM"]
    assert main([*codegen, "--steps", "10", "-o", "demo.py"]) == 0
    assert read_header((tmp_path / "demo.py").read_text())["BUILT_MODEL"] == "TinySD"

    result = run_script(tmp_path / "demo.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "wrote 1 image to images"
    with Image.open(tmp_path / "images" / "000.png") as image:
        assert image.size == (TINY_RESOLUTION, TINY_RESOLUTION)


# ---- the script's arguments ----------------------------------------------------------------

ACCELERATORS: dict[str, dict[str, Any]] = {
    "deepcache": {"cache_interval": 3, "cache_branch_id": 0},
    "tome": {"ratio": 0.5, "max_downsample": 1, "use_rand": True},
    "tgate": {"gate_step": 2, "sp_interval": 1, "fi_interval": 1, "warm_up": 0},
}
GENERATION: dict[str, Any] = {"resolution": TINY_RESOLUTION, "guidance": 5.0, "dtype": "float32"}


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TinySD script with every accelerator, four steps (rendered, no study behind it)."""
    path = tmp_path_factory.mktemp("script") / "tiny.py"
    path.write_text(render_script(make_entry("TinySD", "DDIM", 4, ACCELERATORS,
                                             generation=GENERATION)))  # fmt: skip
    return path


@contextmanager
def as_module(source: str, name: str) -> Iterator[types.ModuleType]:
    """A script as a module of this process (not run: its ``__name__`` is not __main__), so
    its checks, its loading and its ``Accelerated`` are tested without a new interpreter."""
    module = types.ModuleType(name)
    sys.modules[name] = module  # its dataclasses look their module up there
    try:
        exec(compile(source, f"{name}.py", "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[name]


@pytest.fixture(scope="module")
def generated(script: Path) -> Iterator[types.ModuleType]:
    with as_module(script.read_text(), "generated_tiny") as module:
        yield module


# A toy known before its training run ships (ToyPixArt) has nothing to load yet.
@pytest.mark.parametrize(
    "model",
    [
        m.name
        for m in MODELS
        if m.hub_id is None and (m.name not in TOY_PIPELINES or toy_shipped(m.name))
    ],
)
def test_every_shipped_model_loads_as_generated(model: str) -> None:
    """Tiny pipelines are built by accelopt with the weights studies measure (load_pipeline's,
    seeded), the toy model comes from the package's folder: no hub, no --model."""
    entry = make_entry(model, "DDIM", 4, {"tgate": ACCELERATORS["tgate"]}, generation=GENERATION)
    with as_module(render_script(entry), "generated_" + model.lower()) as script:
        source = script.model_source(script.MODEL)
        if model in TOY_PIPELINES:
            assert Path(source) == toy_folder(model)
        else:
            assert source is None
        pipe = script.load(script.MODEL, source, "cpu")
    theirs = load_pipeline(model, dtype="float32", device="cpu")
    assert type(pipe) is type(theirs)
    ours, expected = denoiser(pipe).state_dict(), denoiser(theirs).state_dict()
    assert list(ours) == list(expected)
    assert all(torch.equal(ours[k], expected[k]) for k in ours)


@pytest.mark.parametrize("scheduler", ["DDIM", "DPM-Solver++"])
def test_a_script_builds_the_scheduler_its_study_built(tmp_path: Path, scheduler: str) -> None:
    """From a folder whose scheduler config is PixArt's (DPM-Solver++, which has no
    ``clip_sample``), the script's scheduler is the study's: DDIM does not clip x0."""
    from diffusers import DPMSolverMultistepScheduler

    saved = load_pipeline("TinyPixArt")
    saved.scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4,
                                                  beta_end=0.02)  # fmt: skip
    saved.save_pretrained(tmp_path)
    entry = make_entry("TinyPixArt", scheduler, 4, {"tgate": ACCELERATORS["tgate"]},
                       generation=GENERATION)  # fmt: skip
    with as_module(render_script(entry), "generated_folder") as script:
        pipe = script.load(str(tmp_path), str(tmp_path), "cpu")
    study = load_pipeline(str(tmp_path))  # what a study of that folder runs
    set_scheduler(study, scheduler)
    assert type(pipe.scheduler) is type(study.scheduler)
    ours, theirs = ({k: v for k, v in p.scheduler.config.items() if not k.startswith("_")}
                    for p in (pipe, study))  # fmt: skip
    assert ours == theirs and ours["clip_sample"] is False  # not diffusers' bookkeeping


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--device", "cuda"],
            "--device cuda: this machine has no CUDA device; use --device cpu or leave it out",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
        (["--device", "gpu"], "--device gpu: not a device; use cpu, cuda, cuda:N or mps"),
        (["--model", "/nonexistent"], "--model /nonexistent: no such folder; pass a diffusers "
                                      "pipeline folder or a hub id (org/name)"),
        (["--model", "{tmp}"], "--model {tmp}: not a diffusers pipeline folder (no "
                               "model_index.json)"),
        (["--model", "nonexistent"], "--model nonexistent: no such folder here, nor a hub id "
                                     "(org/name)"),
        (["--repeats", "0"], "--repeats must be 1 or more"),
    ],
    ids=["cuda-on-a-cpu-machine", "bad-device", "missing-folder", "not-a-pipeline",
         "neither-folder-nor-hub-id", "no-repeats"],
)  # fmt: skip
def test_bad_arguments_are_one_line_and_exit_2(
    generated: types.ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tiny.py", *(a.format(tmp=tmp_path) for a in args)])
    with pytest.raises(SystemExit) as exited:
        generated.parse_args()
    assert exited.value.code == 2
    assert capsys.readouterr() == ("", f"tiny.py: error: {message.format(tmp=tmp_path)}\n")


def test_a_tiny_script_without_accelopt_says_how_to_get_it(
    generated: types.ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "accelopt.pipelines", None)  # "No module named ..."
    monkeypatch.setattr(sys, "argv", ["tiny.py"])
    with pytest.raises(SystemExit) as exited:
        generated.parse_args()
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "tiny.py: error: this script builds TinySD from config with accelopt; pip install "
        "accelopt (or run it from the checkout's venv), or pass --model DIR\n"
    )


def test_the_script_process_exits_2_with_the_one_line(script: Path, tmp_path: Path) -> None:
    result = run_script(script, "--model", "/nonexistent", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "tiny.py: error: --model /nonexistent: no such folder; pass a diffusers pipeline folder "
        "or a hub id (org/name)\n"
    )


def test_compare_times_the_plain_pipeline_in_alternated_pairs(
    script: Path, tmp_path: Path
) -> None:
    result = run_script(script, "--compare", "--warmup", "0", "--repeats", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    accelerated, plain, ratio, wrote = result.stdout.splitlines()
    seconds = r"(\d+\.\d{4}) s per image, median of 2 \((\d+\.\d{4})-(\d+\.\d{4})"
    assert re.fullmatch(rf"{seconds}; eager on cpu, after 0 warm-up generations\)", accelerated)
    assert re.fullmatch(
        rf"plain pipeline: {seconds}\), timed in pairs alternated with the accelerated one", plain
    )
    found = re.fullmatch(
        r"(\d+\.\d\d)x the plain pipeline: the median of 2 paired ratios "
        r"\((\d+\.\d\d)x-(\d+\.\d\d)x\)",
        ratio,
    )
    assert found, ratio
    median, low, high = map(float, found.groups())
    assert low <= median <= high
    assert wrote == "wrote 1 image to images"


def test_switching_the_accelerators_off_restores_the_plain_pipeline_exactly(
    tiny: Callable[[str], Pipeline], generated: types.ModuleType
) -> None:
    """``Accelerated.switch(False)`` leaves the pipeline as loaded (classes, attributes, hooks:
    accelopt's own snapshot), whose images are the plain ones; back on, the accelerated images
    come again, from the same patched objects."""
    pipe = tiny("TinySD")
    call = {"prompt": ["a red cube"], "num_inference_steps": 4, "guidance_scale": 5.0,
            "output_type": "np", "height": TINY_RESOLUTION, "width": TINY_RESOLUTION}  # fmt: skip

    def images(run: Callable[..., Any]) -> np.ndarray:
        return np.asarray(run(**call, generator=[torch.Generator().manual_seed(0)]).images)

    plain = images(pipe)
    loaded = Snapshot.take(pipe)  # after a call: the pipeline keeps a call's settings
    accelerated = generated.Accelerated(pipe)
    try:
        assert not loaded.matches(pipe)
        fast = images(accelerated)
        assert float(np.abs(fast - plain).max()) > 1e-3  # the accelerators change the images
        patched = Snapshot.take(pipe)
        accelerated.switch(False)
        assert loaded.matches(pipe)
        assert accelerated.structure() == ("plain",)
        np.testing.assert_array_equal(images(accelerated), plain)
        accelerated.switch(True)
        assert patched.matches(pipe)
        np.testing.assert_array_equal(images(accelerated), fast)
    finally:
        accelerated.switch(False)
