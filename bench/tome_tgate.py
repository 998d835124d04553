"""Does ToMe combine with T-GATE? Measure it on the toy model, where quality means something.

    python -m bench.tome_tgate --prompts 16 --out bench/results/tome_tgate/toysd-2026-12-03.json

T-GATE keeps each self-attention's output from the last step that computed it. Under ToMe that
output is in the merged order of that step's partition, and a later step unmerges it with its
own partition, recomputed from the hidden states. This script counts, at every reused
self-attention of the combination, the share of tokens whose slot differs from the one they
had when the output was computed (each such token receives an output computed for others), and
measures every configuration's fidelity to the plain pipeline (PSNR, SSIM) and its toy CLIP
score loss, against ToMe and T-GATE alone at the same settings. Same prompts, seeds and
settings as the ToySD-DDIM-20 study (64 px, guidance 5, DDIM, 20 steps), on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from accelopt import accelerators
from accelopt.measure.metrics import ClipScorer, psnr, score_loss, ssim
from accelopt.pipelines import load_pipeline
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.prompts import load_prompts

STEPS, GUIDANCE = 20, 5.0
TOMES = ({"ratio": 0.3, "max_downsample": 1}, {"ratio": 0.5, "max_downsample": 2})
TGATES = (
    {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2},
    {"gate_step": 6, "sp_interval": 3, "fi_interval": 2, "warm_up": 1},
)


@contextmanager
def slot_changes(pipe: Any) -> Iterator[list[float]]:
    """Yield a list that fills with, per reused self-attention, the share of tokens whose
    merged slot differs from the one they had at that attention's last computed call."""
    import tomesd.merge

    found: list[float] = []
    pending: list[torch.Tensor] = []  # the slot map of the merge just made, for its attn1
    last: dict[int, torch.Tensor] = {}  # block -> slot map when its attn1 last computed
    original = tomesd.merge.bipartite_soft_matching_random2d

    def recording(metric: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        merge, unmerge = original(metric, *args, **kwargs)
        if merge is not tomesd.merge.do_nothing:
            slots = merge(torch.zeros_like(metric[..., :1])).shape[1]
            ids = torch.arange(slots, dtype=metric.dtype, device=metric.device)
            ids = ids.view(1, slots, 1).expand(metric.shape[0], slots, 1)
            pending.append(unmerge(ids)[0, :, 0].round().long())  # the first image's map
        return merge, unmerge

    blocks = [m for m in pipe.unet.modules() if type(m).__name__ == "ToMeBlock"]
    handles = []
    for index, block in enumerate(blocks):
        state: dict[str, Any] = {"map": None, "computed": False}

        def before(module: Any, args: Any, state: Any = state) -> None:
            state["map"] = pending.pop() if pending else None  # None: this block merged nothing
            state["computed"] = False

        def q_ran(module: Any, args: Any, out: Any, state: Any = state) -> None:
            state["computed"] = True

        def after(_: Any, args: Any, out: Any, index: int = index, state: Any = state) -> None:
            now = state["map"]
            if now is None:
                return
            if state["computed"]:
                last[index] = now
            elif index in last:
                found.append(float((now != last[index]).float().mean()))

        handles += [
            block.attn1.register_forward_pre_hook(before),
            block.attn1.to_q.register_forward_hook(q_ran),
            block.attn1.register_forward_hook(after),
        ]
    tomesd.merge.bipartite_soft_matching_random2d = recording
    try:
        yield found
    finally:
        tomesd.merge.bipartite_soft_matching_random2d = original
        for handle in handles:
            handle.remove()


def generate(pipe: Any, prompts: list[str]) -> torch.Tensor:
    out = accelerators.generate(
        pipe,
        prompt=prompts,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=64,
        width=64,
        generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
        output_type="pt",
    )
    return out.images


def measure(pipe: Any, configs: Mapping[str, Any], prompts: list[str], base: Any) -> dict:
    scorer, images0, scores0 = base
    with accelerators.apply(pipe, configs, steps=STEPS):
        combined = "tome" in configs and "tgate" in configs
        with slot_changes(pipe) if combined else _nothing() as changed:
            started = time.perf_counter()
            images = generate(pipe, prompts)
            seconds = time.perf_counter() - started
    scores = scorer(images, prompts)
    row: dict[str, Any] = {
        "accelerators": dict(configs),
        "psnr_median": statistics.median(psnr(images, images0)),
        "ssim_median": statistics.median(ssim(images, images0)),
        "score_loss": score_loss(scores0, scores),
        "seconds": seconds,
    }
    if combined:
        row["reused_self_attention"] = len(changed)
        row["tokens_moved_median"] = statistics.median(changed) if changed else 0.0
        row["tokens_moved_range"] = [min(changed), max(changed)] if changed else [0.0, 0.0]
    return row


@contextmanager
def _nothing() -> Iterator[list[float]]:
    yield []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pipe = load_pipeline("ToySD")
    set_scheduler(pipe, "DDIM")
    prompts = [p.text for p in load_prompts("search", args.prompts, "shapes")]
    scorer = ClipScorer("accelopt-toy-clip", "", pipe.device)
    images0 = generate(pipe, prompts)
    base = (scorer, images0, scorer(images0, prompts))
    rows = []
    for tome in TOMES:
        rows.append(measure(pipe, {"tome": tome}, prompts, base))
    for tgate in TGATES:
        rows.append(measure(pipe, {"tgate": tgate}, prompts, base))
        for tome in TOMES:
            rows.append(measure(pipe, {"tome": tome, "tgate": tgate}, prompts, base))
    for row in rows:
        extra = ""
        if "tokens_moved_median" in row:
            low, high = (100 * v for v in row["tokens_moved_range"])
            extra = (f", tokens moved {100 * row['tokens_moved_median']:.0f}% (range "
                     f"{low:.0f}-{high:.0f}%, {row['reused_self_attention']} reuses)")  # fmt: skip
        print(f"{json.dumps(row['accelerators'], sort_keys=True)}: PSNR {row['psnr_median']:.1f}"
              f" dB, SSIM {row['ssim_median']:.3f}, CLIP loss {100 * row['score_loss']:.2f}%"
              f"{extra}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"prompts": args.prompts, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
