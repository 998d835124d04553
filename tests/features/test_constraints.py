"""More than one constraint: fidelity bounds beside the CLIP score loss, from the spec through
trials, early stopping, confirmation, export, codegen and the report."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from accelopt._types import Pipeline
from accelopt.cli import main
from accelopt.errors import AccelOptError
from accelopt.measure.constraints import PSNR_CAP, Bound, mean_of, pooled_psnr, quality_loss
from accelopt.params_store.check import InvalidEntry, check_entry
from accelopt.params_store.query import Request, find_entry, why_missing
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.report import figures, image_choices, report_data
from accelopt.spec import ConstraintSpec, PromptSpec, load_spec, record_of
from accelopt.study.confirm import confirm
from accelopt.study.loop import run_study
from accelopt.study.results import frontier
from accelopt.testing.entries import make_entry
from accelopt.testing.scorers import PixelEmbeddings
from accelopt.trial.bench import Bench
from accelopt.trial.objective import Objective
from accelopt.trial.space import Space

quiet = {"progress": False, "log": lambda s: None}
DEEPCACHE_3 = {"deepcache.cache_interval": 3, "deepcache.cache_branch_id": 0}

# --- the bounds themselves -------------------------------------------------------------------


def test_a_bound_holds_on_its_side_and_says_so() -> None:
    psnr, loss = Bound("psnr_min", 30.0), Bound("clip_loss", 0.02)
    assert (psnr.violation(28.0), psnr.violation(31.0)) == (2.0, -1.0)
    assert loss.violation(0.05) == pytest.approx(0.03)
    assert psnr.holds(30.0) and not psnr.holds(29.9) and not psnr.holds(None)
    assert not psnr.holds(math.nan) and loss.holds(0.02) and not loss.holds(0.021)
    assert [Bound(k, v).describe() for k, v in [("psnr_min", 30.0), ("ssim_min", 0.9),
            ("clip_image_min", 0.95), ("lpips_max", 0.1), ("clip_loss", 0.02)]] == [
        "PSNR >= 30 dB", "SSIM >= 0.9", "CLIP image similarity >= 0.95", "LPIPS <= 0.1",
        "CLIP score loss <= 2%"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown constraint 'fid'"):
        Bound("fid", 1.0)


def test_a_bound_is_broken_only_when_the_whole_interval_is_on_the_wrong_side() -> None:
    ssim = Bound("ssim_min", 0.9)
    # mean 0.7, standard error 0.1: with z = 2 the best case is 0.9 - not over the bound
    assert ssim.broken([0.6, 0.8], z=1.0) == pytest.approx((0.7, 0.8))
    assert ssim.broken([0.6, 0.8], z=2.0) is None
    assert ssim.broken([0.6], z=2.0) is None  # one prompt says nothing about the spread
    # PSNR on the squared errors: 20 dB and 40 dB are MSEs 0.01 and 0.0001, mean 0.00505
    # (23.0 dB pooled), standard error 0.00495: with z = 1 the best case is 0.0001 (40 dB)
    psnr = Bound("psnr_min", 30.0)
    assert psnr.broken([20.0, 40.0], z=1.0) is None
    assert psnr.broken([20.0, 20.0], z=3.0) == pytest.approx((20.0, 20.0))
    estimate, best = psnr.broken([20.0, 24.0], z=1.0)  # type: ignore[misc]
    assert estimate == pytest.approx(pooled_psnr([20.0, 24.0])) and estimate < best < 30.0
    lpips = Bound("lpips_max", 0.1)
    assert lpips.broken([0.3, 0.5], z=1.0) == pytest.approx((0.4, 0.3))
    assert lpips.broken([0.05, 0.07], z=1.0) is None


def test_psnr_is_pooled_and_metrics_order_as_losses() -> None:
    assert pooled_psnr([30.0, 30.0]) == pytest.approx(30.0)
    assert pooled_psnr([20.0, math.inf]) == pytest.approx(20.0 + 10 * math.log10(2))
    assert pooled_psnr([math.inf, math.inf]) == PSNR_CAP == pooled_psnr([250.0])
    assert mean_of("ssim", [0.5, 1.0]) == 0.75 and mean_of("psnr", [30.0]) == 30.0
    measured = {"score_loss": 0.01, "psnr": 31.0, "ssim": 0.9}
    assert [quality_loss(measured, m) for m in ("score_loss", "psnr", "ssim", "lpips")] == [
        0.01, -31.0, -0.9, None]  # fmt: skip


# --- trials ------------------------------------------------------------------------------------


class FlatScorer(PixelEmbeddings):
    """10 for every image: no CLIP score loss at all, so only fidelity can bound a trial."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        return [10.0] * len(prompts)


def _bench(
    tiny: Callable[[str], Pipeline], early_stop: float = 0.99, **constraints: float
) -> Bench:
    spec = load_spec("TinySD-DDIM-10-deepcache").replace(
        warmup=0,
        early_stop=early_stop, prompts=PromptSpec(count=8, batch_size=2),
        constraints=ConstraintSpec(**constraints),
    )  # fmt: skip
    pipe = tiny("TinySD")
    set_scheduler(pipe, spec.scheduler)
    return Bench(spec, pipe, FlatScorer(), torch.device("cpu"))  # type: ignore[arg-type]


def _one_trial(bench: Bench) -> optuna.trial.FrozenTrial:
    space = Space.build(bench.traits, bench.spec.steps, ("deepcache",))
    objective = Objective(bench, space, [10.0] * len(bench.prompts))
    objective.time_baseline()
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(DEEPCACHE_3)
    study.optimize(objective, n_trials=1)
    return study.trials[0]


def test_each_bound_is_its_own_constraint_and_feasible_needs_all(
    tiny: Callable[[str], Pipeline],
) -> None:
    trial = _one_trial(_bench(tiny, early_stop=0, psnr_min=1.0, ssim_min=0.999999))
    a = trial.user_attrs
    assert trial.state == TrialState.COMPLETE and a["prompts_measured"] == 8
    assert a["score_loss"] == 0.0 and 1.0 < a["psnr"] < PSNR_CAP and a["ssim"] < 0.999999
    assert -1.0 <= a["clip_image"] < 1.0  # the images changed
    assert trial.constraints == pytest.approx(
        {"score_loss": -0.02, "psnr": 1.0 - a["psnr"], "ssim": 0.999999 - a["ssim"]}
    )
    assert a["constraints"] == pytest.approx(trial.constraints)
    assert a["constraint"] == pytest.approx(0.999999 - a["ssim"])  # the worst, mirrored
    assert a["feasible"] is False  # the CLIP loss and PSNR hold; SSIM does not


def test_a_broken_fidelity_bound_stops_a_trial_after_two_batches(
    tiny: Callable[[str], Pipeline],
) -> None:
    trial = _one_trial(_bench(tiny, psnr_min=99.0))
    assert trial.state == TrialState.PRUNED
    a = trial.user_attrs
    assert a["prompts_measured"] == 4  # two batches of two, then stopped
    assert a["stopped_early"].startswith("stopped after 4 of 8 prompts: PSNR ")
    assert "breaking PSNR >= 99 dB with 99% confidence (at best " in a["stopped_early"]
    assert a["psnr"] < 99.0 and a["feasible"] is False


def test_the_plain_pipeline_is_its_own_reference(tiny: Callable[[str], Pipeline]) -> None:
    bench = _bench(tiny)
    plain = bench.measure(keep_images=True)
    assert plain.fidelity == {}  # nothing to compare with yet
    bench.set_reference(plain.images)
    again = bench.measure()
    assert again.fidelity["psnr"] == [math.inf] * 8  # bit-identical on a CPU
    assert again.means()["psnr"] == PSNR_CAP
    assert again.fidelity["ssim"] == pytest.approx([1.0] * 8, abs=1e-12)
    assert again.fidelity["clip_image"] == pytest.approx([1.0] * 8, abs=1e-6)


def test_a_bound_on_a_metric_the_bench_cannot_measure_is_refused(
    tiny: Callable[[str], Pipeline],
) -> None:
    bench = _bench(tiny, lpips_max=0.1)  # no LPIPS network given to this bench
    objective = Objective(bench, Space.build(bench.traits, 10, ("deepcache",)), [10.0] * 8)
    with pytest.raises(AccelOptError, match=r"cannot measure lpips \(its network is not loaded"):
        objective.time_baseline()


@pytest.mark.usefixtures("timings")  # a steady 2x: only the bounds decide
def test_held_out_confirmation_judges_every_bound(tiny: Callable[[str], Pipeline]) -> None:
    for limit, passed in ((99.0, False), (1.0, True)):
        bench = _bench(tiny, psnr_min=limit)
        study = optuna.create_study(direction="maximize")
        study.set_user_attr("spec", record_of(bench.spec))
        configs = {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}}
        study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs={
            "accelerators": configs, "speedup": 2.0, "feasible": True}))  # fmt: skip
        (result,) = confirm(study, bench, k=1)
        assert result.passed is passed and result.score_loss == 0.0
        assert result.failed == ([] if passed else ["PSNR >= 99 dB"])
        assert set(result.fidelity) == {"psnr", "ssim", "clip_image"}
        assert 1.0 < result.fidelity["psnr"] < 99.0
        stored = study.user_attrs["confirmations"]["0"]
        assert stored["failed"] == result.failed and stored["fidelity"] == result.fidelity


# --- a study with two constraints, end to end ----------------------------------------------


def test_a_two_constraint_study_runs_resumes_exports_and_answers_codegen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "TinySD-DDIM-10-deepcache.toml").write_text(
        "[constraints]\nclip_loss = 0.05\npsnr_min = 20\nssim_min = 0.5\n"
    )
    url, store = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "store.json"
    run = ["run", "--study", "TinySD-DDIM-10-deepcache", "--storage", url, "--quiet"]
    assert main([*run, "--n-trials", "2"]) == 0
    assert main([*run, "--n-trials", "4", "--export", "--store", str(store), "--top-k", "0"]) == 0
    study = optuna.load_study(study_name="TinySD-DDIM-10-deepcache", storage=url)
    assert len(study.trials) == 4 and study.user_attrs["spec"]["constraints"] == {
        "psnr_min": 20.0, "ssim_min": 0.5, "clip_image_min": None, "lpips_max": None}  # fmt: skip
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:
        a = t.user_attrs
        assert set(t.constraints) == {"score_loss", "psnr", "ssim"}
        holds = a["score_loss"] <= 0.05 and a["psnr"] >= 20 and a["ssim"] >= 0.5
        assert a["feasible"] == holds
    out = capsys.readouterr().out
    assert ", PSNR " in out and " dB, SSIM " in out  # the best line carries every metric

    (entry,) = [e for e in json.loads(store.read_text())["entries"].values()
                if e["study"]["name"] == "TinySD-DDIM-10-deepcache"][:1]  # fmt: skip
    assert entry["requirement"]["psnr_min"] == 20.0 and entry["requirement"]["ssim_min"] == 0.5
    assert entry["key"].endswith("('psnr_min', 20.0), ('ssim_min', 0.5))")
    assert {"psnr", "ssim", "clip_image"} <= set(entry["measured"])
    check_entry(entry["key"], entry)

    ssim = entry["measured"]["ssim"]
    code = main(["codegen", "--pipe", "TinySD", "--sched", "DDIM", "--steps", "10",
                 "--min-ssim", f"{ssim - 1e-6:.8f}", "--max-loss", "0.05", "--store", str(store),
                 "-o", str(tmp_path / "fast.py")])  # fmt: skip
    answered = entry["measured"]["speedup"] > 1.0  # codegen never answers with a slowdown
    assert code == (0 if answered else 2)
    assert (tmp_path / "fast.py").exists() == answered
    capsys.readouterr()
    code = main(["codegen", "--pipe", "TinySD", "--sched", "DDIM", "--steps", "10",
                 "--min-ssim", "0.9999999", "--store", str(store),
                 "-o", str(tmp_path / "strict.py")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "strict.py").exists()
    assert "SSIM >= 0.9999999" in err and "--min-ssim 0.9999999 --export" in err
    assert f"loss {100 * entry['measured']['score_loss']:.2f}%, SSIM " in err  # the nearest


def test_a_study_stored_before_constraints_resumes_and_keeps_what_it_measured(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec("TinySD-DDIM-10-deepcache")
    study = run_study(spec, storage=url, n_trials=1, **quiet).study
    old = dict(study.user_attrs["spec"])
    for key in ("constraints", "pareto_metric"):
        del old[key]
    old["metric"] = {k: v for k, v in old["metric"].items() if not k.startswith("lpips")}
    study.set_user_attr("spec", old)
    assert run_study(spec, storage=url, n_trials=2, **quiet).ran == 1
    bounded = spec.replace(constraints=ConstraintSpec(psnr_min=30.0))
    with pytest.raises(AccelOptError, match=r"was run with constraints=.*'psnr_min': None"):
        run_study(bounded, storage=url, n_trials=3, **quiet)


def test_a_pareto_study_can_trade_speed_against_psnr(tmp_path: Path) -> None:
    spec = load_spec("TinySD-DDIM-10-deepcache").replace(
        objective="pareto", pareto_metric="psnr", warmup=0
    )
    study = run_study(spec, storage=f"sqlite:///{tmp_path / 's.db'}", n_trials=3, **quiet).study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(t.values[1] == t.user_attrs["psnr"] for t in complete)
    # PSNR is the objective, not a constraint; the CLIP budget still is one
    assert all(set(t.constraints) == {"score_loss"} for t in complete)
    front = frontier(complete, "psnr")
    assert front and all(
        not any(o.user_attrs["speedup"] >= t.user_attrs["speedup"]
                and o.user_attrs["psnr"] > t.user_attrs["psnr"] for o in complete)
        for t in front
    )  # fmt: skip


# --- store entries and codegen -----------------------------------------------------------------


def _entry(speedup: float, **fidelity: float) -> dict[str, Any]:
    entry = make_entry("SDXL", "DDIM", 25, speedup=speedup, key=f"e{speedup}")
    entry["measured"].update(fidelity)
    return entry


def test_codegen_answers_fidelity_requests_from_entries_that_measured_them() -> None:
    entries = {e["key"]: e for e in (
        _entry(3.0),  # exported before fidelity was measured
        _entry(2.5, psnr=28.0, ssim=0.85),
        _entry(2.0, psnr=33.0, ssim=0.93),
    )}  # fmt: skip

    def answer(**bounds: float) -> float | None:
        found = find_entry(entries, Request("SDXL", "DDIM", 25, **bounds))
        return None if found is None else found["measured"]["speedup"]

    assert answer() == 3.0  # no fidelity asked for: the fastest
    assert answer(psnr_min=25.0) == 2.5  # the old entry measured no PSNR: it answers none
    assert answer(ssim_min=0.9) == 2.0
    assert answer(psnr_min=30.0, ssim_min=0.9) == 2.0
    assert answer(psnr_min=40.0) is None
    why = why_missing(entries, Request("SDXL", "DDIM", 25, psnr_min=40.0, ssim_min=0.9))
    assert "PSNR >= 40 dB, SSIM >= 0.9" in why
    assert why.endswith("--min-psnr 40 --min-ssim 0.9 --export")


def test_a_frontier_point_is_picked_by_its_own_second_objective() -> None:
    entry = make_entry("SDXL", "DDIM", 25, speedup=2.0)
    entry.update(objective="pareto", pareto_metric="psnr")
    points = [(3.0, 0.01, 25.0), (2.0, 0.015, 35.0), (1.5, 0.03, 40.0)]
    entry["frontier"] = [
        {"trial": i, "accelerators": entry["accelerators"], "params": entry["params"],
         "measured": {"speedup": s, "time_per_image": 1 / s, "score_loss": loss, "psnr": p}}
        for i, (s, loss, p) in enumerate(points)
    ]  # fmt: skip
    entries = {entry["key"]: entry}
    fast = find_entry(entries, Request("SDXL", "DDIM", 25, req_speedup=1.8, max_score_loss=0.05))
    assert fast is not None and fast["measured"]["psnr"] == 35.0  # the best PSNR this fast
    sharp = find_entry(entries, Request("SDXL", "DDIM", 25, psnr_min=38.0, max_score_loss=0.05))
    assert sharp is not None and sharp["measured"]["speedup"] == 1.5


@pytest.mark.parametrize(
    ("where", "value", "why"),
    [
        ("measured", {"psnr": 120.0}, "measured.psnr: Input should be less than or equal to 100"),
        ("measured", {"ssim": "0.9"}, "measured.ssim: Input should be a valid number"),
        ("requirement", {"psnr_min": -1.0}, "requirement.psnr_min: Input should be greater"),
        ("requirement", {"lpips_max": math.inf}, "requirement.lpips_max"),
    ],
)
def test_entries_with_broken_fidelity_are_refused(where: str, value: Any, why: str) -> None:
    entry = make_entry()
    entry[where].update(value)
    with pytest.raises(InvalidEntry, match=why.replace("(", "\\(")):
        check_entry(entry["key"], entry)
    old = make_entry()
    check_entry(old["key"], old)  # and one without any fidelity stays readable


def test_a_pareto_entry_names_a_known_metric() -> None:
    entry = make_entry()
    entry.update(objective="pareto", pareto_metric="fid", frontier=[])
    with pytest.raises(InvalidEntry, match="pareto_metric"):
        check_entry(entry["key"], entry)


# --- the report --------------------------------------------------------------------------------


def _report_study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    spec = {"max_score_loss": 0.02, "constraints": {"psnr_min": 30.0, "ssim_min": None}}
    study.set_user_attr("spec", spec)
    rows = [  # speedup, score loss, PSNR, SSIM
        (3.0, 0.01, 25.0, 0.80),  # CLIP alone lets it through; PSNR does not
        (2.5, 0.05, 38.0, 0.95),  # PSNR alone lets it through; CLIP does not
        (2.0, 0.01, 34.0, 0.92),  # both: the best feasible
    ]
    for speedup, loss, psnr, ssim in rows:
        feasible = loss <= 0.02 and psnr >= 30.0
        study.add_trial(optuna.trial.create_trial(value=speedup, params={"x": speedup},
            distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
            user_attrs={"speedup": speedup, "score_loss": loss, "psnr": psnr, "ssim": ssim,
                        "feasible": feasible,
                        "accelerators": {"deepcache": {"i": speedup}}}))  # fmt: skip
    return study


def test_the_report_shows_every_metric_and_the_fastest_under_each_bound() -> None:
    data = report_data(_report_study())
    assert data.bounds == [("clip_loss", 0.02), ("psnr_min", 30.0)]
    assert data.metrics == ["score_loss", "psnr", "ssim"]
    assert data.best == 2
    assert data.best_under == {"CLIP score loss <= 2%": 0, "PSNR >= 30 dB": 1}
    assert [(n, t.split(" (")[-1]) for n, t in image_choices(data)] == [
        (2, "best feasible)"), (0, "fastest with CLIP score loss <= 2%)"),
        (1, "fastest with PSNR >= 30 dB)")]  # fmt: skip
    scatter = figures(data)["Speedup against quality"]
    (menu,) = scatter.layout.updatemenus
    labels = [b.label for b in menu.buttons]
    assert labels == ["CLIP score loss", "PSNR", "SSIM"]
    psnr = menu.buttons[1]
    assert psnr.args[1]["xaxis.title.text"] == "PSNR (dB)"
    assert psnr.args[0]["x"][:2] == [[34.0], [25.0, 38.0]]  # feasible, then outside a bound
    lines = [s["x0"] for s in psnr.args[1]["shapes"] if s.get("yref") == "paper"]
    assert lines == [30.0]  # the PSNR bound, drawn on the PSNR axis only
    assert [s.x0 for s in scatter.layout.shapes if s.yref == "paper"] == [2.0]  # 2%, as percent


@pytest.mark.usefixtures("timings")
def test_a_study_bounds_lpips_with_the_users_weights_and_names_the_file_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No LPIPS weights exist here: a seeded random AlexNet saved under torchvision's file name
    stands in for the user's, so this tests the plumbing, not the published network."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        features = torchvision.models.alexnet(weights=None).features.state_dict()
    weights = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save({f"features.{k}": v for k, v in features.items()}, weights)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    spec = tmp_path / "studies" / "TinySD-DDIM-10-deepcache.toml"
    spec.write_text(
        f"[constraints]\nlpips_max = 5.0\n[metric]\nlpips_weights = {str(weights)!r}\n"
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["run", "--study", "TinySD-DDIM-10-deepcache", "--storage", url, "--quiet"]
    assert main([*argv, "--n-trials", "1"]) == 0
    (trial,) = optuna.load_study(study_name="TinySD-DDIM-10-deepcache", storage=url).trials
    assert set(trial.constraints) == {"score_loss", "lpips"}
    assert 0.0 < trial.user_attrs["lpips"] < 5.0  # measured against the baseline images

    missing = tmp_path / "nowhere" / "alexnet-owt-7be5be79.pth"
    spec.write_text(
        f"[constraints]\nlpips_max = 5.0\n[metric]\nlpips_weights = {str(missing)!r}\n"
    )
    capsys.readouterr()
    url2 = f"sqlite:///{tmp_path / 's2.db'}"
    assert main(["run", "--study", "TinySD-DDIM-10-deepcache", "--storage", url2, "--quiet",
                 "--n-trials", "1"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert str(missing) in err and "alexnet" in err and len(err.strip().splitlines()) <= 3
