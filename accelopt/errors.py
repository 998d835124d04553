"""The exceptions users see: bad input, and a command asked to stop.

Ctrl-C while the ``accelopt`` command starts is one line and 130 too: ``accelopt.cli.main``
says so only once its module is imported, and before that the package is importing
(``python -m accelopt`` imports ``accelopt`` first, the ``accelopt`` script ``accelopt.cli``),
where a Ctrl-C reached Python's own handler and its traceback. The package imports this module
first; where the process is the command (``is_command``), an uncaught ``KeyboardInterrupt``
ends it as ``main`` would. Imported as a library (a notebook, a test), nothing changes.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = [
    "AccelOptError",
    "Interrupted",
    "choices",
    "exit_code",
    "is_command",
    "printable",
]

# How the command starts: ``python -m accelopt`` (or its cli), or the ``accelopt`` script.
COMMAND_MODULES = ("accelopt", "accelopt.cli", "accelopt.__main__")
SIGINT = 2  # signal.SIGINT everywhere; ``signal`` itself is imported where needed, after the
# hook below is in place: it takes a millisecond, a window for a Ctrl-C with a traceback.


def is_command(orig_argv: list[str], argv: list[str]) -> bool:
    """Whether this process is the ``accelopt`` command: what Python ran (``sys.orig_argv``,
    whose tail is the command's own arguments, ``sys.argv[1:]``) is the module or the script.

    >>> is_command(["python", "-m", "accelopt", "list"], ["-m", "list"])
    True
    >>> is_command(["python", "-m", "pytest", "-q"], ["-m", "-q"])
    False
    """
    start = len(orig_argv) - len(argv)
    if start < 1 or start >= len(orig_argv):
        return False
    ran = orig_argv[start]
    module = ran[2:] if ran.startswith("-m") and len(ran) > 2 else ran  # -maccelopt
    return module in COMMAND_MODULES or os.path.basename(ran) == "accelopt"


def _interrupted_at_start(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    """``sys.excepthook`` of the command: a ``KeyboardInterrupt`` nothing caught (Ctrl-C
    before ``main`` could) is one line and the shell's code, at once (the command never got
    to start anything that would need cleaning up); anything else as before."""
    if not isinstance(value, KeyboardInterrupt):
        _PREVIOUS_HOOK(kind, value, tb)
        return
    try:
        sys.stdout.flush()
        print("accelopt: interrupted", file=sys.stderr, flush=True)
    except Exception:  # a closed terminal: the exit code still says it
        pass
    os._exit(128 + int(getattr(value, "signum", SIGINT)))  # exit_code's, which may not be yet


# First, before the rest of the module: the sooner, the shorter the window left.
_PREVIOUS_HOOK = sys.excepthook
if is_command(list(getattr(sys, "orig_argv", [])), sys.argv):
    sys.excepthook = _interrupted_at_start


class AccelOptError(ValueError):
    """Bad input: an unknown name, an out-of-range value, an accelerator a pipeline cannot take.

    The message is one line that says what to fix; the CLI prints it and exits with code 2.
    """


class Interrupted(KeyboardInterrupt):
    """SIGTERM (``signum``), handled as Ctrl-C is: whatever catches ``KeyboardInterrupt`` gives
    its running trial back; the CLI exits with 128 + ``signum`` (143)."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(stop: KeyboardInterrupt) -> int:
    """The shell's code for a command stopped by a signal: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(getattr(stop, "signum", SIGINT))


def choices(values: object) -> str:
    """Render valid choices for an error message: ``choices(["a", "b"]) == "a, b"``."""
    return ", ".join(str(v) for v in values)  # type: ignore[attr-defined]


def printable(text: object, limit: int = 300) -> str:
    """``text`` safe to print on a terminal: control and other unprintable characters escaped
    (``\\x1b``, ``\\n``), cut to ``limit`` characters with the rest counted. For anything read
    from a store, a task file or a storage: their strings may hold escape sequences.

    >>> printable("a\\x1b[2Jb" + "x" * 50, 10)
    'a\\\\x1b[2Jbxxxx... (46 more characters)'
    """
    raw = text if isinstance(text, str) else repr(text)
    shown = raw[:limit]
    escaped = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in shown
    )
    rest = len(raw) - len(shown)
    return escaped + (f"... ({rest} more characters)" if rest > 0 else "")
