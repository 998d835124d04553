"""The landscape record: its format, and the pure functions over it (no torch, no GPU).

A landscape file (``python -m bench.landscape measure`` writes one per shard, ``merge`` joins them)
is one JSON object, ``kind`` ``"accelopt landscape"``, schema 1: the study and how it was measured,
``baselines`` (the plain pipeline's re-timings) and ``points`` (one per configuration). This module
reads, writes, merges and summarises such files; ``bench.tables`` and ``bench.replay`` need nothing
else, so they import this and never the measuring script.

    >>> from bench import landscape_records as records
    >>> summary = records.summarize(records.load(Path("bench/landscapes/SD1.5-DDIM-20.json")))
    >>> print(records.markdown(summary))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FIDELITY_BOUNDS",
    "FIDELITY_FIELDS",
    "FIDELITY_FLOORS",
    "FIDELITY_METRICS",
    "FIDELITY_POINT_KEYS",
    "KIND",
    "ORDER",
    "PSNR_FLOORS",
    "SCHEMA",
    "Point",
    "Record",
    "config_key",
    "fidelity_info",
    "fidelity_summary",
    "holds",
    "load",
    "lookup",
    "loss_of",
    "markdown",
    "merge",
    "merge_fidelity",
    "plan_name",
    "point_fidelity",
    "pooled_psnr",
    "short",
    "speedups",
    "summarize",
    "write_json",
]

SCHEMA = 1
KIND = "accelopt landscape"
ORDER = ("deepcache", "tome", "tgate")

Point = dict[str, Any]
Record = dict[str, Any]


# --- the points -------------------------------------------------------------------------------


def config_key(configs: Mapping[str, Mapping[str, Any]]) -> str:
    """One string per configuration: ``Space.configs(params)`` of equal points give equal keys.

    >>> config_key({"tome": {"ratio": 0.5, "max_downsample": 2}})
    '{"tome": {"max_downsample": 2, "ratio": 0.5}}'
    """
    return json.dumps(configs, sort_keys=True)


def plan_name(configs: Mapping[str, Any]) -> str:
    """``"deepcache+tome"``; ``"off"`` for the plain pipeline."""
    return "+".join(n for n in ORDER if n in configs) or "off"


def speedups(points: Iterable[Point], baselines: Sequence[Record]) -> None:
    """Set each point's ``speedup``: the median baseline timing of its shard / its time.

    The median, not the nearest timing: single baseline timings on the lent H200s spread by
    up to 60% (SDXL: 1.68-2.83 s, 2026-11-28) without drifting, so one outlier next to a point
    would make its speedup, and the plain pipeline's own, 1.5x.
    """
    by_shard: dict[int, list[float]] = {}
    for b in baselines:
        if b.get("time_per_image"):
            by_shard.setdefault(b["shard"], []).append(b["time_per_image"])
    for p in points:
        times = by_shard.get(p.get("shard", 1), [])
        if not times or not p.get("time_per_image"):
            p["speedup"] = None
            continue
        p["speedup"] = round(statistics.median(times) / p["time_per_image"], 4)


# --- fidelity fields ----------------------------------------------------------------------------

# Per point, search prompts first (held-out: the same names prefixed ``heldout_``).
FIDELITY_FIELDS = ("psnr_per_prompt", "ssim_per_prompt", "clip_image_per_prompt")

FIDELITY_POINT_KEYS = tuple(
    f"{split}{key}"
    for split in ("", "heldout_")
    for key in (*FIDELITY_FIELDS, "fidelity_scores", "fidelity_score_loss", "rescore_difference")
)


def fidelity_info(points: Sequence[Point], runs: Sequence[Record]) -> Record:
    """The file's ``fidelity`` record: the runs that added the fields and how well they match.

    ``score_difference`` (``heldout_``): the largest absolute difference of a regenerated CLIP
    score from the recorded one (per point: ``rescore_difference``); ``psnr_difference`` and
    ``ssim_difference``: of the mean of the per-prompt values from the recorded ``psnr`` and
    ``ssim`` (a mean PSNR is inf when one image is identical); ``baseline_score_difference``:
    of the plain pipeline's scores, over the runs.
    """
    done = [p for p in points if "psnr_per_prompt" in p]
    psnrs = []
    for p in done:
        mean = statistics.fmean(p["psnr_per_prompt"])
        same = mean == p["psnr"] or (math.isinf(mean) and math.isinf(p["psnr"]))
        psnrs.append(0.0 if same else abs(mean - p["psnr"]))
    ssims = [abs(statistics.fmean(p["ssim_per_prompt"]) - p["ssim"]) for p in done]

    def top(values: Iterable[float], digits: int) -> float | None:
        found = list(values)
        return round(max(found), digits) if found else None

    return {
        "points": len(done),
        "of": sum(1 for p in points if not p.get("error")),
        "errors": sum(1 for p in points if p.get("fidelity_error")),
        "baseline_score_difference": top((r["baseline_score_difference"] for r in runs), 4),
        "score_difference": top((p["rescore_difference"] for p in done), 4),
        "heldout_score_difference": top((p["heldout_rescore_difference"] for p in done), 4),
        "points_with_score_difference": sum(
            max(p["rescore_difference"], p["heldout_rescore_difference"]) > 0 for p in done
        ),
        "psnr_difference": top(psnrs, 4),
        "ssim_difference": top(ssims, 6),
        "runs": list(runs),
    }


def merge_fidelity(landscape: Record, records: Sequence[Record]) -> Record:
    """The landscape with the fidelity fields of ``records`` (``fidelity --shard`` outputs of
    it, or any partial ones): each point's fields from the one record that has them.

    Refuses a record of another study or of other points, and a point two records measured.
    """
    merged = {**landscape, "points": [dict(p) for p in landscape["points"]]}
    by_index = {p["index"]: p for p in merged["points"]}
    runs = list((landscape.get("fidelity") or {}).get("runs", []))
    owner: dict[int, int] = {i: -1 for i, p in by_index.items() if "psnr_per_prompt" in p}
    for n, record in enumerate(records):
        if record["study"] != landscape["study"]:
            raise ValueError(f"fidelity of {record['study']}, not of {landscape['study']}")
        for p in record["points"]:
            mine = by_index.get(p["index"])
            if mine is None or config_key(mine["accelerators"]) != config_key(p["accelerators"]):
                raise ValueError(f"point {p['index']} is not the landscape's")
            if "psnr_per_prompt" not in p or owner.get(p["index"]) == -1:
                continue  # not measured there, or already in the landscape
            if p["index"] in owner:
                raise ValueError(f"two files measured point {p['index']}")
            owner[p["index"]] = n
            mine.update({k: p[k] for k in FIDELITY_POINT_KEYS})
            mine.pop("fidelity_error", None)
        for p in record["points"]:
            if p.get("fidelity_error") and p["index"] not in owner:
                by_index[p["index"]]["fidelity_error"] = p["fidelity_error"]
        old = {json.dumps(r, sort_keys=True) for r in runs}
        runs += [
            r
            for r in (record.get("fidelity") or {}).get("runs", [])
            if json.dumps(r, sort_keys=True) not in old
        ]
    merged["fidelity"] = fidelity_info(merged["points"], runs)
    return merged


# --- files ------------------------------------------------------------------------------------


def write_json(path: Path, record: Record) -> None:
    """One key per line and one point per line: small, and diffs stay readable."""
    lines = []
    for key, value in record.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"  {json.dumps(v)}" for v in value)
            lines.append(f"{json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("{\n " + ",\n ".join(lines) + "\n}\n")
    tmp.replace(path)


def load(path: Path) -> Record:
    record = json.loads(Path(path).read_text())
    if record.get("kind") != KIND or record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a schema-{SCHEMA} landscape file")
    return record


def merge(records: Sequence[Record], command: str = "") -> Record:
    """Shards of one study -> one landscape: points in plan order, baselines of every shard.

    Refuses shards of different studies or plans, and a shard given twice; shards that are
    missing or stopped early leave the result ``partial`` with the ``missing`` point indices.
    """
    if not records:
        raise ValueError("nothing to merge")
    first = records[0]
    same = ("study", "steps", "resolution", "space", "plan", "images_per_point", "seeds")
    scored = ("heldout_seeds", "batch_size", "max_score_loss", "early_stop", "scorer")
    for r in records[1:]:
        for key in same:
            if r[key] != first[key]:
                raise ValueError(f"shards differ in {key!r}: {first[key]!r} vs {r[key]!r}")
        for key in scored:  # absent from unscored landscapes, and from schema-1 files before
            if r.get(key) != first.get(key):
                raise ValueError(f"shards differ in {key!r}: {first.get(key)!r} vs {r.get(key)!r}")
    shards = [dict(s) for r in records for s in r["shards"]]  # copies: the inputs stay as given
    ids = [(s["shard"], s["of"]) for s in shards]
    if len(set(ids)) != len(ids):
        raise ValueError(f"a shard is given twice: {sorted(ids)}")
    counts = {of for _, of in ids}
    if len(counts) != 1:
        raise ValueError(f"shards of different splits: {sorted(ids)}")
    (n,) = counts
    points = sorted((dict(p) for r in records for p in r["points"]), key=lambda p: p["index"])
    seen = [p["index"] for p in points]
    if len(set(seen)) != len(seen):
        raise ValueError("two shards measured the same point")
    planned = {i for s in shards for i in s["planned"]}
    missing = sorted(planned - set(seen))
    partial = bool(missing) or len(shards) < n or any(r["partial"] for r in records)
    devices = sorted({r["device"] for r in records})
    merged = {
        **{k: v for k, v in first.items() if k not in ("shards", "baselines", "points")},
        "device": devices[0] if len(devices) == 1 else " / ".join(devices),
        "date": min(r["date"] for r in records),
        "command": command,
        "shards": sorted(shards, key=lambda s: s["shard"]),
        "partial": partial,
        "missing": missing if len(shards) == n else None,  # None: not every shard is here
        "baselines": sorted(
            (b for r in records for b in r["baselines"]), key=lambda b: (b["shard"], b["seq"])
        ),
        "points": points,
    }
    if "baseline_scores" in first:
        _baseline_scores(merged, records)
    speedups(merged["points"], merged["baselines"])
    return merged


def _baseline_scores(merged: Record, records: Sequence[Record]) -> None:
    """The first shard's baseline scores (each shard scored the plain pipeline on its own GPU),
    and ``baseline_score_spread``: the largest difference between shards (0: identical)."""
    for key in ("baseline_scores", "heldout_baseline_scores"):
        found = [r[key] for r in records if r.get(key) is not None]
        merged[key] = found[0] if found else None
    spread = [
        abs(a - b)
        for key in ("baseline_scores", "heldout_baseline_scores")
        for r in records
        if r.get(key) is not None and merged[key] is not None
        for a, b in zip(r[key], merged[key], strict=True)
    ]
    merged["baseline_score_spread"] = max(spread, default=None)


def lookup(landscape: Record) -> dict[str, Point]:
    """The measured points by ``config_key`` of their configuration, for a replay.

    A sampler's params map to a recorded point through the study's space:
    ``lookup(landscape).get(config_key(space.configs(params)))`` (None: not measured).
    """
    return {config_key(p["accelerators"]): p for p in landscape["points"]}


# --- summary ----------------------------------------------------------------------------------

PSNR_FLOORS = (40.0, 30.0)


def summarize(landscape: Record) -> Record:
    """A plain record of the numbers the markdown summary shows (no drawing here)."""
    pts = landscape["points"]
    ok = [p for p in pts if p.get("time_per_image") and p.get("speedup")]
    base = [b["time_per_image"] for b in landscape["baselines"]]
    off = next((p for p in pts if not p["accelerators"]), None)

    def best(rows: Sequence[Point]) -> Point | None:
        return max(rows, key=lambda p: p["speedup"]) if rows else None

    groups: dict[str, list[Point]] = {}
    for p in ok:
        groups.setdefault(plan_name(p["accelerators"]), []).append(p)
    order = ["off", *("+".join(c) for r in (1, 2, 3) for c in itertools.combinations(ORDER, r))]
    memory = [p["peak_memory"] for p in pts if p.get("peak_memory")]
    return {
        "study": landscape["study"],
        "device": landscape["device"],
        "date": landscape["date"],
        "measured": len(pts),
        "planned": landscape["plan"]["selected"] or landscape["plan"]["points"],
        "partial": landscape["partial"],
        "errors": sum(1 for p in pts if p.get("error")),
        "wall_seconds": max((s["wall_seconds"] or 0) for s in landscape["shards"]),
        "baseline": {
            "count": len(base),
            "median": statistics.median(base) if base else None,
            "min": min(base, default=None),
            "max": max(base, default=None),
            "identical": sum(1 for b in landscape["baselines"] if b["psnr"] == math.inf),
        },
        "off": None if off is None else {"psnr": off["psnr"], "ssim": off["ssim"]},
        "groups": [
            {
                "accelerators": name,
                "points": len(groups[name]),
                "median_speedup": statistics.median(p["speedup"] for p in groups[name]),
                "best": best(groups[name]),
                "median_psnr": statistics.median(p["psnr"] for p in groups[name]),
                "median_ssim": statistics.median(p["ssim"] for p in groups[name]),
            }
            for name in order
            if name in groups
        ],
        "fastest": {
            f"{floor:g}": best([p for p in ok if p["psnr"] >= floor]) for floor in PSNR_FLOORS
        },
        "peak_memory_gib": max(memory) / 2**30 if memory else None,
        "scores": _score_summary(landscape, ok),
    }


def _score_summary(landscape: Record, ok: Sequence[Point]) -> Record | None:
    """Scored landscapes: how many points keep the study's budget on the search prompts, how
    many of those miss it on the held-out prompts, and the fastest that keeps it."""
    scored = [p for p in ok if p["accelerators"] and p.get("score_loss") is not None]
    if not scored:
        return None
    budget = landscape["max_score_loss"]
    within = [p for p in scored if p["score_loss"] <= budget]
    return {
        "scorer": landscape.get("scorer"),
        "max_score_loss": budget,
        "prompts": len(landscape["prompts"]),
        "heldout_prompts": len(landscape.get("heldout_prompts") or []),
        "points": len(scored),
        "within": len(within),
        "heldout_over": sum(1 for p in within if p["heldout_score_loss"] > budget),
        "fastest": max(within, key=lambda p: p["speedup"]) if within else None,
    }


def short(configs: Mapping[str, Mapping[str, Any]]) -> str:
    if not configs:
        return "off"
    return " + ".join(
        f"{n} " + "/".join(f"{v:g}" for v in configs[n].values()) for n in ORDER if n in configs
    )


def markdown(summary: Record) -> str:
    """The summary as a few lines and one table of GitHub markdown."""
    s, b = summary, summary["baseline"]
    state = "partial" if s["partial"] else "complete"
    lines = [
        f"### {s['study']} ({s['device']}, {s['date'][:10]})",
        "",
        f"- points: {s['measured']} of {s['planned']} ({state}); errors: {s['errors']}; "
        f"slowest shard {s['wall_seconds']:.0f} s"
        + (f"; peak memory {s['peak_memory_gib']:.1f} GiB" if s["peak_memory_gib"] else ""),
    ]
    if b["count"]:
        lines.append(
            f"- baseline: {b['median']:.4f} s/image, median of {b['count']} timings "
            f"({b['min']:.4f}-{b['max']:.4f}); {b['identical']} of {b['count']} bit-identical "
            "to the first baseline images"
        )
    if s["off"]:
        lines.append(f"- off point: PSNR {s['off']['psnr']}, SSIM {s['off']['ssim']}")
    if s.get("scores"):
        c = s["scores"]
        budget = f"{100 * c['max_score_loss']:g}%"
        lines.append(
            f"- CLIP-score loss ({c['scorer']}), budget {budget}: {c['within']} of {c['points']} "
            f"points keep it on {c['prompts']} search prompts, {c['heldout_over']} of them miss "
            f"it on {c['heldout_prompts']} held-out prompts"
        )
        if c["fastest"]:
            f = c["fastest"]
            search, held = 100 * f["score_loss"], 100 * f["heldout_score_loss"]
            lines.append(
                f"- fastest within {budget} loss: {f['speedup']:.2f}x, "
                f"{short(f['accelerators'])} (loss {search:.2f}%, held-out {held:.2f}%)"
            )
    for floor, p in s["fastest"].items():
        if p:
            lines.append(
                f"- fastest at PSNR >= {floor} dB: {p['speedup']:.2f}x, "
                f"{short(p['accelerators'])} (PSNR {p['psnr']:.1f}, SSIM {p['ssim']:.3f})"
            )
    lines += [
        "",
        "| accelerators | points | median speedup | best speedup | best's PSNR / SSIM | "
        "median PSNR | median SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in s["groups"]:
        p = g["best"]
        lines.append(
            f"| {g['accelerators']} | {g['points']} | {g['median_speedup']:.2f}x | "
            f"{p['speedup']:.2f}x {short(p['accelerators'])} | "
            f"{p['psnr']:.1f} / {p['ssim']:.3f} | "
            f"{g['median_psnr']:.1f} | {g['median_ssim']:.3f} |"
        )
    return "\n".join(lines) + "\n"


# --- fidelity beside the CLIP loss: the summary -------------------------------------------------

FIDELITY_METRICS = ("psnr", "ssim", "clip_image")
# Bounds joined to the study's CLIP-loss budget, one configuration choice each (see
# docs/BENCHMARKS.md for why these values); {} is the CLIP budget alone.
FIDELITY_BOUNDS: tuple[Mapping[str, float], ...] = (
    {},
    {"psnr": 30.0},  # the issue's "say, 30 dB", and bounds of the same looseness
    {"ssim": 0.9},
    {"clip_image": 0.95},
    {"psnr": 35.0},  # about the lowest third of the points within the CLIP budget
    {"psnr": 40.0},  # about the lowest three quarters
    {"ssim": 0.98},  # about the lowest quarter
    {"clip_image": 0.995},  # about the lowest half
)
FIDELITY_FLOORS = (40.0, 35.0, 30.0)  # dB: how many points within the budget fall below each


def pooled_psnr(values: Iterable[float]) -> float:
    """``accelopt.measure.constraints.pooled_psnr`` (of the images' mean squared error, the way a
    study reads PSNR), except that a set of unchanged images stays ``inf``: the record says they
    are identical, where a study's number has to stay finite.

    >>> pooled_psnr([math.inf, 20.0])
    23.010299956639813
    """
    from accelopt.measure.constraints import pooled_psnr as study_psnr

    values = list(values)
    return math.inf if all(math.isinf(v) for v in values) else study_psnr(values)


def point_fidelity(point: Point, split: str = "") -> dict[str, float] | None:
    """A point's fidelity over one split (``""``: search, ``"heldout_"``): the pooled PSNR, the
    lowest PSNR of one prompt, and the mean SSIM and CLIP-image similarity; None: not recorded."""
    if f"{split}psnr_per_prompt" not in point:
        return None
    values = point[f"{split}psnr_per_prompt"]
    return {
        "psnr": pooled_psnr(values),
        "min_psnr": min(values),
        "ssim": statistics.fmean(point[f"{split}ssim_per_prompt"]),
        "clip_image": statistics.fmean(point[f"{split}clip_image_per_prompt"]),
    }


def loss_of(point: Point, split: str = "") -> float:
    """The CLIP-score loss of the images the fidelity fields describe (``fidelity_score_loss``;
    the recorded ``score_loss`` where there are none): losses and fidelity of one draw, since
    ToMe on CUDA does not repeat a draw bit for bit."""
    found = point.get(f"{split}fidelity_score_loss")
    return float(point[f"{split}score_loss"] if found is None else found)


def holds(point: Point, budget: float, bounds: Mapping[str, float], split: str = "") -> bool:
    """The CLIP-loss budget and every fidelity bound (a lower bound) hold on ``split``."""
    loss = loss_of(point, split)
    found = point_fidelity(point, split) if bounds else {}
    if found is None:
        return False
    return loss <= budget and all(found[k] >= v for k, v in bounds.items())


def fidelity_summary(
    landscape: Record,
    bounds: Sequence[Mapping[str, float]] = FIDELITY_BOUNDS,
    floors: Sequence[float] = FIDELITY_FLOORS,
) -> Record:
    """A plain record of what a fidelity bound beside the CLIP budget changes (no drawing).

    Over the points with accelerators on, a timing and per-prompt fidelity (T-GATE's sample
    included): ``families``, the fastest point within the budget per accelerator set;
    ``choices``, per bound set, the fastest point feasible on the search prompts (the one a
    study would choose) and how many feasible points keep the budget (``heldout_clip``) and
    every bound (``heldout_all``) on the held-out prompts; ``below``, how many points within
    the budget fall below each PSNR floor (pooled, and for at least one prompt).
    """
    if unknown := sorted({k for b in bounds for k in b} - set(FIDELITY_METRICS)):
        raise ValueError(f"unknown fidelity metric {unknown[0]!r}; known: {FIDELITY_METRICS}")
    budget = landscape["max_score_loss"]
    pts = [
        p
        for p in landscape["points"]
        if p["accelerators"] and p.get("speedup") and p.get("score_loss") is not None
    ]
    measured = [p for p in pts if "psnr_per_prompt" in p]
    within = [p for p in measured if loss_of(p) <= budget]
    # Feasible by the recorded loss but not by the regenerated one, or the reverse.
    flips = [p for p in measured if (p["score_loss"] <= budget) != (loss_of(p) <= budget)]

    def fastest(rows: Sequence[Point]) -> Point | None:
        return max(rows, key=lambda p: p["speedup"]) if rows else None  # ties: the first

    def described(p: Point, b: Mapping[str, float]) -> Record:
        return {
            "index": p["index"],
            "accelerators": p["accelerators"],
            "speedup": p["speedup"],
            "score_loss": loss_of(p),
            "heldout_score_loss": loss_of(p, "heldout_"),
            "recorded_score_loss": p["score_loss"],
            "recorded_heldout_score_loss": p["heldout_score_loss"],
            "search": point_fidelity(p),
            "heldout": point_fidelity(p, "heldout_"),
            "passes_clip": loss_of(p, "heldout_") <= budget,
            "passes_all": holds(p, budget, b, "heldout_"),
        }

    families: dict[str, list[Point]] = {}
    for p in within:
        families.setdefault(plan_name(p["accelerators"]), []).append(p)
    order = ["+".join(c) for r in (1, 2, 3) for c in itertools.combinations(ORDER, r)]
    choices = []
    for b in bounds:
        feasible = [p for p in measured if holds(p, budget, b)]
        choices.append({
            "bounds": dict(b),
            "feasible": len(feasible),
            "heldout_clip": sum(loss_of(p, "heldout_") <= budget for p in feasible),
            "heldout_all": sum(holds(p, budget, b, "heldout_") for p in feasible),
            "chosen": described(best, b) if (best := fastest(feasible)) else None,
        })  # fmt: skip
    below = []
    for floor in floors:
        found = [point_fidelity(p) for p in within]
        below.append({
            "floor": floor,
            "pooled": sum(f is not None and f["psnr"] < floor for f in found),
            "any_prompt": sum(f is not None and f["min_psnr"] < floor for f in found),
        })  # fmt: skip
    redrawn: dict[str, list[int]] = {}  # per accelerator set: [regenerated differently, all]
    for p in landscape["points"]:
        if "rescore_difference" in p:
            counts = redrawn.setdefault(plan_name(p["accelerators"]), [0, 0])
            counts[0] += max(p["rescore_difference"], p["heldout_rescore_difference"]) > 0
            counts[1] += 1
    info = landscape.get("fidelity") or {}
    return {
        "study": landscape["study"],
        "device": info.get("device", landscape["device"]),
        "date": info.get("date", landscape["date"]),
        "command": info.get("command"),
        "max_score_loss": budget,
        "prompts": len(landscape["prompts"]),
        "heldout_prompts": len(landscape.get("heldout_prompts") or []),
        "points": len(pts),
        "measured": len(measured),
        "within": len(within),
        "flips": len(flips),
        "recorded_within": sum(p["score_loss"] <= budget for p in measured),
        "score_difference": info.get("score_difference"),
        "heldout_score_difference": info.get("heldout_score_difference"),
        "baseline_score_difference": info.get("baseline_score_difference"),
        "redrawn": {n: redrawn[n] for n in ["off", *order] if n in redrawn},
        "families": [
            {"set": n, "points": len(rows), **described(fastest(rows) or rows[0], {})}
            for n in order
            if (rows := families.get(n))
        ],
        "choices": choices,
        "below": below,
    }
