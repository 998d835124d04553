"""The one exception type users see for bad input."""

from __future__ import annotations

__all__ = ["AccelOptError", "choices", "printable"]


class AccelOptError(ValueError):
    """Bad input: an unknown name, an out-of-range value, an accelerator a pipeline cannot take.

    The message is one line that says what to fix; the CLI prints it and exits with code 2.
    """


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
