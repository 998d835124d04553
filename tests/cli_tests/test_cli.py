"""Tests for accelopt/cli/: commands called in process, plus one subprocess smoke test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from accelopt.accelerators import NOT_DECLARED
from accelopt.cli import main
from accelopt.cli.info import TOY_TRAINING
from accelopt.prompts import load_prompts
from accelopt.testing import default_signals

COMMANDS = ("pipelines", "schedulers", "accelerators", "prompts", "run", "best", "list")


def _space(out: str) -> dict[str, list[str]]:
    """Parse the ``accelerators --pipeline`` table: ``  key   v1, v2`` -> {key: [v1, v2]}."""
    rows = [line.split(None, 1) for line in out.splitlines() if line.startswith("  ")]
    return {key: values.split(", ") for key, values in rows}


def test_help_exits_zero_and_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: accelopt")
    for command in COMMANDS:
        assert command in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_pipelines(capsys: pytest.CaptureFixture[str]) -> None:
    from accelopt.pipelines import MODELS

    assert main(["pipelines"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "stabilityai/stable-diffusion-xl-base-1.0" in rows["SDXL"]
    for model in MODELS:
        assert model.name in rows
        assert model.family in rows[model.name].split()
        if model.hub_id:
            assert rows[model.name].split()[-1] == model.hub_id


@pytest.mark.parametrize("name", ["ToySD", "ToyPixArt"])
def test_pipelines_says_whether_a_toy_ships(capsys: pytest.CaptureFixture[str], name: str) -> None:
    from accelopt.pipelines import toy_shipped

    assert main(["pipelines"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    weights = rows[name].split(None, 3)[3]
    train = f"python -m accelopt.toy.train {TOY_TRAINING[name]} --out DIR"
    assert weights == (
        "trained on toy shapes, shipped with accelopt"
        if toy_shipped(name)
        else f"trained on toy shapes, not shipped yet (train: {train})"
    )


def test_the_listing_names_the_subcommand_that_trains_each_toy() -> None:
    from accelopt.pipelines import TOY_PIPELINES
    from accelopt.toy import train

    saved = {folder: command for command, (_, folder, _) in train._MODELS.items()}
    assert {name: saved[name] for name in TOY_PIPELINES} == TOY_TRAINING


def test_schedulers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedulers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "DDIM",
        "DPM-Solver++",
        "UniPC",
        "Euler",
        "PNDM",
    ]
    dpm = lines[1]
    assert "DPMSolverMultistepScheduler" in dpm
    assert "DPM++" in dpm


def test_accelerators_lists_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["accelerators"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line[:1].isalpha()]
    assert names[:3] == ["deepcache", "tome", "tgate"]
    assert "Combinations:" in out


def test_sdxl_search_space_drops_downsample_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["accelerators", "--pipeline", "SDXL", "--steps", "25"]) == 0
    out = capsys.readouterr().out
    assert "(sdxl), 25 steps" in out.splitlines()[0]
    space = _space(out)
    # SDXL has no attention at the first level: max_downsample=1 would merge nothing.
    assert space["tome.max_downsample"] == ["2", "4"]
    assert {key.split(".")[0] for key in space} == {"deepcache", "tome", "tgate"}


def test_sd15_search_space_keeps_downsample_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["accelerators", "--pipeline", "SD1.5", "--targets", "tome"]) == 0
    space = _space(capsys.readouterr().out)
    assert set(space) == {"tome.ratio", "tome.max_downsample", "tome.use_rand"}
    assert space["tome.max_downsample"][0] == "1"
    assert space["tome.use_rand"] == ["False", "True"]


def test_pixart_lists_the_block_caches_and_refuses_an_undeclared_combination(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["accelerators", "--pipeline", "TinyPixArt", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    space = _space(out)
    assert space["magcache.max_skip_steps"] == ["1", "2", "3", "4", "5", "6"]
    assert {key.split(".")[0] for key in space} == {
        "tgate", "magcache", "taylorseer", "fbcache", "dbcache", "pab", "fastercache"
    }  # fmt: skip
    assert space["fbcache.threshold"][:3] == ["0.04", "0.05", "0.06"]
    assert space["dbcache.Fn_compute_blocks"] == ["1"]  # TinyPixArt's two blocks
    assert space["dbcache.max_continuous_cached_steps"][0] == "-1"
    assert "magcache.ratios" not in space  # calibrated per study, never searched
    # One column for the values, after the longest name.
    rows = [line for line in out.splitlines() if line.startswith("  ")]
    longest = "fastercache.unconditional_batch_timestep_skip_high"
    assert {len(line) - len(line[2:].split(None, 1)[1]) for line in rows} == {len(longest) + 3}
    assert main(["accelerators", "--pipeline", "TinyPixArt", "--targets", "tgate+magcache"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "accelopt: error: tgate+magcache is not a declared combination; combinations: "
        "deepcache+tome, deepcache+tgate, tome+tgate, deepcache+tome+tgate (not tgate+magcache: "
        f"{NOT_DECLARED[frozenset({'tgate', 'magcache'})]})\n"
    )


def test_a_pipelines_listing_says_which_accelerators_combine_and_why_others_do_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every pair of accelerators PixArt takes is either a declared plan or says why not."""
    from accelopt.accelerators import PLANS

    assert main(["accelerators", "--pipeline", "TinyPixArt", "--steps", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "combinations on TinyPixArt: none" in out
    assert (
        "a study without targets tries one per trial (plan): "
        "tgate | magcache | taylorseer | fbcache | dbcache | pab | fastercache"
    ) in out
    reasons = dict(line[2:].split(": ", 1) for line in out if line.startswith("- "))
    names = ("tgate", "magcache", "taylorseer", "fbcache", "dbcache", "pab", "fastercache")
    pairs = {f"{a}+{b}" for i, a in enumerate(names) for b in names[i + 1 :]}
    assert set(reasons) == {p for p in pairs if frozenset(p.split("+")) not in PLANS}
    assert reasons["fbcache+dbcache"] == NOT_DECLARED[frozenset({"fbcache", "dbcache"})]


def test_inapplicable_target_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["accelerators", "--pipeline", "PixArt-Sigma", "--targets", "tome"])
    assert code == 2
    captured = capsys.readouterr()
    err_lines = captured.err.splitlines()
    assert len(err_lines) == 1
    assert err_lines[0].startswith("accelopt: error:")
    assert "tome" in err_lines[0]
    assert "tgate" in err_lines[0]
    assert captured.out == ""


def test_unknown_pipeline_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["accelerators", "--pipeline", "SD9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("accelopt: error:")
    assert "SD9" in err


def test_prompts_heldout_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts", "--split", "heldout", "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    expected = load_prompts("heldout", 3)
    assert [line.split()[0] for line in lines] == [p.id for p in expected]
    assert all(line.split()[1] == "heldout" for line in lines)
    assert all(line.endswith(p.text) for line, p in zip(lines, expected, strict=True))


def test_prompts_count_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts", "--count", "100000"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("accelopt: error:")
    assert "100000" in captured.err


def test_prompts_bad_split_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["prompts", "--split", "train"])
    assert info.value.code == 2
    assert "heldout" in capsys.readouterr().err


def test_module_help_in_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "accelopt", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "accelerators" in result.stdout


# Ctrl-C the moment an import starts: a real SIGINT, sent by a sitecustomize (which Python
# imports before the command) as the import system looks for the module.
CTRL_C_AT = """
import signal, sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)

sys.meta_path.insert(0, CtrlC())
"""


@pytest.mark.parametrize(
    ("started", "module"),
    [
        ("python -m accelopt", "accelopt.__main__"),  # as the package's import ends
        ("the accelopt script", "accelopt.cli.studies"),  # the command table's
    ],
)
def test_ctrl_c_at_any_moment_of_start_up_exits_130_without_a_traceback(
    started: str, module: str, tmp_path: Path
) -> None:
    """Ctrl-C in the first tenth of a second printed a KeyboardInterrupt traceback: the
    package's imports ran before any handler, and the script pip writes has none at all."""
    import os

    import accelopt

    (tmp_path / "sitecustomize.py").write_text(CTRL_C_AT.format(module=module))
    script = tmp_path / "accelopt"  # what pip writes for [project.scripts]
    script.write_text("import sys\nfrom accelopt.cli import main\nsys.exit(main())\n")
    checkout = str(Path(accelopt.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), checkout])}
    command = ["-m", "accelopt"] if started.startswith("python") else [str(script)]
    run = subprocess.run([sys.executable, *command, "list"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120,
                         preexec_fn=default_signals)  # fmt: skip
    assert (run.returncode, run.stderr) == (130, "accelopt: interrupted\n")


# run / best / list: exit codes 0 ok, 1 requirement unmet, 2 bad input.


@pytest.fixture
def workdir(tmp_path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """An empty working directory: the default SQLite storage lands here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACCELOPT_STORAGE", raising=False)
    return tmp_path


def test_run_prints_the_best_and_resumes(workdir, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["run", "--study", "TinySD-DDIM-10", "--n-trials", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "TinySD-DDIM-10: ran 2 trials (2 in the study)"  # eager
    assert (workdir / "accelopt.db").is_file()
    assert main(["run", "--study", "TinySD-DDIM-10", "--n-trials", "2", "--quiet"]) == 0
    assert "finished already (2 trials)" in capsys.readouterr().out

    assert main(["best", "--study", "TinySD-DDIM-10", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["study"] == "TinySD-DDIM-10"
    if record["best"] is not None:
        assert record["best"]["speedup"] > 0 and record["best"]["accelerators"]
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "TinySD-DDIM-10" in listed and "2/2 trials" in listed


def test_unmet_requirement_exits_1(workdir, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    argv = ["run", "--study", "TinySD-DDIM-10-deepcache", "--n-trials", "1", "--quiet"]
    assert main([*argv, "--req-speedup", "1000"]) == 1
    assert "requirement not met: no feasible trial reached speedup >= 1000x" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--study", "SD9-DDIM-25"], "does not start with a known pipeline"),
        (["run"], "give exactly one of --study NAME or --spec FILE"),
        (["run", "--spec", "nowhere.toml"], "spec file 'nowhere.toml' does not exist"),
        (
            ["run", "--study", "TinySD-DDIM-10", "--req-speedup", "2", "--req-time", "1"],
            "give at most one of --req-speedup and --req-time",
        ),
        (["run", "--study", "TinySD-DDIM-10", "--n-trials", "0"], "--n-trials must be positive"),
        (["run", "--study", "TinyPixArt-DDIM-10-tome"], "can take: tgate"),
        (["best", "--study", "Nope-DDIM-10"], "no study 'Nope-DDIM-10' in sqlite:///accelopt.db"),
    ],
)
def test_bad_input_exits_2_with_one_line(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("accelopt: error: ") and message in err[0]


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom accelopt.cli import main\ntry:\n    main(['run', '--help'])\n"
        "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--req-speedup" in result.stdout


def test_ctrl_c_cleans_up_and_keeps_finished_trials(  # type: ignore[no-untyped-def]
    workdir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import optuna

    from accelopt import accelerators
    from accelopt.trial.bench import Bench

    measure, trials = Bench.measure, []

    def interrupted(self: Bench, check=None, **kwargs):  # type: ignore[no-untyped-def]
        if accelerators.active(self.pipe) is not None:  # a trial, not the baseline
            trials.append(self)
            if len(trials) == 2:  # Ctrl-C during the second measured trial
                raise KeyboardInterrupt
        return measure(self, check, **kwargs)

    monkeypatch.setattr(Bench, "measure", interrupted)
    argv = ["run", "--study", "TinySD-DDIM-10-deepcache", "--n-trials", "6", "--quiet"]
    assert main(argv) == 130
    assert "interrupted; finished trials are stored" in capsys.readouterr().err
    assert accelerators.active(trials[-1].pipe) is None  # the interrupted trial's patches
    study = optuna.load_study(
        study_name="TinySD-DDIM-10-deepcache", storage="sqlite:///accelopt.db"
    )
    states = [t.state.name for t in study.trials]
    assert states[-1] == "FAIL" and states.count("COMPLETE") == 1
    assert study.trials[-1].user_attrs["interrupted"] is True
    done = states.count("COMPLETE") + states.count("PRUNED")
    monkeypatch.setattr(Bench, "measure", measure)
    assert main(argv) == 0  # resumes: the interrupted trial is not counted, nor called failed
    assert f"ran {6 - done} trials (6 in the study, 1 interrupted)" in capsys.readouterr().out
    assert main(["list"]) == 0
    (listed,) = [line for line in capsys.readouterr().out.splitlines()
                 if "TinySD-DDIM-10-deepcache " in line]  # fmt: skip
    assert " 6/6 trials (1 interrupted)  best " in listed
    assert main(["report", "--study", "TinySD-DDIM-10-deepcache", "--images", "0"]) == 0
    page = (workdir / "report-TinySD-DDIM-10-deepcache.html").read_text()
    assert "<tr><th>interrupted</th><td>1</td></tr>" in page and "<th>failed</th>" not in page


def test_no_feasible_trial_answers_no_acceleration_and_exits_0(  # type: ignore[no-untyped-def]
    workdir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "accelopt.trial.objective.loss_bound", lambda baseline, scores, z: (0.5, 0.5)
    )
    argv = ["run", "--study", "TinySD-DDIM-10-tome", "--n-trials", "2", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no acceleration: no feasible accelerated trial within CLIP score loss <= 2%" in out
    assert main(["best", "--study", "TinySD-DDIM-10-tome"]) == 0
    assert "no feasible trial yet" in capsys.readouterr().out


def test_flags_are_checked_as_the_spec_file_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag cannot set what the spec file could not: --max-score-loss 150 is refused with the
    allowed range, before any storage is made."""
    storage = f"sqlite:///{tmp_path}/s.db"
    code = main(["run", "--study", "TinySD-DDIM-10", "--max-score-loss", "150",
                 "--storage", storage, "--quiet"])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        "accelopt: error: command line: max_score_loss=150.0 is out of range; allowed: more than "
        "0, less than 1\n"
    )
    assert not (tmp_path / "s.db").exists()


CODEGEN_IN_PERCENT = ["codegen", "--pipe", "TinySD", "--sched", "DDIM", "--steps", "10",
                      "--max-loss", "2", "-o", "x.py"]  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--study", "TinySD-DDIM-10", "--max-score-loss", "2", "--quiet"],
        CODEGEN_IN_PERCENT,
    ],
    ids=["run", "codegen"],
)
def test_a_loss_budget_in_percent_is_refused_with_the_fraction(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr() == ("", (
        "accelopt: error: --max-score-loss 2 is a fraction of the baseline's score: did you mean "
        "0.02 (2%)?\n"
    ))  # fmt: skip
    assert list(workdir.iterdir()) == []  # before any storage or script is made


def test_a_task_file_budget_in_percent_is_refused_with_the_fraction(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = workdir / "tasks.json"
    tasks.write_text('[{"pipe": "TinySD", "sched": "DDIM", "steps": 10, "max_score_loss": 5}]')
    assert main(["codegen", "--tasks", str(tasks), "-o", "out"]) == 2
    assert capsys.readouterr().err == (
        f"accelopt: error: {tasks}: task 0: max_score_loss = 5 is a fraction of the baseline's "
        f"score: did you mean 0.05 (5%)?\n"
    )


LOSS_WARNING = (
    "accelopt: warning: a 50% loss budget: {} lets a trial lose 50% of the baseline's CLIP "
    "score and still count; is that intended? (2% is 0.02)\n"
)


def test_a_loss_budget_over_ten_percent_runs_with_one_warning(  # type: ignore[no-untyped-def]
    workdir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _stop_before_running(monkeypatch)
    assert main(["run", "--study", "TinySD-DDIM-10", "--max-score-loss", "0.5", "--quiet"]) == 2
    assert capsys.readouterr().err == (
        LOSS_WARNING.format("--max-score-loss 0.5") + "accelopt: error: stopped by the test\n"
    )
    assert seen[0].max_score_loss == 0.5  # it runs
    spec = workdir / "Loose.toml"
    spec.write_text('pipeline = "TinySD"\nscheduler = "DDIM"\nsteps = 10\nmax_score_loss = 0.5\n')
    assert main(["run", "--spec", str(spec), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(
        LOSS_WARNING.format("max_score_loss = 0.5 in the spec")
    )
    assert main(["run", "--study", "TinySD-DDIM-10", "--max-score-loss", "0.1", "--quiet"]) == 2
    assert capsys.readouterr().err == "accelopt: error: stopped by the test\n"  # 10%: no word


RANDOM_SCORER = (
    "accelopt: TinySD-DDIM-10 on random weights scores its images with a random CLIP model too, "
    "so the score loss bounds noise, not quality; add a fidelity bound to the plain pipeline's "
    "images (--min-psnr 30, --min-ssim, --max-lpips) to bound what the accelerators change\n"
)


def test_random_weights_bounded_by_the_score_loss_alone_say_it_bounds_noise(  # type: ignore[no-untyped-def]
    workdir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _stop_before_running(monkeypatch)
    stopped = "accelopt: error: stopped by the test\n"
    assert main(["run", "--study", "TinySD-DDIM-10", "--random-weights", "--quiet"]) == 2
    assert capsys.readouterr().err == RANDOM_SCORER + stopped
    bounded = ["run", "--study", "TinySD-DDIM-10", "--random-weights", "--min-psnr", "30"]
    assert main([*bounded, "--quiet"]) == 2
    assert capsys.readouterr().err == stopped
    assert seen[1].constraints.psnr_min == 30.0
    assert main(["run", "--study", "TinySD-DDIM-10", "--quiet"]) == 2  # its own weights
    assert capsys.readouterr().err == stopped


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["run", "--study", "TinySD-DDIM-10", "--max-scor-loss", "0.02"],
            "unknown flag --max-scor-loss: did you mean --max-score-loss?",
        ),
        (
            ["run", "--study", "TinySD-DDIM-10", "--max-scor-loss=0.02"],
            "unknown flag --max-scor-loss: did you mean --max-score-loss?",
        ),
        (
            ["best", "--study", "X", "--stroage", "x.db"],
            "unknown flag --stroage: did you mean --storage?",
        ),
        (
            ["best", "--study", "X", "--zzzz"],
            "unknown flag --zzzz; accelopt best --help lists its flags",
        ),
        (
            ["best", "--study", "X", "extra"],
            "unexpected argument 'extra'; accelopt best --help lists what it takes",
        ),
    ],
)
def test_an_unknown_flag_names_the_closest(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr() == ("", f"accelopt: error: {said}\n")
    assert list(workdir.iterdir()) == []


def test_accelerators_say_what_their_steps_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["accelerators"]) == 0
    out = capsys.readouterr().out
    assert "steps count: denoiser calls since the generation began" in out  # DeepCache
    assert "steps count: scheduler steps, read as upstream does" in out  # T-GATE
    assert "steps count: nothing: no knob depends on the step" in out  # ToMe


# ---- one study per study, and the stumbles of a first run (issue 20) -------------------------


def _stop_before_running(monkeypatch: pytest.MonkeyPatch) -> list:  # type: ignore[type-arg]
    """``run`` goes as far as the study's spec, then stops (exit 2): the specs it got."""
    from accelopt.errors import AccelOptError

    seen = []

    def run_study(spec, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(spec)
        raise AccelOptError("stopped by the test")

    monkeypatch.setattr("accelopt.study.loop.run_study", run_study)
    return seen


@pytest.mark.parametrize("name", ["ToySD-ddim-20", "toysd-DDIM-20", "ToySD-DDIM-20"])
def test_every_spelling_runs_the_shipped_study(  # type: ignore[no-untyped-def]
    workdir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    from accelopt.spec import shipped_dir

    seen = _stop_before_running(monkeypatch)
    assert main(["run", "--study", name, "--quiet"]) == 2
    assert capsys.readouterr().err == "accelopt: error: stopped by the test\n"
    (spec,) = seen
    assert (spec.name, spec.source) == ("ToySD-DDIM-20", str(shipped_dir() / "ToySD-DDIM-20.toml"))
    assert (spec.n_trials, spec.prompts.set) == (12, "shapes")  # the shipped file's, not defaults


@pytest.mark.parametrize(("flag", "name"), [("Grid", "grid"), ("GRID", "grid"), ("TPE", "tpe")])
def test_sampler_takes_any_case(  # type: ignore[no-untyped-def]
    workdir, monkeypatch: pytest.MonkeyPatch, flag: str, name: str
) -> None:
    seen = _stop_before_running(monkeypatch)
    assert main(["run", "--study", "TinySD-DDIM-10", "--sampler", flag, "--quiet"]) == 2
    assert seen[0].sampler.name == name


def test_an_unknown_sampler_is_still_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--study", "TinySD-DDIM-10", "--sampler", "Random"])
    assert info.value.code == 2
    assert "argument --sampler: invalid choice: 'random'" in capsys.readouterr().err


def test_every_spelling_of_a_name_is_one_stored_study(  # type: ignore[no-untyped-def]
    workdir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """run, best, report and export under three spellings: one study, its canonical name; the
    report's baseline is the store entry's, and its parallel-coordinates titles have room."""
    import optuna

    monkeypatch.setattr(
        "accelopt.trial.objective.loss_bound", lambda baseline, scores, z: (0.0, 0.0)
    )
    (workdir / "studies").mkdir()
    spec = "n_trials = 1\nwarmup = 0\n[prompts]\ncount = 1\nbatch_size = 1\n"  # seconds
    (workdir / "studies" / "tinysd-ddim-10-DeepCache.toml").write_text(spec)
    assert main(["run", "--study", "TINYSD-ddim-10-deepcache", "--quiet"]) == 0
    assert "TinySD-DDIM-10-deepcache: ran 1 trials (1 in the study)" in capsys.readouterr().out
    assert main(["run", "--study", "TinySD-DDIM-10-deepcache", "--quiet"]) == 0
    assert "TinySD-DDIM-10-deepcache: finished already (1 trials)" in capsys.readouterr().out
    assert optuna.get_all_study_names("sqlite:///accelopt.db") == ["TinySD-DDIM-10-deepcache"]

    assert main(["best", "--study", "tinysd-DDIM-10-deepcache", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["study"] == "TinySD-DDIM-10-deepcache"
    store = workdir / "store.json"
    argv = ["export", "--study", "tinysd-ddim-10-DEEPCACHE", "--top-k", "0", "--store", str(store)]
    assert main(argv) == 0
    (entry,) = json.loads(store.read_text())["entries"].values()
    assert entry["study"]["name"] == "TinySD-DDIM-10-deepcache"
    assert main(["report", "--study", "tinysd-ddim-10-deepcache", "--images", "0"]) == 0
    page = (workdir / "report-TinySD-DDIM-10-deepcache.html").read_text()  # the canonical name
    assert "<h1>TinySD-DDIM-10-deepcache</h1>" in page
    shown = f"{entry['baseline']['time_per_image']:.4f} s/image"
    assert (f"The plain pipeline took {shown}: in the timing pairs of trial 0 (the best), in "
            f"batches of 1.") in page  # fmt: skip
    assert '"labelangle":-30' in page and '"t":128' in page  # "deepcache.cache_branch_id"


def test_a_study_stored_under_an_old_spelling_is_still_found(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str]
) -> None:
    import optuna

    storage = "sqlite:///accelopt.db"
    for name in ("tinysd-DDIM-10", "TINYSD-DDIM-10"):
        optuna.create_study(study_name=name, storage=storage)
    assert main(["best", "--study", "TINYSD-DDIM-10"]) == 0  # as typed
    assert capsys.readouterr().out == "TINYSD-DDIM-10: no feasible trial yet\n"
    assert main(["best", "--study", "TinySD-ddim-10"]) == 2  # which one?
    assert capsys.readouterr().err == (
        "accelopt: error: study TinySD-DDIM-10 is stored under 2 spellings in "
        "sqlite:///accelopt.db (TINYSD-DDIM-10, tinysd-DDIM-10); pass --study with one of them "
        "exactly\n"
    )
    optuna.delete_study(study_name="TINYSD-DDIM-10", storage=storage)
    assert main(["best", "--study", "TinySD-DDIM-10"]) == 0  # the one left
    assert capsys.readouterr().out == "tinysd-DDIM-10: no feasible trial yet\n"


def test_run_resumes_a_study_stored_under_an_old_spelling(  # type: ignore[no-untyped-def]
    workdir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import optuna

    monkeypatch.setattr(
        "accelopt.trial.objective.loss_bound", lambda baseline, scores, z: (0.0, 0.0)
    )
    (workdir / "studies").mkdir()
    spec = "n_trials = 1\nwarmup = 0\n[prompts]\ncount = 1\nbatch_size = 1\n"  # seconds
    (workdir / "studies" / "TinySD-DDIM-10-deepcache.toml").write_text(spec)
    storage = "sqlite:///accelopt.db"
    assert main(["run", "--study", "TinySD-DDIM-10-deepcache", "--quiet"]) == 0
    old = "tinysd-ddim-10-DeepCache"  # as an older accelopt stored what was typed
    optuna.copy_study(from_study_name="TinySD-DDIM-10-deepcache", from_storage=storage,
                      to_storage=storage, to_study_name=old)  # fmt: skip
    optuna.delete_study(study_name="TinySD-DDIM-10-deepcache", storage=storage)
    capsys.readouterr()
    assert main(["run", "--study", "TinySD-DDIM-10-deepcache", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "TinySD-DDIM-10-deepcache: finished already (1 trials)" in out  # resumed, not anew
    assert ("TinySD-DDIM-10-deepcache: resuming the study stored as tinysd-ddim-10-DeepCache "
            "(an older spelling of this name)") in err  # fmt: skip
    assert sorted(optuna.get_all_study_names(storage)) == ["TinySD-DDIM-10-deepcache", old]
    optuna.copy_study(from_study_name=old, from_storage=storage, to_storage=storage,
                      to_study_name="TINYSD-DDIM-10-deepcache")  # fmt: skip
    optuna.delete_study(study_name="TinySD-DDIM-10-deepcache", storage=storage)
    assert main(["run", "--study", "TinySD-DDIM-10-deepcache", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "ran 1 trials (1 in the study)" in out  # two old spellings: which? neither
    assert "warning: starting a new study; 2 studies are stored under older spellings" in err


def test_accelerators_shows_the_toy_pipelines_space(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["accelerators", "--pipeline", "ToySD", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "search space for ToySD (sd), 20 steps:"
    space = _space(out)
    assert {key.split(".")[0] for key in space} == {"deepcache", "tome", "tgate"}
    assert space["deepcache.cache_branch_id"] == ["0", "1", "3"]  # one layer a block: 2 is 1
    assert space["tgate.gate_step"] == [str(n) for n in range(5, 20)]


NO_CUDA = "accelopt: error: --device cuda: this machine has no CUDA device; use --device cpu or "


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--study", "TinySD-DDIM-10"],
        ["worker", "--study", "TinySD-DDIM-10", "--storage", "w.journal"],
        ["export", "--study", "TinySD-DDIM-10"],
        ["sweep", "--pipes", "TinySD", "--scheds", "DDIM", "--steps", "10"],
        ["report", "--study", "TinySD-DDIM-10"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_gpu_that_is_not_there_is_one_line_and_exit_2(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main([*argv, "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", NO_CUDA + "leave it out\n")
    assert list(workdir.iterdir()) == []  # refused before any storage or file is made


def test_a_malformed_device_is_one_line_and_exit_2(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--study", "TinySD-DDIM-10", "--device", "gpu0"]) == 2
    assert capsys.readouterr().err == (
        "accelopt: error: unknown device 'gpu0'; use cpu, cuda, cuda:N or mps\n"
    )


def test_store_check_of_a_mistyped_path_says_it_does_not_exist(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["store", "check", "--store", "serach_params.json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "accelopt: error: store serach_params.json does not exist; check --store"
    )
    assert "empty" not in err


def test_best_json_says_the_mode_and_the_baseline_its_speedup_is_against(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str]
) -> None:
    """Everything the text output says is in the JSON: the mode the speedup was measured under
    and the plain baseline it is against (the study's, under every mode timed)."""
    import optuna

    from accelopt.spec import load_spec, record_of

    study = optuna.create_study(study_name="TinySD-DDIM-10", storage="sqlite:///accelopt.db",
                                direction="maximize")  # fmt: skip
    study.set_user_attr("spec", record_of(load_spec("TinySD-DDIM-10")))
    baselines = {"eager": 0.9, "compile": 0.6}
    study.set_user_attr("execution", {"mode": "compile", "baselines": baselines})
    attrs = {"accelerators": {"deepcache": {"cache_interval": 3}}, "speedup": 2.0,
             "feasible": True, "score_loss": 0.01, "time_per_image": 0.3, "execution": "compile",
             "speedup_vs_eager": 3.0, "baseline_time_per_image": 0.6}  # fmt: skip
    study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs=attrs))
    assert main(["best", "--study", "TinySD-DDIM-10"]) == 0
    assert "speedup 2.00x (3.00x against eager) under compile" in capsys.readouterr().out
    assert main(["best", "--study", "TinySD-DDIM-10", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["execution"] == {"mode": "compile", "baselines": baselines}
    best = record["best"]
    assert (best["execution"], best["baseline_time_per_image"]) == ("compile", 0.6)
    assert (best["speedup"], best["speedup_vs_eager"]) == (2.0, 3.0)


def test_an_answer_measured_under_load_says_so(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run`` (a finished study answers again), ``best`` and ``best --json`` end with the
    study's load warnings: its speedups were measured under load. A quiet one's say nothing."""
    import optuna

    from accelopt.measure.load import CpuReading, Drift
    from accelopt.spec import load_spec, record_of

    study = optuna.create_study(study_name="TinySD-DDIM-10", storage="sqlite:///accelopt.db",
                                direction="maximize")  # fmt: skip
    study.set_user_attr("spec", record_of(load_spec("TinySD-DDIM-10")))
    study.set_user_attr("budget", 1)
    attrs = {"accelerators": {"deepcache": {"cache_interval": 3}}, "speedup": 2.0,
             "feasible": True, "score_loss": 0.01, "time_per_image": 0.3}  # fmt: skip
    study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs=attrs))
    assert main(["best", "--study", "TinySD-DDIM-10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["under_load"] == []
    assert main(["best", "--study", "TinySD-DDIM-10"]) == 0
    assert "load" not in capsys.readouterr().out

    records = [{**CpuReading(3.94, 2, 2, 0.48).record(), "worker": "host:1"},
               {**Drift(0.31, 4.69, "its timing at this worker's start").record()}]  # fmt: skip
    study.set_user_attr("load_warnings", records)
    said = (
        "TinySD-DDIM-10: its speedups were measured under load: this machine is loaded (load "
        "average 3.9 on 2 cores; this process got 48% of its 2 threads' CPU time during the "
        "baseline) (and 1 more in its load_warnings); measure again on an idle machine to trust "
        "them"
    )
    assert main(["run", "--study", "TinySD-DDIM-10", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "TinySD-DDIM-10: finished already (1 trials); nothing to run"
    assert out[-1] == said  # after the best: the last line read
    assert main(["best", "--study", "TinySD-DDIM-10"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == said
    assert main(["best", "--study", "TinySD-DDIM-10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["under_load"] == records


def test_every_command_is_one_class_in_the_table() -> None:
    """One table: every command a ``Command`` with its own name, as ``--help`` lists them."""
    from accelopt.cli import COMMANDS, Command

    names = [c.name for c in COMMANDS]
    assert all(isinstance(c, Command) for c in COMMANDS) and len(set(names)) == len(names)
    assert {"run", "worker", "export", "best", "codegen", "storage"} <= set(names)


def test_the_end_line_and_best_json_say_what_compiling_cost_the_study(  # type: ignore[no-untyped-def]
    workdir, capsys: pytest.CaptureFixture[str]
) -> None:
    """The study's start timed the plain pipeline under compile (200 s compiling of 210 s) and
    chose eager; its stored trial compiled for 12 s of 30. A run's end line, the study's user
    attrs and ``best --json`` give the sums (an eager study's line says nothing of compiling:
    ``test_run_prints_the_best_and_resumes``)."""
    import optuna

    from accelopt.spec import load_spec, record_of

    study = optuna.create_study(study_name="TinySD-DDIM-10", storage="sqlite:///accelopt.db",
                                direction="maximize")  # fmt: skip
    study.set_user_attr("spec", record_of(load_spec("TinySD-DDIM-10")))
    study.set_user_attr("budget", 1)
    study.set_user_attr("execution", {"mode": "eager", "baselines": {"eager": 0.2, "compile": 0.5},
                                      "compile_seconds": {"eager": 0.0, "compile": 200.0},
                                      "seconds": {"eager": 10.0, "compile": 210.0}})  # fmt: skip
    attrs = {"accelerators": {"deepcache": {"cache_interval": 3}}, "speedup": 2.0,
             "feasible": True, "score_loss": 0.01, "time_per_image": 0.3,
             "compile_seconds": 12.0, "trial_seconds": 30.0}  # fmt: skip
    study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs=attrs))
    assert main(["run", "--study", "TinySD-DDIM-10", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "TinySD-DDIM-10: finished already (1 trials); nothing to run; compiling and capturing "
        "took 212 s of 250 s (85%)"
    )
    assert main(["best", "--study", "TinySD-DDIM-10", "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)["compile"]
    assert cost == {"compile_seconds": 212.0, "seconds": 250.0, "share": 0.848}

    # One more trial, run here (eager: it compiles nothing, its seconds count).
    assert main(["run", "--study", "TinySD-DDIM-10", "--n-trials", "2", "--quiet"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    stored = optuna.load_study(study_name="TinySD-DDIM-10", storage="sqlite:///accelopt.db")
    total = stored.user_attrs["compile_cost"]
    assert total["compile_seconds"] == 212.0 and total["seconds"] >= 250.0
    assert line == (
        f"TinySD-DDIM-10: ran 1 trials (2 in the study); compiling and capturing took 212 s "
        f"of {total['seconds']:.0f} s ({100 * total['share']:.0f}%)"
    )


def test_export_lines_give_a_seven_family_key_whole_and_escape_a_stored_one() -> None:
    """An export of PixArt's default study writes a key naming all seven families (128
    characters): its line gives it whole. A key is read back from storage anyone can write to:
    a left-out one is escaped too."""
    from pathlib import Path

    from accelopt.cli._format import export_lines
    from accelopt.export import Exported

    families = ["dbcache", "fastercache", "fbcache", "magcache", "pab", "taylorseer", "tgate"]
    key = str(("ToyPixArt", "DPM-Solver++", "20", None, 0.02, families))
    hostile = "('x\x1b[2J',)"
    result = Exported(
        "S", Path("store.json"), "seed", {key: {"frontier": [{}, {}]}, hostile: {}},
        left_out=(hostile,),
    )  # fmt: skip
    assert export_lines(result) == [
        f"exported {key} (a frontier of 2) -> store.json (seed layout)",
        "left out ('x\\x1b[2J',): the seed layout has no slot for a time requirement or a "
        "random ToMe partition",
    ]
