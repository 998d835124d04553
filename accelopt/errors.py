"""The one exception type users see for bad input."""

from __future__ import annotations

__all__ = ["AccelOptError", "choices"]


class AccelOptError(ValueError):
    """Bad input: an unknown name, an out-of-range value, an accelerator a pipeline cannot take.

    The message is one line that says what to fix; the CLI prints it and exits with code 2.
    """


def choices(values: object) -> str:
    """Render valid choices for an error message: ``choices(["a", "b"]) == "a, b"``."""
    return ", ".join(str(v) for v in values)  # type: ignore[attr-defined]
