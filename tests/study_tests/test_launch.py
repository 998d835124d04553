"""Tests for accelopt/study/launch.py: `accelopt run --workers N` and the signals it passes on.

Real processes: the parent is sent the signal the way a user or a scheduler sends it (to its
pid only; Ctrl-C in a terminal reaches the parent alone too, its workers run in a group of
their own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from accelopt.cli import main
from accelopt.errors import Interrupted
from accelopt.storage import open_storage
from accelopt.study.launch import SUPERVISOR, serve
from accelopt.testing import default_signals

SPEC = """
pipeline = "TinySD"
scheduler = "DDIM"
steps = 10
resolution = 32
dtype = "float32"
targets = ["deepcache"]

[prompts]
count = {count}
batch_size = 4

[metric]
model = "accelopt-tiny-clip"
pretrained = ""
"""


def _spec(tmp_path: Path, count: int = 1) -> Path:
    path = tmp_path / "TinyLaunch.toml"
    path.write_text(SPEC.format(count=count))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_parent_stops_every_worker_at_once_and_gives_their_trials_back(
    signum: int, code: int, tmp_path: Path
) -> None:
    """SIGTERM left the workers running unsupervised; Ctrl-C reached them only after 30 s."""
    spec = _spec(tmp_path, count=8)  # trials of a second or more: both workers busy at once
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "accelopt", "run", "--spec", str(spec),
                            "--workers", "2", "--n-trials", "30", "--storage", "s.journal",
                            "--quiet"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=default_signals)  # fmt: skip
    storage, deadline, running = None, time.monotonic() + 300, []
    while len(running) < 2 and time.monotonic() < deadline and run.poll() is None:
        with contextlib.suppress(KeyError, FileNotFoundError):
            storage = storage or open_storage(str(tmp_path / "s.journal"))[0]
            study = optuna.load_study(study_name=spec.stem, storage=storage)
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                       if "owner" in t.user_attrs]  # fmt: skip
        time.sleep(0.1)
    assert len(running) == 2, run.communicate()[1]
    pids = {t.user_attrs["owner"]["pid"] for t in running}
    sent = time.monotonic()
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    took = time.monotonic() - sent
    assert run.returncode == code, err
    assert took < 20  # at once: the workers' grace is 30 s
    assert not [pid for pid in pids if _alive(pid)]
    assert "interrupted; finished trials are stored, run again to resume" in err
    assert err.count("interrupted; its running trial is given back") == 2
    study = optuna.load_study(study_name=spec.stem, storage=open_storage(
        str(tmp_path / "s.journal"))[0])  # fmt: skip
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    given_back = [study.trials[t.number] for t in running]
    assert [(t.state, t.user_attrs.get("interrupted")) for t in given_back] == [
        (TrialState.FAIL, True)
    ] * 2


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended: an orphan's parent (whatever adopted it) may not
    have reaped it yet, and a zombie has ended."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        return not _alive(pid)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGKILL, -9), (signal.SIGHUP, 129)])
def test_workers_never_outlive_their_parent(signum: int, code: int, tmp_path: Path) -> None:
    """SIGHUP (a closed terminal) or SIGKILL to the parent left its workers running, for good:
    nothing passed the signal on, and nothing told them their parent was gone. Here the parent
    goes as soon as both workers run (they load their pipeline)."""
    spec = _spec(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "accelopt", "run", "--spec", str(spec),
                            "--workers", "2", "--n-trials", "30", "--storage", "s.journal",
                            "--quiet"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=default_signals)  # fmt: skip
    assert run.stderr is not None
    pids: set[int] = set()
    for line in run.stderr:  # "[host:pid] TinyLaunch: loading TinySD (random weights) ..."
        if ": loading TinySD" in line:
            pids.add(int(line.split("]", 1)[0].rsplit(":", 1)[1]))
        if len(pids) == 2:
            break
    assert len(pids) == 2, run.communicate()[1]
    try:
        run.send_signal(signum)
        deadline = time.monotonic() + 120  # a bound, not a timing: they stop within a second
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in pids if not _gone(pid)] == []
    finally:  # whatever failed, no worker outlives the test
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    err = run.communicate(timeout=120)[1]  # the workers wrote to it too: they are gone
    assert run.returncode == code, err
    assert err.count("interrupted; its running trial is given back") == 2  # told, not killed
    study = optuna.load_study(study_name=spec.stem, storage=open_storage(
        str(tmp_path / "s.journal"))[0])  # fmt: skip
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("interrupted") for t in failed)  # a trial running: given back


@pytest.mark.parametrize("prctl", [True, False])
def test_a_worker_stops_when_its_parent_is_gone_and_is_killed_if_that_hangs(
    prctl: bool,
) -> None:
    """Where Linux sends SIGTERM as the parent dies (prctl), the worker adds only the kill
    after the grace; elsewhere it sees its parent change (an orphan is adopted) and sends
    SIGTERM itself."""
    parents = [100, 100, 100, 1]  # the parent's pid, then init's: it died
    sent: list[int] = []
    slept: list[float] = []

    def parent() -> int:
        return parents.pop(0) if len(parents) > 1 else parents[0]

    thread = serve({SUPERVISOR: "100"}, on_death=lambda signum: prctl, parent=parent,
                   kill=lambda pid, signum: sent.append(signum), sleep=slept.append,
                   poll=1.0, grace=30.0)  # fmt: skip
    assert thread is not None
    thread.join(60)
    assert sent == ([] if prctl else [signal.SIGTERM]) + [signal.SIGKILL]
    assert slept == [1.0, 1.0, 30.0]


def test_a_worker_whose_parent_died_before_it_could_ask_stops_at_once() -> None:
    with pytest.raises(Interrupted):
        serve({SUPERVISOR: "100"}, on_death=lambda signum: True, parent=lambda: 1)


def test_a_worker_started_by_hand_serves_no_parent() -> None:
    environ = {"OTHER": "1"}
    assert serve(environ, on_death=lambda signum: pytest.fail("asked for a signal")) is None
    assert environ == {"OTHER": "1"}


def test_an_interrupt_after_the_workers_finished_the_study_does_not_ask_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The parent said "run again to resume" when its workers had finished the study."""
    from accelopt.spec import load_spec
    from accelopt.study import launch
    from accelopt.study.loop import run_study

    spec = _spec(tmp_path)
    journal = str(tmp_path / "s.journal")

    def start_worker(index: int, argv: object, gpu: object, url: str, n: int) -> launch.Worker:
        if index == 0:  # the workers' work, done here: the study is finished
            run_study(load_spec(path=spec), storage=url, progress=False, log=lambda s: None)
        return launch.Worker(index, gpu, subprocess.Popen([sys.executable, "-c", ""]))  # type: ignore[arg-type]

    def watch(*args: object, **kwargs: object) -> dict[int, int]:
        raise KeyboardInterrupt  # Ctrl-C as the last trial is told

    monkeypatch.setattr(launch, "start_worker", start_worker)
    monkeypatch.setattr(launch, "watch", watch)
    argv = ["run", "--spec", str(spec), "--workers", "2", "--n-trials", "2", "--storage",
            journal, "--quiet"]  # fmt: skip
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.endswith(
        "accelopt: interrupted, but study TinyLaunch was finished by then; nothing to resume "
        "(accelopt best --study TinyLaunch shows its answer)\n"
    )
    assert "run again to resume" not in err


def test_ctrl_c_while_a_command_starts_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """Ctrl-C during the start-up imports printed a traceback: here it comes as the first
    accelopt module a command needs is imported."""
    code = (
        "import runpy, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'accelopt.study.loop':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['accelopt', 'run', '--study', 'TinySD-DDIM-10', '--quiet']\n"
        "runpy.run_module('accelopt', run_name='__main__')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert (run.returncode, run.stderr) == (130, "accelopt: interrupted\n")


def test_the_parent_polls_every_second_but_writes_a_line_only_by_the_throttle() -> None:
    import io
    from types import SimpleNamespace

    from accelopt.progress import Progress
    from accelopt.study.launch import Worker, watch

    now = [0.0]
    polls = iter([None] * 119 + [0])  # one worker, running for 120 polls of a second

    def poll() -> int | None:
        now[0] += 1
        return next(polls)

    worker = Worker(0, None, SimpleNamespace(poll=poll, pid=1))  # type: ignore[arg-type]
    done = iter([0] + [0] * 40 + [1] * 30 + [4] * 49 + [20])  # of 20: 1 at 41 s, 4 at 71 s

    def status() -> tuple[int, int | None, str]:
        return next(done), 20, "no feasible yet, 1 running"

    out = io.StringIO()
    progress = Progress(out, tty=False, clock=lambda: now[0])
    codes = watch([worker], status, progress=progress, log=print, desc="S: trials", poll=0)
    assert codes == {0: 0}
    assert out.getvalue().splitlines() == [
        "S: trials: 0/20 trials ...",
        "S: trials: 0/20 trials (0%), 30.0 s; no feasible yet, 1 running",
        "S: trials: 1/20 trials (5%), 60.0 s; no feasible yet, 1 running",  # 30 s on
        "S: trials: 4/20 trials (20%), 71.0 s; no feasible yet, 1 running",  # 10% more done
        "S: trials: 4/20 trials (20%), 101.0 s; no feasible yet, 1 running",
        "S: trials: 20/20 trials in 120.0 s",
    ]
