"""Tests for accelopt/progress.py: exact lines, with a fake clock and a stream that is no TTY."""

from __future__ import annotations

import doctest
import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from accelopt import progress as progress_module
from accelopt.progress import Progress, follow


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(**kwargs: object) -> tuple[Progress, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    return Progress(out, tty=False, clock=clock, **kwargs), out, clock  # type: ignore[arg-type]


def test_the_module_example_runs() -> None:
    assert doctest.testmod(progress_module).failed == 0


def test_a_line_every_tenth_then_one_at_the_end() -> None:
    progress, out, clock = _lines()
    with progress.phase("study: baseline timing", total=20, unit="calls") as p:
        for _ in range(20):
            clock.now += 1
            p.advance()
    assert out.getvalue().splitlines() == [
        "study: baseline timing: 0/20 calls ...",
        "study: baseline timing: 2/20 calls (10%), 2.0 s",
        "study: baseline timing: 4/20 calls (20%), 4.0 s",
        "study: baseline timing: 6/20 calls (30%), 6.0 s",
        "study: baseline timing: 8/20 calls (40%), 8.0 s",
        "study: baseline timing: 10/20 calls (50%), 10.0 s",
        "study: baseline timing: 12/20 calls (60%), 12.0 s",
        "study: baseline timing: 14/20 calls (70%), 14.0 s",
        "study: baseline timing: 16/20 calls (80%), 16.0 s",
        "study: baseline timing: 18/20 calls (90%), 18.0 s",
        # 20/20 is the end line's to say
        "study: baseline timing: 20/20 calls in 20.0 s",
    ]


def test_an_hour_of_updates_a_second_is_a_line_every_30_seconds() -> None:
    progress, out, clock = _lines()
    with progress.phase("trials", total=3600, unit="trials") as p:
        for _ in range(3600):
            clock.now += 1
            p.advance(note="best 1.50x")
    lines = out.getvalue().splitlines()
    # Start, t=30 s ... 3570 s (360 trials, 10%, never come before 30 s do), end.
    assert len(lines) == 1 + 119 + 1
    assert lines[:3] == [
        "trials: 0/3600 trials ...",
        "trials: 30/3600 trials (0%), 30.0 s; best 1.50x",
        "trials: 60/3600 trials (1%), 60.0 s; best 1.50x",
    ]
    assert lines[-1] == "trials: 3600/3600 trials in 3600.0 s"


def test_notes_show_only_after_the_seconds_unless_forced() -> None:
    progress, out, clock = _lines(every_seconds=10)
    with progress.phase("trials", total=2, unit="trials") as p:
        for second in range(25):
            clock.now += 1
            p.tell(f"trial 0: generating {second}/25")
        p.tell("trial 0: compiling unet ...", force=True)
        clock.now += 1
        p.advance(note="best 1.20x")
        clock.now += 1
        p.advance(note="best 1.30x")
    assert out.getvalue().splitlines() == [
        "trials: 0/2 trials ...",
        "trials: 0/2 trials (0%), 10.0 s; trial 0: generating 9/25",
        "trials: 0/2 trials (0%), 20.0 s; trial 0: generating 19/25",
        "trials: 0/2 trials (0%), 25.0 s; trial 0: compiling unet ...",
        "trials: 1/2 trials (50%), 26.0 s; best 1.20x",
        "trials: 2/2 trials in 27.0 s",
    ]


def test_a_phase_without_a_total_shows_time_and_notes() -> None:
    progress, out, clock = _lines()
    with progress.phase("study: loading SDXL", announce=False) as p:
        clock.now += 45
        p.tell("the CLIP scorer")
        clock.now += 5
        p.tell("LPIPS")  # 5 s after the last line: not yet
        clock.now += 1
    assert out.getvalue().splitlines() == [
        "study: loading SDXL: 45.0 s; the CLIP scorer",
        "study: loading SDXL: done in 51.0 s",
    ]


def test_a_resumed_phase_starts_from_what_was_done_and_may_change_its_total() -> None:
    progress, out, clock = _lines()
    with progress.phase("study: trials", total=8, unit="trials", initial=3) as p:
        clock.now += 2
        p.update(4, "best 1.10x")
        clock.now += 2
        p.update(5, "best 1.10x", total=10)
        clock.now += 2
        p.update(5, "best 1.10x, 2 running")  # nothing more done, seconds too few: no line
    assert out.getvalue().splitlines() == [
        "study: trials: 3/8 trials ...",
        "study: trials: 4/8 trials (50%), 2.0 s; best 1.10x",
        "study: trials: 5/10 trials (50%), 4.0 s; best 1.10x",
        "study: trials: 5/10 trials in 6.0 s",
    ]


def test_a_phase_left_by_an_exception_says_where_it_stopped() -> None:
    progress, out, clock = _lines()
    with pytest.raises(KeyboardInterrupt), progress.phase("timing", 4, "calls") as p:
        clock.now += 1
        p.advance(3)
        clock.now += 1
        raise KeyboardInterrupt
    assert out.getvalue().splitlines() == [
        "timing: 0/4 calls ...",
        "timing: 3/4 calls (75%), 1.0 s",
        "timing: stopped at 3/4 calls after 2.0 s",
    ]


def test_a_prefix_starts_every_line() -> None:
    progress, out, _ = _lines(prefix="[host:12] ")
    with progress.phase("loading"):
        pass
    assert out.getvalue().splitlines() == [
        "[host:12] loading ...",
        "[host:12] loading: done in 0.0 s",
    ]


def test_disabled_prints_nothing() -> None:
    out = io.StringIO()
    progress = Progress(out, enabled=False, tty=False)
    for tty in (False, True):
        progress.tty = tty
        with progress.phase("trials", 2, "trials") as p:
            p.advance(note="best 2.00x")
            p.tell("compiling unet ...", force=True)
        with progress.phase("loading"):
            pass
        progress.write("a line")
    assert out.getvalue() == ""


def test_on_a_terminal_a_phase_with_a_total_is_a_bar() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, tty=True, clock=clock)
    with progress.phase("study: trials", total=2, unit="trials") as p:
        clock.now += 100
        p.advance(note="best 1.20x")
        p.tell("trial 1: generating 1/4")
        p.advance(note="best 1.40x")
    shown = out.getvalue()
    assert "\n" not in shown.rstrip("\n")  # redrawn in place, never a line per update
    assert "study: trials" in shown and "2/2" in shown and "best 1.40x" in shown
    assert "trial 1: generating 1/4" in shown
    assert "..." not in shown and " in " not in shown  # no start or end line beside the bar


def test_on_a_terminal_a_phase_without_a_total_is_lines() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress(out, tty=True, clock=clock).phase("loading"):
        clock.now += 3
    assert out.getvalue().splitlines() == ["loading ...", "loading: done in 3.0 s"]


def test_a_stream_that_cannot_say_is_no_tty() -> None:
    closed = io.StringIO()
    closed.close()
    assert Progress(closed).tty is False
    assert Progress(io.StringIO()).tty is False


def test_follow_tells_the_phase_what_the_bench_generates_and_compiles() -> None:
    progress, out, clock = _lines()
    bench = SimpleNamespace(on_batch=None, on_compile=None)
    with progress.phase("trials", 4, "trials") as p:
        follow(bench, p, lambda: "trial 2: ")
        clock.now += 31
        bench.on_batch("timing pairs", 1, 3)
        clock.now += 1
        bench.on_compile("unet")
        clock.now += 1
        bench.on_batch("timing pairs", 2, 3)  # too soon after the last line
    assert out.getvalue().splitlines() == [
        "trials: 0/4 trials ...",
        "trials: 0/4 trials (0%), 31.0 s; trial 2: timing pairs 1/3",
        "trials: 0/4 trials (0%), 32.0 s; trial 2: compiling unet ...",
        "trials: 0/4 trials in 33.0 s",
    ]


# The CLI: `accelopt run` with stderr captured (no TTY), as in a CI log or under nohup.

STUDY = "TinySD-DDIM-10"
PHASES = ("loading TinySD", "baseline timing", "trials", "held-out confirmation")


def _progress_lines(err: str) -> list[str]:
    """The progress lines of ``err``, seconds and speedups masked: ``... in S``."""
    lines = [
        line
        for line in err.splitlines()
        if any(line.startswith(f"{STUDY}: {p}:") or line == f"{STUDY}: {p} ..." for p in PHASES)
    ]
    lines = [re.sub(r"\d+\.\d s\b", "S", line) for line in lines]
    return [re.sub(r"best \d+\.\d\dx", "best X", line) for line in lines]


def test_run_without_a_tty_shows_every_phase_in_a_bounded_number_of_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from accelopt.cli import main

    monkeypatch.chdir(tmp_path)
    for name in ("ACCELOPT_STORAGE", "ACCELOPT_STORE"):
        monkeypatch.delenv(name, raising=False)
    # Lines by the percent rule only: on a loaded machine a phase may pass 30 s and add a line.
    monkeypatch.setattr(progress_module, "EVERY_SECONDS", float("inf"))
    run = ["run", "--study", STUDY, "--storage", f"sqlite:///{tmp_path / 'study.db'}"]

    assert main([*run, "--n-trials", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"{STUDY}: loading TinySD (random weights) ..." in err  # what happens, still said
    assert _progress_lines(err) == [] and "\r" not in err  # but no progress at all

    store = tmp_path / "store.json"
    argv = [*run, "--n-trials", "3", "--export", "--store", str(store), "--top-k", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # whole lines, no bar redrawn in place
    assert _progress_lines(err) == [
        f"{STUDY}: loading TinySD: done in S",
        f"{STUDY}: baseline timing: 1/2 measurements (50%), S; generating 1/1",
        f"{STUDY}: baseline timing: 2/2 measurements in S",
        f"{STUDY}: trials: 1/3 trials ...",  # resumed: one of three done by the first run
        f"{STUDY}: trials: 2/3 trials (66%), S; best X",
        f"{STUDY}: trials: 3/3 trials in S",  # export confirms on the same pipeline: no load
        f"{STUDY}: held-out confirmation ...",
        f"{STUDY}: held-out confirmation: done in S",
    ]


def test_upstream_bars_are_off_only_off_a_terminal() -> None:
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub
    import transformers.utils.logging as transformers_logging

    from accelopt.progress import upstream_bars

    def shown() -> tuple[bool, bool, bool]:
        return (diffusers_logging.is_progress_bar_enabled(),
                transformers_logging.is_progress_bar_enabled(),
                not hub.are_progress_bars_disabled())  # fmt: skip

    before = shown()
    with upstream_bars(True):
        assert shown() == before  # a terminal: as they were
    with upstream_bars(False):
        assert shown() == (False, False, False)
    assert shown() == before  # restored
    diffusers_logging.disable_progress_bar()  # off before: off after
    try:
        with upstream_bars(False):
            pass
        assert shown() == (False, *before[1:])
    finally:
        if before[0]:
            diffusers_logging.enable_progress_bar()
