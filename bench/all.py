"""The GPU benchmarks in one call: landscapes or speed, every GPU of the machine in parallel.

On the lent GPU machine, with the carried wheels (``../shared/tools/gpu-wheels.sh .whl``):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site:$PWD && \\
        python3 bench/all.py --out $OUT

For each study in turn (SD1.5-DDIM-20, then SDXL-DDIM-25), one ``bench/landscape.py measure``
process per GPU (``CUDA_VISIBLE_DEVICES``) measures shard K/N of its points; then the shards are
merged. Every process gets the time left before ``--time-budget`` (from this script's start), so
the call ends in time and a study that ran out is written, marked partial. Writes, under --out:

    landscapes/<study>.json   one per study, the file bench/landscapes/ keeps for the replay
    landscape.md              a short summary per study (markdown)
    landscape.log             every worker's log, and nvidia-smi at the start

A CPU smoke test of the same path: ``python bench/all.py --studies TinySD-DDIM-10 --device cpu
--workers 2 --points 6 --out /tmp/landscape``.

``--suite speed`` runs ``bench/speed.py`` instead: the pipes (default: the five full-size ones)
are shared among the GPUs by estimated cost, one process per GPU, each given the time left as
its ``--time-budget``; then their records are merged. Writes speed.json, speed.md and speed.log.
Smoke test: ``python bench/all.py --suite speed --pipes TinySD TinyPixArt --repeats 1
--device cpu --workers 2 --out /tmp/speed``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import landscape  # bench/landscape.py, beside this file
import speed  # bench/speed.py, beside this file

HERE = Path(__file__).resolve().parent
# Images per point (one batch). SD1.5 at 512 px is launch-bound at batch 1, so a second image
# costs little; SDXL at 1024 px is not, and one image keeps its landscape inside the call.
STUDIES = {"SD1.5-DDIM-20": 2, "SDXL-DDIM-25": 1}
MERGE_SECONDS = 15  # kept back from the budget for merging and writing
GRACE_SECONDS = 20  # after SIGTERM, how long a worker gets to write what it has
# Seconds, all in, from this script's start (after the wheels are installed): a device call is
# at most 10 minutes; the speed suite is meant to fit in 9 with the install and start.
TIME_BUDGET = {"landscapes": 500.0, "speed": 470.0}


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def nvidia_smi() -> str:
    query = "index,name,driver_version,memory.total,clocks.max.sm,temperature.gpu,power.limit"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi: {err}"
    return done.stdout.strip() or done.stderr.strip()


def run_worker(
    k: int, n: int, args: argparse.Namespace, work: Path, deadline: float, done: list[str]
) -> None:
    """Shard k/n of every study, one study after the other, on one GPU."""
    log_path = work / f"worker-{k}.log"
    for study in args.studies:
        left = deadline - time.monotonic()
        if left < 30:
            done.append(f"{study} {k}/{n}: skipped, {left:.0f} s left")
            continue
        command = [
            sys.executable, str(HERE / "landscape.py"), "measure", "--study", study,
            "--prompts", str(STUDIES.get(study, 1)), "--shard", f"{k}/{n}",
            "--time-budget", f"{left:.0f}", "--out", str(work),
        ]  # fmt: skip
        if args.device:
            command += ["--device", args.device]
        if args.points:
            command += ["--points", str(args.points)]
        started = time.monotonic()
        rc = spawn(command, gpu_env(k, n, args.device), log_path, left)
        line = f"{study} {k}/{n}: exit {rc} after {time.monotonic() - started:.0f} s"
        print(line, flush=True)
        done.append(line)


def gpu_env(k: int, n: int, device: str | None) -> dict[str, str] | None:
    """Worker k of n sees one GPU, among those this process may use."""
    if device == "cpu":
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(n)]
    return {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[k - 1]}


def spawn(command: list[str], env: dict[str, str] | None, log_path: Path, left: float) -> int:
    """Run a worker, its output appended to its log; SIGTERM it at ``left`` seconds."""
    with log_path.open("a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait(timeout=left)  # it stops itself before that, unless stuck
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # it writes what it has, marked partial
            try:
                return proc.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()


def share_pipes(pipes: Sequence[str], n: int) -> list[list[str]]:
    """Pipes among n workers, the costliest first to the least loaded (by speed.ESTIMATE)."""
    shares: list[list[str]] = [[] for _ in range(n)]
    load = [0.0] * n
    for pipe in sorted(pipes, key=lambda p: -speed.ESTIMATE.get(p, 1)):
        k = load.index(min(load))
        shares[k].append(pipe)
        load[k] += speed.ESTIMATE.get(pipe, 1)
    return [s for s in shares if s]


def speed_suite(args: argparse.Namespace, n: int, started: float, argv: list[str]) -> int:
    """bench/speed.py on every GPU at once, each with its share of the pipes, then merged."""
    deadline = started + args.time_budget - MERGE_SECONDS
    smi = nvidia_smi() if args.device != "cpu" else "(cpu run)"
    shares = share_pipes(args.pipes, n)
    print(f"speed: {len(shares)} workers: {shares}, budget {args.time_budget:.0f} s")
    print(smi, flush=True)
    work = Path(tempfile.mkdtemp(prefix="speed-"))
    lines: list[str] = []

    def worker(k: int, pipes: list[str]) -> None:
        left = deadline - time.monotonic()
        command = [
            sys.executable, str(HERE / "speed.py"), "--pipes", *pipes, "--repeats",
            str(args.repeats), "--time-budget", f"{left:.0f}", "--out", str(work / f"w{k}"),
        ]  # fmt: skip
        if args.device:
            command += ["--device", args.device]
        rc = spawn(command, gpu_env(k, n, args.device), work / f"worker-{k}.log", left)
        took = time.monotonic() - started
        line = f"worker {k}/{len(shares)} ({' '.join(pipes)}): exit {rc} after {took:.0f} s"
        print(line, flush=True)
        lines.append(line)

    threads = [
        threading.Thread(target=worker, args=(k, pipes)) for k, pipes in enumerate(shares, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    command = shlex.join(["python3", "bench/all.py", *argv])
    paths = sorted(work.glob("w*/speed.json"))
    records = [json.loads(p.read_text()) for p in paths]
    missing = [p for s in shares for p in s if not any(p in r["pipes"] for r in records)]
    args.out.mkdir(parents=True, exist_ok=True)
    complete = False
    if records:
        merged = speed.merge(records, command)
        merged["partial"] = merged["partial"] or bool(missing)
        for pipe in missing:
            merged["pipes"][pipe] = {"partial": True, "error": "its worker wrote nothing"}
        merged.update(wall_seconds=time.monotonic() - started, nvidia_smi=smi)
        (args.out / "speed.json").write_text(json.dumps(merged, indent=2))
        header = [
            "## What each accelerator gives (alternated A/B)",
            "",
            f"- command: `{command}`; wall {merged['wall_seconds']:.0f} s, "
            f"{len(shares)} workers: {shares}",
            f"- card: {merged['card']}; date {merged['date']}; repeats {merged['repeats']}"
            f"{'; PARTIAL' if merged['partial'] else ''}",
            f"- versions: {json.dumps(merged['versions'])}",
            "- random weights: times are real, images are not",
            "",
            "```",
            smi,
            "```",
            "",
        ]
        summary = "\n".join(header) + speed.markdown(merged)
        complete = not merged["partial"]
    else:
        summary = "no worker wrote a file: see speed.log\n"
    return finish(args.out / "speed.md", summary, args.out / "speed.log", smi, lines, work,
                  complete)  # fmt: skip


def finish(
    md: Path, summary: str, log_path: Path, smi: str, lines: list[str], work: Path, complete: bool
) -> int:
    """Write the summary and one log of every worker, drop the scratch folder; the exit code."""
    md.write_text(summary)
    with log_path.open("w") as log:
        log.write(smi + "\n\n" + "\n".join(lines) + "\n\n")
        for path in sorted(work.glob("worker-*.log")):
            log.write(f"===== {path.name}\n{path.read_text()}\n")
    shutil.rmtree(work)
    print(summary)
    return 0 if complete else 1


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--suite", choices=list(TIME_BUDGET), default="landscapes")
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), help="landscapes")
    parser.add_argument("--pipes", nargs="+", default=list(speed.ESTIMATE), help="speed")
    parser.add_argument("--repeats", type=int, default=5, help="speed: pairs per configuration")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--time-budget", type=float, help="seconds, all in (default by suite)")
    parser.add_argument("--workers", type=int, help="default: one per GPU")
    parser.add_argument("--device", help="cuda (default when there is a GPU) or cpu")
    parser.add_argument("--points", type=int, help="a smoke test: this many points per study")
    args = parser.parse_args(argv)
    if args.time_budget is None:
        args.time_budget = TIME_BUDGET[args.suite]
    n = args.workers or (gpu_count() if args.device != "cpu" else 1)
    if n < 1:
        print("no GPU found; pass --device cpu --workers N for a smoke test", file=sys.stderr)
        return 2
    if args.suite == "speed":
        return speed_suite(args, n, started, sys.argv[1:] if argv is None else list(argv))
    deadline = started + args.time_budget - MERGE_SECONDS
    smi = nvidia_smi() if args.device != "cpu" else "(cpu run)"
    print(f"{n} workers, studies {', '.join(args.studies)}, budget {args.time_budget:.0f} s")
    print(smi, flush=True)

    work = Path(tempfile.mkdtemp(prefix="landscape-"))
    lines: list[str] = []
    threads = [
        threading.Thread(target=run_worker, args=(k, n, args, work, deadline, lines))
        for k in range(1, n + 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    out = args.out
    (out / "landscapes").mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python3", "bench/all.py", *(sys.argv[1:] if argv is None else argv)])
    sections, complete = [], True
    for study in args.studies:
        paths = sorted(work.glob(f"{study}.shard-*-of-{n}.json"))
        records = [landscape.load(p) for p in paths]
        if not records:
            sections.append(f"### {study}\n\nno shard wrote a file: see landscape.log\n")
            complete = False
            continue
        target = out / "landscapes" / f"{study}.json"
        try:
            merged = landscape.merge(records, command)
        except ValueError as err:  # keep the raw shards rather than lose the run
            target.with_suffix(".shards.json").write_text(json.dumps(records))
            sections.append(f"### {study}\n\nmerge failed ({err}); shards kept as they are\n")
            complete = False
            continue
        landscape.write_json(target, merged)
        complete = complete and not merged["partial"]
        sections.append(landscape.markdown(landscape.summarize(merged)))

    first = next(iter(work.glob("*.json")), None)
    env = landscape.load(first) if first else {}
    header = [
        "## Recorded landscapes",
        "",
        f"- command: `{command}`; wall {time.monotonic() - started:.0f} s, {n} workers",
        f"- versions: {json.dumps(env.get('versions'))}; driver {env.get('driver')}",
        "- random weights: times are real; PSNR/SSIM measure the change from the baseline "
        "images of the same seeds, not image quality",
        "",
        "```",
        smi,
        "```",
        "",
    ]
    summary = "\n".join(header) + "\n".join(sections)
    return finish(out / "landscape.md", summary, out / "landscape.log", smi, lines, work,
                  complete)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
