"""Commands that run trials: run (one process or N workers), worker, sweep."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from accelopt.cli import _flags as flags
from accelopt.cli import _format as fmt
from accelopt.cli._command import Command
from accelopt.cli.params_store import write_export
from accelopt.errors import AccelOptError, exit_code

if TYPE_CHECKING:
    from accelopt.progress import Progress
    from accelopt.spec import StudySpec
    from accelopt.study.loop import Outcome
    from accelopt.study.results import Requirement

__all__ = ["Run", "Sweep", "Worker"]

POSITIVE = ("n_trials", "timeout", "req_speedup", "req_time", "max_score_loss", "workers")


class Run(Command):
    """``accelopt run``: run or resume a study, in one process or N workers; print its best."""

    name = "run"
    help = "run or resume a study; prints the best configuration"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        p = parser
        flags.study_or_spec(p, "study NAME: PIPE-SCHED-STEPS[-TARGETS], e.g. SDXL-DDIM-25",
                            "run this spec FILE (its stem is the study name)")  # fmt: skip
        flags.storage(p, "Optuna storage URL or journal file path "
                      "(default: $ACCELOPT_STORAGE or sqlite:///accelopt.db)")  # fmt: skip
        p.add_argument("--sampler", choices=("tpe", "grid"), type=str.lower,
                       help="override the spec's sampler (case-insensitive)")  # fmt: skip
        p.add_argument("--seed", type=int, help="sampler seed (default: the spec's)")
        p.add_argument("--max-score-loss", type=float,
                       help="CLIP score loss budget (default 0.02)")  # fmt: skip
        flags.bounds(p, "a bound of the study, as [constraints] in its spec")
        flags.trial_options(p)
        p.add_argument("--workers", type=int,
                       help="worker processes on this host, one per GPU (default 1); they share "
                       "a journal file or --storage, never SQLite")  # fmt: skip
        p.add_argument("--gpus", help="GPU numbers for the workers, e.g. 0,1 (default: 0..N-1)")
        p.add_argument("--export", action="store_true", help="export the answer when done")
        flags.export_options(p)

    def run(self, args: argparse.Namespace) -> int:
        import optuna

        from accelopt.progress import Progress
        from accelopt.storage import SHARED_STORAGE, shared_storage
        from accelopt.study.launch import assign_gpus, finished_by_now

        requirement = flags.requirement_of(args)
        for flag in POSITIVE:
            value = getattr(args, flag)
            if value is not None and value <= 0:
                raise AccelOptError(f"--{flag.replace('_', '-')} must be positive, got {value}")
        flags.check_loss_budget(args.max_score_loss)
        spec = flags.spec_from(args)
        given = (f"max_score_loss = {spec.max_score_loss:g} in the spec" if args.max_score_loss
                 is None else f"--max-score-loss {args.max_score_loss:g}")  # fmt: skip
        flags.warn_loss_budget(spec.max_score_loss, given)
        if note := fmt.random_scorer(spec, flags.weights(args)):
            print(note, file=sys.stderr)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        gpus = assign_gpus(args.workers, args.gpus, args.device)
        progress = Progress(enabled=not args.quiet)  # bars on a terminal, sparse lines elsewhere
        storage = args.storage
        if len(gpus) > 1:
            storage = shared_storage(args.storage, f"{len(gpus)} workers", SHARED_STORAGE)
        try:
            outcome, codes = self._search(args, spec, gpus, requirement, storage, progress)
        except KeyboardInterrupt as stop:
            finished = finished_by_now(storage, spec.name, requirement)
            print(fmt.interrupted(spec.name, finished), file=sys.stderr)
            return exit_code(stop)
        written: list[int] | None = None
        code = 0
        if args.export:
            # On the pipeline that ran the trials: a second one beside it, its graphs and its
            # caches' buffers ran a GPU out of memory (PixArt-Sigma on an H100).
            result = write_export(outcome.study, args, requirement, progress, outcome.bench)
            written, code = result.trials, 1 if result.refused else 0
        answered = self._answer(outcome, spec, requirement, codes, written)
        if fmt.under_load(outcome.study):  # the last line read: how far to trust the answer
            print(fmt.under_load(outcome.study))
        return answered or code

    def _search(
        self,
        args: argparse.Namespace,
        spec: StudySpec,
        gpus: Sequence[str | None],
        requirement: Requirement,
        storage: str | None,
        progress: Progress,
    ) -> tuple[Outcome, dict[int, int]]:
        """Run the study here, or in one worker process per entry of ``gpus``."""
        from accelopt.study.loop import run_study

        if len(gpus) > 1:
            assert storage is not None  # shared_storage gave one
            return _run_workers(args, spec, gpus, requirement, storage, progress)
        outcome = run_study(
            spec,
            storage=storage,
            n_trials=args.n_trials,
            timeout=args.timeout,
            requirement=requirement,
            device=args.device if gpus[0] is None else f"cuda:{gpus[0]}",
            weights=flags.weights(args),
            progress=progress,
            heartbeat=args.heartbeat,
            warm_start=args.warm_start,
        )
        return outcome, {}

    def _answer(
        self,
        outcome: Outcome,
        spec: StudySpec,
        requirement: Requirement,
        codes: dict[int, int],
        written: list[int] | None,
    ) -> int:
        """Print what the run did and its answer; 1 when the requirement is unmet or every
        worker failed before the study was done."""
        from accelopt.study.prepare import is_finished

        study = outcome.study
        states = [t.state.name for t in study.trials]
        counted = states.count("COMPLETE") + states.count("PRUNED")
        ended = fmt.stopped_trials(study.trials)
        failed = f", {ended}" if ended else ""
        cost = fmt.compile_cost(study)  # the study's, all its runs and workers
        if outcome.already_finished:
            print(f"{spec.name}: finished already ({counted} trials{failed}); nothing to run"
                  f"{cost}")  # fmt: skip
        else:
            print(f"{spec.name}: ran {outcome.ran} trials ({counted} in the study{failed}){cost}")
        for line in fmt.never_measured(study, spec.sampler.name == "grid"):
            print(line)
        stopped = any(codes.values()) and not outcome.already_finished
        if stopped and not is_finished(study, requirement):  # workers failed, not a --timeout
            print(f"{spec.name}: every worker stopped before the study was done (exit codes "
                  f"{sorted(codes.values())}); run again to resume")  # fmt: skip
            return 1
        if fmt.frontier_line(study):
            print(fmt.frontier_line(study))
        best = outcome.best
        if requirement.active:
            if best is None:
                print(f"requirement not met: no feasible trial reached {requirement.describe()}")
                return 1
            print(f"requirement met ({requirement.describe()}) by {fmt.describe(best)}")
        elif best is None or best.user_attrs["speedup"] <= 1.0:
            why = "no feasible accelerated trial" if best is None else "none beats the baseline"
            bounds = ", ".join(b.describe() for b in spec.bounds())
            print(f"no acceleration: {why} within {bounds}")
            return 0
        else:
            print(f"best {fmt.describe(best)}")
        if fmt.not_exported(study, best, written):
            print(fmt.not_exported(study, best, written))
        return 0


def _run_workers(
    args: argparse.Namespace,
    spec: StudySpec,
    gpus: Sequence[str | None],
    requirement: Requirement,
    storage: str,
    progress: Progress,
) -> tuple[Outcome, dict[int, int]]:
    """``run --workers N``: one ``accelopt worker`` per GPU, told what this run was told."""
    from accelopt.storage import SHARED_STORAGE
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
    return run_workers(spec, storage=storage, gpus=gpus, worker_argv=argv,
                       n_trials=args.n_trials, requirement=requirement,
                       progress=progress)  # fmt: skip


class Worker(Command):
    """``accelopt worker``: one of many processes or hosts running a study on shared storage."""

    name = "worker"
    help = "run trials of a study that other processes or hosts run too (shared --storage)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        flags.study_or_spec(parser, "study NAME (its spec is read from the storage if stored)",
                            "spec FILE, for a study not yet in the storage")  # fmt: skip
        flags.storage(parser, "a journal file path (one host) or postgresql:// URL (many "
                      "hosts); default $ACCELOPT_STORAGE")  # fmt: skip
        flags.trial_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        import os
        import socket

        from accelopt.progress import Progress
        from accelopt.storage import shared_storage
        from accelopt.study.launch import WORKERS_HERE, serve
        from accelopt.study.loop import run_study

        requirement = flags.requirement_of(args)
        if (args.study is None) == (args.spec is None):
            raise AccelOptError("give exactly one of --study NAME or --spec FILE")
        url = shared_storage(args.storage, "workers")
        spec = self._spec(args, url)
        me = f"[{socket.gethostname()}:{os.getpid()}]"
        try:
            serve()  # started by run --workers: never outlive that process, however it ends
            outcome = run_study(
                spec,
                storage=url,
                n_trials=args.n_trials,
                timeout=args.timeout,
                requirement=requirement,
                device=args.device,
                weights=flags.weights(args),
                progress=Progress(enabled=not args.quiet, prefix=f"{me} "),
                log=lambda s: print(f"{me} {s}", file=sys.stderr),
                heartbeat=args.heartbeat,
                warm_start=args.warm_start,
                workers_here=_workers_here(os.environ.get(WORKERS_HERE)),
            )
        except KeyboardInterrupt as stop:
            print(f"{me} interrupted; its running trial is given back", file=sys.stderr)
            return exit_code(stop)
        print(f"{me} {spec.name}: ran {outcome.ran} trials", file=sys.stderr)
        return 0

    def _spec(self, args: argparse.Namespace, url: str) -> StudySpec:
        """The stored spec of ``--study`` (other hosts need not have its file), else the file's.
        A spec file names its study (its stem): that study, never whichever the storage holds."""
        import optuna

        from accelopt.spec import canonical_name
        from accelopt.storage import open_storage
        from accelopt.study.prepare import spec_of

        spec = flags.spec_from(args) if args.spec is not None else None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        backend, _ = open_storage(url, heartbeat=args.heartbeat)
        try:
            if spec is None:
                name = canonical_name(args.study)
                spec = spec_of(optuna.load_study(study_name=name, storage=backend))
        except KeyError:
            spec = flags.spec_from(args)
        finally:  # run_study opens its own: this pool's connections would sit idle all run long
            if isinstance(backend, optuna.storages.RDBStorage):
                backend.engine.dispose()
        if args.objective is not None and args.objective != spec.objective:
            raise AccelOptError(f"study {spec.name} is stored with objective="
                                f"{spec.objective!r}, not {args.objective!r}; use another "
                                f"study name")  # fmt: skip
        return spec


def _workers_here(value: str | None) -> int:
    """``$ACCELOPT_WORKERS_HERE`` (set by ``run --workers N``): 1 when unset or not a count."""
    return int(value) if value and value.isdigit() and int(value) > 0 else 1


class Sweep(Command):
    """``accelopt sweep``: a matrix of studies, run in order; a table of their answers."""

    name = "sweep"
    help = (
        "run a matrix of studies in order (default: SD1.5, SD2.1, SDXL x "
        "DDIM, DPM-Solver++, UniPC x 20, 25, 50 steps x every accelerator set)"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from accelopt.spec import OBJECTIVES
        from accelopt.study.sweep import DEFAULT_PIPES, DEFAULT_SCHEDS, DEFAULT_STEPS

        p = parser
        p.add_argument("--pipes", nargs="+", default=list(DEFAULT_PIPES), help="pipelines")
        p.add_argument("--scheds", nargs="+", default=list(DEFAULT_SCHEDS), help="schedulers")
        p.add_argument("--steps", nargs="+", type=int, default=list(DEFAULT_STEPS), help="steps")
        p.add_argument("--targets", nargs="+",
                       help="accelerator sets, e.g. deepcache tome+tgate (default: every "
                       "declared combination)")  # fmt: skip
        p.add_argument("--n-trials", type=int, help="trials per study (default: each spec's)")
        p.add_argument("--objective", choices=OBJECTIVES, type=str.lower,
                       help="override each spec's objective")  # fmt: skip
        flags.storage(p)
        p.add_argument("--export", action="store_true", help="export each study when it ends")
        flags.export_options(p)
        flags.device(p)
        flags.random_weights(p, "architectures, random weights")
        p.add_argument("--quiet", action="store_true", help="no progress (bars or lines)")

    def run(self, args: argparse.Namespace) -> int:
        import optuna

        from accelopt.progress import Progress
        from accelopt.spec import canonical_name, load_spec
        from accelopt.study import sweep
        from accelopt.study.loop import run_study

        names = sweep.matrix(args.pipes, args.scheds, args.steps,
                             args.targets or sweep.default_targets())  # fmt: skip
        names = list(dict.fromkeys(map(canonical_name, names)))  # sdxl and SDXL: one study
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        progress = Progress(enabled=not args.quiet)

        def load(name: str) -> Any:
            spec = load_spec(name)
            if args.objective:
                spec = spec.replace(objective=args.objective)
            return spec.replace(n_trials=args.n_trials) if args.n_trials else spec

        def run(spec: Any) -> Any:
            outcome = run_study(spec, storage=args.storage, device=args.device,
                                weights=flags.weights(args), progress=progress)  # fmt: skip
            if args.export:  # on the study's pipeline, as `run --export` does
                write_export(outcome.study, args, outcome.requirement, progress, outcome.bench)
            return dataclasses.replace(outcome, bench=None)  # its pipeline goes before the next

        rows: list[sweep.Row] = []
        try:
            rows = sweep.sweep(names, run, load, lambda s: print(s, file=sys.stderr))
        except KeyboardInterrupt as stop:
            print("accelopt: interrupted; finished trials are stored, run the sweep again to "
                  "resume", file=sys.stderr)  # fmt: skip
            return exit_code(stop)
        print(sweep.table(rows))
        return 1 if any(r.state.startswith("error") for r in rows) else 0
