"""Does the toy world mean something? Retrieval and CLIP-score loss figures for the toy models.

    python -m accelopt.toy.evaluate --out figures.json [--pipeline DIR --scorer DIR]

Three figures (docs/BENCHMARKS.md shows them):

1. The scorer on real held-out images: rank the true caption among 100 candidates (top-1, top-5).
2. Generated images follow their prompts: the same retrieval on the generator's images (ToySD's
   or ToyPixArt's), baseline and accelerated, for search and held-out captions.
3. CLIP-score loss grows with acceleration (DeepCache interval, ToMe ratio, T-GATE gate step;
   on a DiT also each block cache at the settings its toy studies picked and its upstream
   default: those that apply to the generator's family) and differs from prompt to prompt: per
   configuration, the loss on each split and its spread. MagCache's ratios are measured first on
   the plain pipeline with four search prompts, as a study measures them on its first batch.

Images come from the pipeline's own scheduler (ToySD: DDIM; ToyPixArt: PixArt's DPM-Solver++),
20 steps, at the guidance of its study. Without ``--pipeline``/``--scorer`` it evaluates the
models shipped with accelopt.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from accelopt import accelerators
from accelopt.measure.metrics import ClipScorer, prompt_losses, score_loss
from accelopt.pipelines import call_defaults, family_of
from accelopt.toy import shapes

__all__ = ["CONFIGS", "calibrated", "configs_for", "generate", "main", "retrieval"]

STEPS = 20
GUIDANCE = 5.0  # ToySD's; a PixArt pipeline takes its own default (4.5), as its study does
PIXART_GUIDANCE = 4.5
# The real images the scorer is checked on: one draw per split, apart from training's streams.
REAL_SEEDS: dict[shapes.Split, int] = {"train": 10_005, "heldout": 10_007}
# Each accelerator from mild to aggressive, alone, at 20 DDIM steps.
_TGATE = {"warm_up": 0, "sp_interval": 1, "fi_interval": 1}
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "baseline": {},
    **{f"DeepCache {n}": {"deepcache": {"cache_interval": n, "cache_branch_id": 0}}
       for n in (2, 3, 4, 5)},
    **{f"ToMe {r}": {"tome": {"ratio": r, "max_downsample": 1}} for r in (0.25, 0.5, 0.75)},
    **{f"T-GATE gate {g}": {"tgate": {"gate_step": g, **_TGATE}} for g in (15, 10, 5, 2)},
    # The block caches (DiTs only): what ToyPixArt's DPM-Solver++-20 studies picked and
    # exported (docs/BENCHMARKS.md: "Block caches on ToyPixArt", "Footholds"), each method's
    # upstream default (FirstBlockCache 0.05, MagCache 0.06/3/0.2, TaylorSeer 5/1/3, DBCache
    # F8B0 0.08 W8) and ParaAttention's FLUX setting of FirstBlockCache (0.08).
    **{f"FirstBlockCache {t}": {"fbcache": {"threshold": t}} for t in (0.04, 0.05, 0.08)},
    **{f"MagCache {t}/{k}/{r}": {"magcache": {"threshold": t, "max_skip_steps": k,
                                              "retention_ratio": r}}
       for t, k, r in ((0.02, 1, 0.3), (0.04, 4, 0.15), (0.06, 3, 0.2))},
    "TaylorSeer 5/1/3": {"taylorseer": {"cache_interval": 5, "max_order": 1,
                                        "disable_cache_before_step": 3}},
    "DBCache F2B0 0.12 W2 MC1": {"dbcache": {"Fn_compute_blocks": 2, "Bn_compute_blocks": 0,
                                             "residual_diff_threshold": 0.12,
                                             "max_warmup_steps": 2,
                                             "max_continuous_cached_steps": 1}},
    "DBCache F1B0 0.24 W1": {"dbcache": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0,
                                         "residual_diff_threshold": 0.24,
                                         "max_warmup_steps": 1}},
    "DBCache F8B0 0.08 W8": {"dbcache": {}},  # cache-dit's defaults
    # The same three with cache-dit's TaylorSeer calibrator on top at its default order, 1.
    "DBCache F2B0 0.12 W2 MC1 T1": {"dbcache": {"Fn_compute_blocks": 2, "Bn_compute_blocks": 0,
                                                "residual_diff_threshold": 0.12,
                                                "max_warmup_steps": 2,
                                                "max_continuous_cached_steps": 1,
                                                "taylorseer_order": 1}},
    "DBCache F1B0 0.24 W1 T1": {"dbcache": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0,
                                            "residual_diff_threshold": 0.24,
                                            "max_warmup_steps": 1, "taylorseer_order": 1}},
    "DBCache F8B0 0.08 W8 T1": {"dbcache": {"taylorseer_order": 1}},
    # PAB (accelopt/accelerators/pab.py cites them): diffusers' documented example, and with
    # cross-attention every 6 calls, the middle of the paper's ablation; then what the toy's
    # DPM-Solver++ PAB studies exported at 20 steps (3/8) and rejected at 20, exported at 50
    # (4/5, timesteps 0-800).
    **{f"PAB {s}/{c} {lo}-{hi}": {"pab": {"spatial_attention_block_skip_range": s,
                                          "cross_attention_block_skip_range": c,
                                          "timestep_skip_low": lo, "timestep_skip_high": hi}}
       for s, c, lo, hi in ((2, 1, 100, 800), (2, 6, 100, 800), (3, 8, 100, 800),
                            (4, 5, 0, 800))},
    # FasterCache (accelopt/accelerators/fastercache.py cites them): diffusers' defaults, and
    # its documented example (a wider window for the unconditional half, weight 0.3).
    "FasterCache 5/2": {"fastercache": {}},
    "FasterCache 5/2 781 w0.3": {"fastercache": {"unconditional_batch_timestep_skip_high": 781,
                                                 "attention_weight": 0.3}},
}  # fmt: skip


def configs_for(
    pipe: Any, rows: Sequence[str] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """The ``CONFIGS`` whose accelerators all apply to ``pipe``'s family (a DiT takes no
    DeepCache or ToMe), the baseline first; ``rows``: only these, after the baseline."""
    valid = set(accelerators.applicable(family_of(pipe)))
    keep = set(CONFIGS) if rows is None else {"baseline", *rows}
    return {name: c for name, c in CONFIGS.items() if set(c) <= valid and name in keep}


def _guidance(pipe: Any) -> float:
    return PIXART_GUIDANCE if family_of(pipe).startswith("pixart") else GUIDANCE


def retrieval(
    scorer: ClipScorer,
    images: torch.Tensor,
    captions: Sequence[str],
    pool: Sequence[str],
    *,
    candidates: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Rank each image's caption among itself and ``candidates - 1`` other captions of ``pool``.

    Returns the share ranked first (``top1``) and within the first five (``top5``).
    """
    rng = random.Random(seed)
    embedded = scorer.embed_images(images)
    texts = sorted(set(pool) | set(captions))
    text_embedded = scorer.embed_texts(texts)
    index = {t: i for i, t in enumerate(texts)}
    top1 = top5 = 0
    for i, caption in enumerate(captions):
        others = rng.sample([t for t in pool if t != caption], candidates - 1)
        rows = text_embedded[[index[caption], *(index[t] for t in others)]]
        scores = rows @ embedded[i]
        rank = int((scores > scores[0]).sum())
        top1 += rank == 0
        top5 += rank < 5
    return {"top1": top1 / len(captions), "top5": top5 / len(captions)}


def _call(pipe: Any, prompts: Sequence[str], start: int = 0) -> dict[str, Any]:
    """The evaluation's pipeline call for ``prompts``, prompt i seeded with ``start + i``."""
    seeds = [torch.Generator().manual_seed(start + i) for i in range(len(prompts))]
    return {"prompt": list(prompts), "num_inference_steps": STEPS,
            "guidance_scale": _guidance(pipe), "generator": seeds, "output_type": "pt",
            **call_defaults(pipe)}  # fmt: skip


def calibrated(pipe: Any, configs: Mapping[str, Any], prompts: Sequence[str]) -> dict[str, Any]:
    """``configs`` with their calibrated knobs (MagCache's ratios) measured where missing, on
    the plain pipeline with the evaluation's call for ``prompts`` (a study measures them on its
    first batch of search prompts)."""
    return accelerators.calibrated(pipe, configs, lambda: pipe(**_call(pipe, prompts)))


def generate(
    pipe: Any, prompts: Sequence[str], configs: Mapping[str, Any], *, batch: int = 50
) -> torch.Tensor:
    """Images (B, 3, H, W in [0, 1]) of ``prompts``, prompt i seeded with i, accelerated.
    MagCache needs its ``ratios`` (``calibrated``)."""
    out = []
    acc = accelerators.apply(pipe, configs, steps=STEPS) if configs else None
    try:
        for start in range(0, len(prompts), batch):
            kwargs = _call(pipe, prompts[start : start + batch], start)
            images = acc(**kwargs).images if acc else pipe(**kwargs).images
            out.append(images.float().cpu())
    finally:
        if acc is not None:
            acc.remove()
    return torch.cat(out)


def _prompts(split: shapes.Split, count: int) -> list[str]:
    return list(shapes.prompt_order(split)[:count])


def figures(
    pipe: Any,
    scorer: ClipScorer,
    *,
    count: int = 100,
    real: int = 500,
    rows: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All three figures as one record (see the module docstring); ``rows``: only these
    configurations (``CONFIGS``' names), after the baseline."""
    start = time.perf_counter()
    record: dict[str, Any] = {"scorer_real": {}, "generated": {}}
    for split, seed in REAL_SEEDS.items():
        images, captions = shapes.draw(real, seed=seed, split=split)
        record["scorer_real"][split] = retrieval(scorer, images, captions, shapes.captions(split))
    prompts = {split: _prompts(split, count) for split in REAL_SEEDS}
    baseline: dict[str, list[float]] = {}
    for name, configs in configs_for(pipe, rows).items():
        configs = calibrated(pipe, configs, prompts["train"][:4])
        row: dict[str, Any] = {}
        for split, texts in prompts.items():
            images = generate(pipe, texts, configs)
            scores = scorer(images, texts)
            baseline.setdefault(split, scores)
            per_prompt = prompt_losses(baseline[split], scores)
            row[split] = {
                **retrieval(scorer, images, texts, shapes.captions(split)),
                "score": statistics.fmean(scores),
                "loss": score_loss(baseline[split], scores),
                "loss_stdev": statistics.stdev(per_prompt),
                "prompts_over_2pct": sum(d > 0.02 for d in per_prompt),
            }
        record["generated"][name] = row
    record["prompts"] = count
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


_UNET_SAMPLES = ("baseline", "DeepCache 3", "DeepCache 5", "ToMe 0.75", "T-GATE gate 5")
_DIT_SAMPLES = ("baseline", "T-GATE gate 15", "T-GATE gate 10", "T-GATE gate 5")


def samples(pipe: Any, path: Path, count: int = 6) -> None:
    """A PNG grid: held-out prompts (rows) by baseline and accelerations (columns)."""
    from PIL import Image

    texts = _prompts("heldout", count)
    pixart = family_of(pipe).startswith("pixart")
    columns = _DIT_SAMPLES if pixart else _UNET_SAMPLES
    grid = torch.stack([generate(pipe, texts, CONFIGS[c]) for c in columns], dim=1)
    grid = grid.permute(0, 3, 1, 4, 2).reshape(count * grid.shape[-2], -1, 3)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    size = (array.shape[1] * 2, array.shape[0] * 2)
    Image.fromarray(array).resize(size, Image.Resampling.NEAREST).save(path)


def main(argv: Sequence[str] | None = None) -> int:
    from accelopt.pipelines import load_pipeline

    parser = argparse.ArgumentParser(
        prog="python -m accelopt.toy.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--pipeline", default="ToySD", help="ToySD, ToyPixArt (shipped) or a pipeline folder"
    )
    parser.add_argument(
        "--scorer", default="accelopt-toy-clip", help="a CLIP name or local-dir:PATH"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--count", type=int, default=100, help="prompts per split")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--samples", type=Path, help="also write a PNG grid of samples here")
    parser.add_argument("--force", action="store_true", help="replace --out and --samples")
    parser.add_argument(
        "--rows", nargs="+", metavar="NAME", help="only these configurations, after the baseline"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.rows or ()) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; valid: {', '.join(CONFIGS)}")
    existing = [p for p in (args.out, args.samples) if p is not None and p.exists()]
    if existing and not args.force:
        parser.error(f"{existing[0]} exists; pass --force to replace it")
    device = torch.device(args.device)
    pipe = load_pipeline(args.pipeline, dtype="float32", device=args.device)
    scorer = ClipScorer(args.scorer, "", device)
    record = {
        "pipeline": args.pipeline,
        "scorer": args.scorer,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        **figures(pipe, scorer, count=args.count, rows=args.rows),
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    if args.samples:
        samples(pipe, args.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
