"""Commands around the params store: export a study into it, check it, generate a script from
one of its entries."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from accelopt.cli import _flags as flags
from accelopt.cli import _format as fmt
from accelopt.cli._command import Command
from accelopt.errors import AccelOptError, printable

if TYPE_CHECKING:
    import optuna

    from accelopt.export import Exported
    from accelopt.progress import Progress
    from accelopt.study.results import Requirement
    from accelopt.trial.bench import Bench

__all__ = ["Codegen", "Export", "Store", "write_export"]


def write_export(
    study: optuna.Study,
    args: argparse.Namespace,
    requirement: Requirement,
    progress: Progress | None = None,
    bench: Bench | None = None,
) -> Exported:
    """``accelopt.export.export`` with the export flags (``--store``, ``--format``, ``--top-k``,
    ``--force``, ``--device``, ``--random-weights``), saying on stderr what it did; ``bench``:
    the pipeline the study just ran on, which confirms instead of one loaded anew."""
    from accelopt.export import export
    from accelopt.progress import Progress

    if args.top_k < 0:
        raise AccelOptError(f"--top-k must be 0 (no confirmation) or more, got {args.top_k}")
    result = export(
        study,
        args.storage,
        args.store,
        requirement=requirement,
        top_k=args.top_k,
        layout=args.format,
        force=args.force,
        device=args.device,
        weights=flags.weights(args),
        progress=progress or Progress(),
        log=lambda s: print(s, file=sys.stderr),
        bench=bench,
    )
    for line in fmt.export_lines(result):
        print(line, file=sys.stderr)
    return result


class Export(Command):
    """``accelopt export``: confirm a study's answers and write them into the params store."""

    name = "export"
    help = "write a study's best configurations into the params store"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        flags.study(parser)
        flags.storage(parser)
        flags.requirement(parser, "export")
        flags.export_options(parser)
        flags.device(parser, "where to confirm (default: cuda if present)")
        flags.random_weights(parser)

    def run(self, args: argparse.Namespace) -> int:
        from accelopt.study.prepare import open_study

        requirement = flags.requirement_of(args)
        result = write_export(open_study(args.storage, args.study), args, requirement)
        return 1 if result.refused else 0


def read_usable(store_arg: str | None) -> tuple[Any, dict[str, Any], list[tuple[str, str]]]:
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


class Store(Command):
    """``accelopt store check``: which entries codegen would use, and why it skips the others."""

    name = "store"
    help = "check a params store: list the entries codegen would use and why it skips the others"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=["check"],
                            help="check: read every entry (exit 1 if any is skipped)")  # fmt: skip
        parser.add_argument("--store", help=flags.STORE_HELP)

    def run(self, args: argparse.Namespace) -> int:
        from accelopt.params_store.file import store_path

        read, entries, problems = read_usable(args.store)
        for key in entries:
            print(f"ok       {printable(key)}")
        for key, why in problems:
            print(f"skipped  {key}: {why}")
        shown = printable(str(store_path(args.store)))
        print(f"{shown} ({read.layout} layout): {len(entries)} usable, {len(problems)} skipped",
              file=sys.stderr)  # fmt: skip
        return 1 if problems else 0


class Codegen(Command):
    """``accelopt codegen``: a standalone script for a stored configuration (or many)."""

    name = "codegen"
    help = "write a standalone script for a stored configuration"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("--pipe", help="pipeline, e.g. SDXL (or its hub id)")
        p.add_argument("--sched", help="scheduler, e.g. DDIM")
        p.add_argument("--steps", type=int, help="inference steps")
        p.add_argument("--targets", help="accelerators, e.g. deepcache+tgate (default: any)")
        p.add_argument(
            "--req-speedup",
            "--min-speedup",
            type=float,
            metavar="X",
            help="at least this speedup (on a frontier: the least loss this fast)",
        )
        p.add_argument("--max-score-loss", "--max-loss", type=float, metavar="L",
                       help="quality budget (default 0.02; on a frontier: the study's own, and "
                       "none next to a speed requirement)")  # fmt: skip
        p.add_argument("--req-time", "--max-seconds", type=float, metavar="T",
                       help="at most T seconds per image (on a frontier: the least loss this "
                       "fast)")  # fmt: skip
        flags.bounds(p, "only entries that measured it")
        p.add_argument("--tasks", help="a JSON or TOML list of requests (README, 'codegen')")
        p.add_argument("--store", help=flags.STORE_HELP)
        p.add_argument("-o", "--output", required=True, help="script path (a folder with --tasks)")
        p.add_argument("--force", action="store_true", help="overwrite existing scripts")

    def run(self, args: argparse.Namespace) -> int:
        from pathlib import Path

        from accelopt.codegen import write_scripts
        from accelopt.params_store.file import store_path

        flags.check_loss_budget(args.max_score_loss)
        requests = self._requests(args)
        losses = {r.max_score_loss for r in requests if r.max_score_loss is not None}
        for loss in sorted(losses):  # the flag's or the task file's, each once
            where = f"max_score_loss = {loss:g} in {args.tasks}" if args.tasks else None
            flags.warn_loss_budget(loss, where or f"--max-score-loss {loss:g}")
        store = store_path(args.store)
        read, entries, problems = read_usable(args.store)
        for key, why in problems:  # reported, never used
            print(f"accelopt: warning: skipped store entry {key}: {why}", file=sys.stderr)
        for path, entry in write_scripts(entries, requests, Path(args.output), bool(args.tasks),
                                         args.force):  # fmt: skip
            point = ""
            if entry.get("objective") == "pareto":  # one point of a stored frontier
                m = entry["measured"]
                point = (f"; frontier point: trial {(entry.get('study') or {}).get('trial')}, "
                         f"{m['speedup']:.2f}x, {fmt.quality(m)}")  # fmt: skip
            print(f"wrote {printable(str(path))} ({printable(entry['key'])}{point})")
        # After the answers: an unmet request stays one line of error.
        print(f"read {len(entries)} usable entries of {len(read.entries) + len(read.problems)} "
              f"from {printable(str(store))} ({read.layout} layout)", file=sys.stderr)  # fmt: skip
        return 0

    def _requests(self, args: argparse.Namespace) -> list[Any]:
        """The requests: read from ``--tasks``, or the one the flags make."""
        from pathlib import Path

        from accelopt.params_store.query import Request, load_tasks, parse_request_targets

        if args.tasks:
            if any(v is not None for v in (args.pipe, args.sched, args.steps)):
                raise AccelOptError("give either --tasks FILE or --pipe/--sched/--steps, not both")
            return list(load_tasks(Path(args.tasks)))
        if args.pipe is None or args.sched is None or args.steps is None:
            raise AccelOptError("codegen needs --pipe, --sched and --steps (or --tasks FILE)")
        targets = parse_request_targets(args.targets)
        return [Request(args.pipe, args.sched, args.steps, targets, args.req_speedup,
                        args.max_score_loss, args.req_time,
                        **flags.bound_args(args))]  # fmt: skip
