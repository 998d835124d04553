"""How a command shows what it is doing: a bar per phase on a terminal, sparse lines elsewhere.

A command makes one ``Progress`` for its stream (stderr) and opens a phase for each thing that
takes a while: loading, baseline timing, the trials, confirmation. On a terminal a phase with a
known total is a tqdm bar, its note the bar's postfix. Anywhere else (a CI log, ``nohup``, a
pipe) carriage returns pile up into one endless line, so a phase writes whole lines instead:
one when it starts, one when at least ``every_percent`` more of it is done or ``every_seconds``
have passed since the last line, and one when it ends, with its seconds. A phase that reports
every second for an hour thus writes a line every 30 seconds, not 3,600.

>>> import io
>>> clock = iter([0.0, 1.0, 2.0, 3.0]).__next__
>>> out = io.StringIO()
>>> with Progress(out, tty=False, clock=clock).phase("timing", total=2, unit="calls") as p:
...     p.advance()
...     p.advance()
>>> print(out.getvalue(), end="")
timing: 0/2 calls ...
timing: 1/2 calls (50%), 1.0 s
timing: 2/2 calls in 3.0 s
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

__all__ = [
    "EVERY_PERCENT",
    "EVERY_SECONDS",
    "Followed",
    "Phase",
    "Progress",
    "follow",
    "upstream_bars",
]

EVERY_PERCENT = 10.0  # without a terminal: a line when this much more of a phase is done ...
EVERY_SECONDS = 30.0  # ... or when this long has passed since the last line


class Phase:
    """One phase of a command: ``advance`` or ``update`` its count, ``tell`` what it is on."""

    def __init__(
        self, progress: Progress, name: str, total: int | None, unit: str, initial: int
    ) -> None:
        self._progress = progress
        self.name = name
        self.total = total
        self.unit = unit
        self.done = initial
        self.note = ""
        self._start = self._last_time = progress.clock()
        self._last_done = initial
        self._open = True
        self._bar: Any = None
        if progress.enabled and progress.tty and total is not None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=progress.prefix + name,
                             unit=unit, file=progress.stream, dynamic_ncols=True)  # fmt: skip

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more done; ``note`` says where things stand (the best so far ...)."""
        self.update(self.done + n, note)

    def update(self, done: int, note: str | None = None, total: int | None = None) -> None:
        """``done`` in all (of ``total``, when the total changed)."""
        moved = done != self.done
        self.done = done
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        if self._bar is not None and self._open:
            self._bar.total, self._bar.n = self.total, done
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()
        elif moved or note is not None:
            self._maybe_line()

    def tell(self, note: str, force: bool = False) -> None:
        """Say what the phase is on now (``generating 2/4``); ``force`` writes a line at once
        without a terminal, for what is about to take long with nothing to show (compiling)."""
        self.note = note
        if self._bar is not None and self._open:
            self._bar.set_postfix_str(note)
        else:
            self._maybe_line(force)

    def _count(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total is not None:
            return f"{self.done}/{self.total}{unit}"
        return f"{self.done}{unit}" if self.unit else ""

    def _maybe_line(self, force: bool = False) -> None:
        p = self._progress
        if not (p.enabled and self._open):
            return
        now = p.clock()
        finished = self.total is not None and self.done >= self.total
        more = self.done - self._last_done
        due = now - self._last_time >= p.every_seconds or (
            bool(self.total) and 100 * more >= p.every_percent * (self.total or 1)
        )
        if force or (due and not finished):  # a finished phase's count is its last line's
            count = self._count()
            share = f" ({100 * self.done // self.total}%)" if self.total else ""
            note = f"; {self.note}" if self.note else ""
            head = f"{count}{share}, " if count else ""
            p.write(f"{self.name}: {head}{now - self._start:.1f} s{note}")
            self._last_time, self._last_done = now, self.done

    def _start_line(self) -> None:
        if self._bar is None and self._progress.enabled:
            count = f": {self._count()}" if self.total is not None else ""
            self._progress.write(f"{self.name}{count} ...")

    def _end(self, failed: bool) -> None:
        p = self._progress
        self._open = False
        if self._bar is not None:
            self._bar.close()
            return
        if not p.enabled:
            return
        seconds = f"{p.clock() - self._start:.1f} s"
        count = self._count()
        if failed:
            p.write(f"{self.name}: stopped{' at ' + count if count else ''} after {seconds}")
        else:
            p.write(f"{self.name}: {count or 'done'} in {seconds}")


class Progress:
    """Progress for one command on ``stream`` (default stderr): bars on a terminal, throttled
    lines elsewhere, nothing when not ``enabled`` (``--quiet``). ``tty`` and ``clock`` are
    read from the stream and ``time.monotonic`` unless given (tests give both)."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        enabled: bool = True,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        every_percent: float | None = None,
        every_seconds: float | None = None,
        prefix: str = "",
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = _isatty(self.stream) if tty is None else tty
        self.clock = clock
        self.every_percent = EVERY_PERCENT if every_percent is None else every_percent
        self.every_seconds = EVERY_SECONDS if every_seconds is None else every_seconds
        self.prefix = prefix  # before every line: a worker's [host:pid]

    @contextlib.contextmanager
    def phase(
        self,
        name: str,
        total: int | None = None,
        unit: str = "",
        *,
        initial: int = 0,
        announce: bool = True,
    ) -> Iterator[Phase]:
        """A phase from here to the end of the block; ``announce=False`` when the caller has
        said already that it starts. Without a total only time and notes show progress."""
        phase = Phase(self, name, total, unit, initial)
        if announce:
            phase._start_line()
        failed = True
        try:
            yield phase
            failed = False
        finally:
            phase._end(failed)

    def write(self, line: str) -> None:
        """One whole line, flushed (a log file shows it at once)."""
        if self.enabled:
            print(self.prefix + line, file=self.stream, flush=True)

    def upstream(self) -> contextlib.AbstractContextManager[None]:
        """``upstream_bars``: upstream's own bars show only where this progress draws bars."""
        return upstream_bars(self.enabled and self.tty)


class Followed(Protocol):
    """What ``follow`` tells about: a bench's two callbacks (``accelopt.trial.bench.Bench``)."""

    on_batch: Callable[[str, int, int], None] | None
    on_compile: Callable[[str], None] | None
    on_compiled: Callable[[str, float], None] | None


def follow(bench: Followed, phase: Phase, lead: Callable[[], str] = lambda: "") -> None:
    """Tell ``phase`` what a bench (``accelopt.trial.bench.Bench``) generates and compiles
    (and in how many seconds it compiled), each note after ``lead()`` (``trial 3: ``). It
    keeps telling that phase until followed by another."""

    def batch(what: str, done: int, total: int) -> None:
        phase.tell(f"{lead()}{what} {done}/{total}")

    def compiling(what: str) -> None:  # a new graph takes a minute or more: say so now
        phase.tell(f"{lead()}compiling {what} ...", force=True)

    def compiled(what: str, seconds: float) -> None:  # what it cost, as a line of its own
        phase.tell(f"{lead()}compiled {what} in {seconds:.1f} s", force=True)

    bench.on_batch = batch
    bench.on_compile = compiling
    bench.on_compiled = compiled


@contextlib.contextmanager
def upstream_bars(show: bool | None = None) -> Iterator[None]:
    """Switch off, while the block runs, the progress bars upstream draws on stderr (diffusers'
    "Loading pipeline components", transformers' "Loading weights", huggingface_hub's
    downloads) unless ``show`` (default: stderr is a terminal): in a log their carriage returns
    pile up into one endless line. Never switches a bar on; restores what was on.

    >>> with upstream_bars(False):
    ...     pipe = DiffusionPipeline.from_pretrained(folder)  # doctest: +SKIP
    """
    if _isatty(sys.stderr) if show is None else show:
        yield
        return
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub
    import transformers.utils.logging as transformers_logging

    was = (
        diffusers_logging.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
        hub.are_progress_bars_disabled(),
    )
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # huggingface_hub's too
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()  # huggingface_hub's too ...
        if was[2]:
            hub.disable_progress_bars()  # ... unless they were off


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False
