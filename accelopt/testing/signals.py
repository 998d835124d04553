"""Child processes that meet signals as a terminal would send them."""

from __future__ import annotations

import signal

__all__ = ["default_signals"]


def default_signals() -> None:
    """A ``preexec_fn``: SIGINT and SIGHUP at their defaults in the child. A shell that starts
    a job in the background (``cmd &``) or under ``nohup`` ignores them, a child inherits that
    (and Python then installs no KeyboardInterrupt handler), so a test of what Ctrl-C or a
    closed terminal does would test nothing."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
