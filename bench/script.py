"""A generated script's own speed against accelopt's measurement of the same entry, on a GPU.

    python -m bench.script --pipe SD1.5 --plan "deepcache 3/0" --execution cuda-graphs --out $OUT

Full-size architecture, random fp16 weights, saved to a temporary folder the script loads.
accelopt times the entry's configuration in process (``accelopt.testing.entry_images``' call:
decoded images, one prompt, the seed the script uses), the generated script then runs in a
subprocess with ``--repeats``, and accelopt times it again after (so drift between the two shows).
Recorded: each median and spread, the script's wall time from start to exit (loading, compiling
or capturing: inductor's on-disk cache is shared with the in-process compile), and the largest
pixel difference between the script's images and accelopt's. Writes script-PIPE.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accelopt import accelerators, execution
from accelopt.codegen import render_script
from accelopt.measure import timing
from accelopt.pipelines import call_defaults, load_pipeline, model_info
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.testing import make_entry
from bench import _lib
from bench.execution import PLANS, PROMPT, SETTINGS, summary

LINE = re.compile(r"(\d+\.\d+) s per image, median of (\d+) \((\d+\.\d+)-(\d+\.\d+);")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipe", default="SD1.5", choices=sorted(SETTINGS))
    parser.add_argument("--plan", default="deepcache 3/0", choices=sorted(PLANS))
    parser.add_argument("--execution", default="cuda-graphs", choices=execution.MODES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--device", default="cuda", help="cpu only to try the bench itself")
    args = parser.parse_args(argv)
    steps, scheduler, guidance = SETTINGS[args.pipe]
    info = model_info(args.pipe)
    assert info is not None
    cuda = args.device.startswith("cuda")
    dtype = "float16" if cuda else "float32"
    configs = PLANS[args.plan]
    record: dict[str, Any] = {
        "pipe": args.pipe,
        "plan": args.plan,
        "execution": args.execution,
        "steps": steps,
        "scheduler": scheduler,
        "resolution": info.resolution,
        **_lib.header("torch", "date", "command", script="script", argv=argv),
    }
    folder = Path(tempfile.mkdtemp(prefix="accelopt-script-"))
    pipe = load_pipeline(args.pipe, weights="random", dtype=dtype, device=args.device)
    pipe.save_pretrained(folder / "pipe")
    set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    record.update(_lib.header("device", device=pipe.device))

    def generate() -> np.ndarray:
        out = accelerators.generate(
            pipe,
            prompt=[PROMPT],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=info.resolution,
            width=info.resolution,
            generator=[torch.Generator().manual_seed(0)],
            output_type="np",
            **call_defaults(pipe),
        )
        return np.asarray(out.images)

    configs = accelerators.calibrated(pipe, configs, generate)  # MagCache's ratios
    record["configs"] = configs

    def measured() -> tuple[dict[str, Any], np.ndarray]:
        with accelerators.apply(pipe, configs, steps=steps), execution.run(pipe, args.execution):
            images = generate()  # compiles or captures
            times = [timing.timed(generate, pipe.device)[1] for _ in range(args.repeats)]
        return summary(times), images

    started = time.perf_counter()
    record["accelopt_before"], ours = measured()
    record["accelopt_first_seconds"] = time.perf_counter() - started
    print(f"accelopt: {record['accelopt_before']['median']:.4f} s/image", flush=True)

    generation = {"resolution": info.resolution, "guidance": guidance, "dtype": dtype}
    entry = make_entry(
        args.pipe,
        scheduler,
        steps,
        configs,
        generation=generation,
        execution=args.execution,
        time_per_image=record["accelopt_before"]["median"],
        device=record["device"],
    )
    script = folder / "generated.py"
    script.write_text(render_script(entry))
    array = folder / "images.npy"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(script), PROMPT, "--model", str(folder / "pipe"),
         "--device", args.device, "--repeats", str(args.repeats), "--save-array", str(array),
         "--out-dir", str(folder / "png")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    record["script_wall_seconds"] = time.perf_counter() - started
    record["script_stdout"] = result.stdout
    if result.returncode != 0:
        record["script_stderr"] = result.stderr[-4000:]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"script-{args.pipe}.json").write_text(json.dumps(record, indent=1))
        print(result.stderr[-4000:], file=sys.stderr)
        return 1
    found = LINE.search(result.stdout)
    assert found, result.stdout
    median, repeats, low, high = found.groups()
    record["script"] = {
        "median": float(median),
        "repeats": int(repeats),
        "min": float(low),
        "max": float(high),
        "spread": (float(high) - float(low)) / float(median),
    }
    record["max_pixel_diff"] = float(np.abs(np.load(array) - ours).max())
    record["accelopt_after"], _ = measured()
    record["script_over_accelopt"] = float(median) / record["accelopt_before"]["median"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"script-{args.pipe}.json").write_text(json.dumps(record, indent=1))
    print(
        f"{args.pipe} {args.plan} under {args.execution}: accelopt "
        f"{record['accelopt_before']['median']:.4f} / {record['accelopt_after']['median']:.4f} "
        f"s/image, script {float(median):.4f} ({record['script_over_accelopt']:.3f}x), "
        f"script wall {record['script_wall_seconds']:.0f} s, "
        f"max pixel diff {record['max_pixel_diff']:.4f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
