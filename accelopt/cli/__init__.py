"""The ``accelopt`` command: parse, call one function, print, return an exit code.

Heavy imports (torch, diffusers) happen inside commands, so ``accelopt --help`` is instant.
Bad input prints one line saying what to fix and exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from accelopt import __version__
from accelopt.errors import AccelOptError, Interrupted, exit_code, printable

if TYPE_CHECKING:
    import optuna

    from accelopt.study.results import Requirement

__all__ = ["main"]


def _pipelines(args: argparse.Namespace) -> int:
    from accelopt.pipelines import MODELS, TOY_PIPELINES

    print(f"{'name':14} {'family':13} {'resolution':>10}  weights")
    for m in MODELS:
        built = "built from config (random, offline)"
        toy = "trained on toy shapes, shipped with accelopt"
        source = m.hub_id or (toy if m.name in TOY_PIPELINES else built)
        print(f"{m.name:14} {m.family:13} {m.resolution:>10}  {source}")
    print("\nAlso accepted: any diffusers hub id (org/name) or local pipeline folder.")
    return 0


def _schedulers(args: argparse.Namespace) -> int:
    from accelopt.pipelines.schedulers import SCHEDULERS

    for s in SCHEDULERS:
        print(f"{s.name:14} {s.class_name:30} aliases: {', '.join(s.aliases)}")
    return 0


def _accelerators(args: argparse.Namespace) -> int:
    from accelopt import accelerators

    if args.pipeline is None:
        for name, accel in accelerators.ACCELERATORS.items():
            families = ", ".join(sorted(accel.families))
            print(f"{name:10} for {families}")
            for ref in accel.references:
                print(f"{'':10} {ref.title}\n{'':10} {ref.paper}  {ref.code}")
            print(f"{'':10} steps count: {accel.counts}")
            for scheduler, why in accel.refused_schedulers.items():
                print(f"{'':10} refuses {scheduler}: {why}")
        print("\nCombinations: " + ", ".join("+".join(sorted(p)) for p in accelerators.PLANS))
        return 0

    from accelopt.accelerators import PipeTraits
    from accelopt.pipelines import TOY_PIPELINES, load_pipeline, model_info

    # A known architecture is read from its structure alone, built on "meta" in a second; a
    # toy pipeline has no random-weight build, and its shipped weights load in a second too.
    info = model_info(args.pipeline)
    known = info is not None and info.name not in TOY_PIPELINES
    pipe = load_pipeline(
        args.pipeline,
        weights="random" if known else "pretrained",
        device="meta" if known else "cpu",
    )
    traits = PipeTraits.of(pipe)
    targets = args.targets or "+".join(accelerators.applicable(traits))
    space = accelerators.search_space(traits, args.steps, targets)
    print(f"search space for {args.pipeline} ({traits.family}), {args.steps} steps:")
    for key, param in space.items():
        print(f"  {key:28} {', '.join(map(str, param.values))}")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from accelopt.prompts import load_prompts

    for p in load_prompts(args.split, args.count, args.set):
        print(f"{p.id}  {p.split:7}  {p.category:12}  {p.text}")
    return 0


def _load_spec(args: argparse.Namespace):
    from pathlib import Path

    from accelopt.spec import load_spec

    if (args.study is None) == (args.spec is None):
        raise AccelOptError("give exactly one of --study NAME or --spec FILE")
    spec = load_spec(args.study) if args.spec is None else load_spec(path=Path(args.spec))
    changes: dict[str, Any] = {}
    if getattr(args, "sampler", None):
        changes["sampler"] = spec.sampler.__class__(args.sampler, spec.sampler.seed)
    if getattr(args, "seed", None) is not None:
        sampler = changes.get("sampler", spec.sampler)
        changes["sampler"] = sampler.__class__(sampler.name, args.seed)
    if getattr(args, "max_score_loss", None) is not None:
        changes["max_score_loss"] = args.max_score_loss
    if _bound_args(args):
        changes["constraints"] = dataclasses.replace(spec.constraints, **_bound_args(args))
    if getattr(args, "objective", None):
        changes["objective"] = args.objective
    if getattr(args, "execution", None):
        changes["execution"] = args.execution
    return spec.overridden("command line", **changes) if changes else spec


def _frontier_line(study, hint: bool = True) -> str:
    """One line about a pareto study's frontier (empty for any other study)."""
    from accelopt.measure.constraints import METRICS
    from accelopt.study.results import frontier, is_pareto, pareto_metric

    if not is_pareto(study):
        return ""
    metric = METRICS[pareto_metric(study)]
    front = frontier(study.trials, metric.name)
    if not front:
        return f"{study.study_name}: Pareto frontier: no completed trial yet"
    speedups = [t.user_attrs["speedup"] for t in front]
    values = sorted(t.user_attrs[metric.name] for t in front)
    line = (
        f"{study.study_name}: Pareto frontier of {len(front)} trials, {min(speedups):.2f}x-"
        f"{max(speedups):.2f}x at {metric.label} {metric.show(values[0])}-"
        f"{metric.show(values[-1])}"
    )
    return f"{line} (accelopt best --study {study.study_name} lists them)" if hint else line


def _describe(trial) -> str:
    a = trial.user_attrs
    # A storage anyone can write to holds these.
    knobs = "; ".join(
        f"{name} " + ", ".join(f"{k}={v}" for k, v in params.items())
        for name, params in a["accelerators"].items()
    )
    knobs = printable(knobs, 400)
    mode = printable(a.get("execution", "eager"), 20)
    eager = a.get("speedup_vs_eager")
    beside = f" ({eager:.2f}x against eager)" if eager is not None and mode != "eager" else ""
    return (
        f"trial {trial.number}: {knobs}\n  speedup {a['speedup']:.2f}x{_interval(a)}{beside} "
        f"under {mode}, {a['time_per_image']:.4f} s/image, {_quality(a)}"
    )


def _interval(a: dict) -> str:
    """`` (1.31x-1.60x, 75% over 3 pairs)``: a paired speedup's interval, if it has one."""
    interval, pairs = a.get("speedup_interval"), a.get("pairs") or {}
    if not isinstance(interval, list) or len(interval) != 2:
        return ""
    n = len(pairs.get("ratios") or [])
    if n < 2:
        return " (one timed pair: no interval)"
    return (f" ({interval[0]:.2f}x-{interval[1]:.2f}x, {100 * a.get('speedup_level', 0):.0f}% "
            f"over {n} pairs)")  # fmt: skip


def _quality(measured: dict) -> str:
    """Every quality metric measured: ``CLIP score loss 1.20%, PSNR 31.4 dB, SSIM 0.912``."""
    from accelopt.measure.constraints import METRICS

    return ", ".join(f"{m.label} {m.show(measured[m.name])}" for m in METRICS.values()
                     if isinstance(measured.get(m.name), int | float))  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    import optuna

    from accelopt.progress import Progress
    from accelopt.study.loop import run_study
    from accelopt.study.results import Requirement

    if args.req_speedup is not None and args.req_time is not None:
        raise AccelOptError("give at most one of --req-speedup and --req-time")
    for flag in ("n_trials", "timeout", "req_speedup", "req_time", "max_score_loss", "workers"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise AccelOptError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    spec = _load_spec(args)
    requirement = Requirement(args.req_speedup, args.req_time)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    gpus = _gpus(args)
    progress = Progress(enabled=not args.quiet)  # bars on a terminal, sparse lines elsewhere
    storage = args.storage
    if len(gpus) > 1:
        storage = _shared_storage(args.storage, f"{len(gpus)} workers", SHARED_STORAGE)
    try:
        if len(gpus) > 1:
            outcome, codes = _run_workers(args, spec, gpus, requirement, storage, progress)
        else:
            codes = {}
            outcome = run_study(
                spec,
                storage=storage,
                n_trials=args.n_trials,
                timeout=args.timeout,
                requirement=requirement,
                device=args.device if gpus[0] is None else f"cuda:{gpus[0]}",
                weights="random" if args.random_weights else "pretrained",
                progress=progress,
                heartbeat=args.heartbeat,
                warm_start=args.warm_start,
            )
    except KeyboardInterrupt as stop:
        print(_interrupted(spec.name, storage, requirement), file=sys.stderr)
        return exit_code(stop)
    states = [t.state.name for t in outcome.study.trials]
    counted = states.count("COMPLETE") + states.count("PRUNED")
    exported, written = (
        _write_export(outcome.study, args, requirement, progress) if args.export else (0, None)
    )
    failed = f", {states.count('FAIL')} failed" if "FAIL" in states else ""
    if outcome.already_finished:
        print(f"{spec.name}: finished already ({counted} trials{failed}); nothing to run")
    else:
        print(f"{spec.name}: ran {outcome.ran} trials ({counted} in the study{failed})")
    for line in _never_measured(outcome.study, spec.sampler.name == "grid"):
        print(line)
    if any(codes.values()) and not outcome.already_finished:
        from accelopt.study.prepare import is_finished

        if not is_finished(outcome.study, requirement):  # workers failed, not a --timeout
            print(f"{spec.name}: every worker stopped before the study was done (exit codes "
                  f"{sorted(codes.values())}); run again to resume")  # fmt: skip
            return 1
    if _frontier_line(outcome.study):
        print(_frontier_line(outcome.study))
    best = outcome.best
    if requirement.active:
        if best is None:
            print(f"requirement not met: no feasible trial reached {requirement.describe()}")
            return 1
        print(f"requirement met ({requirement.describe()}) by {_describe(best)}")
        _print_not_exported(outcome.study, best, written)
        return exported
    if best is None or best.user_attrs["speedup"] <= 1.0:
        why = "no feasible accelerated trial" if best is None else "none beats the baseline"
        bounds = ", ".join(b.describe() for b in spec.bounds())
        print(f"no acceleration: {why} within {bounds}")
        return exported
    print(f"best {_describe(best)}")
    _print_not_exported(outcome.study, best, written)
    return exported


def _print_not_exported(study, best, written: list[int] | None) -> None:
    """After ``run --export``: say so when the search's best is not what export wrote (held-out
    confirmation failed it, or its speed was undecidable), so the last line read is not taken
    for the stored answer."""
    from accelopt.study.confirm import confirmations, describe, judgement

    if written is None or best is None or best.number in written:
        return
    confirmed = (confirmations(study) or {}).get(best.number)
    why = f": held-out {describe(confirmed)}, {judgement(confirmed)}" if confirmed else ""
    stored = ", ".join(f"trial {n}" for n in written) or "nothing"
    print(f"  not exported{why}; the store holds {stored} for this study")


def _interrupted(name: str, storage: str | None, requirement: Requirement) -> str:
    """What an interrupted run says: resume it, unless its workers finished the study as the
    stop came (then there is nothing to resume)."""
    resume = "accelopt: interrupted; finished trials are stored, run again to resume"
    import optuna

    from accelopt.storage import open_storage, sqlite_file, storage_url
    from accelopt.study.prepare import is_finished

    url = storage_url(storage)
    sqlite = sqlite_file(url)
    if sqlite is not None and not sqlite.exists():
        return resume  # interrupted before anything was stored
    try:
        backend, _ = open_storage(url)
        finished = is_finished(optuna.load_study(study_name=name, storage=backend), requirement)
    except Exception:  # the storage is what failed, or the study was never made
        return resume
    if not finished:
        return resume
    return (f"accelopt: interrupted, but study {name} was finished by then; nothing to resume "
            f"(accelopt best --study {name} shows its answer)")  # fmt: skip


def _printable(text: str, limit: int = 200) -> str:
    """A stored string fit for one line of a terminal: control characters escaped, cut short."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _never_measured(study: optuna.Study, grid: bool) -> list[str]:
    """Lines naming the given configurations (grid points) whose trial failed, twice."""
    from accelopt.study.results import never_measured

    missed = never_measured(study.trials)
    if not missed:
        return []
    what = "grid point" if grid else "configuration"
    plural = "" if len(missed) == 1 else "s"
    lines = [f"{study.study_name}: {len(missed)} {what}{plural} never measured (failed, and so "
             f"did the retry):"]  # fmt: skip
    for t in missed:
        point = ", ".join(f"{k}={v}" for k, v in sorted(t.system_attrs["fixed_params"].items()))
        why = t.user_attrs.get("failed", "failed")
        lines.append(_printable(f"  trial {t.number}: {point} ({why})", 300))
    return lines


SHARED_STORAGE = "accelopt.journal"  # --workers N with no storage named anywhere


def _shared_storage(url: str | None, workers: str, default: str = "") -> str:
    """The storage several workers share (``url``, $ACCELOPT_STORAGE, ``default``): not SQLite."""
    from accelopt.storage import SQLITE_WORKERS, storage_url

    url = storage_url(url, default)
    if not url:
        raise AccelOptError(f"{workers} need a shared --storage: a journal file on one host "
                            f"(e.g. accelopt.journal) or a postgresql:// URL")  # fmt: skip
    if url.startswith("sqlite"):
        raise AccelOptError(SQLITE_WORKERS)
    return url


def _gpus(args: argparse.Namespace) -> list[str | None]:
    """One entry per worker: the GPU it gets, or None (the CPU, or the one --device names)."""
    n, gpus = args.workers, None
    if args.gpus is not None:
        gpus = [g.strip() for g in args.gpus.split(",")]
        if not all(g.isdigit() for g in gpus):
            raise AccelOptError(f"--gpus takes GPU numbers joined by commas, e.g. 0,1; "
                                f"got {args.gpus!r}")  # fmt: skip
        if n is not None and n != len(gpus):
            raise AccelOptError(f"--workers {n} but --gpus names {len(gpus)}; give one GPU per "
                                f"worker (a GPU may be named twice)")  # fmt: skip
        if args.device not in (None, "cuda"):
            raise AccelOptError("--gpus gives each worker its GPU; leave out --device")
    elif n is not None and n > 1 and (args.device or "").startswith("cuda:"):
        raise AccelOptError(f"--device {args.device} is one GPU; for {n} workers pass --gpus, "
                            f"e.g. --gpus {','.join(map(str, range(n)))}")  # fmt: skip
    if gpus is not None or (args.device or "").startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            asked = f"--device {args.device}" if gpus is None else f"--gpus {args.gpus}"
            raise AccelOptError(f"{asked}: this machine has no CUDA device; use --device cpu "
                                f"or leave both out")  # fmt: skip
    if gpus is not None:
        return list(gpus)
    if n is None or n == 1:
        return [None]
    if args.device == "cpu":
        return [None] * n
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return [None] * n  # no GPU here: every worker on the CPU
    if n > count:
        raise AccelOptError(f"{n} workers but {count} GPUs here; pass fewer --workers or "
                            f"--gpus with {n} GPU numbers (a GPU may be named twice)")  # fmt: skip
    return [str(i) for i in range(n)]


def _run_workers(args, spec, gpus, requirement, storage, progress=True):
    from accelopt.study.launch import run_workers

    if storage == SHARED_STORAGE:
        print(f"accelopt: several workers share the journal file {storage} (SQLite cannot "
              f"serve them); later commands need --storage {storage}",
              file=sys.stderr)  # fmt: skip
    argv = ["--study", spec.name, "--quiet", "--heartbeat", str(args.heartbeat)]
    for flag in ("timeout", "req_speedup", "req_time"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.random_weights:
        argv.append("--random-weights")
    if not args.warm_start:
        argv.append("--no-warm-start")
    if gpus[0] is not None:
        argv += ["--device", "cuda"]
    elif args.device is not None:
        argv += ["--device", args.device]
    return run_workers(
        spec,
        storage=storage,
        gpus=gpus,
        worker_argv=argv,
        n_trials=args.n_trials,
        requirement=requirement,
        progress=progress,
    )


def _worker(args: argparse.Namespace) -> int:
    import os
    import socket

    import optuna

    from accelopt.progress import Progress
    from accelopt.spec import canonical_name
    from accelopt.storage import open_storage
    from accelopt.study.loop import run_study
    from accelopt.study.prepare import spec_of
    from accelopt.study.results import Requirement

    if args.req_speedup is not None and args.req_time is not None:
        raise AccelOptError("give at most one of --req-speedup and --req-time")
    if (args.study is None) == (args.spec is None):
        raise AccelOptError("give exactly one of --study NAME or --spec FILE")
    url = _shared_storage(args.storage, "workers")
    # A spec file names its study (its stem): that study, never whichever the storage holds.
    spec = _load_spec(args) if args.spec is not None else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend, _ = open_storage(url, heartbeat=args.heartbeat)
    try:  # the stored spec is the study's truth: other hosts need not have its file
        if spec is None:
            name = canonical_name(args.study)
            spec = spec_of(optuna.load_study(study_name=name, storage=backend))
    except KeyError:
        spec = _load_spec(args)
    finally:  # run_study opens its own: this pool's connections would sit idle all run long
        if isinstance(backend, optuna.storages.RDBStorage):
            backend.engine.dispose()
    if args.objective is not None and args.objective != spec.objective:
        raise AccelOptError(f"study {spec.name} is stored with objective={spec.objective!r}, not "
                            f"{args.objective!r}; use another study name")  # fmt: skip
    me = f"[{socket.gethostname()}:{os.getpid()}]"
    try:
        outcome = run_study(
            spec,
            storage=url,
            n_trials=args.n_trials,
            timeout=args.timeout,
            requirement=Requirement(args.req_speedup, args.req_time),
            device=args.device,
            weights="random" if args.random_weights else "pretrained",
            progress=Progress(enabled=not args.quiet, prefix=f"{me} "),
            log=lambda s: print(f"{me} {s}", file=sys.stderr),
            heartbeat=args.heartbeat,
            warm_start=args.warm_start,
        )
    except KeyboardInterrupt as stop:
        print(f"{me} interrupted; its running trial is given back", file=sys.stderr)
        return exit_code(stop)
    print(f"{me} {spec.name}: ran {outcome.ran} trials", file=sys.stderr)
    return 0


def _write_export(study, args, requirement, progress=None) -> tuple[int, list[int]]:
    """Confirm and export: the exit code (1 when nothing could be written because the noise
    left every answer undecidable; it says which, and the interval) and the trials written."""
    from accelopt.export import entries_for, withheld
    from accelopt.params_store.file import store_path, write_entries
    from accelopt.params_store.seed_layout import write_seed
    from accelopt.progress import Progress, follow
    from accelopt.storage import storage_url
    from accelopt.study.confirm import confirm, confirmations, describe, pending
    from accelopt.study.prepare import spec_of, study_mode
    from accelopt.study.results import is_pareto
    from accelopt.trial.bench import Bench

    if args.top_k < 0:
        raise AccelOptError(f"--top-k must be 0 (no confirmation) or more, got {args.top_k}")
    if args.top_k and is_pareto(study):
        # Confirmation judges the answers of one budget; a frontier answers every budget.
        print(f"{study.study_name}: held-out confirmation is skipped for a pareto study: its "
              f"frontier is exported as searched", file=sys.stderr)  # fmt: skip
    elif args.top_k and pending(study, args.top_k, requirement):
        # The best of many noisy trials is biased upward: measure the top ones again on the
        # held-out prompts before anything is exported (accelopt.study.confirm).
        def log(s: str) -> None:
            print(s, file=sys.stderr)

        weights = "random" if args.random_weights else "pretrained"
        progress = progress or Progress()
        bench = Bench.load(spec_of(study), args.device, weights, log, progress)
        bench.mode = study_mode(study) or "eager"  # re-timed the way the search timed it
        with progress.phase(f"{study.study_name}: held-out confirmation") as confirming:
            follow(bench, confirming)  # confirm's held-out bench tells what this one is told
            confirm(study, bench, args.top_k, log=log, requirement=requirement)
    path = store_path(args.store)
    layout = getattr(args, "format", None) or "accelopt"
    force = bool(getattr(args, "force", False))
    entries = entries_for(study, storage_url(args.storage), requirement, force)
    undecided = [] if force else withheld(study, requirement)
    for t in undecided[:3]:  # what the noise kept out, with the numbers that say so
        confirmed = (confirmations(study) or {}).get(t.number)
        a = t.user_attrs
        low, high = (confirmed or {}).get("interval") or a["speedup_interval"]
        shown = (
            describe(confirmed) if confirmed else f"{a['speedup']:.2f}x ({low:.2f}x-{high:.2f}x)"
        )
        print(f"{study.study_name}: trial {t.number} not exported: its speedup {shown} is "
              f"undecidable: the interval straddles {requirement.speedup or 1.0:g}x, so this "
              f"machine's noise hides whether it is faster; re-run on a quieter machine, or "
              f"pass --force to export it anyway", file=sys.stderr)  # fmt: skip
    if not entries:
        why = "none passed held-out confirmation" if confirmations(study) else "none is feasible"
        if undecided:
            why = "no feasible configuration is surely faster than the plain pipeline"
        print(f"{study.study_name}: nothing to export: {why}", file=sys.stderr)
        return (1 if undecided else 0), []
    left_out: list[str] = []
    if layout == "seed":
        left_out = write_seed(path, entries)
    else:
        write_entries(path, entries)
    for key, entry in entries.items():
        if key in left_out:
            print(f"left out {key}: the seed layout has no slot for a time requirement or a "
                  f"random ToMe partition", file=sys.stderr)  # fmt: skip
            continue
        points = f" (a frontier of {len(entry['frontier'])})" if "frontier" in entry else ""
        print(f"exported {printable(key, 120)}{points} -> {path} ({layout} layout)",
              file=sys.stderr)  # fmt: skip
    kept = [e for k, e in entries.items() if k not in left_out]
    written = {e["study"]["trial"] for e in kept} | {
        p["trial"] for e in kept for p in e.get("frontier", [])
    }
    return 0, sorted(written)


def _export(args: argparse.Namespace) -> int:
    from accelopt.study.results import Requirement

    code, _ = _write_export(_open_study(args), args, Requirement(args.req_speedup, args.req_time))
    return code


def _read_usable(store_arg: str | None) -> tuple[Any, dict[str, Any], list[tuple[str, str]]]:
    """The params file named by ``--store`` (it must exist), its usable entries, and the
    ``(key, why)`` of the others, keys and reasons made safe to print."""
    from accelopt.params_store.check import usable_entries
    from accelopt.params_store.file import store_path
    from accelopt.params_store.seed_layout import read_params_file

    store = store_path(store_arg)
    if not os.path.lexists(store):
        raise AccelOptError(
            f"store {printable(str(store))} does not exist; check --store (or "
            f"$ACCELOPT_STORE), or export a study into it with: accelopt run --study NAME --export"
        )
    read = read_params_file(store)
    entries, problems = usable_entries(read.entries)
    return read, entries, [(k, printable(why, 1000)) for k, why in [*read.problems, *problems]]


def _store(args: argparse.Namespace) -> int:
    from accelopt.params_store.file import store_path

    read, entries, problems = _read_usable(args.store)
    for key in entries:
        print(f"ok       {printable(key, 120)}")
    for key, why in problems:
        print(f"skipped  {key}: {why}")
    shown = printable(str(store_path(args.store)))
    print(f"{shown} ({read.layout} layout): {len(entries)} usable, {len(problems)} skipped",
          file=sys.stderr)  # fmt: skip
    return 1 if problems else 0


def _codegen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from accelopt.codegen import Request, load_tasks, parse_request_targets, write_scripts
    from accelopt.params_store.file import store_path

    if args.tasks:
        if any(v is not None for v in (args.pipe, args.sched, args.steps)):
            raise AccelOptError("give either --tasks FILE or --pipe/--sched/--steps, not both")
        requests = load_tasks(Path(args.tasks))
    elif args.pipe is None or args.sched is None or args.steps is None:
        raise AccelOptError("codegen needs --pipe, --sched and --steps (or --tasks FILE)")
    else:
        targets = parse_request_targets(args.targets)
        requests = [Request(args.pipe, args.sched, args.steps, targets, args.req_speedup,
                            args.max_score_loss, args.req_time,
                            **_bound_args(args))]  # fmt: skip
    store = store_path(args.store)
    read, entries, problems = _read_usable(args.store)
    for key, why in problems:  # reported, never used
        print(f"accelopt: warning: skipped store entry {key}: {why}", file=sys.stderr)
    for path, entry in write_scripts(entries, requests, Path(args.output), bool(args.tasks),
                                     args.force):  # fmt: skip
        point = ""
        if entry.get("objective") == "pareto":  # one point of a stored frontier
            m = entry["measured"]
            point = (f"; frontier point: trial {entry['study']['trial']}, {m['speedup']:.2f}x, "
                     f"{_quality(m)}")  # fmt: skip
        print(f"wrote {printable(str(path))} ({printable(entry['key'], 120)}{point})")
    # After the answers: an unmet request stays one line of error.
    print(f"read {len(entries)} usable entries of {len(read.entries) + len(read.problems)} "
          f"from {printable(str(store))} ({read.layout} layout)", file=sys.stderr)  # fmt: skip
    return 0


def _bound_args(args: argparse.Namespace) -> dict[str, Any]:
    """The fidelity bounds given on the command line (``--min-psnr`` ...), by constraint key."""
    from accelopt.codegen import BOUND_FLAGS

    return {k: getattr(args, k) for k in BOUND_FLAGS if getattr(args, k, None) is not None}


def _bound_options(p: argparse.ArgumentParser, what: str) -> None:
    from accelopt.codegen import BOUND_FLAGS

    helps = {
        "psnr_min": "PSNR against the baseline image, at least DB",
        "ssim_min": "SSIM against the baseline image, at least S",
        "clip_image_min": "CLIP image-embedding similarity to the baseline image, at least C",
        "lpips_max": "LPIPS distance to the baseline image, at most D (needs its weights)",
    }
    for key, flag in BOUND_FLAGS.items():
        p.add_argument(flag, dest=key, type=float, metavar=key.split("_")[0].upper(),
                       help=f"{what}: {helps[key]}")  # fmt: skip


def _sweep(args: argparse.Namespace) -> int:
    import optuna

    from accelopt.progress import Progress
    from accelopt.spec import canonical_name, load_spec
    from accelopt.study import sweep
    from accelopt.study.loop import run_study

    names = sweep.matrix(args.pipes, args.scheds, args.steps,
                         args.targets or sweep.default_targets())  # fmt: skip
    names = list(dict.fromkeys(map(canonical_name, names)))  # sdxl and SDXL: one study
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def load(name: str):
        spec = load_spec(name)
        if args.objective:
            spec = spec.replace(objective=args.objective)
        return spec.replace(n_trials=args.n_trials) if args.n_trials else spec

    progress = Progress(enabled=not args.quiet)

    def run(spec):
        weights = "random" if args.random_weights else "pretrained"
        outcome = run_study(spec, storage=args.storage, device=args.device, weights=weights,
                            progress=progress)  # fmt: skip
        if args.export:
            _write_export(outcome.study, args, outcome.requirement, progress)
        return outcome

    rows: list[sweep.Row] = []
    try:
        rows = sweep.sweep(names, run, load, lambda s: print(s, file=sys.stderr))
    except KeyboardInterrupt as stop:
        print("accelopt: interrupted; finished trials are stored, run the sweep again to resume",
              file=sys.stderr)  # fmt: skip
        return exit_code(stop)
    print(sweep.table(rows))
    return 1 if any(r.state.startswith("error") for r in rows) else 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from accelopt.progress import Progress
    from accelopt.report import image_rows, render_html, report_data
    from accelopt.study.prepare import spec_of
    from accelopt.trial.bench import Bench

    out = Path(args.output)
    if out.exists() and not args.force:
        raise AccelOptError(f"{out} exists; pass --force to overwrite it")
    study = _open_study(args)
    data = report_data(study)
    rows, prompts = [], []
    if args.images and data.points:
        weights = "random" if args.random_weights else "pretrained"
        bench = Bench.load(
            spec_of(study), args.device, weights, lambda s: print(s, file=sys.stderr), Progress()
        )
        rows = image_rows(study, data, bench, args.images)
        prompts = bench.prompts
    out.write_text(render_html(data, rows, prompts), encoding="utf-8")
    print(f"wrote {out}: {len(data.points)} trials, {len(rows)} image rows")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from accelopt.storage import open_storage, storage_label

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        raise AccelOptError(
            f"refusing to serve on {args.host}: the dashboard has no login; bind to 127.0.0.1 "
            f"(default) or pass --allow-remote if you mean it"
        )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"accelopt: warning: serving on {args.host} without any login: anyone who can "
            f"reach this port can read and edit the studies",
            file=sys.stderr,
        )
    storage, url = open_storage(args.storage)
    print(
        f"optuna-dashboard for {storage_label(url)} at http://{args.host}:{args.port}/dashboard",
        file=sys.stderr,
    )
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


def _open_study(args: argparse.Namespace):
    """The stored study ``--study`` names, by its canonical name (``accelopt.spec``), else as
    typed, else under the one other spelling a storage made before names were canonical holds."""
    import optuna

    from accelopt.spec import canonical_name
    from accelopt.storage import open_storage, storage_label

    storage, url = open_storage(args.storage)
    name = canonical_name(args.study)
    for candidate in dict.fromkeys((name, args.study)):
        try:
            return optuna.load_study(study_name=candidate, storage=storage)
        except KeyError:
            pass
    spellings = sorted(s for s in optuna.get_all_study_names(storage) if canonical_name(s) == name)
    if len(spellings) == 1:
        return optuna.load_study(study_name=spellings[0], storage=storage)
    if spellings:
        shown = ", ".join(printable(s, 120) for s in spellings)
        raise AccelOptError(f"study {name} is stored under {len(spellings)} spellings in "
                            f"{storage_label(url)} ({shown}); pass --study with one of them "
                            f"exactly")  # fmt: skip
    raise AccelOptError(
        f"no study {name!r} in {storage_label(url)}; run it first or pass --storage"
    )


def _best(args: argparse.Namespace) -> int:
    import json

    from accelopt.measure.constraints import METRICS
    from accelopt.study.results import best_trial, frontier, is_pareto, pareto_metric

    study = _open_study(args)
    best = best_trial(study)
    shown = ("speedup", "speedup_interval", "speedup_level", "time_per_image", *METRICS,
             "device")  # fmt: skip

    def record(t) -> dict:
        return {"trial": t.number, "accelerators": t.user_attrs["accelerators"],
                **{k: t.user_attrs[k] for k in shown if k in t.user_attrs}}  # fmt: skip

    front = frontier(study.trials, pareto_metric(study)) if is_pareto(study) else None
    if args.json:
        out: dict = {"study": study.study_name, "best": None if best is None else record(best)}
        if front is not None:  # fastest first
            out.update(objective="pareto", frontier=[record(t) for t in front])
        print(json.dumps(out, indent=2))
        return 0
    if best is None:
        print(f"{study.study_name}: no feasible trial yet")
    else:
        print(f"{study.study_name}: best {_describe(best)}")
    if front is not None:
        print(_frontier_line(study, hint=False) + ", fastest first:")
        for t in front:
            print("  " + _describe(t).replace("\n  ", "\n    "))
    return 0


def _list(args: argparse.Namespace) -> int:
    from pathlib import Path

    import optuna

    from accelopt.spec import shipped_specs
    from accelopt.storage import open_storage, storage_url
    from accelopt.study.results import best_trial, frontier, is_pareto, pareto_metric

    local = sorted(Path("studies").glob("*.toml")) if Path("studies").is_dir() else []
    print("specs:")
    for path in local + [p for p in shipped_specs() if p.name not in {q.name for q in local}]:
        print(f"  {path.stem:40} {path}")
    url = storage_url(args.storage)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        print("stored studies: none (no storage file yet)")
        return 0
    storage, _ = open_storage(url)
    print("stored studies:")
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counted = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
        budget = printable(study.user_attrs.get("budget", "?"), 12)
        best = best_trial(study)
        shown = f"best {best.user_attrs['speedup']:.2f}x" if best else "no feasible trial"
        if is_pareto(study):
            shown += f", Pareto frontier of {len(frontier(study.trials, pareto_metric(study)))}"
        print(f"  {printable(summary.study_name, 120):40} {counted}/{budget} trials  {shown}")
    return 0


def _storage_repair(args: argparse.Namespace) -> int:
    from accelopt.storage import repair_file

    print(repair_file(args.path).describe())
    return 0


def _parser() -> argparse.ArgumentParser:
    from accelopt.spec import EXECUTIONS, OBJECTIVES

    parser = argparse.ArgumentParser(
        prog="accelopt",
        description="Search the knobs of training-free diffusion accelerators with Optuna.",
    )
    parser.add_argument("--version", action="version", version=f"accelopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    command("pipelines", _pipelines, "list the pipelines accelopt knows by name")
    command("schedulers", _schedulers, "list the schedulers and their aliases")
    p = command(
        "accelerators",
        _accelerators,
        "list accelerators, or show the search space for a pipeline and step count",
    )
    p.add_argument("--pipeline", help="a pipeline name, e.g. SDXL or TinySD")
    p.add_argument("--steps", type=int, default=25, help="inference steps (default: 25)")
    p.add_argument("--targets", help="accelerators joined by '+', e.g. deepcache+tgate")

    def trial_options(p: argparse.ArgumentParser) -> None:
        """What every process that runs trials of a study takes (run, worker)."""
        p.add_argument("--n-trials", type=int, help="the study's total trials (default: spec's)")
        p.add_argument("--timeout", type=float, help="stop starting trials after SECONDS")
        p.add_argument(
            "--req-speedup", type=float, help="stop at the first feasible trial this fast"
        )
        p.add_argument(
            "--req-time",
            type=float,
            metavar="S",
            help="stop at the first feasible trial at or under S seconds per image",
        )
        p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if present)")
        p.add_argument(
            "--random-weights", action="store_true", help="the architecture, random weights"
        )
        p.add_argument(
            "--objective",
            choices=OBJECTIVES,
            type=str.lower,
            help="speedup: the fastest within the score-loss budget (default); pareto: speedup "
            "and score loss together, the whole frontier kept (the spec's objective)",
        )
        p.add_argument(
            "--execution",
            choices=EXECUTIONS,
            type=str.lower,
            help="how the baseline and every trial run: eager, compile (inductor), "
            "cuda-graphs (inductor kernels replayed as CUDA graphs); auto (default): eager on "
            "a CPU, on CUDA the mode whose plain baseline is fastest",
        )
        p.add_argument(
            "--heartbeat",
            type=int,
            default=30,
            help="seconds between a trial's heartbeats on a database (default 30)",
        )
        p.add_argument(
            "--warm-start",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="start a new study from its neighbours' best configurations (default: on)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress (bars or lines)")

    def export_options(p: argparse.ArgumentParser) -> None:
        from accelopt.params_store.seed_layout import LAYOUTS  # light: no torch

        p.add_argument(
            "--store", help="params store (default: $ACCELOPT_STORE or search_params.json)"
        )
        p.add_argument("--format", choices=LAYOUTS, default="accelopt",
                       help="store layout: accelopt's (default) or seed: the flat "
                       "search_params.json that traversal_search.py wrote")  # fmt: skip
        p.add_argument("--top-k", type=int, default=3, metavar="K",
                       help="before exporting, measure the K best again on held-out prompts "
                       "(0: skip; default 3)")  # fmt: skip
        p.add_argument("--force", action="store_true",
                       help="export a configuration whose speedup the timing pairs could "
                       "not tell from the baseline's (undecidable); a failed bound never "
                       "is")  # fmt: skip

    p = command("run", _run, "run or resume a study; prints the best configuration")
    p.add_argument("--study", help="study NAME: PIPE-SCHED-STEPS[-TARGETS], e.g. SDXL-DDIM-25")
    p.add_argument("--spec", help="run this spec FILE (its stem is the study name)")
    p.add_argument(
        "--storage",
        help="Optuna storage URL or journal file path "
        "(default: $ACCELOPT_STORAGE or sqlite:///accelopt.db)",
    )
    p.add_argument("--sampler", choices=("tpe", "grid"), type=str.lower,
                   help="override the spec's sampler (case-insensitive)")  # fmt: skip
    p.add_argument("--seed", type=int, help="sampler seed (default: the spec's)")
    p.add_argument("--max-score-loss", type=float, help="CLIP score loss budget (default 0.02)")
    _bound_options(p, "a bound of the study, as [constraints] in its spec")
    trial_options(p)
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes on this host, one per GPU (default 1); they share a journal "
        "file or --storage, never SQLite",
    )
    p.add_argument("--gpus", help="GPU numbers for the workers, e.g. 0,1 (default: 0..N-1)")
    p.add_argument("--export", action="store_true", help="export the answer when done")
    export_options(p)
    p = command(
        "worker",
        _worker,
        "run trials of a study that other processes or hosts run too (shared --storage)",
    )
    p.add_argument("--study", help="study NAME (its spec is read from the storage if stored)")
    p.add_argument("--spec", help="spec FILE, for a study not yet in the storage")
    p.add_argument(
        "--storage",
        help="a journal file path (one host) or postgresql:// URL (many hosts); default "
        "$ACCELOPT_STORAGE",
    )
    trial_options(p)
    p = command("export", _export, "write a study's best configurations into the params store")
    p.add_argument("--study", required=True, help="study NAME")
    p.add_argument("--storage", help="Optuna storage URL or journal file path")
    p.add_argument("--req-speedup", type=float, help="export the first feasible trial this fast")
    p.add_argument("--req-time", type=float, help="... at or under this many seconds per image")
    export_options(p)
    p.add_argument("--device", help="where to confirm (default: cuda if present)")
    p.add_argument("--random-weights", action="store_true", help="as the study was run")
    p = command(
        "store",
        _store,
        "check a params store: list the entries codegen would use and why it skips the others",
    )
    p.add_argument("action", choices=["check"], help="check: read every entry (exit 1 if any "
                   "is skipped)")  # fmt: skip
    p.add_argument("--store", help="params store (default: $ACCELOPT_STORE or "
                   "search_params.json)")  # fmt: skip
    p = command("codegen", _codegen, "write a standalone script for a stored configuration")
    p.add_argument("--pipe", help="pipeline, e.g. SDXL (or its hub id)")
    p.add_argument("--sched", help="scheduler, e.g. DDIM")
    p.add_argument("--steps", type=int, help="inference steps")
    p.add_argument("--targets", help="accelerators, e.g. deepcache,tgate (default: any)")
    p.add_argument(
        "--req-speedup",
        "--min-speedup",
        type=float,
        metavar="X",
        help="at least this speedup (on a frontier: the least loss this fast)",
    )
    p.add_argument(
        "--max-score-loss",
        "--max-loss",
        type=float,
        metavar="L",
        help="quality budget (default 0.02; on a frontier: the study's own, and "
        "none next to a speed requirement)",
    )
    p.add_argument(
        "--req-time",
        "--max-seconds",
        type=float,
        metavar="T",
        help="at most T seconds per image (on a frontier: the least loss this fast)",
    )
    _bound_options(p, "only entries that measured it")
    p.add_argument("--tasks", help="a JSON or TOML list of requests (README, 'codegen')")
    p.add_argument("--store", help="params store (default: $ACCELOPT_STORE or search_params.json)")
    p.add_argument("-o", "--output", required=True, help="script path (a folder with --tasks)")
    p.add_argument("--force", action="store_true", help="overwrite existing scripts")
    from accelopt.study.sweep import DEFAULT_PIPES, DEFAULT_SCHEDS, DEFAULT_STEPS

    p = command(
        "sweep",
        _sweep,
        "run a matrix of studies in order (default: SD1.5, SD2.1, SDXL x "
        "DDIM, DPM-Solver++, UniPC x 20, 25, 50 steps x every accelerator set)",
    )
    p.add_argument("--pipes", nargs="+", default=list(DEFAULT_PIPES), help="pipelines")
    p.add_argument("--scheds", nargs="+", default=list(DEFAULT_SCHEDS), help="schedulers")
    p.add_argument("--steps", nargs="+", type=int, default=list(DEFAULT_STEPS), help="steps")
    p.add_argument(
        "--targets",
        nargs="+",
        help="accelerator sets, e.g. deepcache tome+tgate (default: every declared combination)",
    )
    p.add_argument("--n-trials", type=int, help="trials per study (default: each spec's)")
    p.add_argument("--objective", choices=OBJECTIVES, type=str.lower,
                   help="override each spec's objective")  # fmt: skip
    p.add_argument("--storage", help="Optuna storage URL or journal file path")
    p.add_argument("--export", action="store_true", help="export each study when it ends")
    export_options(p)
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if present)")
    p.add_argument("--random-weights", action="store_true", help="architectures, random weights")
    p.add_argument("--quiet", action="store_true", help="no progress (bars or lines)")
    p = command("best", _best, "print a stored study's best feasible configuration")
    p.add_argument("--study", required=True, help="study NAME")
    p.add_argument("--storage", help="Optuna storage URL or journal file path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("list", _list, "list study specs and the studies in storage")
    p.add_argument("--storage", help="Optuna storage URL or journal file path")
    p = command("report", _report, "write a study's plotly report as one HTML file")
    p.add_argument("--study", required=True, help="study NAME")
    p.add_argument("--storage", help="Optuna storage URL or journal file path")
    p.add_argument("-o", "--output", default="report.html", help="HTML file (report.html)")
    p.add_argument(
        "--images",
        type=int,
        default=3,
        metavar="N",
        help="prompts in the image grid (0: no images, no model loaded; default 3)",
    )
    p.add_argument("--device", help="where to regenerate the images (default: cuda if present)")
    p.add_argument("--random-weights", action="store_true", help="as the study was run")
    p.add_argument("--force", action="store_true", help="overwrite the output file")
    p = command("dashboard", _dashboard, "serve optuna-dashboard for the studies' storage")
    p.add_argument("--storage", help="Optuna storage URL or journal file path")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding to a non-loopback address (the dashboard has no login)",
    )
    p = command("storage", _no_action, "look after a storage: repair a journal file")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    repair = (
        "rewrite a journal file keeping every good line (a corrupt one dropped, a record "
        "at its end kept), the original kept as PATH.broken-TIME; stop its workers first"
    )
    r = actions.add_parser("repair", help=repair, description=repair)
    r.add_argument("path", metavar="PATH", help="the journal file")
    r.set_defaults(func=_storage_repair)
    p = command("prompts", _prompts, "print a shipped prompt set")
    p.add_argument(
        "--set",
        choices=("accelopt", "shapes"),
        default="accelopt",
        help="accelopt (for real models, default) or shapes (ToySD's captions)",
    )
    p.add_argument("--split", choices=("search", "heldout"), help="only this split")
    p.add_argument("--count", type=int, help="only the first COUNT prompts")
    return parser


def _no_action(args: argparse.Namespace) -> int:  # argparse requires the action
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While a command runs, SIGTERM stops it as Ctrl-C does (``Interrupted``): the running
    trial is given back and the exit code is 143. Only the main thread can take signals."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a requirement unmet or a storage error,
    2 bad input, 130 Ctrl-C, 143 SIGTERM)."""
    try:
        with _sigterm_stops():
            args = _parser().parse_args(argv)
            return _call(args)
    except KeyboardInterrupt as stop:  # before a command could catch it: while importing
        print("accelopt: interrupted", file=sys.stderr)
        return exit_code(stop)


def _check_device(device: str | None) -> None:
    """A ``--device`` this machine lacks, refused as one line before anything loads: the same
    for every command that takes the flag (run, worker, export, sweep, report)."""
    if device is None:
        return
    import torch

    from accelopt.pipelines import resolve_device

    kind = resolve_device(device)  # a malformed name is refused with the valid ones
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise AccelOptError(f"--device {device}: this machine has no MPS device; use --device "
                            f"cpu or leave it out")  # fmt: skip
    if kind.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise AccelOptError(f"--device {device}: this machine has no CUDA device; use --device "
                            f"cpu or leave it out")  # fmt: skip
    count = torch.cuda.device_count()
    if kind.index is not None and kind.index >= count:
        plural = "" if count == 1 else "s"
        raise AccelOptError(f"--device {device}: this machine has {count} CUDA device{plural} "
                            f"(cuda:0 to cuda:{count - 1})")  # fmt: skip


def _call(args: argparse.Namespace) -> int:
    try:
        _check_device(getattr(args, "device", None))
        return int(args.func(args))
    except AccelOptError as err:  # its message may quote a store, a task file or a storage
        print(f"accelopt: error: {printable(str(err), 2000)}", file=sys.stderr)
        return 2
    except Exception as err:
        from accelopt.storage import is_storage_error, scrub, storage_url

        if not is_storage_error(err):
            raise
        # The storage broke (a database gone): say so as itself; stored trials are safe.
        shown = scrub(f"{type(err).__name__}: {err}", storage_url(getattr(args, "storage", None)))
        print(f"accelopt: storage error: {shown}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
