"""A study as one self-contained HTML page: the numbers first (``report_data``), then plotly.

``report_data`` computes plain records (points, Pareto frontier, history, importances, the
parallel-coordinates table) that tests, the notebook and the page share; ``figures`` draws them;
``render_html`` puts figures and an image grid (baseline beside the best configuration and
frontier points, same prompts and seeds) into one file with plotly.js inlined, so it opens
offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from accelopt.results import best_trial

__all__ = [
    "LABEL_ANGLE",
    "ImageRow",
    "Point",
    "ReportData",
    "figures",
    "parallel_margin",
    "pareto_front",
    "render_html",
    "report_data",
]


@dataclass(frozen=True)
class Point:
    """One completed trial on the speed/quality plane."""

    number: int
    speedup: float
    score_loss: float
    feasible: bool
    label: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ReportData:
    study: str
    max_score_loss: float
    # The baseline the best trial was measured against (its store entry's); baseline_note says
    # which one it is and how the study's other baseline timings differ from it.
    baseline_time: float | None
    points: list[Point]
    frontier: list[int]  # trial numbers on the Pareto frontier, by increasing score loss
    best: int | None  # the best feasible trial
    history: list[tuple[int, float, float | None]]  # (trial, speedup, best feasible so far)
    importances: dict[str, float]
    skipped: int
    failed: int
    parallel: dict[str, list[Any]] = field(default_factory=dict)
    baseline_note: str = ""


def _label(accelerators: dict[str, dict[str, Any]]) -> str:
    if not accelerators:
        return "none"
    return "; ".join(
        f"{name} " + ", ".join(f"{k}={v}" for k, v in knobs.items())
        for name, knobs in accelerators.items()
    )


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Trials no other trial beats on both speedup (higher) and score loss (lower)."""
    front = [
        p
        for p in points
        if not any(
            q.speedup >= p.speedup and q.score_loss <= p.score_loss
            and (q.speedup > p.speedup or q.score_loss < p.score_loss)
            for q in points
        )
    ]  # fmt: skip
    return [p.number for p in sorted(front, key=lambda p: (p.score_loss, -p.speedup))]


def _baseline(
    study: optuna.Study, complete: Sequence[optuna.trial.FrozenTrial], best: int | None
) -> tuple[float | None, str]:
    """The baseline to show, in seconds per image, and a sentence saying which one it is.

    A trial's speedup is against the median of the baseline timings its worker had made when it
    ran (re-timed at each start and every few trials), and export writes the best trial's into
    the store: that is the number shown. The study's own ``baseline_time_per_image`` is one
    timing, the first worker's second A/A pass, and differs from it on a noisy machine.
    """
    first = study.user_attrs.get("baseline_time_per_image")
    first = first if _number(first) else None
    seen = {t.number: t.user_attrs["baseline_time_per_image"] for t in complete
            if _number(t.user_attrs.get("baseline_time_per_image"))}  # fmt: skip
    if not seen:
        return first, "" if first is None else "one timing of the plain pipeline, at the start"
    number = best if best in seen else max(seen)
    shown = seen[number]
    which = "the best" if number == best else "the latest"
    note = f"the median of the baseline timings made when trial {number} ({which}) ran"
    a = next(t.user_attrs for t in complete if t.number == number)
    reference = a.get("reference_time_per_image")
    if _number(reference) and abs(reference - shown) > 1e-9 * shown:  # another mode was faster
        note += (f", under its execution mode: what export writes into the store; its speedup "
                 f"is against the fastest plain pipeline, {reference:.4f} s/image")  # fmt: skip
    else:
        note += ": what its speedup is against, and what export writes into the store"
    low, high = min(seen.values()), max(seen.values())
    if high > low:
        note += f"; trials were measured against baselines of {low:.4f}-{high:.4f} s/image"
    if first is not None and abs(first - shown) > 0.005 * shown:
        note += (f"; the study's first stored timing, {first:.4f} s/image, is one pass of its "
                 f"first A/A check")  # fmt: skip
    return shown, note


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def report_data(study: optuna.Study) -> ReportData:
    """Everything the report shows, as plain numbers."""
    spec = study.user_attrs.get("spec", {})
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    points = [
        Point(t.number, t.user_attrs["speedup"], t.user_attrs["score_loss"],
              bool(t.user_attrs["feasible"]), _label(t.user_attrs["accelerators"]), dict(t.params))
        for t in complete
    ]  # fmt: skip
    history, best_so_far = [], None
    for p in points:
        if p.feasible and (best_so_far is None or p.speedup > best_so_far):
            best_so_far = p.speedup
        history.append((p.number, p.speedup, best_so_far))
    try:
        importances = (
            dict(optuna.importance.get_param_importances(study)) if len(points) > 1 else {}
        )
    except (RuntimeError, ValueError):  # too few distinct values to tell
        importances = {}
    keys = sorted({k for p in points for k in p.params})
    parallel = {k: [p.params.get(k) for p in points] for k in keys}
    if points:
        parallel["speedup"] = [p.speedup for p in points]
    best = best_trial(study)
    states = [t.state for t in study.trials]
    baseline, note = _baseline(study, complete, None if best is None else best.number)
    return ReportData(
        study=study.study_name,
        max_score_loss=spec.get("max_score_loss", 0.02),
        baseline_time=baseline,
        points=points,
        frontier=pareto_front(points),
        best=None if best is None else best.number,
        history=history,
        importances={k: float(v) for k, v in importances.items()},
        skipped=states.count(TrialState.PRUNED),
        failed=states.count(TrialState.FAIL),
        parallel=parallel,
        baseline_note=note,
    )


def figures(data: ReportData) -> dict[str, Any]:
    """The plotly figures of a report, by title."""
    import plotly.graph_objects as go

    figs: dict[str, Any] = {}
    scatter = go.Figure()
    for feasible, name, symbol in ((True, "feasible", "circle"), (False, "over budget", "x")):
        chosen = [p for p in data.points if p.feasible == feasible]
        scatter.add_trace(go.Scatter(
            x=[100 * p.score_loss for p in chosen], y=[p.speedup for p in chosen],
            mode="markers", name=name, marker={"symbol": symbol, "size": 9},
            text=[f"trial {p.number}: {p.label}" for p in chosen], hoverinfo="text+x+y",
        ))  # fmt: skip
    by_number = {p.number: p for p in data.points}
    front = [by_number[n] for n in data.frontier]
    scatter.add_trace(go.Scatter(
        x=[100 * p.score_loss for p in front], y=[p.speedup for p in front],
        mode="lines", name="Pareto frontier", line={"dash": "dot"},
    ))  # fmt: skip
    if data.best is not None:
        b = by_number[data.best]
        scatter.add_trace(go.Scatter(
            x=[100 * b.score_loss], y=[b.speedup], mode="markers", name=f"best (trial {b.number})",
            marker={"symbol": "star", "size": 16},
        ))  # fmt: skip
    scatter.add_vline(x=100 * data.max_score_loss, line_dash="dash",
                      annotation_text=f"budget {100 * data.max_score_loss:g}%")  # fmt: skip
    scatter.add_hline(y=1.0, line_dash="dot", annotation_text="baseline")
    scatter.update_layout(xaxis_title="CLIP score loss (%)", yaxis_title="speedup (x)")
    figs["Speedup against score loss"] = scatter

    history = go.Figure()
    history.add_trace(go.Scatter(x=[h[0] for h in data.history], y=[h[1] for h in data.history],
                                 mode="markers", name="trial"))  # fmt: skip
    history.add_trace(go.Scatter(x=[h[0] for h in data.history], y=[h[2] for h in data.history],
                                 mode="lines", name="best feasible", line_shape="hv"))  # fmt: skip
    history.update_layout(xaxis_title="trial", yaxis_title="speedup (x)")
    figs["Optimization history"] = history

    if data.importances:
        names = list(data.importances)
        bars = go.Figure(go.Bar(x=[data.importances[n] for n in names], y=names, orientation="h"))
        bars.update_layout(xaxis_title="importance for speedup (fANOVA)")
        figs["Parameter importances"] = bars

    if data.parallel:
        dims = []
        for key, values in data.parallel.items():
            numeric = [float(v) if isinstance(v, int | float) else float("nan") for v in values]
            dims.append({"label": key, "values": numeric})
        speed = data.parallel.get("speedup", [])
        parallel = go.Figure(go.Parcoords(
            dimensions=dims, labelangle=LABEL_ANGLE, labelside="top",
            line={"color": speed, "colorscale": "Viridis", "showscale": True},
        ))  # fmt: skip
        parallel.update_layout(margin=parallel_margin(list(data.parallel)))
        figs["Parallel coordinates"] = parallel
    for fig in figs.values():
        if fig.layout.margin.t is None:
            fig.update_layout(margin={"t": 30})
    return figs


# Parallel coordinates: knob names are long (deepcache.cache_branch_id) and the axes close
# together, so axis titles run into each other; slanted, each title rises away from its
# neighbours and the top margin is as tall as the longest one (about 7 px a character).
LABEL_ANGLE = -30


def parallel_margin(labels: Sequence[str]) -> dict[str, int]:
    """The parallel-coordinates figure's margins in pixels, room for its slanted axis titles
    above the axes' top tick labels, and for the first axis's ticks and the colour bar."""
    rise = math.sin(math.radians(-LABEL_ANGLE)) * 7 * max((len(s) for s in labels), default=0)
    return {"t": 40 + math.ceil(rise), "l": 60, "r": 80, "b": 30}


def _baseline_shown(data: ReportData) -> str:
    if data.baseline_time is None:
        return "n/a"
    note = f" ({data.baseline_note})" if data.baseline_note else ""
    return f"{data.baseline_time:.4f} s/image{note}"


@dataclass(frozen=True)
class ImageRow:
    """One configuration's images for the grid: a title and PNG bytes per prompt."""

    title: str
    pngs: list[bytes]


def image_rows(
    study: optuna.Study, data: ReportData, bench: Any, count: int = 3
) -> list[ImageRow]:
    """Baseline, best and up to two more frontier points, same prompts and seeds."""
    from accelopt import accelerators

    chosen = [n for n in [data.best, *data.frontier] if n is not None]
    chosen = list(dict.fromkeys(chosen))[:3]
    by_number = {t.number: t for t in study.trials}
    bench.prompts = bench.prompts[:count]
    rows = [ImageRow("baseline", _pngs(bench.generate(0, len(bench.prompts))))]
    for number in chosen:
        trial = by_number[number]
        a = trial.user_attrs
        with accelerators.apply(bench.pipe, a["accelerators"], steps=bench.spec.steps):
            images = bench.generate(0, len(bench.prompts))
        title = f"trial {number}: {a['speedup']:.2f}x, loss {100 * a['score_loss']:.2f}%"
        rows.append(ImageRow(title + (" (best)" if number == data.best else ""), _pngs(images)))
    return rows


def _pngs(images: Any) -> list[bytes]:
    from PIL import Image

    out = []
    for image in images.detach().float().clamp(0, 1).mul(255).round().byte().cpu():
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


# Records script errors on the page itself, so a headless browser's DOM dump shows them.
_ERROR_PROBE = (
    "<script>window.addEventListener('error', function (e) {"
    " var r = document.documentElement; r.dataset.jsErrors = (r.dataset.jsErrors || '')"
    " + e.message + ';'; });</script>"
)


def render_html(
    data: ReportData, rows: Sequence[ImageRow] = (), prompts: Sequence[str] = ()
) -> str:
    """The whole page: summary, figures (plotly.js inlined once), image grid."""
    import plotly.io as pio

    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>accelopt report: {esc(data.study)}</title>{_ERROR_PROBE}",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse}td,th{padding:4px 8px;border:1px solid #ccc}"
        "img{width:160px;image-rendering:pixelated}</style></head><body>",
        f"<h1>{esc(data.study)}</h1>",
    ]
    best = next((p for p in data.points if p.number == data.best), None)
    shown = "none"
    if best is not None:
        shown = f"trial {best.number}: {best.speedup:.2f}x, loss {100 * best.score_loss:.2f}%"
        shown += f", {best.label}"
    summary = [
        ("completed trials", str(len(data.points))),
        ("skipped (dominated or duplicate)", str(data.skipped)),
        ("failed", str(data.failed)),
        ("score-loss budget", f"{100 * data.max_score_loss:g}%"),
        ("baseline", _baseline_shown(data)),
        ("best feasible", shown),
    ]
    parts.append("<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
                                     for k, v in summary) + "</table>")  # fmt: skip
    for i, (title, fig) in enumerate(figures(data).items()):
        fig.update_layout(height=480)
        parts.append(f"<h2>{esc(title)}</h2>")
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)))
    if rows:
        parts.append("<h2>Images: baseline beside the best and frontier configurations</h2>")
        head = "".join(f"<th>{esc(p)}</th>" for p in prompts)
        parts.append(f"<table><tr><th>configuration</th>{head}</tr>")
        for row in rows:
            cells = "".join(
                f"<td><img alt='{esc(row.title)}' src='data:image/png;base64,"
                f"{base64.b64encode(png).decode()}'></td>"
                for png in row.pngs
            )
            parts.append(f"<tr><th>{esc(row.title)}</th>{cells}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
