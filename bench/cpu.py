"""What a user waits for on a CPU machine: `accelopt --help`, and the README's demo.

    python -m bench.cpu --out bench/results            # --help cold start, demo study
    python -m bench.cpu --out bench/results --clone    # also `make demo` in a fresh clone

- Cold start: ``accelopt --help`` run ``--repeats`` times in fresh processes (the console script
  of the interpreter running this file), median and range. Goal: <= 0.5 s.
- Demo: ``accelopt run --study TinySD-DDIM-10`` in an empty directory (the study alone), and
  with ``--clone`` the README's first command, ``make demo``, in a fresh ``git clone`` of this
  repository (venv, install and study). Goal: <= 120 s.

Run it on an otherwise idle machine: both are wall-clock times. Writes cpu.json and cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _lib, tables

ROOT = Path(__file__).resolve().parents[1]
DEMO = "TinySD-DDIM-10"  # the README's demo study


def wall(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return took


def cold_start(repeats: int, where: Path) -> dict[str, Any]:
    script = Path(sys.executable).with_name("accelopt")
    times = [wall([str(script), "--help"], where) for _ in range(repeats)]
    return {"command": "accelopt --help", "repeats": repeats, "median": statistics.median(times),
            "min": min(times), "max": max(times), "goal": 0.5}  # fmt: skip


def demo(where: Path) -> dict[str, Any]:
    from accelopt.spec import load_spec

    script = Path(sys.executable).with_name("accelopt")
    took = wall([str(script), "run", "--study", DEMO, "--quiet"], where)
    return {"command": f"accelopt run --study {DEMO}", "seconds": took, "goal": 120,
            "trials": load_spec(DEMO).n_trials}  # fmt: skip


def clone_demo(where: Path) -> dict[str, Any]:
    clone = where / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    took = wall(["make", "demo"], clone, env)
    return {"command": "git clone && make demo (venv, install, study)", "seconds": took,
            "goal": 120}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clone", action="store_true", help="also time `make demo` in a clone")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="accelopt-cpu-"))
    try:
        record: dict[str, Any] = {
            **_lib.header("date", "machine", "python"),
            "cold_start": cold_start(args.repeats, work),
            "demo": demo(work),
        }
        if args.clone:
            record["clone_demo"] = clone_demo(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (args.out / "cpu.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = tables.cpu_table(record)
    (args.out / "cpu.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
