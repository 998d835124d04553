"""Several processes, one study: trials handed out under a lock, heartbeats, launching workers.

Every worker (the one inside ``accelopt run``, each of ``--workers N``, each ``accelopt worker``
on another host) takes its next trial from the shared storage under one lock, so that:

- ``--n-trials`` is the study's total, exactly: a trial is started only while fewer than the
  budget are done, running or failed (a failed trial that was queued again makes room for its
  retry; one cut short by Ctrl-C makes room for a new one);
- a grid study evaluates every point once: the next point is the first unused one in an order
  fixed by the seed, never drawn at random by several workers at once;
- TPE draws trial ``n``'s random numbers from ``seed + n``: the same seed gives the same trials,
  whichever worker runs them.

The lock is a file beside a journal file, or a PostgreSQL transaction-level advisory lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from accelopt.errors import AccelOptError

__all__ = [
    "GridOrder",
    "Slots",
    "TrialSeededTPE",
    "Worker",
    "heartbeat",
    "owner",
    "start_workers",
    "storage_lock",
    "take_trial",
    "watch",
]

WAIT = object()  # take_trial: nothing to start now, but a running trial may still fail


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random draws for trial ``n`` come from ``seed + n``.

    A plain seeded TPE gives each worker the same random stream, so N workers propose the same
    first points N times; seeding per trial number gives every trial its own draws and keeps a
    study reproducible for a seed, whichever worker runs which trial. (Optuna's TPE keeps its
    streams in ``_rng`` and ``_random_sampler``: pinned optuna, checked by tests/test_workers.py.)
    A study with two directions (``objective = "pareto"``) gets multi-objective TPE from the same
    class, seeded the same way.
    """

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, constant_liar=True, **kwargs)
        self.seed = seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        seed = (self.seed + trial.number) % 2**32
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


@dataclass(frozen=True)
class Slots:
    """How much of a study's trial budget is taken."""

    used: int  # done, running or failed, less the failures that made room for a retry
    waiting: int  # queued: retries of trials whose worker died
    running: int

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial]) -> Slots:
        released = released_trials(trials)
        used = sum(t.state != TrialState.WAITING and t.number not in released for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return cls(used, waiting, running)


def released_trials(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that do not take a slot: queued again, or stopped by Ctrl-C."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return retried | {
        t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
    }


class GridOrder:
    """The points of a grid in an order fixed by a seed; hands out the first unused one."""

    def __init__(self, grid: Mapping[str, Sequence[Any]], seed: int) -> None:
        keys = sorted(grid)
        self.points = [dict(zip(keys, values, strict=True))
                       for values in itertools.product(*(grid[k] for k in keys))]  # fmt: skip
        random.Random(seed).shuffle(self.points)

    def next(self, trials: Sequence[FrozenTrial]) -> dict[str, Any] | None:
        """The first point no trial holds (a released failure gives its point back)."""
        released = released_trials(trials)
        held = {
            _key(t.system_attrs.get("fixed_params", t.params))
            for t in trials
            if t.number not in released
        }
        return next((p for p in self.points if _key(p) not in held), None)


def _key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def owner(trial: optuna.Trial) -> None:
    """Record who runs a trial: a later run finds RUNNING trials whose process is gone."""
    trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})


def take_trial(
    study: optuna.Study,
    total: int,
    grid: GridOrder | None,
    stop: Callable[[Sequence[FrozenTrial]], bool],
) -> optuna.Trial | object | None:
    """Start the study's next trial, call under ``storage_lock``.

    Returns the trial, None when the study is done (budget spent, grid exhausted or ``stop``),
    or ``WAIT`` when the budget is spent but trials still run elsewhere: one of them may fail
    and be queued again.
    """
    trials = study.get_trials(deepcopy=False)
    if stop(trials):
        return None
    slots = Slots.of(trials)
    if not slots.waiting:
        if slots.used >= total:
            return WAIT if slots.running else None
        if grid is not None:
            point = grid.next(trials)
            if point is None:
                return WAIT if slots.running else None
            study.enqueue_trial(point)
    with warnings.catch_warnings():
        # Optuna expects heartbeats only inside Study.optimize; ours come from heartbeat().
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    owner(trial)
    return trial


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Beat for ``trial`` while the block runs, where the storage keeps heartbeats (databases)."""
    storage = study._storage
    interval = _heartbeat_interval(storage)
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; the trial goes on
                storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _heartbeat_interval(storage: optuna.storages.BaseStorage) -> int | None:
    from optuna.storages._heartbeat import BaseHeartbeat

    if isinstance(storage, BaseHeartbeat):
        return storage.get_heartbeat_interval()
    return None


def fail_stale_trials(study: optuna.Study) -> bool:
    """On storages with heartbeats: FAIL trials whose heartbeat stopped, queue each once more.

    Returns False where the storage keeps no heartbeats (the caller checks owners instead)."""
    if _heartbeat_interval(study._storage) is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return True


def retry_once(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial whose worker died again, with the same parameters, once.

    Optuna's ``RetryHeartbeatStaleTrialCallback(max_retry=1)``, except that the retry keeps
    the parameters a trial was given but had not drawn yet (a grid point) and none of the dead
    run's measurements.
    """
    if trial.system_attrs.get("retry_history"):
        return  # a retry that died too: once is enough
    fixed = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            system_attrs={
                "fixed_params": fixed,
                "failed_trial": trial.number,
                "retry_history": [trial.number],
            },
        )
    )


@contextlib.contextmanager
def storage_lock(storage: optuna.storages.BaseStorage, url: str, name: str) -> Iterator[None]:
    """Hold the lock that orders the workers of study ``name``.

    A journal file: a file lock beside it (one host). PostgreSQL: a transaction-level advisory
    lock, released when the transaction ends, also when the worker dies. SQLite serves one
    worker, which needs no lock.
    """
    if isinstance(storage, optuna.storages.RDBStorage):
        dialect = storage.engine.dialect.name
        if dialect == "sqlite":
            yield
            return
        if dialect != "postgresql":
            raise AccelOptError(f"workers share studies through PostgreSQL or a journal file, "
                                f"not {dialect}")  # fmt: skip
        import sqlalchemy

        with storage.engine.begin() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                         {"key": lock_key(name)})  # fmt: skip
            yield
        return
    from filelock import FileLock

    with FileLock(f"{url}.accelopt-lock"):
        yield


def lock_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


# Launching: `accelopt run --workers N` on one host, one process per GPU.


@dataclass
class Worker:
    """One ``accelopt worker`` process started by ``accelopt run --workers N``."""

    index: int
    gpu: str | None
    process: subprocess.Popen[bytes]

    def describe(self) -> str:
        where = "the CPU" if self.gpu is None else f"GPU {self.gpu}"
        return f"worker {self.index} (pid {self.process.pid}, {where})"


def start_workers(argv: Sequence[str], gpus: Sequence[str | None], storage: str) -> list[Worker]:
    """Start ``accelopt worker ARGV`` once per entry of ``gpus`` (None: no GPU of its own)."""
    workers = []
    for index, gpu in enumerate(gpus):
        # The storage URL goes through the environment: a command line is visible to every
        # user of the host (ps), and the URL may hold a password.
        env = {**os.environ, "ACCELOPT_STORAGE": storage}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        command = [sys.executable, "-m", "accelopt", "worker", *argv]
        workers.append(Worker(index, gpu, subprocess.Popen(command, env=env)))
    return workers


def watch(
    workers: Sequence[Worker],
    status: Callable[[], tuple[int, int | None, str]],
    *,
    progress: bool,
    log: Callable[[str], None],
    desc: str = "study",
    poll: float = 1.0,
) -> dict[int, int]:
    """Wait for every worker, showing the study's progress (``status`` gives done, total and a
    note); returns each worker's exit code. On Ctrl-C the workers, which got it from the
    terminal too, are given time to put their running trials back."""
    from tqdm.auto import tqdm

    bar = tqdm(total=status()[1], unit="trial", desc=desc, disable=not progress)
    ended: dict[int, int] = {}
    try:
        while len(ended) < len(workers):
            for w in workers:
                code = w.process.poll()
                if code is not None and w.index not in ended:
                    ended[w.index] = code
                    if code:
                        log(f"{w.describe()} {_how(code)}")
            done, total, note = status()
            bar.total, bar.n = total, done
            bar.set_postfix_str(note)
            if len(ended) < len(workers):
                time.sleep(poll)
    except KeyboardInterrupt:
        _stop(workers)
        raise
    finally:
        bar.close()
    return ended


def _how(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code}; its trial is queued again once"
    return f"exited with code {code}"


def _stop(workers: Sequence[Worker], grace: float = 30.0) -> None:
    deadline = time.monotonic() + grace
    for w in workers:
        try:
            w.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            w.process.send_signal(signal.SIGINT)  # the terminal's Ctrl-C did not reach it
    for w in workers:
        try:
            w.process.wait(grace)
        except subprocess.TimeoutExpired:
            w.process.kill()


def run_workers(
    spec: Any,
    *,
    storage: str,
    gpus: Sequence[str | None],
    worker_argv: Sequence[str],
    n_trials: int | None = None,
    requirement: Any = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> tuple[Any, dict[int, int]]:
    """Run ``spec``'s study with one ``accelopt worker`` process per entry of ``gpus``.

    The storage's schema and the study (spec, budget) are made here, once, before any worker
    starts. Returns the study's outcome and each worker's exit code.
    """
    from accelopt import study as studies

    requirement = requirement or studies.Requirement()
    studies.check_requirement(spec, requirement)
    backend, url = studies.open_storage(storage)
    with storage_lock(backend, url, spec.name):
        study = studies.prepare_study(backend, url, spec, n_trials)
        studies.recover(study, log)
    if studies.is_finished(study, requirement):
        return studies.outcome_of(study, 0, True, requirement), {}
    before = Slots.of(study.get_trials(deepcopy=False)).used

    def status() -> tuple[int, int | None, str]:
        trials = study.get_trials(deepcopy=False)
        best = studies.best_trial(study)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        shown = f"best {best.user_attrs['speedup']:.2f}x" if best else "no feasible yet"
        done = sum(t.state in studies.DONE for t in trials)
        return done, study.user_attrs.get("budget"), f"{shown}, {running} running"

    workers = start_workers(worker_argv, gpus, url)
    for w in workers:
        log(f"{spec.name}: started {w.describe()} on {studies.storage_label(url)}")
    codes = watch(workers, status, progress=progress, log=log, desc=spec.name)
    ran = Slots.of(study.get_trials(deepcopy=False)).used - before
    return studies.outcome_of(study, ran, False, requirement), codes
