"""A store entry shaped exactly as accelopt/export.py makes them, for tests and benchmarks that
need one without running a study."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from accelopt.params_store.file import seed_key, seed_pipeline, seed_scheduler


def make_entry(
    pipeline: str = "SDXL",
    scheduler: str = "DDIM",
    steps: int = 25,
    accelerators: dict[str, dict[str, Any]] | None = None,
    *,
    req_speedup: float | None = None,
    max_score_loss: float = 0.02,
    req_time: float | None = None,
    speedup: float = 2.0,
    time_per_image: float | None = None,
    score_loss: float | None = 0.01,
    device: Any = "NVIDIA H100 80GB HBM3",
    generation: dict[str, Any] | None = None,
    study_name: str = "SDXL-DDIM-25",
    storage: str = "sqlite:///accelopt.db",
    key: str | None = None,
    execution: str = "eager",
) -> dict[str, Any]:
    """An entry shaped exactly as accelopt/export.py ``_entry`` makes them."""
    if accelerators is None:
        accelerators = {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}}
    targets = sorted(accelerators)
    if key is None:
        key = seed_key(pipeline, scheduler, steps, targets, max_score_loss, req_speedup, req_time)
    return {
        "key": key,
        "pipeline": seed_pipeline(pipeline),
        "model": pipeline,
        "scheduler": scheduler,
        "seed_scheduler": seed_scheduler(scheduler),
        "steps": steps,
        "targets": targets,
        "requirement": {
            "req_speedup": req_speedup,
            "max_score_loss": max_score_loss,
            "req_time": req_time,
        },
        "accelerators": accelerators,
        "params": {
            {"warm_up": "warmup"}.get(k, k): v
            for knobs in accelerators.values()
            for k, v in knobs.items()
        },
        "execution": {"mode": execution, "plain_baselines": {}},
        "generation": generation or {"resolution": 1024, "guidance": 5.0, "dtype": "float16"},
        "measured": {
            "speedup": speedup,
            "time_per_image": 1.0 / speedup if time_per_image is None else time_per_image,
            "score": 31.25,
            "score_loss": score_loss,
            "peak_memory": 12_345_678,
            "device": device,
        },
        "baseline": {"time_per_image": 1.0, "scores": [31.5, 31.75]},
        "versions": {"accelopt": "0.1.0", "torch": "2.5.1", "tgate": None},
        "study": {"name": study_name, "storage": storage, "trial": 7},
        "exported_at": "2025-01-02T03:04:05+00:00",
    }


def entry_images(
    folder: str | Path,
    entry: dict[str, Any],
    prompts: Sequence[str],
    *,
    device: str = "cpu",
    mode: str = "eager",
    seed: int = 0,
) -> np.ndarray:
    """The images accelopt makes for ``entry`` with the pipeline saved in ``folder``: what a
    script generated from it must reproduce. Prompt ``i`` uses seed ``seed + i``, like scripts.
    """
    import torch
    from diffusers import DiffusionPipeline

    from accelopt import accelerators, execution
    from accelopt.pipelines import call_defaults, resolve_dtype
    from accelopt.pipelines.schedulers import set_scheduler

    dtype = resolve_dtype(entry["generation"].get("dtype"), torch.device(device))
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    set_scheduler(pipe, entry["scheduler"])
    resolution = entry["generation"]["resolution"]
    applied = accelerators.apply(pipe, entry["accelerators"], steps=entry["steps"])
    with applied as acc, execution.run(pipe, mode):
        out = acc(
            prompt=list(prompts),
            num_inference_steps=entry["steps"],
            guidance_scale=entry["generation"]["guidance"],
            height=resolution,
            width=resolution,
            generator=[torch.Generator().manual_seed(seed + i) for i in range(len(prompts))],
            output_type="np",
            **call_defaults(pipe),
        )
    return np.asarray(out.images)
