"""The report's numbers, its HTML, and the report/dashboard commands."""

from __future__ import annotations

import html
import re
from pathlib import Path

import optuna
import pytest

from accelopt.cli import main
from accelopt.report import (
    LABEL_ANGLE,
    MENU_MARGIN,
    Point,
    default_output,
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
    assert (data.ended, data.max_score_loss, data.baseline_time) == ({"pruned": 1}, 0.02, 1.5)
    assert data.unfinished == [(4, "none", "pruned")]
    assert set(data.importances) == {"deepcache.cache_interval"}
    assert set(figures(data)) == {"Speedup against quality", "Optimization history",
                                  "Parameter importances", "Parallel coordinates"}  # fmt: skip


def _ended_study() -> optuna.Study:
    """Two completed trials and one of every way a trial ends without completing, each with
    what the objective, ``dominating_trial`` and the run loop store."""
    from accelopt.trial.space import dominating_trial

    study = optuna.create_study(study_name="Ended", direction="maximize")
    study.set_user_attr("spec", {"max_score_loss": 0.02})
    fast = {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}}
    done = optuna.trial.create_trial(value=2.0, user_attrs={
        "speedup": 2.0, "score_loss": 0.01, "feasible": True, "accelerators": fast})  # fmt: skip
    study.add_trial(done)
    study.add_trial(optuna.trial.create_trial(value=1.5, user_attrs={
        "speedup": 1.5, "score_loss": 0.01, "feasible": True, "accelerators": {}}))  # fmt: skip
    done = study.trials[0]
    slower = {"deepcache": {"cache_interval": 2, "cache_branch_id": 0}}
    other = {"deepcache": {"cache_interval": 4, "cache_branch_id": 1}}
    why = {
        "same": dominating_trial(fast, [done]),
        "schedule": dominating_trial(other, [done], schedule_of=lambda c: ("every step",)),
        "dominated": dominating_trial(slower, [done]),
    }
    assert [w[1] if w else None for w in why.values()] == [
        "same configuration as trial 0",
        "computes what trial 0 computed at every step (same schedule)",
        "cannot beat feasible trial 0 (2.00x): no knob more aggressive",
    ]
    stopped = ("stopped after 8 of 16 prompts: CLIP score loss 13.20%, breaking CLIP score loss "
               "<= 2% with 95% confidence (at best 9.10%)")  # fmt: skip
    pruned, fail = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL
    ended = [
        (pruned, {"accelerators": other, "stopped_early": stopped}),
        (pruned, {"accelerators": fast, "skipped": why["same"][1]}),  # type: ignore[index]
        (pruned, {"accelerators": other, "skipped": why["schedule"][1]}),  # type: ignore[index]
        (pruned, {"accelerators": slower, "skipped": why["dominated"][1]}),  # type: ignore[index]
        (pruned, {"accelerators": {}, "skipped": "no accelerator on: that is the baseline"}),
        (fail, {"accelerators": other, "interrupted": True, "failed": "interrupted"}),
        (fail, {"accelerators": other, "failed": "RuntimeError: out of memory"}),
        (pruned, {"accelerators": other, "stopped_early": stopped}),
    ]
    for state, attrs in ended:
        study.add_trial(optuna.trial.create_trial(state=state, user_attrs=attrs))
    return study


def test_a_calibrated_knob_is_labelled_by_its_length_as_on_the_terminal() -> None:
    """MagCache's ratios (one per call) are data, not a setting to read: the report's labels
    show their count, as ``accelopt run`` prints a trial."""
    from accelopt.cli._format import describe

    magcache = {"threshold": 0.12, "max_skip_steps": 2, "retention_ratio": 0.2,
                "ratios": [1.0, 0.987654321] * 10}  # fmt: skip
    study = optuna.create_study(study_name="MagCache", direction="maximize")
    study.set_user_attr("spec", {"max_score_loss": 0.02})
    attrs = {"speedup": 1.8, "score_loss": 0.01, "feasible": True, "time_per_image": 0.5,
             "accelerators": {"magcache": magcache}}  # fmt: skip
    study.add_trial(optuna.trial.create_trial(value=1.8, user_attrs=attrs))
    label = (
        "magcache threshold=0.12, max_skip_steps=2, retention_ratio=0.2, ratios=[20 calibrated]"
    )
    (point,) = report_data(study).points
    assert point.label == label
    assert describe(study.trials[0]).splitlines()[0] == f"trial 0: {label}"
    page = render_html(report_data(study))
    assert "ratios=[20 calibrated]" in page and "0.987654321" not in page


def test_the_report_says_why_each_trial_stopped() -> None:
    data = report_data(_ended_study())
    assert data.ended == {
        "stopped early for a bound": 2,
        "skipped, same schedule as an earlier trial": 2,
        "skipped, dominated": 1,
        "skipped, no accelerator on": 1,
        "interrupted": 1,
        "failed": 1,
    }
    deepcache = "deepcache cache_interval=4, cache_branch_id=1"
    stopped = (
        "stopped early for a bound: stopped after 8 of 16 prompts: CLIP score loss 13.20%, "
        "breaking CLIP score loss <= 2% with 95% confidence (at best 9.10%)"
    )
    assert data.unfinished == [
        (2, deepcache, stopped),
        (3, "deepcache cache_interval=3, cache_branch_id=0",
         "skipped, same schedule as an earlier trial: same configuration as trial 0"),
        (4, deepcache, "skipped, same schedule as an earlier trial: computes what trial 0 "
         "computed at every step (same schedule)"),
        (5, "deepcache cache_interval=2, cache_branch_id=0",
         "skipped, dominated: cannot beat feasible trial 0 (2.00x): no knob more aggressive"),
        (6, "none", "skipped, no accelerator on"),
        (7, deepcache, "interrupted"),
        (8, deepcache, "failed: RuntimeError: out of memory"),
        (9, deepcache, stopped),
    ]  # fmt: skip
    page = render_html(data)
    summary = page.split("<table>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", summary)
    assert rows[:7] == [
        ("completed trials", "2"),
        ("stopped early for a bound", "2"),
        ("skipped, same schedule as an earlier trial", "2"),
        ("skipped, dominated", "1"),
        ("skipped, no accelerator on", "1"),
        ("interrupted", "1"),
        ("failed", "1"),
    ]
    listed = page.split("<table id='unfinished'>", 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", listed)
    assert [(int(n), html.unescape(c), html.unescape(w)) for n, c, w in cells] == data.unfinished
    # Nothing ended early: no such rows, no such table.
    plain = report_data(_timed_study([1.0], 1.0))
    assert plain.ended == {} and plain.unfinished == []
    assert "id='unfinished'" not in render_html(plain)


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
        "The plain pipeline took 46.1100 s/image: the median of its timings made while trial 2 "
        "(the best) ran. The trial's speedup is against this time, and export writes it into the "
        "store. The study's first stored timing, 36.8500 s/image, is one pass of its first A/A "
        "check."
    )
    # The summary's baseline cell is those sentences.
    cell = re.search(r"<th>baseline</th><td>([^<]*)</td>", render_html(data))
    assert cell is not None and html.unescape(cell.group(1)) == data.baseline_note


def test_the_baseline_note_names_re_timings_and_the_reference() -> None:
    data = report_data(_timed_study([1.0, 1.2, 1.1], 1.0))
    assert (data.best, data.baseline_time) == (2, 1.1)
    assert data.baseline_note.endswith(
        " Trials were measured against baselines from 1.0000 to 1.2000 s/image. The study's "
        "first stored timing, 1.0000 s/image, is one pass of its first A/A check."
    )
    data = report_data(_timed_study([2.0], 2.0, reference=0.5))  # cuda-graphs beat this mode
    assert (data.baseline_time, data.baseline_note) == (2.0, (
        "The plain pipeline took 2.0000 s/image: the median of its timings made while trial 0 "
        "(the best) ran, under its execution mode. Export writes this time into the store; the "
        "trial's speedup is against the fastest plain pipeline, 0.5000 s/image."
    ))  # fmt: skip
    # No feasible trial: the latest trial's baseline, named as such.
    data = report_data(_timed_study([1.0, 1.2, 1.1], 1.0, feasible=False))
    assert (data.best, data.baseline_time) == (None, 1.1)
    assert data.baseline_note.startswith(
        "The plain pipeline took 1.1000 s/image: the median of its timings made while trial 2 "
        "(the latest) ran."
    )
    # Only the study's own timing (no trial completed yet).
    data = report_data(_ended_study())
    assert (data.baseline_time, data.baseline_note) == (None, "")
    assert "<th>baseline</th><td>No baseline timing is stored.</td>" in render_html(data)


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


def test_the_metric_menu_sits_top_left_clear_of_the_toolbar() -> None:
    # plotly's toolbar shows at the top right on hover: the menu is at the top left, above the
    # plot in a margin of its own (tests/features/test_browser.py measures both in Chromium).
    study = optuna.create_study(study_name="Menu", direction="maximize")
    for t in _study().get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        study.add_trial(optuna.trial.create_trial(
            value=t.value, user_attrs={**t.user_attrs, "psnr": 30.0 + t.number}))  # fmt: skip
    scatter = figures(report_data(study))["Speedup against quality"]
    (menu,) = scatter.layout.updatemenus
    assert [b.label for b in menu.buttons] == ["CLIP score loss", "PSNR"]
    assert (menu.x, menu.xanchor, menu.y, menu.yanchor) == (0.0, "left", 1.0, "bottom")
    assert scatter.layout.margin.t == MENU_MARGIN == 50


def test_the_default_output_names_the_study() -> None:
    assert default_output("TinySD-DDIM-10-deepcache+tgate") == (
        "report-TinySD-DDIM-10-deepcache+tgate.html"
    )
    assert default_output("../a b/c") == "report-.._a_b_c.html"  # never a folder
    assert len(default_output("x" * 500)) == len("report-.html") + 200


def test_html_is_self_contained_and_escaped() -> None:
    data = report_data(_study())
    evil = data.__class__(**{**data.__dict__, "study": "<script>alert(1)</script>"})
    page = render_html(evil)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert page.count("plotly.js v") == 1  # inlined once, no CDN
    assert "<script src=" not in page  # nothing fetched: it opens offline
    assert page.count('class="plotly-graph-div"') == 4


def test_report_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
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
    capsys.readouterr()
    # Without -o: report-STUDY.html, here.
    monkeypatch.chdir(tmp_path)
    assert main([*argv[:-2], "--images", "0"]) == 0
    assert capsys.readouterr().out.startswith(
        f"wrote report-{spec.name}.html: {len(data.points)} trials"
    )
    assert "<h1>TinySD-DDIM-10-deepcache</h1>" in Path(f"report-{spec.name}.html").read_text()


def test_dashboard_refuses_public_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--host", "0.0.0.0"]) == 2
    assert "the dashboard has no login" in capsys.readouterr().err
