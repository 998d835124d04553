"""Several workers on one study: exact budgets, every grid point once, dead workers, storages.

The process tests run real ``accelopt run --workers N`` commands on a journal file and, where
$ACCELOPT_TEST_POSTGRES names a database (CI starts one: .ci/run), on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from accelopt.cli import main
from accelopt.spec import load_spec
from accelopt.storage import open_storage, recover, retry
from accelopt.study.loop import run_study, run_trial
from accelopt.study.workers import GridOrder, Slots, TrialSeededTPE, released_trials

quiet = {"progress": False, "log": lambda s: None}
POSTGRES = os.environ.get("ACCELOPT_TEST_POSTGRES")


# Handing out trials: slots, grid order, per-trial seeds, retries.


def _trial(number: int, state: TrialState, **system_attrs: object) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                  system_attrs=system_attrs)  # fmt: skip
    t.number = number
    return t


def test_slots_count_everything_but_queued_trials_and_released_failures() -> None:
    trials = [
        _trial(0, TrialState.COMPLETE),
        _trial(1, TrialState.FAIL),  # its worker died: queued again as trial 4
        _trial(2, TrialState.FAIL),  # an ordinary failure: it used its slot
        _trial(3, TrialState.RUNNING),
        _trial(4, TrialState.WAITING, failed_trial=1, retry_history=[1]),
        _trial(5, TrialState.PRUNED),
    ]
    assert released_trials(trials) == {1}
    assert Slots.of(trials) == Slots(used=4, waiting=1, running=1)


def test_grid_order_is_fixed_by_the_seed_and_hands_out_each_point_once() -> None:
    grid = [{"a.x": x, "b.y": y} for x, y in itertools.product([1, 2, 3], [0.0, 0.5])]
    first, again, other = GridOrder(grid, 0), GridOrder(grid, 0), GridOrder(grid, 1)
    assert first.points == again.points and first.points != other.points
    assert sorted(map(str, first.points)) == sorted(map(str, grid))
    study = optuna.create_study()
    handed = []
    while (point := first.next(study.trials)) is not None:
        study.enqueue_trial(point)
        trial = study.ask()  # running: its point is held although nothing is drawn yet
        handed.append(point)
        if len(handed) == 2:
            study.tell(trial, state=TrialState.FAIL)  # a failure keeps its point
        elif len(handed) < 6:
            study.tell(trial, 1.0)
    assert handed == first.points


def test_a_retry_keeps_its_grid_point_and_is_made_once() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"a.x": 3})
    trial = study.ask()  # killed before it drew its parameter
    study.tell(trial, state=TrialState.FAIL)
    assert retry(study, study.trials[0])
    again = study.ask()
    assert again.suggest_int("a.x", 1, 3) == 3
    study.tell(again, state=TrialState.FAIL)
    assert study.trials[1].system_attrs["failed_trial"] == 0
    assert not retry(study, study.trials[1])  # a retry that dies is not queued a third time
    assert len(study.trials) == 2 and released_trials(study.trials) == {0}


class _DiesQueuingRetries(optuna.storages.JournalStorage):
    """A journal storage whose writer is killed as it queues a retry: after the FAIL (the first
    write), before the retry (the second)."""

    def create_new_trial(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> int:
        if template_trial is not None and "failed_trial" in template_trial.system_attrs:
            raise _Killed
        return super().create_new_trial(study_id, template_trial)


@pytest.mark.parametrize("where", ["recovery", "a failed trial"])
def test_a_crash_between_a_failure_and_its_retry_loses_no_point(
    where: str, tmp_path: Path
) -> None:
    """Recovery failed a dead worker's trial, then queued its retry in a second write (and
    run_trial the same after a failure): a kill in between lost the grid point for good, and
    the end of every later run said it "failed, and so did the retry"."""
    from optuna.storages.journal import JournalFileBackend

    from accelopt.cli._format import never_measured

    path = str(tmp_path / "studies.journal")
    dying = optuna.create_study(study_name="S", storage=_DiesQueuingRetries(
        JournalFileBackend(path)))  # fmt: skip
    dying.enqueue_trial({"a.x": 3})
    trial = dying.ask()
    with pytest.raises(_Killed):
        if where == "recovery":
            gone = subprocess.Popen([sys.executable, "-c", ""])
            gone.wait()  # its worker's process: gone
            trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": gone.pid})
            recover(dying, lambda s: None)
        else:

            def objective(trial: optuna.Trial) -> float:
                raise RuntimeError("out of memory")

            run_trial(dying, trial, objective, lambda s: None)  # type: ignore[arg-type]
    study = optuna.load_study(study_name="S", storage=open_storage(path)[0])
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # the first write, not the second
    assert never_measured(study, grid=True) == []  # not lost: its retry is owed

    logged: list[str] = []
    recover(study, logged.append)  # the next run's
    recover(study, logged.append)  # and the one after: once is enough
    assert logged == [
        "S: trials [0] failed and were never queued again (their worker stopped before it "
        "could, or the storage failed): queued again once"
    ]
    _, queued = study.trials
    assert (queued.state, queued.system_attrs["failed_trial"]) == (TrialState.WAITING, 0)
    assert queued.system_attrs["fixed_params"] == {"a.x": 3}
    assert released_trials(study.trials) == {0} and never_measured(study, grid=True) == []


def _draws(sampler_for_worker: list[optuna.samplers.BaseSampler], n: int) -> list[int]:
    """Run n trials of one study, round robin over workers that each have their own sampler."""
    storage = optuna.storages.InMemoryStorage()
    studies = [optuna.create_study(storage=storage, study_name="s", sampler=s,
                                   load_if_exists=True) for s in sampler_for_worker]  # fmt: skip
    for i in range(n):
        study = studies[i % len(studies)]
        trial = study.ask()
        study.tell(trial, float(trial.suggest_int("x", 0, 10_000)))
    return [t.params["x"] for t in studies[0].trials]


def test_tpe_draws_depend_on_the_seed_and_trial_number_not_on_the_worker() -> None:
    alone = _draws([TrialSeededTPE(7)], 12)
    assert alone == _draws([TrialSeededTPE(7)], 12)  # reproducible
    assert alone != _draws([TrialSeededTPE(8)], 12)
    # Three workers with the same seed: the random start is the same trials as one worker's,
    # not the same first point three times (what a plain seeded TPE does).
    three = _draws([TrialSeededTPE(7) for _ in range(3)], 12)
    assert three[:10] == alone[:10]
    plain = _draws([optuna.samplers.TPESampler(seed=7) for _ in range(3)], 3)
    assert len(set(plain)) == 1


# Faults inside one process: a storage error, Ctrl-C.


class _BrokenStorage(optuna.storages.JournalStorage):
    """A journal storage whose database 'goes away' when a trial records its speedup."""

    def set_trial_user_attr(self, trial_id: int, key: str, value: object) -> None:
        if key == "speedup":
            import sqlalchemy.exc

            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed"))
        super().set_trial_user_attr(trial_id, key, value)


def test_a_storage_error_in_a_trial_surfaces_as_itself_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from optuna.storages.journal import JournalFileBackend

    path = str(tmp_path / "studies.journal")

    def broken(url: str | None, **kwargs: object) -> tuple[optuna.storages.BaseStorage, str]:
        return _BrokenStorage(JournalFileBackend(path)), path

    monkeypatch.setattr("accelopt.study.loop.open_storage", broken)
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--study", "TinySD-DDIM-10-deepcache", "--n-trials", "3", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "accelopt: storage error: OperationalError" in err and "Should not reach" not in err
    monkeypatch.undo()
    study = optuna.load_study(study_name="TinySD-DDIM-10-deepcache", storage=open_storage(path)[0])
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert study.trials[0].user_attrs["failed"] == "storage error"

    # Neither given back nor queued again, its point was lost: the next run queues it again.
    monkeypatch.chdir(tmp_path)
    assert main([*argv[:3], "--n-trials", "1", "--storage", path, "--quiet"]) == 0
    assert "trials [0] failed and were never queued again" in capsys.readouterr().err
    study = optuna.load_study(study_name="TinySD-DDIM-10-deepcache", storage=open_storage(path)[0])
    failed, again = study.trials
    assert again.system_attrs["failed_trial"] == 0 and again.params == failed.params
    assert again.state in (TrialState.COMPLETE, TrialState.PRUNED)


# Real processes: accelopt run --workers N on a journal file and on PostgreSQL.

SPEC = """
pipeline = "TinySD"
scheduler = "DDIM"
steps = 10
resolution = 32
dtype = "float32"
targets = ["deepcache"]
n_trials = 6

[prompts]
count = {count}
batch_size = 4

[metric]
model = "accelopt-tiny-clip"
pretrained = ""

[sampler]
name = "{sampler}"
"""


@pytest.fixture(params=["journal", "postgresql"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return str(tmp_path / "studies.journal")
    if POSTGRES is None:
        if os.environ.get("ACCELOPT_REQUIRE_POSTGRES"):
            pytest.fail("ACCELOPT_REQUIRE_POSTGRES is set but ACCELOPT_TEST_POSTGRES is not")
        pytest.skip("no PostgreSQL: set ACCELOPT_TEST_POSTGRES (.ci/run starts one)")
    return POSTGRES


def _spec(tmp_path: Path, sampler: str, count: int = 1) -> Path:
    path = tmp_path / f"TinyWorkers-{uuid.uuid4().hex[:8]}.toml"  # one study per test
    path.write_text(SPEC.format(sampler=sampler, count=count))
    return path


def _accelopt(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "accelopt", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _study(storage: str, spec: Path) -> optuna.Study:
    return optuna.load_study(study_name=spec.stem, storage=open_storage(storage)[0])


def test_three_workers_evaluate_every_grid_point_exactly_once(shared: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "grid")  # 3 workers, not 4: each loads its own pipelines on 2 cores
    run = _accelopt("run", "--spec", str(spec), "--workers", "3", "--storage", shared, "--quiet",
                    cwd=tmp_path)  # fmt: skip
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    study = _study(shared, spec)
    from accelopt.accelerators import PipeTraits
    from accelopt.testing import tiny_pipeline
    from accelopt.trial.space import Space

    space = Space.build(PipeTraits.of(tiny_pipeline("TinySD")), 10, ("deepcache",))
    points = sorted(tuple(sorted(t.params.items())) for t in study.trials)
    assert points == sorted(tuple(sorted(p.items())) for p in GridOrder(space.points(), 0).points)
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert f"ran {space.size} trials ({space.size} in the study)" in out
    owners = {t.user_attrs["owner"]["pid"] for t in study.trials}
    assert len(owners) > 1  # the work was shared


def test_the_budget_is_the_total_over_all_workers(shared: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "tpe")
    run = _accelopt("run", "--spec", str(spec), "--workers", "3", "--n-trials", "5",
                    "--storage", shared, "--quiet", cwd=tmp_path)  # fmt: skip
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    study = _study(shared, spec)
    assert len(study.trials) == 5  # not one started beyond the budget, then thrown away
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert "ran 5 trials (5 in the study)" in out


def _running(study: optuna.Study) -> Iterator[optuna.trial.FrozenTrial]:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "owner" in t.user_attrs and t.params:
            yield t


def test_a_killed_worker_s_trial_is_failed_and_retried_once(shared: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "tpe", count=8)  # trials of a second or more: time to kill one
    run = _accelopt("run", "--spec", str(spec), "--workers", "2", "--n-trials", "4",
                    "--storage", shared, "--heartbeat", "1", "--quiet", cwd=tmp_path)  # fmt: skip
    deadline, victim = time.monotonic() + 300, None
    storage, _ = open_storage(shared)  # one connection pool for all the polling
    while victim is None and time.monotonic() < deadline and run.poll() is None:
        with contextlib.suppress(KeyError):  # KeyError: the study is not created yet
            study = optuna.load_study(study_name=spec.stem, storage=storage)
            victim = next(_running(study), None)
        time.sleep(0.05)
    assert victim is not None, run.communicate()[1]
    os.kill(victim.user_attrs["owner"]["pid"], signal.SIGKILL)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    assert "was killed by signal 9; its trial is queued again once" in err

    study = _study(shared, spec)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.params == killed.params
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4 and len(study.trials) == 5  # the budget, plus the dead trial
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


# Storages the workers may and may not share.


@pytest.mark.parametrize("storage", ["sqlite:///studies.db", None])
def test_sqlite_is_refused_for_several_workers(
    storage: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    if storage is None:  # through the environment, as users set it once
        monkeypatch.setenv("ACCELOPT_STORAGE", "sqlite:///studies.db")
    argv = ["run", "--study", "TinySD-DDIM-10", "--workers", "2"]
    assert main([*argv, "--storage", storage] if storage else argv) == 2
    err = capsys.readouterr().err
    assert "SQLite cannot serve several workers" in err
    assert "--storage accelopt.journal" in err and "postgresql://" in err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_a_worker_needs_shared_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACCELOPT_STORAGE", raising=False)
    assert main(["worker", "--study", "TinySD-DDIM-10"]) == 2
    assert "need a shared --storage" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "2", "--gpus", "0"], "--workers 2 but --gpus names 1"),
        (["--gpus", "0,x"], "--gpus takes GPU numbers"),
        pytest.param(
            ["--workers", "2", "--device", "cuda:1"],
            "for 2 workers pass --gpus",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(),
                reason="without CUDA, --device cuda:1 is refused first (test_cli checks that)",
            ),
        ),
        (["--workers", "0"], "--workers must be positive"),
    ],
)
def test_bad_worker_options_exit_2(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--study", "TinySD-DDIM-10", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("argv", [["--device", "cuda"], ["--workers", "2", "--gpus", "0,1"]])
def test_asking_for_a_gpu_where_there_is_none_exits_2(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--study", "TinySD-DDIM-10", *argv]) == 2
    assert "this machine has no CUDA device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_workers_that_all_fail_leave_the_study_to_resume_and_exit_1(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "tpe")
    spec.write_text(spec.read_text().replace('"TinySD"', '"nobody/no-such-model"'))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the hub id cannot load: each worker exits
    run = subprocess.run([sys.executable, "-m", "accelopt", "run", "--spec", str(spec),
                          "--workers", "2", "--storage", "studies.journal", "--quiet"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "every worker stopped before the study was done" in run.stdout
    assert run.stderr.count("exited with code 2") == 2


def test_a_worker_reads_the_spec_from_storage(tmp_path: Path) -> None:
    """Another host need not have the spec file: the stored study carries it."""
    journal = str(tmp_path / "studies.journal")
    spec = _spec(tmp_path, "tpe")
    run_study(load_spec(path=spec), storage=journal, n_trials=1, **quiet)
    spec.unlink()
    worker = _accelopt("worker", "--study", spec.stem, "--storage", journal, "--n-trials", "2",
                       "--quiet", cwd=tmp_path)  # fmt: skip
    _, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err
    assert f"{spec.stem}: ran 1 trials" in err
    assert len(_study(journal, spec).trials) == 2


@pytest.mark.skipif(POSTGRES is None, reason="no PostgreSQL (ACCELOPT_TEST_POSTGRES)")
def test_passwords_never_reach_output_store_or_report(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    password = _pgpass_password()
    if password is None:
        pytest.skip("no password in $PGPASSFILE to put in the URL")
    url = make_url(POSTGRES).set(password=password).render_as_string(hide_password=False)
    spec = _spec(tmp_path, "tpe")
    run = _accelopt("run", "--spec", str(spec), "--storage", url, "--n-trials", "2",
                    "--export", "--top-k", "0", "--store", "store.json", cwd=tmp_path)  # fmt: skip
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    report = _accelopt("report", "--study", spec.stem, "--storage", url, "--images", "0",
                       cwd=tmp_path)  # fmt: skip
    r_out, r_err = report.communicate(timeout=600)
    assert report.returncode == 0, r_err
    study = _study(POSTGRES, spec)
    stored = str(study.user_attrs) + str([t.user_attrs for t in study.trials])
    files = [(tmp_path / name).read_text() for name in ("store.json", f"report-{spec.stem}.html")]
    texts = [out, err, r_out, r_err, stored, *files]
    assert "postgresql://" in err  # the storage is named ...
    assert not [t for t in texts if password in t]  # ... never with its password


def _pgpass_password() -> str | None:
    path = os.environ.get("PGPASSFILE")
    if path and Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            if line and not line.startswith("#"):
                return line.rsplit(":", 1)[1]
    return os.environ.get("PGPASSWORD")


# A worker killed between creating its trial and recording who runs it.


class _Killed(BaseException):
    """A worker's death: nothing catches it, as nothing runs after SIGKILL."""


def test_a_worker_killed_between_ask_and_its_owner_does_not_hang_the_study(
    shared: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The trial was RUNNING with no owner (and, on PostgreSQL, no heartbeat yet): recovery
    skipped it, and every later worker waited for it for good."""
    spec = _spec(tmp_path, "tpe")
    # No warm start: a shared PostgreSQL database holds other tests' TinyWorkers studies.
    argv = ["run", "--spec", str(spec), "--storage", shared, "--n-trials", "2", "--quiet",
            "--timeout", "120", "--no-warm-start"]  # fmt: skip
    ask = optuna.Study.ask

    def dies(self: optuna.Study, *args: object, **kwargs: object) -> optuna.Trial:
        ask(self, *args, **kwargs)  # the trial exists now: no heartbeat, no owner yet
        raise _Killed

    monkeypatch.setattr(optuna.Study, "ask", dies)
    with pytest.raises(_Killed):
        main(argv)
    monkeypatch.setattr(optuna.Study, "ask", ask)
    (orphan,) = _study(shared, spec).trials
    assert orphan.state == TrialState.RUNNING and "owner" not in orphan.user_attrs

    assert main(argv) == 0  # a second worker, ORPHAN_GRACE (10 s) after the first one's start
    out, err = capsys.readouterr()
    assert "ran 2 trials (2 in the study, 1 failed)" in out
    assert f"{spec.stem}: trials [0] were left RUNNING by a process that is gone" in err
    study = _study(shared, spec)
    dead, *rest = study.trials
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["failed"] == "its worker died before it recorded its owner"
    assert [t.system_attrs.get("failed_trial") for t in rest].count(0) == 1  # queued again once
    assert [t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in rest] == [True, True]


def test_a_trial_beats_and_has_its_owner_before_take_trial_lets_the_lock_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first heartbeat came from a thread after the lock was released: a worker killed in
    between left a trial with an owner on another host and no heartbeat, never stale."""
    import warnings

    from accelopt.study import workers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage("sqlite:///:memory:", heartbeat_interval=60)
    study = optuna.create_study(storage=storage)
    events: list[str] = []
    beat, own = storage.record_heartbeat, workers.owner
    monkeypatch.setattr(storage, "record_heartbeat", lambda i: (events.append("beat"), beat(i)))
    monkeypatch.setattr(workers, "owner", lambda t: (events.append("owner"), own(t)))
    with contextlib.ExitStack() as beating:
        trial = workers.take_trial(study, 1, None, lambda trials: False, beating)
        assert events == ["beat", "owner"]  # both before it returned: under the caller's lock
        assert isinstance(trial, optuna.Trial)
        assert storage._get_stale_trial_ids(study._study_id) == []  # it has a heartbeat
    threads = [t.name for t in __import__("threading").enumerate()]
    assert f"heartbeat-{trial.number}" not in threads  # it stops with the stack


# accelopt worker --spec FILE: that file's study, whatever else the storage holds.


@pytest.mark.parametrize("other", [False, True])
def test_a_worker_given_a_spec_file_runs_that_study(
    other: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Without --study it loaded "the" study of the storage: a traceback on an empty one, and
    on a storage holding one other study it ran that one and exited 0."""
    from types import SimpleNamespace

    from accelopt.study.prepare import prepare_study

    journal = str(tmp_path / "studies.journal")
    spec = _spec(tmp_path, "tpe")
    if other:
        backend, url = open_storage(journal)
        prepare_study(backend, url, load_spec("TinySD-DDIM-10"), 1)
    ran: list[str] = []

    def run_study(spec: object, **kwargs: object) -> SimpleNamespace:  # the trials: not here
        ran.append(spec.name)  # type: ignore[attr-defined]
        return SimpleNamespace(ran=0)

    monkeypatch.setattr("accelopt.study.loop.run_study", run_study)
    assert main(["worker", "--spec", str(spec), "--storage", journal, "--quiet"]) == 0
    assert ran == [spec.stem]
    assert f"{spec.stem}: ran 0 trials" in capsys.readouterr().err
    argv = ["worker", "--spec", str(spec), "--study", spec.stem, "--storage", journal]
    assert main(argv) == 2
    assert "give exactly one of --study NAME or --spec FILE" in capsys.readouterr().err
