"""Is ToMe repeatable on a GPU? Run SD1.5 (random fp16 weights) twice with ToMe, with and without
torch's deterministic mode, and print the largest pixel difference between the two runs.

    CUBLAS_WORKSPACE_CONFIG=:4096:8 python -m bench.tome_determinism
"""

from __future__ import annotations

import numpy as np
import torch

from accelopt import accelerators
from accelopt.pipelines import load_pipeline
from accelopt.testing import render


def main() -> None:
    pipe = load_pipeline("SD1.5", weights="random", dtype="fp16", device="cuda")
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        with accelerators.apply(pipe, {"tome": {"ratio": 0.5, "max_downsample": 1}}, steps=10):
            runs = [render(pipe, prompts=("a red cube",), steps=10) for _ in range(3)]
        diff = max(np.abs(r - runs[0]).max() for r in runs[1:])
        print(f"deterministic={deterministic}: max |run_i - run_0| over 3 runs = {diff:.6f}")


if __name__ == "__main__":
    main()
