"""Markdown tables from benchmark result files, in the layouts docs/BENCHMARKS.md uses.

    python -m bench.tables bench/results/*.json bench/landscapes/*.json > tables.md
    python -m bench.tables $OUT/results.json
    python -m bench.tables --fidelity bench/landscapes/ToySD-DDIM-20.json

One renderer for every file the benchmarks write, so a run's tables.md and the docs' tables
come from the same code: ``bench/all.py`` writes its tables.md with ``render``, and the tables
in docs/BENCHMARKS.md are regenerated from the recorded files with this command. The kinds of
file (``kind_of``): a speed record (bench/speed.py, or bench/all.py's merge of several), a study
summary (bench/study_report.py), a scaling record (bench/scaling.py), a CPU record
(bench/cpu.py), a landscape (bench/landscape.py), and bench/all.py's results.json, which holds
a record of each suite it ran. ``--fidelity`` renders a scored landscape's fidelity tables
(``python -m bench.landscape fidelity``) instead. Reads JSON, writes text; imports no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import landscape_records

__all__ = ["describe", "fidelity_tables", "kind_of", "render", "render_files", "runs_table"]

Record = Mapping[str, Any]

# Published speedups quoted beside our rows (DeepCache, ToMe and T-GATE papers and READMEs, on
# their own GPUs and settings): (pipe, row label) -> the anchor column's text.
ANCHORS = {
    ("SD1.5", "deepcache 3/0 (published)"): "2.3x (DeepCache, SD1.5)",
    ("SD1.5", "tome 0.5 md1 (published)"): "1.87x (ToMe 0.5, RTX 4090)",
    ("SDXL", "deepcache 3/0 (published)"): "2.6x (DeepCache, SDXL)",
    ("SDXL", "tgate 10/5/1/2 (published)"): "1.68x (T-GATE, SDXL)",
    ("SDXL", "deepcache 3/0 + tgate 10/5/1/2"): "3.63x (T-GATE + DeepCache, SDXL)",
}
# bench/all.py's suites: the heading of each one's tables.
SUITE_TITLES = {
    "speed": "What each accelerator gives (alternated A/B)",
    "study": "Study engine: per-trial overhead",
    "scaling": "Two GPUs, one study: `--workers 2` against one worker",
    "landscapes": "Recorded landscapes",
}
# Landscape accelerator sets (landscape_records.plan_name) as the docs name them.
SET_NAMES = {
    "off": "plain (off)",
    "deepcache": "DeepCache",
    "tome": "ToMe",
    "tgate": "T-GATE",
    "deepcache+tome": "DeepCache + ToMe",
    "deepcache+tgate": "DeepCache + T-GATE",
    "tome+tgate": "ToMe + T-GATE",
    "deepcache+tome+tgate": "all three",
}


# --- cells and rows ---------------------------------------------------------------------------


def describe(configs: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"deepcache": {...}, "tome": {...}}`` -> ``"deepcache 3/0 + tome 0.5 md2"``.

    >>> describe({"tgate": {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2}})
    'tgate 10/5/1/2'
    """
    parts = []
    for name, p in configs.items():
        if name == "deepcache":
            parts.append(f"deepcache {p['cache_interval']}/{p['cache_branch_id']}")
        elif name == "tome":
            parts.append(f"tome {p['ratio']} md{p['max_downsample']}")
        else:
            parts.append(
                f"tgate {p['gate_step']}/{p['sp_interval']}/{p['fi_interval']}/{p['warm_up']}"
            )
    return " + ".join(parts)


def knobs(name: str, p: Mapping[str, Any]) -> str:
    """One accelerator's settings as the landscape tables write them: ``0.5/md1``, ``3/0``."""
    if name == "tome":
        return f"{p['ratio']:g}/md{p['max_downsample']}"
    return "/".join(f"{v:g}" for v in p.values())


def row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def header(*names: str) -> list[str]:
    return [row(names), "|" + "---|" * len(names)]


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --- speed: bench/speed.py --------------------------------------------------------------------


def speed_table(record: Record) -> list[str]:
    """Every measured row of a speed record, in the docs' five-architecture layout.

    The first run's file (no scheduler stored) keeps the layout the docs gave it then.
    """
    pipes = {name: p for name, p in record["pipes"].items() if "rows" in p}
    if any("scheduler" not in p for p in pipes.values()):
        return _first_speed_table(pipes)
    lines = header("pipe", "configuration", "speedup: median (min-max)", "spread", "s/image",
                   "peak GiB", "published anchor")  # fmt: skip
    for name, p in pipes.items():
        where = f"{name} {p['scheduler']}-{p['steps']}, {p['resolution']} px"
        for label, r in p["rows"].items():
            lines.append(row([
                where, label, f"{r['speedup']:.2f}x ({_range(r)})", f"{100 * r['spread']:.0f}%",
                f"{r['seconds']:.3f}", _gib(r["peak_gib"]), ANCHORS.get((name, label), ""),
            ]))  # fmt: skip
    return lines


def _first_speed_table(pipes: Mapping[str, Record]) -> list[str]:
    lines = header("pipe", "configuration", "speedup (median)", "min-max", "spread", "s/image",
                   "peak GiB")  # fmt: skip
    for name, p in pipes.items():
        where = f"{name} {p['steps']} steps {p['resolution']} px"
        for label, r in p["rows"].items():
            lines.append(row([
                where, label, f"{r['speedup']:.2f}x", _range(r), f"{100 * r['spread']:.1f}%",
                f"{r['seconds']:.3f}", _gib(r["peak_gib"]),
            ]))  # fmt: skip
    return lines


def _range(r: Record) -> str:
    return f"{r['speedup_min']:.2f}-{r['speedup_max']:.2f}"


def runs_table(runs: Mapping[str, Record]) -> list[str]:
    """The same configurations in several speed runs (name -> speed record), side by side:
    the rows of the first run that every run measured, and the largest median over the
    smallest. How far two runs of one configuration differ is the noise any single figure
    carries (METHOD.md: "time the same version twice").
    """
    pipes = [{n: p for n, p in r["pipes"].items() if "rows" in p} for r in runs.values()]
    lines = header("pipe", "configuration", *(f"{n}: median (min-max)" for n in runs),
                   "largest / smallest median")  # fmt: skip
    for name, p in pipes[0].items():
        for label in p["rows"]:
            rows = [q.get(name, {}).get("rows", {}).get(label) for q in pipes]
            if any(r is None for r in rows):
                continue
            medians = [r["speedup"] for r in rows]
            lines.append(row([
                name, label, *(f"{r['speedup']:.2f}x ({_range(r)})" for r in rows),
                f"{max(medians) / min(medians):.2f}",
            ]))  # fmt: skip
    return lines


def speed_of(record: Record) -> Record:
    """The speed record itself, or the speed suite of bench/all.py's results (empty if none)."""
    return record["suites"].get("speed", {}) if kind_of(record) == "results" else record


def speed_notes(record: Record) -> list[str]:
    """What a speed record did not measure, and why: one list item each."""
    notes = []
    for name, p in record["pipes"].items():
        if "rows" not in p:
            notes.append(f"- {name}: not measured ({p.get('error', 'no time left')})")
            continue
        skipped = p.get("skipped", {})
        moot = [label for label, why in skipped.items() if "cannot accelerate" in why]
        if moot:
            notes.append(f"- {name}: not applicable to its family: {', '.join(moot)}")
        notes += [f"- {name}, {label}: {why}" for label, why in skipped.items()
                  if label not in moot]  # fmt: skip
        if p.get("error"):
            notes.append(f"- {name}: stopped by an error: {p['error']}")
    return notes


def speed_markdown(record: Record) -> str:
    """The speed table, then what was not measured."""
    notes = speed_notes(record)
    lines = speed_table(record) + (["", "Not measured:", "", *notes] if notes else [])
    return "\n".join(lines) + "\n"


# --- the study engine: bench/study_report.py --------------------------------------------------


def study_table(records: Sequence[Record]) -> list[str]:
    """Per-trial overhead of stored studies (``study_report.summarize``), one row each."""
    lines = header(
        "study", "trials", "feasible", "best feasible", "baseline s/image", "trial wall (median)",
        "generation + warm-up + scoring (median)", "overhead per trial: median (min-max)",
        "trial / (generation + scoring), median",
    )  # fmt: skip
    for s in records:
        trials = f"{s['trials']}" + (
            f" ({s['measured']} measured)" if s["measured"] != s["trials"] else ""
        )
        if not s["measured"]:
            lines.append(row([s["study"], trials, "0", "-", _f3(s["baseline_seconds"]),
                              "-", "-", "-", "-"]))  # fmt: skip
            continue
        b, m, o = s["best"], s["median"], s["overhead"]
        lines.append(row([
            s["study"], trials, f"{s['feasible']}",
            "none" if b is None else f"{b['speedup']:.2f}x: {describe(b['accelerators'])}",
            _f3(s["baseline_seconds"]), f"{m['trial']:.2f} s",
            f"{m['generation']:.2f} s + {m['warmup']:.2f} s + {m['scoring']:.2f} s",
            f"{o['median']:.3f} s ({o['min']:.3f}-{o['max']:.3f})", f"{s['ratio_median']:.3f}",
        ]))  # fmt: skip
    return lines


def study_spans(records: Sequence[Record]) -> list[str]:
    """The whole loop, not only the objective: each study's span over its work, one line each."""
    return [
        f"- {s['study']}: study span / (generation + warm-up + scoring) over "
        f"{s['finished']} trials: {s['span_seconds']:.2f} s / {s['work_seconds']:.2f} s = "
        f"**{s['span_seconds'] / s['work_seconds']:.3f}**"
        for s in records
        if s.get("work_seconds")
    ]


def _f3(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --- scaling: bench/scaling.py ----------------------------------------------------------------


def scaling_table(record: Record) -> list[str]:
    """Trials per hour with one worker against more, one row per run."""
    lines = header("workers", "trials (measured)", "trials per worker", "span", "trials/hour",
                   "measured trials/hour", "vs 1 worker: trials, measured",
                   "command wall (vs 1)")  # fmt: skip
    for r in record["rows"]:
        versus = f"{r['speedup_trials']:.2f}x, {r['speedup_measured']:.2f}x"
        lines.append(row([
            f"{r['workers']}", f"{r['trials']} ({r['measured']})",
            ", ".join(map(str, r["trials_per_worker"])), f"{r['span_seconds']:.1f} s",
            f"{r['trials_per_hour']:.0f}", f"{r['measured_per_hour']:.0f}",
            f"**{versus}**" if r["workers"] > 1 else versus,
            f"{r['wall_seconds']:.1f} s ({r['speedup_wall']:.2f}x)",
        ]))  # fmt: skip
    return lines


# --- the CPU machine: bench/cpu.py ------------------------------------------------------------


def cpu_table(record: Record) -> list[str]:
    """What a user waits for on the CPU machine: --help, the demo study, ``make demo``."""
    c, d = record["cold_start"], record["demo"]
    trials = f", {d['trials']} trials" if "trials" in d else ""
    lines = header("what", "wall time", "goal")
    lines.append(row([
        f"`accelopt --help`, fresh process, median of {c['repeats']} (min-max)",
        f"{c['median']:.3f} s ({c['min']:.3f}-{c['max']:.3f})", f"<= {c['goal']:g} s",
    ]))  # fmt: skip
    lines.append(row([f"the demo study alone (`{d['command']}`{trials})",
                      f"{d['seconds']:.1f} s", f"<= {d['goal']:g} s"]))  # fmt: skip
    if "clone_demo" in record:
        lines.append(row(["README's first command in a fresh clone (`make demo`: venv, "
                          "install, study)", f"{record['clone_demo']['seconds']:.1f} s",
                          f"<= {record['clone_demo']['goal']:g} s"]))  # fmt: skip
    return lines


# --- landscapes: bench/landscape.py -----------------------------------------------------------


def landscape_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """One row per recorded landscape: points, baseline, the fastest points above two PSNRs."""
    floors = landscape_records.PSNR_FLOORS
    lines = header("study", "points", "baseline s/image: median (min-max of the re-timings)",
                   *(f"fastest at PSNR >= {f:g} dB" for f in floors), "peak memory")  # fmt: skip
    for record in records:
        s = landscape_records.summarize(record)
        b = s["baseline"]
        points = f"{s['measured']} of {s['planned']}"
        if s["partial"]:
            why = [x["stopped"].split(":")[0] for x in record["shards"] if x.get("stopped")]
            points += f" (partial: the {why[0]})" if why else " (partial)"
        base = "-" if not b["count"] else (
            f"{b['median']:.3f} ({b['min']:.3f}-{b['max']:.3f}), {b['count']} timings"
        )  # fmt: skip
        lines.append(row([
            f"{s['study']}, {record['resolution']} px, batch {record['images_per_point']}",
            points, base, *(_fastest(s["fastest"][f"{f:g}"]) for f in floors),
            "-" if s["peak_memory_gib"] is None else f"{s['peak_memory_gib']:.1f} GiB",
        ]))  # fmt: skip
    return lines


def _fastest(point: Record | None) -> str:
    if point is None or not point["accelerators"]:
        return "none but the plain pipeline"
    return (f"{point['speedup']:.2f}x, {_named(point['accelerators'])} "
            f"(PSNR {point['psnr']:.1f}, SSIM {point['ssim']:.3f})")  # fmt: skip


def _named(configs: Mapping[str, Mapping[str, Any]]) -> str:
    return " + ".join(f"{SET_NAMES[n]} {knobs(n, configs[n])}" for n in landscape_records.ORDER
                      if n in configs)  # fmt: skip


def landscape_sets_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """Per accelerator set, each landscape's points, median / best speedup and best's PSNR."""
    summaries = [landscape_records.summarize(r) for r in records]
    pipes = [r["pipeline"] for r in records]
    groups = [{g["accelerators"]: g for g in s["groups"]} for s in summaries]
    cells = [(f"{p} points", f"{p} median / best", "best's PSNR") for p in pipes]
    lines = header("accelerators", *(c for triple in cells for c in triple))
    for name, title in SET_NAMES.items():
        if not any(name in g for g in groups):
            continue
        line = [title]
        for found, record in zip(groups, records, strict=True):
            g = found.get(name)
            line += _set_cells(name, g, record["plan"]["complete"]) if g else ["0", "-", "-"]
        lines.append(row(line))
    return lines


def _set_cells(name: str, g: Record, complete: Sequence[str]) -> list[str]:
    best = g["best"]
    if name == "off":
        speed = f"{best['speedup']:.2f}x"
    else:
        speed = f"{g['median_speedup']:.2f}x / {best['speedup']:.2f}x"
        if name in complete:  # one accelerator, all its settings measured: which was best
            speed += f" ({knobs(name, best['accelerators'][name])})"
    return [f"{g['points']}", speed, f"{best['psnr']:.1f}"]


# --- fidelity beside the CLIP loss: bench/landscape.py fidelity -------------------------------

METRIC_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "clip_image": "CLIP-image"}


def _bounds(bounds: Mapping[str, float], budget: float) -> str:
    clip = f"CLIP loss <= {100 * budget:g}%"
    if not bounds:
        return f"{clip} alone"
    unit = {"psnr": " dB"}
    return clip + "".join(
        f" + {METRIC_NAMES[k]} >= {v:g}{unit.get(k, '')}" for k, v in bounds.items()
    )


def _pair(search: float, heldout: float, digits: int, scale: float = 1.0) -> str:
    signed = "+" if scale != 1.0 else ""  # a loss in %: its sign says better or worse
    return f"{scale * search:{signed}.{digits}f} / {scale * heldout:{signed}.{digits}f}"


def _fidelity_cells(p: Record) -> list[str]:
    """Loss, pooled PSNR, lowest prompt's PSNR, SSIM, CLIP-image: search / held-out."""
    s, h = p["search"], p["heldout"]
    return [
        _pair(p["score_loss"], p["heldout_score_loss"], 2, 100.0),
        _pair(s["psnr"], h["psnr"], 1),
        _pair(s["min_psnr"], h["min_psnr"], 1),
        _pair(s["ssim"], h["ssim"], 3),
        _pair(s["clip_image"], h["clip_image"], 3),
    ]


def _share(count: int, of: int) -> str:
    return f"{count} of {of} ({100 * count / of:.0f}%)" if of else "0 of 0"


def fidelity_tables(record: dict[str, Any]) -> list[str]:
    """A scored landscape with per-prompt fidelity (``python -m bench.landscape fidelity``): what
    the CLIP budget lets through, per accelerator set; the configuration each bound set chooses;
    how many points within the budget fall below each PSNR floor."""
    s = landscape_records.fidelity_summary(record)
    budget = s["max_score_loss"]
    pct = f"{100 * budget:g}%"
    redrawn = ", ".join(f"{SET_NAMES[n]} {d} of {t}" for n, (d, t) in s["redrawn"].items())
    lines = [
        f"- {s['points']} configurations with accelerators on ({s['measured']} with fidelity), "
        f"{s['prompts']} search and {s['heldout_prompts']} held-out prompts; "
        f"{s['within']} within the {pct} CLIP budget ({s['recorded_within']} by the recorded "
        f"scores; the regeneration flips {s['flips']})",
        f"- regenerated CLIP scores against the recorded ones: largest difference "
        f"{s['score_difference']:.2f} (search), {s['heldout_score_difference']:.2f} (held-out) "
        f"on one prompt, baseline {s['baseline_score_difference']:.2f}; points that differ: "
        f"{redrawn}",
        "",
        *header("accelerators", f"within {pct}", "fastest within the budget", "speedup",
                "CLIP loss %", "PSNR dB", "lowest prompt's PSNR", "SSIM", "CLIP-image"),
    ]  # fmt: skip
    for g in s["families"]:
        lines.append(row([SET_NAMES[g["set"]], str(g["points"]),
                          _named(g["accelerators"]), f"{g['speedup']:.2f}x",
                          *_fidelity_cells(g)]))  # fmt: skip
    lines += ["", *header("bounds (search prompts)", "feasible", "chosen (fastest feasible)",
                          "speedup", "CLIP loss %", "PSNR dB", "lowest prompt's PSNR", "SSIM",
                          "CLIP-image", "chosen holds on held-out: CLIP / all bounds",
                          "feasible that hold on held-out: CLIP", "... all bounds")]  # fmt: skip
    for c in s["choices"]:
        p = c["chosen"]
        head = [_bounds(c["bounds"], budget), str(c["feasible"])]
        if p is None:
            lines.append(row([*head, "none", *["-"] * 9]))
            continue
        verdict = " / ".join("yes" if p[k] else "no" for k in ("passes_clip", "passes_all"))
        lines.append(row([*head, _named(p["accelerators"]), f"{p['speedup']:.2f}x",
                          *_fidelity_cells(p), verdict,
                          _share(c["heldout_clip"], c["feasible"]),
                          _share(c["heldout_all"], c["feasible"])]))  # fmt: skip
    lines += ["", *header("PSNR floor", f"within {pct} CLIP loss", "pooled PSNR below it",
                          "at least one prompt below it")]  # fmt: skip
    for b in s["below"]:
        lines.append(row([f"{b['floor']:g} dB", str(s["within"]),
                          _share(b["pooled"], s["within"]),
                          _share(b["any_prompt"], s["within"])]))  # fmt: skip
    return lines


def render_fidelity(records: Sequence[dict[str, Any]]) -> str:
    """``fidelity_tables`` of each landscape that has per-prompt fidelity, under its study."""
    parts = []
    for record in records:
        if record.get("fidelity") is None:
            raise ValueError(
                f"{record['study']}: no per-prompt fidelity; "
                "run python -m bench.landscape fidelity"
            )
        parts.append("\n".join([f"### {record['study']}", "", *fidelity_tables(record)]))
    return "\n\n".join(parts) + "\n"


# --- files ------------------------------------------------------------------------------------


def kind_of(record: Record) -> str:
    """``results``, ``speed``, ``study``, ``scaling``, ``cpu`` or ``landscape``."""
    if record.get("kind") == landscape_records.KIND:
        return "landscape"
    for kind, key in (("results", "suites"), ("speed", "pipes"), ("cpu", "cold_start"),
                      ("study", "states"), ("scaling", "rows")):  # fmt: skip
        if key in record:
            return kind
    raise ValueError(f"not a benchmark record (keys: {', '.join(sorted(record))})")


def render(record: Record, base: Path = Path(".")) -> str:
    """Every table of one record, with the notes that belong under them.

    bench/all.py's results name the landscape files they wrote relative to ``base``, their
    folder, rather than holding them.
    """
    kind = kind_of(record)
    if kind == "results":
        parts = [results_header(record)]
        parts += [_suite(name, r, base) for name, r in record["suites"].items()]
        return "\n".join(parts)
    if kind == "speed":
        return speed_markdown(record)
    if kind == "study":
        return "\n".join([*study_table([record]), "", *study_spans([record])]) + "\n"
    if kind == "scaling":
        return "\n".join(scaling_table(record)) + "\n"
    if kind == "cpu":
        return "\n".join(cpu_table(record)) + "\n"
    return render_landscapes([dict(record)])


def results_header(record: Record) -> str:
    """What bench/all.py ran, where, when, with which versions, and its plan."""
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v)
    plan = record.get("plan")
    lines = [
        f"# Benchmarks, {record['date']}: {record['card']}",
        "",
        f"- command: `{record['command']}`; wall {record['wall_seconds']:.0f} s of a "
        f"{record['time_budget']:.0f} s budget" + ("; **PARTIAL**" if record["partial"] else ""),
        f"- versions: {versions}; Python {record['python']}",
        "- full-size architectures have random weights (nothing can be downloaded): times are "
        "real, images and scores are not; ToySD is trained here, so its scores mean something",
    ]
    if plan:
        cpu = (
            " (a CPU run: each GPU below is a process slot)" if record["card"][:3] == "cpu" else ""
        )
        lines.append(f"- plan for {plan['gpus']} GPUs{cpu}, seconds from the start:")
        lines += [f"  - {line}" for line in plan["summary"]]
    return "\n".join([*lines, "", "```", record["nvidia_smi"], "```", ""])


def _suite(name: str, record: Record, base: Path) -> str:
    """One suite of bench/all.py's results under its heading; why not, if it did not run."""
    if name == "landscapes":
        records = [json.loads((base / f).read_text()) for f in record["files"]]
        text = render_landscapes(records) if records else ""
        text += "".join(f"\n- {why}" for why in record["problems"])
    elif name == "study" and "states" not in record:
        text = f"Not measured: {record.get('error') or record.get('skipped')}\n"
    elif name == "scaling" and not record["rows"]:
        text = f"Not measured: {record['error']}\n"
    else:
        text = render(record)
    partial = " (partial)" if record.get("partial") else ""
    return f"## {SUITE_TITLES[name]}{partial}\n\n{text}"


def render_landscapes(records: Sequence[dict[str, Any]]) -> str:
    """The docs' two landscape tables: one row per study, then one row per accelerator set."""
    lines = [*landscape_table(records), "", *landscape_sets_table(records)]
    return "\n".join(lines) + "\n"


def render_files(paths: Sequence[Path]) -> str:
    """A section per file, its tables under it; landscapes side by side in one section."""
    records = {p: json.loads(p.read_text()) for p in paths}
    sections, lands = [], []
    for path, record in records.items():
        if kind_of(record) == "landscape":
            lands.append(path)
        else:
            sections.append(f"### {path.name}\n\n{render(record, path.parent)}")
    if lands:
        names = ", ".join(p.name for p in lands)
        sections.append(f"### {names}\n\n{render_landscapes([records[p] for p in lands])}")
    return "\n".join(sections)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="result JSON files")
    parser.add_argument("--out", type=Path, help="write here (default: print)")
    parser.add_argument(
        "--fidelity",
        action="store_true",
        help="the fidelity tables of scored landscapes (python -m bench.landscape fidelity)",
    )
    parser.add_argument(
        "--runs",
        action="store_true",
        help="one table of the files' speed runs side by side (runs_table)",
    )
    args = parser.parse_args(argv)
    if args.fidelity:
        try:
            text = render_fidelity([json.loads(p.read_text()) for p in args.files])
        except ValueError as err:
            parser.error(str(err))
    elif args.runs:
        runs = {p.stem: speed_of(json.loads(p.read_text())) for p in args.files}
        if lacking := [name for name, r in runs.items() if "pipes" not in r]:
            parser.error(f"--runs compares speed runs; no speed run in: {', '.join(lacking)}")
        text = "\n".join(runs_table(runs)) + "\n"
    else:
        text = render_files(args.files)
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
