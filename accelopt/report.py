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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from accelopt._types import is_number
from accelopt.measure.constraints import BOUNDS, METRICS, Bound, quality_loss, quality_text
from accelopt.measure.timing import interval_text
from accelopt.study.results import (
    ENDINGS,
    config_text,
    endings,
    measured,
    plain_time,
    why_ended,
)

if TYPE_CHECKING:
    from accelopt.trial.bench import Bench

__all__ = [
    "LABEL_ANGLE",
    "MENU_MARGIN",
    "ImageRow",
    "Point",
    "ReportData",
    "default_output",
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
    # Every quality metric the trial measured (accelopt.measure.constraints.METRICS), the score
    # loss too.
    metrics: dict[str, float] = field(default_factory=dict)
    # A paired speedup's interval (accelopt.measure.timing.Paired; none for one pair), its
    # pair count (0: unpaired, or not recorded) and the interval's level.
    interval: tuple[float, float] | None = None
    pairs: int = 0
    level: float | None = None


@dataclass(frozen=True)
class ReportData:
    study: str
    max_score_loss: float
    # The baseline the best trial was measured against (its store entry's); baseline_note says
    # in sentences what it is and how the study's other baseline timings differ from it.
    baseline_time: float | None
    points: list[Point]
    frontier: list[int]  # trial numbers on the Pareto frontier, by increasing score loss
    best: int | None  # the best feasible trial
    history: list[tuple[int, float, float | None]]  # (trial, speedup, best feasible so far)
    importances: dict[str, float]
    # How many trials ended without completing, by ``accelopt.study.results.ENDINGS`` label
    # (only the ways some did), and each such trial: (number, configuration, why).
    ended: dict[str, int]
    unfinished: list[tuple[int, str, str]]
    parallel: dict[str, list[Any]] = field(default_factory=dict)
    bounds: list[tuple[str, float]] = field(default_factory=list)  # (constraint key, limit)
    pareto_metric: str = "score_loss"  # the frontier's second axis
    # Per bound (its description), the fastest trial that meets it, whatever the others say:
    # the image grid shows what each bound lets through.
    best_under: dict[str, int | None] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        """The metrics some trial measured, in METRICS order: the scatter's x-axis choices."""
        seen = {k for p in self.points for k in p.metrics}
        return [m for m in METRICS if m in seen]

    baseline_note: str = ""


def default_output(study: str) -> str:
    """The report's file name when none is given: the study's name, made safe as a file name
    (anything but letters, digits and ``.+-`` becomes ``_``; a name never reaches a folder).

    >>> default_output("TinySD-DDIM-10-deepcache+tgate")
    'report-TinySD-DDIM-10-deepcache+tgate.html'
    >>> default_output("../x y")
    'report-.._x_y.html'
    """
    return f"report-{re.sub(r'[^A-Za-z0-9.+-]', '_', study)[:200]}.html"


def pareto_front(points: Sequence[Point], metric: str = "score_loss") -> list[int]:
    """Trials no other trial beats on both speedup (higher) and ``metric`` (its good way; the
    score loss lower), ordered from the best ``metric`` down."""

    def loss(p: Point) -> float:
        value = quality_loss({"score_loss": p.score_loss, **p.metrics}, metric)
        return math.inf if value is None else value

    scored = [p for p in points if math.isfinite(loss(p))]
    front = [
        p
        for p in scored
        if not any(
            q.speedup >= p.speedup and loss(q) <= loss(p)
            and (q.speedup > p.speedup or loss(q) < loss(p))
            for q in scored
        )
    ]  # fmt: skip
    return [p.number for p in sorted(front, key=lambda p: (loss(p), -p.speedup))]


def _baseline(
    study: optuna.Study, complete: Sequence[optuna.trial.FrozenTrial], best: int | None
) -> tuple[float | None, str]:
    """The baseline to show, in seconds per image, and sentences saying which one it is.

    The one export writes beside the best trial (``plain_time``): the plain pipeline's time in
    the pairs the trial's speedup came from, or for a trial timed before pairs the median of
    the baseline timings its worker had made when it ran. The study's own
    ``baseline_time_per_image`` is one timing, the first worker's second A/A pass, and differs
    from it on a noisy machine.
    """
    first = study.user_attrs.get("baseline_time_per_image")
    first = first if _positive(first) else None
    seen = {t.number: plain_time(t.user_attrs) for t in complete
            if _positive(plain_time(t.user_attrs))}  # fmt: skip
    if not seen:
        if first is None:
            return None, ""
        return first, f"The plain pipeline took {first:.4f} s/image, timed once at the start."
    number = best if best in seen else max(seen)
    shown = seen[number]
    which = "the best" if number == best else "the latest"
    a = next(t.user_attrs for t in complete if t.number == number)
    if "paired_baseline_time_per_image" in a:
        batch = a.get("timing_batch_size")
        made = (f"in the timing pairs of trial {number} ({which})"
                + (f", in batches of {batch}" if batch else ""))  # fmt: skip
    else:
        made = f"the median of its timings made while trial {number} ({which}) ran"
    reference: Any = a.get("reference_time_per_image")
    baseline: Any = a.get("baseline_time_per_image")
    other_mode = (_positive(reference) and _positive(baseline)
                  and abs(reference - baseline) > 1e-9 * baseline)  # fmt: skip
    under = ", under its execution mode" if other_mode else ""
    notes = [f"The plain pipeline took {shown:.4f} s/image: {made}{under}."]
    if other_mode:  # another mode's plain pipeline was faster
        notes.append(f"Export writes this time into the store; the trial's speedup is against "
                     f"the fastest plain pipeline, {reference:.4f} s/image.")  # fmt: skip
    else:
        notes.append("The trial's speedup is against this time, and export writes it into the "
                     "store.")  # fmt: skip
    low, high = min(seen.values()), max(seen.values())
    if high > low:
        notes.append(f"Trials were measured against baselines from {low:.4f} to {high:.4f} "
                     f"s/image.")  # fmt: skip
    if first is not None and abs(first - shown) > 0.005 * shown:
        notes.append(f"The study's first stored timing, {first:.4f} s/image, is one pass of its "
                     f"first A/A check.")  # fmt: skip
    return shown, " ".join(notes)


def _positive(value: Any) -> bool:
    return is_number(value) and value > 0


def report_data(study: optuna.Study) -> ReportData:
    """Everything the report shows, as plain numbers."""
    spec = study.user_attrs.get("spec", {})
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if measured(t) and is_number(t.user_attrs.get("score_loss"))]  # fmt: skip
    points = [
        Point(t.number, t.user_attrs["speedup"], t.user_attrs["score_loss"],
              bool(t.user_attrs["feasible"]), config_text(t.user_attrs["accelerators"]),
              dict(t.params),
              {m: float(t.user_attrs[m]) for m in METRICS
               if isinstance(t.user_attrs.get(m), int | float)},
              *_interval_of(t.user_attrs))
        for t in complete
    ]  # fmt: skip
    limits = {k: v for k, v in (spec.get("constraints") or {}).items() if v is not None}
    bounds = [Bound("clip_loss", spec.get("max_score_loss", 0.02))]
    bounds += [Bound(k, float(v)) for k, v in limits.items() if k in BOUNDS]
    metric = spec.get("pareto_metric") or "score_loss"
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
    # best_trial's, among the points (a trial without its score loss is none)
    best = max((p for p in points if p.feasible), key=lambda p: p.speedup, default=None)
    ended = [t for t in study.trials if why_ended(t)]
    baseline, note = _baseline(study, complete, None if best is None else best.number)
    return ReportData(
        study=study.study_name,
        max_score_loss=spec.get("max_score_loss", 0.02),
        baseline_time=baseline,
        points=points,
        frontier=pareto_front(points, metric),
        best=None if best is None else best.number,
        history=history,
        importances={k: float(v) for k, v in importances.items()},
        ended={ENDINGS[k]: n for k, n in endings(ended).items()},
        unfinished=[
            (t.number, config_text(t.user_attrs.get("accelerators", {})), why_ended(t))
            for t in ended
        ],
        parallel=parallel,
        bounds=[(b.key, b.limit) for b in bounds],
        pareto_metric=metric,
        best_under={b.describe(): _fastest(points, b) for b in bounds},
        baseline_note=note,
    )


def _interval_of(
    attrs: dict[str, Any],
) -> tuple[tuple[float, float] | None, int, float | None]:
    """A trial's speedup interval (none for one pair, also as stored before: [x, x] at level
    0), its pair count (0 when not recorded) and the interval's level."""
    from accelopt.measure.timing import one_pair_read

    a = one_pair_read(attrs)
    pairs, stored_pairs = a.get("speedup_pairs"), a.get("pairs")
    if not (isinstance(pairs, int) and not isinstance(pairs, bool) and pairs > 0):
        # recorded before the count was: its pairs' ratios; a storage's garbage: none
        ratios = stored_pairs.get("ratios") if isinstance(stored_pairs, dict) else None
        pairs = len(ratios) if isinstance(ratios, list) else 0
    found: Any = a.get("speedup_interval")
    stored: Any = a.get("speedup_level")
    level = float(stored) if is_number(stored) else None
    if isinstance(found, list | tuple) and len(found) == 2 and all(map(is_number, found)):
        return (float(found[0]), float(found[1])), pairs, level
    return None, pairs, None


def _fastest(points: Sequence[Point], bound: Bound) -> int | None:
    """The fastest completed trial that meets ``bound``."""
    meeting = [p for p in points if bound.holds(p.metrics.get(bound.name))]
    return max(meeting, key=lambda p: p.speedup).number if meeting else None


def figures(data: ReportData) -> dict[str, Any]:
    """The plotly figures of a report, by title."""
    import plotly.graph_objects as go

    figs: dict[str, Any] = {}
    figs["Speedup against quality"] = _scatter(data)

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


def _scatter(data: ReportData) -> Any:
    """Speedup against one quality metric, the score loss first; a menu switches the x-axis to
    any other metric the trials measured, with that metric's bound drawn where there is one."""
    import plotly.graph_objects as go

    by_number = {p.number: p for p in data.points}
    groups = [
        ("feasible", [p for p in data.points if p.feasible], {"mode": "markers",
         "marker": {"symbol": "circle", "size": 9}}),
        ("outside a bound", [p for p in data.points if not p.feasible], {"mode": "markers",
         "marker": {"symbol": "x", "size": 9}}),
        ("Pareto frontier", [by_number[n] for n in data.frontier],
         {"mode": "lines", "line": {"dash": "dot"}}),
    ]  # fmt: skip
    if data.best is not None:
        b = by_number[data.best]
        groups.append((f"best (trial {b.number})", [b],
                       {"mode": "markers", "marker": {"symbol": "star", "size": 16}}))  # fmt: skip
    metrics = data.metrics or ["score_loss"]

    def scale(metric: str) -> float:
        return 100.0 if METRICS[metric].percent else 1.0

    def xs(points: Sequence[Point], metric: str) -> list[float | None]:
        values = ({"score_loss": p.score_loss, **p.metrics}.get(metric) for p in points)
        return [None if v is None else scale(metric) * v for v in values]

    def bound_lines(metric: str) -> list[dict[str, Any]]:
        """The metric's bound (dashed, where the study has one) and the plain pipeline's speed."""
        lines = [{"type": "line", "yref": "paper", "y0": 0, "y1": 1, "x0": scale(metric) * limit,
                  "x1": scale(metric) * limit, "line": {"dash": "dash"}}
                 for key, limit in data.bounds if BOUNDS[key] == metric]  # fmt: skip
        plain = {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 1, "y1": 1,
                 "line": {"dash": "dot"}}  # fmt: skip
        return [*lines, plain]

    def error_bars(points: Sequence[Point]) -> dict[str, Any]:
        """Each paired speedup's interval as an asymmetric error bar (0 where there is none)."""
        return {"type": "data", "symmetric": False,
                "array": [p.interval[1] - p.speedup if p.interval else 0 for p in points],
                "arrayminus": [p.speedup - p.interval[0] if p.interval else 0 for p in points],
                "visible": any(p.interval for p in points)}  # fmt: skip

    fig = go.Figure()
    for name, points, style in groups:
        extra = {"error_y": error_bars(points)} if style["mode"] == "markers" else {}
        fig.add_trace(go.Scatter(
            x=xs(points, metrics[0]), y=[p.speedup for p in points], name=name,
            text=[f"trial {p.number}: {p.label}{interval_text(p.interval, p.level, p.pairs)}"
                  for p in points],
            hoverinfo="text+x+y", **style, **extra,
        ))  # fmt: skip
    fig.update_layout(xaxis_title=METRICS[metrics[0]].axis, yaxis_title="speedup (x)",
                      shapes=bound_lines(metrics[0]))  # fmt: skip
    if len(metrics) > 1:
        buttons = [{"label": METRICS[m].label, "method": "update",
                    "args": [{"x": [xs(points, m) for _, points, _ in groups]},
                             {"xaxis.title.text": METRICS[m].axis, "shapes": bound_lines(m)}]}
                   for m in metrics]  # fmt: skip
        # Top left, in a top margin of its own: plotly's toolbar (the modebar) shows at the
        # top right on hover, where it would cover a menu.
        fig.update_layout(updatemenus=[{"buttons": buttons, "direction": "down",
                                        "x": 0.0, "xanchor": "left", "y": 1.0,
                                        "yanchor": "bottom", "pad": {"b": 6}}],
                          margin={"t": MENU_MARGIN})  # fmt: skip
    return fig


# The scatter's top margin in pixels when it has a metric menu: the menu's height above the plot.
MENU_MARGIN = 50

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
        return "No baseline timing is stored."
    return data.baseline_note or f"The plain pipeline took {data.baseline_time:.4f} s/image."


@dataclass(frozen=True)
class ImageRow:
    """One configuration's images for the grid: a title and PNG bytes per prompt."""

    title: str
    pngs: list[bytes]


def image_choices(data: ReportData, frontier: int = 2) -> list[tuple[int, str]]:
    """The trials the image grid shows beside the baseline, each with its row title: the best
    feasible, then the fastest under each bound alone (what "SSIM >= 0.9" lets through, when a
    study has more than one bound), then up to ``frontier`` frontier points."""
    why: dict[int, list[str]] = {}
    if data.best is not None:
        why[data.best] = ["best feasible"]
    if len(data.bounds) > 1:
        for bound, number in data.best_under.items():
            if number is not None:
                why.setdefault(number, []).append(f"fastest with {bound}")
    for number in [n for n in data.frontier if n not in why][:frontier]:
        why[number] = ["Pareto frontier"]
    by_number = {p.number: p for p in data.points}
    rows = []
    for number, reasons in why.items():
        p = by_number[number]
        shown = quality_text(p.metrics)
        rows.append((number, f"trial {number}: {p.speedup:.2f}x, {shown} ({'; '.join(reasons)})"))
    return rows


def image_rows(
    study: optuna.Study, data: ReportData, bench: Bench, count: int = 3
) -> list[ImageRow]:
    """The baseline's images, then those of ``image_choices``, same prompts and seeds."""
    from accelopt import accelerators

    by_number = {t.number: t for t in study.trials}
    bench.prompts = bench.prompts[:count]
    rows = [ImageRow("baseline", _pngs(bench.generate(0, len(bench.prompts))))]
    for number, title in image_choices(data):
        configs = by_number[number].user_attrs["accelerators"]
        with accelerators.apply(bench.pipe, configs, steps=bench.spec.steps):
            images = bench.generate(0, len(bench.prompts))
        rows.append(ImageRow(title, _pngs(images)))
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
        quality = quality_text(best.metrics)
        speed = f"{best.speedup:.2f}x{interval_text(best.interval, best.level, best.pairs)}"
        shown = f"trial {best.number}: {speed}, {quality}, {best.label}"
    summary = [
        ("completed trials", str(len(data.points))),
        *((label, str(n)) for label, n in data.ended.items()),
        (
            "bounds",
            ", ".join(Bound(k, v).describe() for k, v in data.bounds)
            or f"CLIP score loss <= {100 * data.max_score_loss:g}%",
        ),
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
        parts.append(
            "<h2>Images: the baseline beside the best configuration, the fastest "
            "under each bound and frontier points</h2>"
        )
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
    if data.unfinished:  # last: a long search may skip dozens
        parts.append("<h2>Trials that did not complete, and why</h2>")
        parts.append("<table id='unfinished'><tr><th>trial</th><th>configuration</th>"
                     "<th>why</th></tr>")  # fmt: skip
        parts += [f"<tr><td>{n}</td><td>{esc(label)}</td><td>{esc(why)}</td></tr>"
                  for n, label, why in data.unfinished]  # fmt: skip
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
