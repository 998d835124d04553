"""The exceptions users see: bad input, and a command asked to stop."""

from __future__ import annotations

import signal

__all__ = ["AccelOptError", "Interrupted", "choices", "exit_code", "printable"]


class AccelOptError(ValueError):
    """Bad input: an unknown name, an out-of-range value, an accelerator a pipeline cannot take.

    The message is one line that says what to fix; the CLI prints it and exits with code 2.
    """


class Interrupted(KeyboardInterrupt):
    """SIGTERM (``signum``), handled as Ctrl-C is: whatever catches ``KeyboardInterrupt`` gives
    its running trial back; the CLI exits with 128 + ``signum`` (143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(stop: KeyboardInterrupt) -> int:
    """The shell's code for a command stopped by a signal: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(getattr(stop, "signum", signal.SIGINT))


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
