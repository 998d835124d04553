"""Tests for accelopt/spec.py: study names, defaults derived from them, spec files and lookup."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from accelopt.errors import AccelOptError
from accelopt.pipelines import model_info
from accelopt.spec import (
    DEFAULT_MAX_SCORE_LOSS,
    MetricSpec,
    PromptSpec,
    SamplerSpec,
    StudySpec,
    canonical_name,
    find_spec_file,
    load_spec,
    parse_name,
    shipped_dir,
    shipped_specs,
)

SEED_PIPELINES = ("SD1.5", "SD2.1", "SDXL", "PixArt-alpha", "PixArt-Sigma")
SEED_SCHEDULERS = ("DDIM", "DPM-Solver++", "UniPC")
SEED_STEPS = (20, 25, 50)
SEED_MATRIX = [
    f"{p}-{s}-{n}" for p, s, n in itertools.product(SEED_PIPELINES, SEED_SCHEDULERS, SEED_STEPS)
]
TINY_SHIPPED = ("TinySD-DDIM-10", "TinySDXL-DDIM-10", "TinyPixArt-DDIM-10")


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose ./studies is empty, so only shipped specs are found."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_spec(folder: Path, filename: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(text, "utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(AccelOptError) as info:
        load_spec(path=path)
    return str(info.value)


# --- parse_name -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pipeline", "scheduler", "steps", "targets"),
    [
        ("SDXL-DDIM-25", "SDXL", "DDIM", 25, None),
        ("SD1.5-UniPC-20-deepcache+tgate", "SD1.5", "UniPC", 20, ("deepcache", "tgate")),
        ("PixArt-Sigma-DPM-Solver++-20", "PixArt-Sigma", "DPM-Solver++", 20, None),
        ("pixart-sigma-dpm++-20", "PixArt-Sigma", "DPM-Solver++", 20, None),
        ("SD2.1-UniPCMultistepScheduler-50-tgate+tome", "SD2.1", "UniPC", 50, ("tome", "tgate")),
        ("PixArt-alpha-DDIM-25", "PixArt-alpha", "DDIM", 25, None),
        ("TinySDXL-DDIM-10", "TinySDXL", "DDIM", 10, None),  # not TinySD: longest name wins
        ("TinySD-DDIM-10-tome", "TinySD", "DDIM", 10, ("tome",)),
        (
            "sdxl-ddimscheduler-7-TGATE+DeepCache+tome",
            "SDXL",
            "DDIM",
            7,
            ("deepcache", "tome", "tgate"),
        ),
    ],
)
def test_parse_name(
    name: str, pipeline: str, scheduler: str, steps: int, targets: tuple[str, ...] | None
) -> None:
    assert parse_name(name) == {
        "pipeline": pipeline,
        "scheduler": scheduler,
        "steps": steps,
        "targets": targets,
    }


@pytest.mark.parametrize("name", SEED_MATRIX)
def test_seed_matrix_parses_and_loads_without_a_file(name: str, empty_cwd: Path) -> None:
    pipeline, rest = next((p, name[len(p) + 1 :]) for p in SEED_PIPELINES if name.startswith(p))
    scheduler, steps = rest.rsplit("-", 1)
    assert parse_name(name) == {
        "pipeline": pipeline,
        "scheduler": scheduler,
        "steps": int(steps),
        "targets": None,
    }
    spec = load_spec(name)
    assert (spec.name, spec.scheduler, spec.steps, spec.targets) == (
        name,
        scheduler,
        int(steps),
        None,
    )
    info = model_info(pipeline)
    assert info is not None
    shipped = shipped_dir() / f"{name}.toml"
    if shipped.is_file():  # shipped specs still apply; they name the hub id
        assert spec.source == str(shipped)
        assert spec.pipeline in (pipeline, info.hub_id)
    else:
        assert spec.source == "derived from the name"
        assert spec.pipeline == pipeline
        assert spec.resolution == info.resolution


def test_seed_matrix_includes_the_shipped_real_specs(empty_cwd: Path) -> None:
    found = [n for n in SEED_MATRIX if find_spec_file(n) is not None]
    assert found == ["SD1.5-DDIM-20", "SDXL-DDIM-25", "PixArt-Sigma-DPM-Solver++-20"]


def test_unknown_pipeline_lists_valid_pipelines() -> None:
    with pytest.raises(AccelOptError) as info:
        parse_name("SD9-DDIM-25")
    message = str(info.value)
    assert "'SD9-DDIM-25'" in message
    assert (
        "valid: SD1.5, SD2.1, SDXL, PixArt-alpha, PixArt-Sigma, TinySD, TinySDXL, TinyPixArt"
        in message
    )
    assert "PIPE-SCHED-STEPS[-TARGETS]" in message


def test_unknown_scheduler_lists_valid_schedulers() -> None:
    with pytest.raises(AccelOptError) as info:
        parse_name("SDXL-Foo-25")
    message = str(info.value)
    assert message == (
        "study name 'SDXL-Foo-25': no known scheduler after 'SDXL'; "
        "valid: DDIM, DPM-Solver++, UniPC, Euler, PNDM"
    )


@pytest.mark.parametrize("name", ["SDXL-DDIM-x", "SDXL-DDIM-25-", "SDXL-DDIM--25"])
def test_bad_step_count_mentions_the_expected_form(name: str) -> None:
    with pytest.raises(AccelOptError) as info:
        parse_name(name)
    assert str(info.value) == (
        f"study name {name!r}: expected the step count after the scheduler, "
        "e.g. SDXL-DDIM-25 or SDXL-DDIM-25-deepcache+tgate"
    )


def test_missing_step_count_mentions_the_expected_form() -> None:
    with pytest.raises(AccelOptError) as info:
        parse_name("SDXL-DDIM")
    assert "SDXL-DDIM-25" in str(info.value)


def test_unknown_target_lists_valid_accelerators() -> None:
    with pytest.raises(AccelOptError) as info:
        parse_name("SDXL-DDIM-25-fastcache")
    assert str(info.value) == (
        "unknown accelerator 'fastcache'; valid: deepcache, tome, tgate, magcache, taylorseer, "
        "fbcache, dbcache, pab, fastercache"
    )


def test_load_spec_of_a_bad_name_raises_the_parse_error(empty_cwd: Path) -> None:
    with pytest.raises(AccelOptError, match=r"^study name 'SD9-DDIM-25' does not start"):
        load_spec("SD9-DDIM-25")


def test_derived_spec_is_range_checked(empty_cwd: Path) -> None:
    with pytest.raises(AccelOptError) as info:
        load_spec("TinySD-DDIM-0")
    assert str(info.value) == "study TinySD-DDIM-0: steps=0 is out of range; allowed: 1..1000"


# --- defaults from the name -------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", ["TinySD", "TinySDXL", "TinyPixArt"])
def test_tiny_defaults(pipeline: str, empty_cwd: Path) -> None:
    spec = load_spec(f"{pipeline}-UniPC-12")
    assert spec.source == "derived from the name"
    assert spec.metric == MetricSpec("accelopt-tiny-clip", "")
    assert spec.prompts == PromptSpec(split="search", count=4, batch_size=4, seed=0)
    assert spec.n_trials == 8
    assert spec.resolution == 32
    assert spec.guidance == 5.0
    assert spec.max_score_loss == DEFAULT_MAX_SCORE_LOSS == 0.02


@pytest.mark.parametrize(
    ("name", "guidance"), [("ToySD-DDIM-50", 5.0), ("ToyPixArt-DDIM-50", 4.5)]
)
def test_toy_defaults(name: str, guidance: float, empty_cwd: Path) -> None:
    """Every toy, named without a file, draws the shapes, is scored by the toy CLIP and takes
    the guidance it was trained to be judged at."""
    spec = load_spec(name)
    assert spec.source == "derived from the name"
    assert spec.metric == MetricSpec("accelopt-toy-clip", "")
    assert spec.prompts == PromptSpec(set="shapes", split="search", count=16, batch_size=4)
    assert (spec.resolution, spec.guidance, spec.n_trials) == (64, guidance, 12)


@pytest.mark.parametrize(
    ("name", "resolution", "guidance"),
    [
        ("SD1.5-UniPC-25", 512, 7.5),
        ("SD2.1-DDIM-25", 768, 7.5),
        ("SDXL-UniPC-25", 1024, 5.0),
        ("PixArt-alpha-DDIM-20", 1024, 4.5),
        ("PixArt-Sigma-UniPC-20", 1024, 4.5),
    ],
)
def test_real_pipeline_defaults(
    name: str, resolution: int, guidance: float, empty_cwd: Path
) -> None:
    spec = load_spec(name)
    assert spec == StudySpec(
        name=name,
        pipeline=name.rsplit("-", 2)[0],
        scheduler=name.rsplit("-", 2)[1],
        steps=int(name.rsplit("-", 1)[1]),
        targets=None,
        resolution=resolution,
        guidance=guidance,
        dtype=None,
        prompts=PromptSpec(split="search", count=16, batch_size=4, seed=0),
        metric=MetricSpec("ViT-H-14", "laion2b_s32b_b79k"),
        sampler=SamplerSpec("tpe", 0),
        n_trials=50,
        max_score_loss=0.02,
        warmup=1,
        source="derived from the name",
    )


def test_targets_in_the_name_reach_the_spec(empty_cwd: Path) -> None:
    assert load_spec("SDXL-DDIM-30-tgate+deepcache").targets == ("deepcache", "tgate")


# --- lookup order -----------------------------------------------------------------------------


def test_local_file_overrides_the_shipped_one(empty_cwd: Path) -> None:
    path = write_spec(empty_cwd / "studies", "TinySD-DDIM-10.toml", "n_trials = 3\n")
    assert find_spec_file("TinySD-DDIM-10") == empty_cwd / "studies" / "TinySD-DDIM-10.toml"
    spec = load_spec("TinySD-DDIM-10")
    assert spec.source == str(empty_cwd / "studies" / "TinySD-DDIM-10.toml") == str(path)
    assert spec.n_trials == 3
    # the rest comes from the name, not from the shipped file
    assert (spec.pipeline, spec.scheduler, spec.steps) == ("TinySD", "DDIM", 10)
    assert spec.dtype is None
    assert spec.metric == MetricSpec("accelopt-tiny-clip", "")


def test_shipped_file_is_used_without_a_local_one(empty_cwd: Path) -> None:
    spec = load_spec("TinySD-DDIM-10")
    assert spec.source.endswith("studies/TinySD-DDIM-10.toml")
    assert spec.source == str(shipped_dir() / "TinySD-DDIM-10.toml")
    assert spec.dtype == "float32"  # only the shipped file sets it
    assert spec.n_trials == 8


# --- one spelling per study -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("ToySD-ddim-20", "ToySD-DDIM-20"),
        ("toysd-DDIM-20", "ToySD-DDIM-20"),
        ("ToySD-DDIM-20", "ToySD-DDIM-20"),
        ("pixart-sigma-dpm++-20", "PixArt-Sigma-DPM-Solver++-20"),
        ("sd2.1-UniPCMultistepScheduler-50-tgate+TOME", "SD2.1-UniPC-50-tome+tgate"),
        ("TinySD-DDIM-010", "TinySD-DDIM-10"),
        ("my-study", "my-study"),  # free-form: unchanged
        ("SD9-DDIM-25", "SD9-DDIM-25"),  # not a known pipeline: unchanged (load_spec refuses it)
    ],
)
def test_canonical_name(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


@pytest.mark.parametrize("name", ["ToySD-ddim-20", "toysd-DDIM-20", "ToySD-DDIM-20"])
def test_every_spelling_finds_the_shipped_spec(empty_cwd: Path, name: str) -> None:
    shipped = shipped_dir() / "ToySD-DDIM-20.toml"
    assert find_spec_file(name) == shipped
    spec = load_spec(name)
    assert (spec.name, spec.source) == ("ToySD-DDIM-20", str(shipped))
    assert spec.n_trials == 12


def test_a_file_spelled_otherwise_is_found_under_the_canonical_name(empty_cwd: Path) -> None:
    path = write_spec(empty_cwd / "studies", "tinysd-ddim-13.toml", "n_trials = 3\n")
    for name in ("TinySD-DDIM-13", "TINYSD-ddim-13"):
        assert find_spec_file(name) == path
        spec = load_spec(name)
        assert (spec.name, spec.source, spec.n_trials) == ("TinySD-DDIM-13", str(path), 3)
    assert load_spec(path=path).name == "TinySD-DDIM-13"  # --spec FILE: the stem, canonical


def test_two_files_spelling_one_name_are_refused(empty_cwd: Path) -> None:
    first = write_spec(empty_cwd / "studies", "tinysd-ddim-13.toml", "")
    if (empty_cwd / "studies" / "TinySD-ddim-13.toml").exists():
        pytest.skip("a case-insensitive file system holds one of the two")
    second = write_spec(empty_cwd / "studies", "TinySD-ddim-13.toml", "")
    with pytest.raises(AccelOptError) as info:
        find_spec_file("TinySD-DDIM-13")
    # sorted: upper case first
    assert str(info.value) == (
        f"{second} and {first} are both study TinySD-DDIM-13; keep one of them"
    )


def test_find_spec_file_returns_none_for_unknown_names(empty_cwd: Path) -> None:
    assert find_spec_file("TinySD-UniPC-13") is None
    assert find_spec_file("TinySD-UniPC-13", cwd=empty_cwd) is None


def test_find_spec_file_takes_cwd(
    empty_cwd: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other")
    path = write_spec(other / "studies", "TinySD-UniPC-13.toml", "")
    assert find_spec_file("TinySD-UniPC-13", cwd=other) == path
    assert find_spec_file("TinySD-UniPC-13") is None


def test_path_runs_any_file_and_its_stem_is_the_name(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "elsewhere", "TinySDXL-UniPC-12.toml", "guidance = 3\n")
    spec = load_spec(path=path)
    assert spec.name == "TinySDXL-UniPC-12"
    assert spec.source == str(path)
    assert (spec.pipeline, spec.scheduler, spec.steps) == ("TinySDXL", "UniPC", 12)
    assert spec.guidance == 3.0
    assert isinstance(spec.guidance, float)


def test_free_form_stem_with_every_required_key(tmp_path: Path) -> None:
    text = 'pipeline = "TinySD"\nscheduler = "dpm++"\nsteps = 7\ntargets = "tgate+tome"\n'
    spec = load_spec(path=write_spec(tmp_path, "my-study.toml", text))
    assert spec.name == "my-study"
    # The scheduler is stored under its canonical name; the known pipeline brings its defaults.
    assert (spec.pipeline, spec.scheduler, spec.steps) == ("TinySD", "DPM-Solver++", 7)
    assert spec.targets == ("tome", "tgate")
    assert (spec.metric.model, spec.metric.pretrained) == ("accelopt-tiny-clip", "")
    assert (spec.resolution, spec.n_trials, spec.prompts.count) == (32, 8, 4)


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ('scheduler = "DDIM"\nsteps = 10\n', "pipeline"),
        ('pipeline = "TinySD"\nsteps = 10\n', "scheduler"),
        ('pipeline = "TinySD"\nscheduler = "DDIM"\n', "steps"),
        ("", "pipeline"),
    ],
)
def test_free_form_stem_names_the_missing_key(tmp_path: Path, text: str, missing: str) -> None:
    path = write_spec(tmp_path, "my-study.toml", text)
    assert error_of(path) == (
        f"{path}: missing key {missing!r} (the name 'my-study' is not PIPE-SCHED-STEPS)"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error_of(path) == f"spec file {str(path)!r} does not exist"


# --- bad files --------------------------------------------------------------------------------

ALLOWED_TOP = (
    "constraints, dtype, early_stop, execution, guidance, max_score_loss, metric, n_trials, "
    "objective, pareto_metric, pipeline, "
    "prompts, resolution, sampler, scheduler, steps, targets, timing, warmup"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("foo = 1\n", f"unknown key 'foo'; allowed: {ALLOWED_TOP}"),
        ("name = 'x'\n", f"unknown key 'name'; allowed: {ALLOWED_TOP}"),
        ("source = 'x'\n", f"unknown key 'source'; allowed: {ALLOWED_TOP}"),
        (
            "[prompts]\ncolor = 1\n",
            "unknown key prompts.color; allowed: batch_size, count, seed, set, split",
        ),
        (
            "[metric]\nsize = 3\n",
            "unknown key metric.size; allowed: lpips, lpips_weights, model, pretrained",
        ),
        (
            "[constraints]\npsnr = 30\n",
            "unknown key constraints.psnr; allowed: clip_loss, psnr_min, ssim_min, "
            "clip_image_min, lpips_max",
        ),
        ("constraints = 3\n", "[constraints] must be a table"),
        (
            '[constraints]\nssim_min = "high"\n',
            "constraints.ssim_min must be a number, got 'high'",
        ),
        (
            "[constraints]\nssim_min = 1.5\n",
            "constraints.ssim_min=1.5 is out of range; allowed: more than -1, less than 1",
        ),
        (
            "[constraints]\npsnr_min = -3\n",
            "constraints.psnr_min=-3.0 is out of range; allowed: more than 0, less than 100",
        ),
        (
            "[constraints]\nclip_loss = 1.5\n",
            "constraints.clip_loss = 1.5 is a fraction of the baseline's score: did you mean "
            "0.015 (1.5%)?",
        ),
        (
            "max_score_loss = 0.05\n[constraints]\nclip_loss = 0.01\n",
            "the score-loss budget is set twice (max_score_loss and constraints.clip_loss); "
            "keep one",
        ),
        (
            'pareto_metric = "fid"\n',
            "pareto_metric='fid' is out of range; allowed: score_loss, psnr, ssim, clip_image, "
            "lpips",
        ),
        (
            '[metric]\nlpips = "resnet"\n',
            "metric.lpips='resnet' is out of range; allowed: alex, vgg, squeeze",
        ),
        ("[sampler]\nseeds = 3\n", "unknown key sampler.seeds; allowed: name, seed"),
        ("prompts = 3\n", "[prompts] must be a table"),
        ('steps = "ten"\n', "steps must be an integer, got 'ten'"),
        ("steps = true\n", "steps must be an integer, got True"),
        ("steps = 10.0\n", "steps must be an integer, got 10.0"),
        ('guidance = "high"\n', "guidance must be a number, got 'high'"),
        ("guidance = false\n", "guidance must be a number, got False"),
        ("[prompts]\ncount = 1.5\n", "prompts.count must be an integer, got 1.5"),
        ("pipeline = 3\n", "pipeline must be a string, got 3"),
        ("steps = 0\n", "steps=0 is out of range; allowed: 1..1000"),
        ("steps = 1001\n", "steps=1001 is out of range; allowed: 1..1000"),
        (
            "max_score_loss = 0\n",
            "max_score_loss=0.0 is out of range; allowed: more than 0, less than 1",
        ),
        (
            "max_score_loss = 2\n",
            "max_score_loss = 2 is a fraction of the baseline's score: did you mean 0.02 (2%)?",
        ),
        (  # no percent either
            "max_score_loss = 150\n",
            "max_score_loss=150.0 is out of range; allowed: more than 0, less than 1",
        ),
        ("[prompts]\ncount = 0\n", "prompts.count=0 is out of range; allowed: 1..1000"),
        (
            "[prompts]\nset = 'toys'\n",
            "prompts.set='toys' is out of range; allowed: accelopt, shapes",
        ),
        ("[prompts]\nbatch_size = 65\n", "prompts.batch_size=65 is out of range; allowed: 1..64"),
        (
            '[prompts]\nsplit = "train"\n',
            "prompts.split='train' is out of range; allowed: search, heldout",
        ),
        (
            '[sampler]\nname = "random"\n',
            "sampler.name='random' is out of range; allowed: tpe, grid",
        ),
        ("resolution = 4\n", "resolution=4 is out of range; allowed: 8..4096"),
        ("guidance = 51\n", "guidance=51.0 is out of range; allowed: 0..50"),
        ("n_trials = 0\n", "n_trials=0 is out of range; allowed: 1..100000"),
        ("warmup = 11\n", "warmup=11 is out of range; allowed: 0..10"),
        (
            'targets = ["fastcache"]\n',
            "targets: unknown accelerator 'fastcache'; valid: deepcache, tome, tgate, magcache, "
            "taylorseer, fbcache, dbcache, pab, fastercache",
        ),
        ("targets = 3\n", "targets must be a list of accelerator names, got 3"),
        (
            'targets = ["tgate", 3]\n',
            "targets must be a list of accelerator names, got ['tgate', 3]",
        ),
        (
            "targets = []\n",
            "targets: no accelerator named; valid: deepcache, tome, tgate, magcache, taylorseer, "
            "fbcache, dbcache, pab, fastercache",
        ),
        (
            'dtype = "float8"\n',
            "unknown dtype 'float8'; valid: bf16, bfloat16, float16, float32, fp16, fp32, half",
        ),
    ],
)
def test_bad_file_names_path_key_and_what_is_allowed(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write_spec(tmp_path, "TinySD-DDIM-10.toml", text)
    assert error_of(path) == f"{path}: {expected}"


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "TinySD-DDIM-10.toml", "steps = = 3\n")
    message = error_of(path)
    assert message.startswith(f"{path}: not valid TOML: ")
    assert "line 1" in message


def test_unknown_scheduler_in_the_file(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "TinySD-DDIM-10.toml", 'scheduler = "Foo"\n')
    message = error_of(path)
    assert message.startswith(f"{path}: unknown scheduler 'Foo'; valid: DDIM (or DDIMScheduler), ")
    for name in ("DPM-Solver++", "UniPC", "Euler", "PNDM"):
        assert name in message


def test_local_bad_file_is_reported_when_loaded_by_name(empty_cwd: Path) -> None:
    path = write_spec(empty_cwd / "studies", "TinySD-DDIM-10.toml", "steps = 0\n")
    with pytest.raises(AccelOptError) as info:
        load_spec("TinySD-DDIM-10")
    assert str(info.value) == f"{path}: steps=0 is out of range; allowed: 1..1000"


def test_tables_override_only_the_keys_they_name(tmp_path: Path) -> None:
    text = '[prompts]\ncount = 2\nsplit = "heldout"\n[sampler]\nname = "grid"\n'
    spec = load_spec(path=write_spec(tmp_path, "TinySD-DDIM-10.toml", text))
    assert spec.prompts == PromptSpec(split="heldout", count=2, batch_size=4, seed=0)
    assert spec.sampler == SamplerSpec(name="grid", seed=0)
    assert spec.metric == MetricSpec("accelopt-tiny-clip", "")


# --- shipped specs ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: p.stem)
def test_every_shipped_spec_loads(path: Path, empty_cwd: Path) -> None:
    by_path = load_spec(path=path)
    by_name = load_spec(path.stem)
    assert by_path == by_name
    assert by_path.name == path.stem
    assert by_path.source == str(path)
    parts = parse_name(path.stem)
    assert (by_path.scheduler, by_path.steps) == (parts["scheduler"], parts["steps"])


def test_shipped_specs_include_the_tiny_ones_and_sdxl() -> None:
    stems = {p.stem for p in shipped_specs()}
    assert set(TINY_SHIPPED) <= stems
    assert "SDXL-DDIM-25" in stems


@pytest.mark.parametrize("name", TINY_SHIPPED)
def test_shipped_tiny_specs_run_offline(name: str, empty_cwd: Path) -> None:
    spec = load_spec(name)
    assert spec.metric == MetricSpec("accelopt-tiny-clip", "")
    assert spec.resolution == 32
    assert spec.dtype == "float32"
    assert spec.n_trials == 8


# --- the dataclass ----------------------------------------------------------------------------


def test_study_spec_is_frozen_and_replace_copies(empty_cwd: Path) -> None:
    spec = load_spec("TinySD-DDIM-10")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.n_trials = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.prompts.count = 1  # type: ignore[misc]
    copy = spec.replace(n_trials=3)
    assert copy is not spec
    assert copy.n_trials == 3
    assert spec.n_trials == 8
    assert dataclasses.replace(copy, n_trials=8) == spec


def test_execution_key_names_the_modes_and_refuses_what_a_mode_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelopt import execution

    monkeypatch.setitem(execution.REFUSED, ("cuda-graphs", "tgate"), "declared for this test")
    assert load_spec("TinySD-DDIM-10").execution == "auto"
    bad = tmp_path / "TinySD-DDIM-10.toml"
    bad.write_text('execution = "graphs"\n')
    with pytest.raises(AccelOptError, match="execution='graphs' is out of range; allowed: auto, "
                       "eager, compile, cuda-graphs"):  # fmt: skip
        load_spec(path=bad)
    gated = tmp_path / "TinySD-DDIM-10-tgate.toml"
    gated.write_text('execution = "cuda-graphs"\n')
    with pytest.raises(AccelOptError, match="tgate cannot run under execution mode cuda-graphs"):
        load_spec(path=gated)
    fine = tmp_path / "TinySD-DDIM-10-deepcache.toml"
    fine.write_text('execution = "compile"\n')
    assert load_spec(path=fine).execution == "compile"


def test_a_scheduler_an_accelerator_refuses_is_refused_by_name(
    empty_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None is refused today (DeepCache counts calls, T-GATE reads steps as upstream does); the
    # declaration is data, so declare one and see a named study refuse it before loading.
    from accelopt.accelerators import DeepCache

    monkeypatch.setattr(DeepCache, "refused_schedulers", {"PNDM": "its PRK steps repeat"})
    with pytest.raises(AccelOptError) as info:
        load_spec("TinySD-PNDM-10-deepcache")
    assert str(info.value).endswith("deepcache cannot follow scheduler PNDM: its PRK steps repeat")
    assert load_spec("TinySD-PNDM-10-tgate").targets == ("tgate",)
    assert load_spec("TinySD-DDIM-10-deepcache").targets == ("deepcache",)


def test_a_constraints_table_bounds_fidelity_beside_the_score_loss(tmp_path: Path) -> None:
    path = tmp_path / "TinySD-DDIM-10.toml"
    path.write_text(
        "[constraints]\nclip_loss = 0.05\npsnr_min = 30\nssim_min = 0.9\n"
        'lpips_max = 0.2\n[metric]\nlpips = "vgg"\n'
    )
    spec = load_spec(path=path)
    assert spec.max_score_loss == 0.05
    assert [(b.key, b.limit) for b in spec.bounds()] == [
        ("clip_loss", 0.05), ("psnr_min", 30.0), ("ssim_min", 0.9), ("lpips_max", 0.2)
    ]  # fmt: skip
    assert [b.describe() for b in spec.bounds()] == [
        "CLIP score loss <= 5%", "PSNR >= 30 dB", "SSIM >= 0.9", "LPIPS <= 0.2"
    ]  # fmt: skip
    assert spec.measures_lpips and spec.metric.lpips == "vgg"
    plain = load_spec("TinySD-DDIM-10")
    assert [b.key for b in plain.bounds()] == ["clip_loss"] and not plain.measures_lpips
