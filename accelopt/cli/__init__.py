"""The ``accelopt`` command: parse, call one function, print, return an exit code.

One command table (``COMMANDS``); each command is a small class (``accelopt.cli._command``)
that owns its flags, grouped by concern: ``info`` (what accelopt knows), ``studies`` (running
trials), ``results`` (reading studies), ``params_store`` (export, store check, codegen),
``storage`` (looking after one). Flags several commands share live in ``_flags``; how things
read on a terminal in ``_format``. Heavy imports (torch, diffusers, optuna) happen inside
commands, so ``accelopt --help`` is instant. Bad input prints one line saying what to fix and
exits with 2.

>>> main(["schedulers"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence

from accelopt import __version__
from accelopt.cli._command import Command
from accelopt.cli.info import Accelerators, Pipelines, Prompts, Schedulers
from accelopt.cli.params_store import Codegen, Export, Store
from accelopt.cli.results import Best, Dashboard, List, Report
from accelopt.cli.storage import Storage
from accelopt.cli.studies import Run, Sweep, Worker
from accelopt.errors import AccelOptError, Interrupted, exit_code, printable

__all__ = ["COMMANDS", "Command", "main"]

# In the order ``accelopt --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Pipelines(),
    Schedulers(),
    Accelerators(),
    Run(),
    Worker(),
    Export(),
    Store(),
    Codegen(),
    Sweep(),
    Best(),
    List(),
    Report(),
    Dashboard(),
    Storage(),
    Prompts(),
)


def _parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accelopt",
        description="Search the knobs of training-free diffusion accelerators with Optuna.",
    )
    parser.add_argument("--version", action="version", version=f"accelopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


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
    2 bad input, 130 Ctrl-C, 143 SIGTERM).

    >>> main(["prompts", "--count", "1"])  # doctest: +SKIP
    """
    try:
        with _sigterm_stops():
            args = _parser().parse_args(argv)
            return _call(args)
    except KeyboardInterrupt as stop:  # before a command could catch it: while importing
        print("accelopt: interrupted", file=sys.stderr)
        return exit_code(stop)


def _call(args: argparse.Namespace) -> int:
    try:
        device = getattr(args, "device", None)
        if device is not None:  # a machine without the device: one line, before anything loads
            from accelopt.pipelines.loading import check_device

            check_device(device)
        return int(args.run(args))
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
