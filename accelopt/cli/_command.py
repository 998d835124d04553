"""The one small base class every ``accelopt`` command is: a name, a help line, its flags, and
what it does (optuna's CLI keeps one class per command the same way)."""

from __future__ import annotations

import argparse
from typing import ClassVar

__all__ = ["Command"]


class Command:
    """One ``accelopt`` command: it owns its flags and returns an exit code.

    >>> class Hello(Command):
    ...     name, help = "hello", "say hello"
    ...     def run(self, args: argparse.Namespace) -> int:
    ...         print("hello")
    ...         return 0
    """

    name: ClassVar[str]
    help: ClassVar[str]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's flags to its own ``parser`` (none by default)."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the command: parse what the flags left, call one function, print; the exit code."""
        raise NotImplementedError
