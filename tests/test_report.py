"""The report's numbers, its HTML, and the report/dashboard commands."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from accelopt.cli import main
from accelopt.report import (
    LABEL_ANGLE,
    Point,
    figures,
    parallel_margin,
    pareto_front,
    render_html,
    report_data,
)


def _point(n: int, speedup: float, loss: float, feasible: bool = True) -> Point:
    return Point(n, speedup, loss, feasible, f"cfg {n}", {"deepcache.cache_interval": n})


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [_point(0, 1.5, 0.010), _point(1, 2.0, 0.010), _point(2, 1.8, 0.005)]
    points += [_point(3, 2.5, 0.030, False), _point(4, 1.2, 0.020), _point(5, 2.0, 0.010)]
    # 0 is beaten by 1, 4 by 2; 1 and 5 tie (neither dominates the other).
    assert pareto_front(points) == [2, 1, 5, 3]


def _study() -> optuna.Study:
    study = optuna.create_study(study_name="Hand-made", direction="maximize")
    study.set_user_attr("spec", {"max_score_loss": 0.02})
    study.set_user_attr("baseline_time_per_image", 1.5)
    rows = [(1.4, 0.01, {"deepcache": {"cache_interval": 2}}), (2.2, 0.03, {})]
    rows += [(1.9, 0.015, {"deepcache": {"cache_interval": 4}}), (1.1, -0.01, {"tome": {}})]
    for i, (speedup, loss, acc) in enumerate(rows):
        study.add_trial(optuna.trial.create_trial(
            value=speedup, params={"deepcache.cache_interval": i + 2},
            distributions={"deepcache.cache_interval": optuna.distributions.IntDistribution(2, 5)},
            user_attrs={"speedup": speedup, "score_loss": loss, "feasible": loss <= 0.02,
                        "accelerators": acc},
        ))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    return study


def test_report_data_numbers() -> None:
    data = report_data(_study())
    assert [p.number for p in data.points] == [0, 1, 2, 3]
    assert data.best == 2  # 2.2x is over the budget
    assert data.frontier == [3, 0, 2, 1]  # by increasing loss; nothing beats any of them on both
    assert data.history == [(0, 1.4, 1.4), (1, 2.2, 1.4), (2, 1.9, 1.9), (3, 1.1, 1.9)]
    assert data.parallel == {"deepcache.cache_interval": [2, 3, 4, 5],
                             "speedup": [1.4, 2.2, 1.9, 1.1]}  # fmt: skip
    assert (data.skipped, data.failed, data.max_score_loss, data.baseline_time) == (
        1,
        0,
        0.02,
        1.5,
    )
    assert set(data.importances) == {"deepcache.cache_interval"}
    assert set(figures(data)) == {"Speedup against quality", "Optimization history",
                                  "Parameter importances", "Parallel coordinates"}  # fmt: skip


def _timed_study(
    baselines: list[float], stored: float, feasible: bool = True, reference: float | None = None
) -> optuna.Study:
    """A study whose trials were measured against ``baselines`` (a worker's running medians)
    while the study holds one single timing, ``stored``, as run_study writes them; speedups
    against ``reference`` (another mode's plain pipeline) when given."""
    study = optuna.create_study(study_name="Timed", direction="maximize")
    study.set_user_attr("spec", {"max_score_loss": 0.02})
    study.set_user_attr("baseline_time_per_image", stored)
    for i, baseline in enumerate(baselines):
        speedup = 2.0 + i
        study.add_trial(optuna.trial.create_trial(value=speedup, user_attrs={
            "speedup": speedup, "score_loss": 0.01, "feasible": feasible and i != 1,
            "accelerators": {},
            "baseline_time_per_image": baseline,
            "reference_time_per_image": reference or baseline,
            "time_per_image": baseline / speedup,
        }))  # fmt: skip
    return study


def test_the_baseline_shown_is_the_best_trials_and_says_so() -> None:
    # The numbers: the A/A check timed 55.37 s and 36.85 s (the second one stored in
    # the study); the trials' speedups are against their median, 46.11 s.
    data = report_data(_timed_study([46.11, 46.11, 46.11], 36.85))
    assert data.best == 2
    assert data.baseline_time == 46.11
    assert data.baseline_note == (
        "the median of the baseline timings made when trial 2 (the best) ran: what its speedup "
        "is against, and what export writes into the store; the study's first stored timing, "
        "36.8500 s/image, is one pass of its first A/A check"
    )
    assert "46.1100 s/image (the median of the baseline timings" in render_html(data)


def test_the_baseline_note_names_re_timings_and_the_reference() -> None:
    data = report_data(_timed_study([1.0, 1.2, 1.1], 1.0))
    assert (data.best, data.baseline_time) == (2, 1.1)
    assert data.baseline_note.endswith(
        "; trials were measured against baselines of 1.0000-1.2000 s/image; the study's "
        "first stored timing, 1.0000 s/image, is one pass of its first A/A check"
    )
    data = report_data(_timed_study([2.0], 2.0, reference=0.5))  # cuda-graphs beat this mode
    assert (data.baseline_time, data.baseline_note) == (2.0, (
        "the median of the baseline timings made when trial 0 (the best) ran, under its "
        "execution mode: what export writes into the store; its speedup is against the fastest "
        "plain pipeline, 0.5000 s/image"
    ))  # fmt: skip
    # No feasible trial: the latest trial's baseline, named as such.
    data = report_data(_timed_study([1.0, 1.2, 1.1], 1.0, feasible=False))
    assert (data.best, data.baseline_time) == (None, 1.1)
    assert data.baseline_note.startswith("the median of the baseline timings made when trial 2 "
                                         "(the latest) ran")  # fmt: skip


def test_parallel_coordinates_titles_fit() -> None:
    data = report_data(_study())
    figs = figures(data)
    parallel = figs["Parallel coordinates"]
    trace = parallel.data[0]
    # Slanted titles do not run into their neighbours; the top margin is as tall as the
    # longest (24 characters at about 7 px, slanted 30 degrees: 84 px) above the ticks (40).
    assert (trace.labelangle, trace.labelside, LABEL_ANGLE) == (-30, "top", -30)
    assert [d.label for d in trace.dimensions] == ["deepcache.cache_interval", "speedup"]
    layout = parallel.layout.margin
    assert (layout.t, layout.l, layout.r, layout.b) == (124, 60, 80, 30)
    assert parallel_margin(["deepcache.cache_interval", "speedup"])["t"] == 124
    assert parallel_margin(["speedup"])["t"] == 40 + 25  # 7 characters
    # the page keeps the figure's margins (it only sets the height); the others keep theirs
    assert {k: f.layout.margin.t for k, f in figs.items()} == {
        "Speedup against quality": 30, "Optimization history": 30,
        "Parameter importances": 30, "Parallel coordinates": 124,
    }  # fmt: skip


def test_html_is_self_contained_and_escaped() -> None:
    data = report_data(_study())
    evil = data.__class__(**{**data.__dict__, "study": "<script>alert(1)</script>"})
    page = render_html(evil)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert page.count("plotly.js v") == 1  # inlined once, no CDN
    assert "<script src=" not in page  # nothing fetched: it opens offline
    assert page.count('class="plotly-graph-div"') == 4


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    from accelopt.spec import load_spec
    from accelopt.study.loop import run_study

    spec = load_spec("TinySD-DDIM-10-deepcache")
    study = run_study(spec, storage=storage, n_trials=3, progress=False, log=lambda s: None).study
    data = report_data(study)
    shown = (
        len(dict.fromkeys(n for n in [data.best, *data.frontier] if n is not None))
        if (data.points)
        else 0
    )
    out = tmp_path / "report.html"
    argv = ["report", "--study", spec.name, "--storage", storage, "-o", str(out)]
    assert main([*argv, "--images", "2"]) == 0
    page = out.read_text()
    # Rows: the baseline, the best and frontier points (at most 3); 2 prompts each.
    assert page.count("<img alt=") == 2 * (1 + min(shown, 3)) and "<th>baseline</th>" in page
    assert "wrote" in capsys.readouterr().out
    assert main(argv) == 2  # exists
    assert "exists; pass --force" in capsys.readouterr().err
    assert main([*argv, "--force", "--images", "0"]) == 0
    assert "<img alt=" not in out.read_text()


def test_dashboard_refuses_public_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--host", "0.0.0.0"]) == 2
    assert "the dashboard has no login" in capsys.readouterr().err
