"""``accelopt run --workers N``: start one ``accelopt worker`` process per GPU, watch them, and
pass a stop on to them.

The workers run in a process group of their own, so a signal reaches each exactly once, from
the parent, at once: Ctrl-C (SIGINT), SIGTERM and SIGHUP (a closed terminal) are forwarded as
they come, each worker gives its running trial back (it does not count) and exits (130, 143,
129), and the parent exits as they did. A worker that has not stopped ``GIVE_BACK`` seconds
later, or any worker on a second signal, is killed: its trial is then found dead and queued
again once by the next run.

A parent that dies without passing anything on (SIGKILL, a crash) leaves no worker behind:
each worker knows its parent (``SUPERVISOR``) and stops as if sent SIGTERM when it is gone
(``serve``), killing itself ``GIVE_BACK`` seconds later if that did not end it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState

from accelopt.errors import AccelOptError, Interrupted
from accelopt.progress import Progress
from accelopt.storage import (
    open_storage,
    recover,
    sqlite_missing,
    storage_label,
    storage_lock,
    storage_url,
)
from accelopt.study import loop as studies
from accelopt.study.results import DONE, Requirement, best_trial
from accelopt.study.workers import Slots

__all__ = [
    "GIVE_BACK",
    "SUPERVISOR",
    "WORKERS_HERE",
    "Worker",
    "assign_gpus",
    "finished_by_now",
    "run_workers",
    "serve",
    "start_worker",
    "stop",
    "watch",
]

GIVE_BACK = 30.0  # seconds a stopped worker has to give its running trial back
# How many workers this launch started on the host: each takes its share of the cores' threads.
WORKERS_HERE = "ACCELOPT_WORKERS_HERE"
# The process id of the ``run --workers`` parent a worker serves: it must not outlive it.
SUPERVISOR = "ACCELOPT_SUPERVISOR"
PR_SET_PDEATHSIG = 1  # Linux prctl(2): a signal for this process when its parent dies


def assign_gpus(workers: int | None, gpus: str | None, device: str | None) -> list[str | None]:
    """One entry per worker: the GPU it gets, or None (the CPU, or the one ``device`` names).

    ``workers`` and ``gpus`` are ``--workers N`` and ``--gpus 0,1`` (GPU numbers, a GPU may be
    named twice); without ``gpus``, N workers take GPUs 0..N-1, or the CPU where there is none.

    >>> assign_gpus(None, None, "cpu"), assign_gpus(2, None, "cpu")
    ([None], [None, None])
    """
    n, chosen = workers, None
    if gpus is not None:
        chosen = [g.strip() for g in gpus.split(",")]
        if not all(g.isdigit() for g in chosen):
            raise AccelOptError(f"--gpus takes GPU numbers joined by commas, e.g. 0,1; "
                                f"got {gpus!r}")  # fmt: skip
        if n is not None and n != len(chosen):
            raise AccelOptError(f"--workers {n} but --gpus names {len(chosen)}; give one GPU "
                                f"per worker (a GPU may be named twice)")  # fmt: skip
        if device not in (None, "cuda"):
            raise AccelOptError("--gpus gives each worker its GPU; leave out --device")
    elif n is not None and n > 1 and (device or "").startswith("cuda:"):
        raise AccelOptError(f"--device {device} is one GPU; for {n} workers pass --gpus, "
                            f"e.g. --gpus {','.join(map(str, range(n)))}")  # fmt: skip
    if chosen is not None or (device or "").startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            asked = f"--device {device}" if chosen is None else f"--gpus {gpus}"
            raise AccelOptError(f"{asked}: this machine has no CUDA device; use --device cpu "
                                f"or leave both out")  # fmt: skip
    if chosen is not None:
        return list(chosen)
    if n is None or n == 1:
        return [None]
    if device == "cpu":
        return [None] * n
    return _gpus_here(n)


def _gpus_here(n: int) -> list[str | None]:
    """GPUs 0..n-1 of this machine, or the CPU for all ``n`` workers where it has none."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return [None] * n
    if n > count:
        raise AccelOptError(f"{n} workers but {count} GPUs here; pass fewer --workers or "
                            f"--gpus with {n} GPU numbers (a GPU may be named twice)")  # fmt: skip
    return [str(i) for i in range(n)]


def finished_by_now(storage: str | None, name: str, requirement: Requirement) -> bool:
    """Whether study ``name`` is finished, as far as the storage can tell: a run stopped by
    Ctrl-C asks, since its workers may have finished the study as the stop came (then there is
    nothing to resume). False when nothing was stored or the storage cannot answer."""
    import optuna

    url = storage_url(storage)
    if sqlite_missing(url):
        return False  # stopped before anything was stored: opening it would make the file
    try:
        backend, _ = open_storage(url)
        study = optuna.load_study(study_name=name, storage=backend)
        return studies.is_finished(study, requirement)
    except Exception:  # the storage is what failed, or the study was never made
        return False


@dataclass
class Worker:
    """One ``accelopt worker`` process started by ``accelopt run --workers N``."""

    index: int
    gpu: str | None
    process: subprocess.Popen[bytes]

    def describe(self) -> str:
        where = "the CPU" if self.gpu is None else f"GPU {self.gpu}"
        return f"worker {self.index} (pid {self.process.pid}, {where})"


def start_worker(
    index: int, argv: Sequence[str], gpu: str | None, storage: str, workers: int = 1
) -> Worker:
    """Start ``accelopt worker ARGV`` (``gpu``: the one GPU it sees; None: no GPU of its own),
    one of ``workers`` started on this host (``WORKERS_HERE``: they share its cores)."""
    # The storage URL goes through the environment: a command line is visible to every user of
    # the host (ps), and the URL may hold a password.
    env = {**os.environ, "ACCELOPT_STORAGE": storage, WORKERS_HERE: str(workers),
           SUPERVISOR: str(os.getpid())}  # fmt: skip
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    command = [sys.executable, "-m", "accelopt", "worker", *argv]
    # A group of its own: the terminal's Ctrl-C reaches the parent only, which passes it on.
    return Worker(index, gpu, subprocess.Popen(command, env=env, process_group=0))


def serve(
    environ: MutableMapping[str, str] = os.environ,
    *,
    on_death: Callable[[int], bool] | None = None,
    parent: Callable[[], int] = os.getppid,
    kill: Callable[[int, int], None] = os.kill,
    sleep: Callable[[float], object] = time.sleep,
    poll: float = 1.0,
    grace: float = GIVE_BACK,
) -> threading.Thread | None:
    """In a worker that ``run --workers`` started (``environ`` names its parent): stop when the
    parent dies, whatever killed it. Returns the thread that watches, or None for a worker
    started by hand (it serves no one here). Raises ``Interrupted`` where the parent is gone
    already.

    The worker stops as on SIGTERM (its running trial given back, exit 143): on Linux the kernel
    sends it the moment the parent dies (``on_death``: prctl ``PR_SET_PDEATHSIG``); elsewhere, or
    where that is refused, the thread sends it once the parent is gone (polled every ``poll``
    seconds: an orphan is adopted by another process). A worker still running ``grace`` seconds
    later is killed, as ``stop`` kills one: the next run queues its trial again. ``parent``,
    ``kill`` and ``sleep`` are the process's own; tests pass theirs.
    """
    value = environ.pop(SUPERVISOR, "")  # not for the processes this worker starts
    if not value.isdigit():
        return None
    supervisor, me = int(value), os.getpid()
    armed = (on_death or _signal_on_parent_death)(signal.SIGTERM)
    if parent() != supervisor:  # gone before the kernel was asked: nothing will come
        raise Interrupted(signal.SIGTERM)

    def watch() -> None:
        while parent() == supervisor:
            sleep(poll)
        if not armed:
            kill(me, signal.SIGTERM)
        sleep(grace)
        kill(me, signal.SIGKILL)

    thread = threading.Thread(target=watch, name="supervisor", daemon=True)
    thread.start()
    return thread


def _signal_on_parent_death(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; whether it agreed."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0) == 0)
    except (OSError, AttributeError):  # no libc to ask, or no prctl in it
        return False


def watch(
    workers: Sequence[Worker],
    status: Callable[[], tuple[int, int | None, str]],
    *,
    progress: bool | Progress,
    log: Callable[[str], None],
    desc: str = "study",
    poll: float = 1.0,
) -> dict[int, int]:
    """Wait for every worker, showing the study's progress (``status`` gives done, total and a
    note; without a terminal a line every few percent or seconds, not one per poll); returns
    each worker's exit code."""
    if not isinstance(progress, Progress):
        progress = Progress(enabled=progress)
    ended: dict[int, int] = {}
    done, total, _ = status()
    with progress.phase(desc, total, "trials", initial=done) as bar:
        while len(ended) < len(workers):
            for w in workers:
                code = w.process.poll()
                if code is not None and w.index not in ended:
                    ended[w.index] = code
                    if code:
                        log(f"{w.describe()} {_how(code)}")
            done, total, note = status()
            bar.update(done, note, total)
            if len(ended) < len(workers):
                time.sleep(poll)
    return ended


def _how(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code}; its trial is queued again once"
    if code > 128 and code - 128 in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        return f"stopped on {signal.Signals(code - 128).name}; its running trial was given back"
    return f"exited with code {code}"


def stop(
    workers: Sequence[Worker], signum: int, log: Callable[[str], None], grace: float = GIVE_BACK
) -> None:
    """Pass ``signum`` on to every worker still running, wait up to ``grace`` seconds for them
    to give their trials back, then kill what is left (at once on a second signal)."""
    for w in workers:
        if w.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                w.process.send_signal(signum)
    deadline = time.monotonic() + grace
    try:
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.process.wait(max(deadline - time.monotonic(), 0.01))
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.process.kill()
                w.process.wait()
                log(f"{w.describe()} did not stop in time: killed; its trial is queued again "
                    f"once")  # fmt: skip


def run_workers(
    spec: Any,
    *,
    storage: str,
    gpus: Sequence[str | None],
    worker_argv: Sequence[str],
    n_trials: int | None = None,
    requirement: Requirement | None = None,
    progress: bool | Progress = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> tuple[studies.Outcome, dict[int, int]]:
    """Run ``spec``'s study with one ``accelopt worker`` process per entry of ``gpus``.

    The storage's schema and the study (spec, budget) are made here, once, before any worker
    starts. Returns the study's outcome and each worker's exit code. On Ctrl-C, SIGTERM or
    SIGHUP (``KeyboardInterrupt``) the workers are stopped the same way (``stop``) before it is
    raised again; if this process dies otherwise, they stop themselves (``serve``).
    """
    requirement = requirement or Requirement()
    studies.check_requirement(spec, requirement)
    backend, url = open_storage(storage)
    with storage_lock(backend, url, spec.name):
        study = studies.prepare_study(backend, url, spec, n_trials)
        recover(study, log)
    if studies.is_finished(study, requirement):
        return studies.outcome_of(study, 0, True, requirement), {}
    before = Slots.of(study.get_trials(deepcopy=False)).used

    def status() -> tuple[int, int | None, str]:
        trials = study.get_trials(deepcopy=False)
        best = best_trial(study)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        shown = f"best {best.user_attrs['speedup']:.2f}x" if best else "no feasible yet"
        done = sum(t.state in DONE for t in trials)
        return done, study.user_attrs.get("budget"), f"{shown}, {running} running"

    workers: list[Worker] = []
    try:
        for index, gpu in enumerate(gpus):
            workers.append(start_worker(index, worker_argv, gpu, url, len(gpus)))
            log(f"{spec.name}: started {workers[-1].describe()} on {storage_label(url)}")
        codes = watch(workers, status, progress=progress, log=log, desc=f"{spec.name}: trials")
    except KeyboardInterrupt as err:
        stop(workers, getattr(err, "signum", signal.SIGINT), log)
        raise
    ran = Slots.of(study.get_trials(deepcopy=False)).used - before
    return studies.outcome_of(study, ran, False, requirement), codes
