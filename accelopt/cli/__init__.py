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
import difflib
import re
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
def _signals_stop() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP (its terminal closed) stop it as Ctrl-C does
    (``Interrupted``): the running trial is given back, ``run --workers`` stops its workers,
    and the exit code is 143 or 129. A SIGHUP ignored on purpose (``nohup``) stays ignored.
    Only the main thread can take signals."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    taken = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.signal(s, stop) for s in taken}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a requirement unmet or a storage error,
    2 bad input, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).

    >>> main(["prompts", "--count", "1"])  # doctest: +SKIP
    """
    try:
        with _signals_stop():
            try:
                args = _parse(argv)
            except AccelOptError as err:
                print(f"accelopt: error: {printable(str(err), 2000)}", file=sys.stderr)
                return 2
            return _call(args)
    except KeyboardInterrupt as stop:  # before a command could catch it: while importing
        print("accelopt: interrupted", file=sys.stderr)
        return exit_code(stop)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line's arguments; an unknown flag is refused with the closest one the
    command takes (argparse says only "unrecognized arguments")."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    command = f"accelopt {args.command}"
    flag = next((a for a in extra if a.startswith("-") and not _NUMBER.match(a)), None)
    if flag is None:
        raise AccelOptError(f"unexpected argument {extra[0]!r}; {command} --help lists what it "
                            f"takes")  # fmt: skip
    name = flag.split("=", 1)[0]
    close = difflib.get_close_matches(name, _flags_of(_command_parser(parser, args.command)), 1)
    hint = f": did you mean {close[0]}?" if close else f"; {command} --help lists its flags"
    raise AccelOptError(f"unknown flag {name}{hint}")


_NUMBER = re.compile(r"-\.?\d")  # a negative number is a value, not a flag


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of one command of ``parser``'s command table."""
    for action in parser._actions:  # argparse lists a parser's arguments nowhere public
        if isinstance(action.choices, dict) and name in action.choices:
            found: argparse.ArgumentParser = action.choices[name]
            return found
    return parser


def _flags_of(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag ``parser`` takes, its subcommands' too (``storage repair``)."""
    flags: list[str] = []
    for action in parser._actions:
        flags += action.option_strings
        if isinstance(action.choices, dict):
            for sub in action.choices.values():
                flags += _flags_of(sub)
    return flags


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
