"""Tests for accelopt/storage.py: its place in the layout, URL redaction, journal faults, the
SQLite writer lock and trials whose worker died before it recorded its owner."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.trial import TrialState

from accelopt import storage as storages
from accelopt.cli import main
from accelopt.spec import load_spec
from accelopt.storage import (
    JournalFile,
    open_storage,
    recover_stale_trials,
    repair_journal,
    storage_label,
)

PACKAGE = Path(__file__).resolve().parent.parent / "accelopt"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACCELOPT_STORAGE", raising=False)
    return tmp_path


# Layout: storage is a room of its own, and no module imports another in a circle.


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The accelopt modules ``path`` imports anywhere, in functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module in modules:
            # ``from accelopt.study import loop`` imports the submodule; the package counts only
            # where a name is taken from its __init__.
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & modules
    return found


def test_no_accelopt_module_imports_another_in_a_circle() -> None:
    """Function-level imports included: a circle dodged inside a function is still a circle."""
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, set(paths)) - {m} for m, p in paths.items()}

    def reaches(start: str, goal: str) -> list[str] | None:
        todo, seen = [[start]], {start}
        while todo:
            path = todo.pop()
            for nxt in graph[path[-1]]:
                if nxt == goal:
                    return [*path, nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append([*path, nxt])
        return None

    circles = [c for m in graph if (c := reaches(m, m))]
    assert circles == []
    # the run loop uses it, never back
    assert not graph["accelopt.storage"] - {"accelopt.errors", "accelopt._types"}


@pytest.mark.parametrize(
    "module",
    [
        "storage",
        "study.workers",
        "study.loop",
        "export",
        "study.warmstart",
        "study.launch",
        "study.results",
    ],
)
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    code = (
        f"import sys\nimport accelopt.{module}\n"
        "print(sorted(m for m in sys.modules if m in ('accelopt.study.loop', "
        "'accelopt.study.workers', 'accelopt.study.launch', 'torch')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    if module == "storage":
        assert run.stdout.strip() == "[]"


# URLs: one redaction for every form, wherever a URL is shown or stored.


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg2://alice:s3cret@db.example:5432/optuna",
            "postgresql+psycopg2://alice:***@db.example:5432/optuna",
        ),
        # SQLAlchemy takes "ss@db" and "a" for the host: the readings differ, nothing is shown
        ("postgresql://alice:p@ss@db/optuna", "postgresql://<unparsed URL hidden>"),
        ("postgresql://alice:a/b?c#d@db/optuna", "postgresql://<unparsed URL hidden>"),
        ("postgresql://alice:p%40ss@db/optuna", "postgresql://alice:***@db/optuna"),
        ("postgresql://a@corp:s3cret@db/optuna", "postgresql://a@corp:***@db/optuna"),
        (
            "postgresql://alice:s3cret@[::1]:5432/optuna",
            "postgresql://alice:***@[::1]:5432/optuna",
        ),
        ("postgresql://db/x?password=s3&cret", "postgresql://db/x?password=***&***"),
        ("postgresql://db/x?sslmode=require&s3cret=1", "postgresql://db/x?sslmode=require&***"),
        ("postgresql//alice:s3cret@db/optuna", "postgresql//alice:***@db/optuna"),
        ("sqlite+pysqlcipher://:s3cret@/x.db", "sqlite+pysqlcipher://:***@/x.db"),
        ("sqlite:///file:accelopt.db?uri=true", "sqlite:///file:accelopt.db?uri=true"),
        ("#://alice:s3cret@db", "<unparsed URL hidden>"),
        (
            "postgresql://alice@db/optuna?password=s3cret&sslmode=require",
            "postgresql://alice@db/optuna?password=***&sslmode=require",
        ),
        (
            "postgresql://db/optuna?sslmode=require&sslpassword=s3cret",
            "postgresql://db/optuna?sslmode=require&sslpassword=***",
        ),
        ("mysql://db/x?user=a&PASSWD=s3cret", "mysql://db/x?user=a&PASSWD=***"),
        ("postgresql://db/x?pass%77ord=s3cret", "postgresql://db/x?pass%77ord=***"),
        ("postgresql://db/x?access_token=s3cret", "postgresql://db/x?access_token=***"),
        ("postgresql:/alice:s3cret@db/optuna", "postgresql:/alice:***@db/optuna"),
        ("postgresql:alice:s3cret@db/optuna", "postgresql:alice:***@db/optuna"),
        ("postgresql://alice@db/optuna", "postgresql://alice@db/optuna"),
        ("sqlite:///accelopt.db", "sqlite:///accelopt.db"),
        ("studies.journal", "studies.journal"),
    ],
)
def test_storage_label_redacts_every_password_form(url: str, shown: str) -> None:
    assert storage_label(url) == shown
    assert "s3cret" not in storage_label(url)


@pytest.mark.parametrize("command", ["run", "best", "list", "report", "dashboard"])
def test_a_one_slash_url_is_refused_and_shows_no_password(
    command: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``postgresql:/...`` was taken for a journal file in a folder ``postgresql:``, and its
    traceback printed the whole URL."""
    url = "postgresql:/alice:s3cret@db.example/optuna"
    argv = {"run": ["run", "--study", "TinySD-DDIM-10", "--quiet"], "list": ["list"],
            "dashboard": ["dashboard"]}.get(command, [command, "--study", "X"])  # fmt: skip
    assert main([*argv, "--storage", url]) == 2
    out, err = capsys.readouterr()
    assert err == (
        "accelopt: error: storage postgresql:/alice:***@db.example/optuna is neither a URL nor "
        "a journal file: a database URL starts with postgresql:// (two slashes); a journal file "
        "whose name holds a colon needs a folder in front (./NAME)\n"
    )
    assert "s3cret" not in out + err
    assert list(workdir.iterdir()) == []  # no folder "postgresql:", no journal


def test_a_storage_that_cannot_be_opened_shows_no_part_of_its_password(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLAlchemy ends the password at its first "@" and takes "ss@127.0.0.1" for the host;
    the driver's error then names that host."""
    url = "postgresql://alice:p@ss@127.0.0.1:1/optuna?password=s3cret"
    assert main(["best", "--study", "X", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "accelopt: error: cannot open storage postgresql://<unparsed URL hidden>: "
    )
    assert len(err.splitlines()) == 1
    assert "s3cret" not in err and "p@ss" not in err and "ss@" not in err


# Every form users write a password in: no part of it in any command's output (issue 34).
PASSWORD_FORMS = [
    " postgresql://alice:s3cretpw@127.0.0.1:1/optuna",  # a space before the URL
    "postgresql://alice:s3cretpw@127.0.0.1:1/optuna\n",  # a line break after it
    "postgresql://alice@127.0.0.1:1/optuna?password=s3cr@etpw",  # "@" in a value, a port
    "postgresql://127.0.0.1:1/optuna?password=s3cr@etpw",  # read as user 127.0.0.1, host etpw
    "postgresql+psycopg://alice:s3cr#etpw@127.0.0.1:1/optuna",  # "#" in the password
    "postgresql://alice@127.0.0.1:1/optuna?password=s3cr&etpw",  # "&" in a value
    "postgresql//alice:s3cretpw@127.0.0.1:1/optuna",  # no colon after the scheme
    "postgresql://alice@127.0.0.1:s3cretpw/optuna",  # the password in the port
    "postgresql+psycopg://alice:s3cr@@etpw@127.0.0.1:1/optuna",  # several "@"
    "postgresql://127.0.0.1:1/x?dbname=postgresql://bob:s3cretpw@h/db",  # a URL in a value
]


@pytest.mark.parametrize("url", PASSWORD_FORMS)
def test_no_url_form_shows_any_part_of_its_password(
    url: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A leading space made the URL a "path" shown whole; "?password=aa@TAIL" with a port
    showed TAIL, the last "@" taken for the host's."""
    for argv in (["run", "--study", "TinySD-DDIM-10", "--quiet"], ["best", "--study", "X"],
                 ["list"], ["worker", "--study", "TinySD-DDIM-10"]):  # fmt: skip
        assert main([*argv, "--storage", url]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("accelopt: error: ") and len(err.splitlines()) == 1
        assert "s3cr" not in out + err and "etpw" not in out + err


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("sqlte:///x.db", "sqlte:///x.db: unknown scheme sqlte://: did you mean sqlite:///x.db?"),
        (
            "postgres://alice:s3cret@db/optuna",
            "postgres://alice:***@db/optuna: unknown scheme "
            "postgres://: did you mean postgresql://alice:***@db/optuna?",
        ),
        (
            "zzz://x",
            "zzz://x: unknown scheme zzz://; use sqlite://, postgresql://, mysql://, "
            "oracle://, mssql://",
        ),
    ],
)
@pytest.mark.parametrize("command", ["run", "best", "list"])
def test_an_unknown_scheme_names_the_closest(
    command: str, url: str, said: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {"run": ["run", "--study", "TinySD-DDIM-10", "--quiet"],
            "list": ["list"]}.get(command, [command, "--study", "X"])  # fmt: skip
    assert main([*argv, "--storage", url]) == 2
    assert capsys.readouterr().err == f"accelopt: error: cannot open storage {said}\n"
    assert list(workdir.iterdir()) == []


def test_an_exported_entry_keeps_the_storage_without_its_password() -> None:
    from accelopt.export import entries_for
    from accelopt.spec import record_of

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("spec", record_of(load_spec("TinySD-DDIM-10-deepcache")))
    attrs = {"accelerators": {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}},
             "speedup": 2.0, "feasible": True, "score_loss": 0.0}  # fmt: skip
    study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs=attrs))
    url = "postgresql://alice:p@ss@db/optuna?sslpassword=s3cret"
    (entry,) = entries_for(study, url).values()
    assert entry["study"]["storage"] == "postgresql://<unparsed URL hidden>"


# Journal files: a corrupt line, a half line, the start-up repair and `accelopt storage repair`.


def _journal(path: Path, trials: int = 3) -> list[bytes]:
    """A journal with one study and ``trials`` finished trials; returns its lines."""
    storage = optuna.storages.JournalStorage(JournalFile(str(path)))
    study = optuna.create_study(study_name="S", storage=storage, direction="maximize")
    for i in range(trials):
        trial = study.ask()
        trial.suggest_int("x", 0, 10)
        study.tell(trial, float(i))
    return path.read_bytes().splitlines(keepends=True)


def _line_of(lines: list[bytes], op_code: int, nth: int = 0) -> int:
    """The 0-based index of the ``nth`` line with ``op_code``."""
    found = [i for i, line in enumerate(lines) if json.loads(line)["op_code"] == op_code]
    return found[nth]


@pytest.mark.parametrize("command", ["best", "list", "run"])
def test_a_corrupt_line_in_the_middle_names_the_file_and_line_and_the_repair(
    command: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = workdir / "studies.journal"
    lines = _journal(journal)
    lines[2] = b'{"op_code": 5, "worker_id": "x", "tri\n'
    journal.write_bytes(b"".join(lines))
    argv = {"best": ["best", "--study", "S"], "list": ["list"],
            "run": ["run", "--study", "TinySD-DDIM-10", "--quiet"]}[command]  # fmt: skip
    assert main([*argv, "--storage", str(journal)]) == 2
    assert capsys.readouterr().err == _bad_record(journal, 3, "not JSON")


def _bad_record(journal: Path, line: int, why: str) -> str:
    """What every reader says of a journal's bad line, on stderr."""
    return (
        f"accelopt: error: journal file {journal}, line {line}: not a journal record ({why}); "
        f"Optuna reads nothing past it. Stop its workers, then run: accelopt storage repair "
        f"{journal} (it drops or mends the bad lines and keeps a backup)\n"
    )


def test_storage_repair_keeps_every_good_line_and_a_backup(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = workdir / "studies.journal"
    lines = _journal(journal)
    create = _line_of(lines, 4, 1)  # trial 1's creation: its loss would renumber trials 1, 2
    setter = _line_of(lines, 5, 2)  # trial 2's parameter, after a half line a killed writer left
    lines[create] = b"\x00\x00garbage\n"
    lines[setter] = b'{"op_code":8,"worker_id":"dead","trial_i' + lines[setter]
    broken = b"".join(lines)
    journal.write_bytes(broken)

    assert main(["storage", "repair", str(journal)]) == 0
    (backup,) = workdir.glob("studies.journal.broken-*")
    assert capsys.readouterr().out == (
        f"repaired {journal}: kept {len(lines) - 1} of {len(lines)} lines; kept the record at "
        f"the end of line(s) {setter + 1}; dropped line(s) {create + 1} (not JSON); line(s) "
        f"{create + 1} had created a trial, or named one no line created: a trial takes its "
        f"place, so that later ones keep their numbers (what later lines say of it is kept; "
        f"left RUNNING, the next run fails it and queues it again); the original is kept as "
        f"{backup}\n"
    )
    assert backup.read_bytes() == broken
    study = optuna.load_study(study_name="S", storage=open_storage(str(journal))[0])
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert [t.value for t in study.trials] == [0.0, 1.0, 2.0]  # each trial kept its number
    assert "x" in study.trials[1].params and "x" in study.trials[2].params  # 2: salvaged
    assert main(["best", "--study", "S", "--storage", str(journal)]) == 0

    assert main(["storage", "repair", str(journal)]) == 0  # whole now: nothing to do
    assert capsys.readouterr().out.endswith("lines are records; nothing to repair\n")
    assert len(list(workdir.glob("studies.journal.broken-*"))) == 1
    assert main(["storage", "repair", str(workdir / "nowhere.journal")]) == 2


def test_a_half_line_left_while_a_worker_runs_is_cut_before_its_next_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Upstream appended after it: the two merged into one corrupt line, the worker died, and
    so did every later run."""
    journal = tmp_path / "studies.journal"
    _journal(journal, trials=1)
    storage, _ = open_storage(str(journal))
    study = optuna.load_study(study_name="S", storage=storage)
    whole = journal.read_bytes()
    with journal.open("ab") as f:  # another worker, killed in the middle of its line
        f.write(b'{"op_code":8,"worker_id":"dead","trial_id":0,"us')
    study.set_user_attr("after", 1)  # this worker goes on
    assert "ended in a half-written line" in capsys.readouterr().err
    (backup,) = tmp_path.glob("studies.journal.broken-*")
    assert backup.read_bytes().startswith(whole) and backup.read_bytes() != whole
    again = optuna.load_study(study_name="S", storage=open_storage(str(journal))[0])
    assert again.user_attrs == {"after": 1} and len(again.trials) == 1
    assert journal.read_bytes().startswith(whole)


def test_the_start_up_repair_never_cuts_a_line_another_worker_is_still_writing(
    tmp_path: Path,
) -> None:
    """A writer holds the journal's lock for the whole of its line; the start-up repair took no
    lock, so it cut a line still being written (and the writer's rest then went to the file it
    had replaced): the repair now waits for the lock."""
    journal = tmp_path / "studies.journal"
    _journal(journal, trials=1)
    whole = journal.read_bytes()
    line = b'{"op_code":2,"worker_id":"w","study_id":0,"user_attr":{"k":1}}\n'
    lock = JournalFileSymlinkLock(str(journal))
    lock.acquire()
    with journal.open("ab") as f:  # a slow writer: half its line is on disk
        f.write(line[:20])
        f.flush()
        result: list[Path | None] = []
        repair = threading.Thread(target=lambda: result.append(repair_journal(journal)))
        repair.start()
        time.sleep(1.0)
        assert repair.is_alive() and journal.read_bytes() == whole + line[:20]
        f.write(line[20:])
    lock.release()
    repair.join(timeout=30)
    assert result == [None]  # whole by then: nothing cut, nothing backed up
    assert journal.read_bytes() == whole + line
    assert not list(tmp_path.glob("studies.journal.broken-*"))


def _without(lines: list[bytes], index: int) -> bytes:
    return b"".join(lines[:index] + lines[index + 1 :])


def _changed(lines: list[bytes], index: int, **fields: object) -> bytes:
    record = {**json.loads(lines[index]), **fields}
    lines = [*lines[:index], json.dumps(record).encode() + b"\n", *lines[index + 1 :]]
    return b"".join(lines).replace(b'"NAN"', b"NaN")


def _first_naming(data: bytes, key: str, value: int) -> int:
    """The 1-based number of the first line of ``data`` whose ``key`` is ``value``."""
    lines = data.splitlines()
    return next(n for n, line in enumerate(lines, 1) if json.loads(line).get(key) == value)


@pytest.mark.parametrize(
    "case", ["op_code 99", "trial lost", "NaN value", "a string id", "no state", "a list state"]
)
def test_a_journal_line_that_is_json_but_no_record_is_one_error_naming_it(
    case: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Upstream's replay raised `AssertionError: Should not reach.` for {"op_code": 99} and a
    KeyError for a missing field, in every reader; a record naming a trial whose creating line
    was lost was applied to another trial, or dropped, without a word."""
    journal = workdir / "studies.journal"
    lines = _journal(journal)
    ended = _line_of(lines, 6, 1)  # trial 1's end
    data, line, why = {
        "op_code 99": (b"".join([*lines[:2], b'{"op_code": 99}\n', *lines[2:]]), 3,
                       "op_code 99 is none of Optuna's journal operations, 0 to 10"),
        "trial lost": (_without(lines, _line_of(lines, 4, 1)), None,
                       "names trial 1, which no earlier line created"),
        "NaN value": (_changed(lines, ended, values=["NAN"]), ended + 1,
                      "a value in values is nan, not a finite number"),
        "a string id": (_changed(lines, ended, trial_id="1"), ended + 1,
                        "trial_id is a string, not a whole number >= 0"),
        "no state": (_changed(lines, ended, state=None), ended + 1,
                     "state null is no trial state, 0 to 4"),
        "a list state": (_changed(lines, ended, state=[1]), ended + 1,
                         "state [1] is no trial state, 0 to 4"),
    }[case]  # fmt: skip
    journal.write_bytes(data)
    line = line or _first_naming(data, "trial_id", 1)
    for argv in (["best", "--study", "S"], ["list"]):
        assert main([*argv, "--storage", str(journal)]) == 2
        assert capsys.readouterr().err == _bad_record(journal, line, why)


def test_storage_repair_drops_or_mends_each_bad_record_and_says_so(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`storage repair` said "nothing to repair" of a journal every reader failed on."""
    journal = workdir / "studies.journal"
    lines = _journal(journal)
    lost = _line_of(lines, 4, 1)  # trial 1's creation, deleted outright
    bad = [b'{"op_code": 99}\n', b'{"op_code": 2, "worker_id": "w", "study_id": 0}\n']
    broken = [lines[0], *bad, *lines[1:lost], *lines[lost + 1 :]]
    journal.write_bytes(b"".join(broken))
    assert main(["storage", "repair", str(journal)]) == 0
    (backup,) = workdir.glob("studies.journal.broken-*")
    named = _first_naming(b"".join(broken), "trial_id", 1)
    assert capsys.readouterr().out == (
        f"repaired {journal}: kept {len(broken) - 2} of {len(broken)} lines; dropped line(s) 2 "
        f"(op_code 99 is none of Optuna's journal operations, 0 to 10), 3 (user_attr is null, "
        f"not one name and its value); line(s) {named} had created a trial, or named one no line "
        f"created: a trial takes its place, so that later ones keep their numbers (what later "
        f"lines say of it is kept; left RUNNING, the next run fails it and queues it again); "
        f"the original is kept as {backup}\n"
    )
    study = optuna.load_study(study_name="S", storage=open_storage(str(journal))[0])
    # the lost trial's place is kept, and what later lines said of it: each kept its number
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert [t.value for t in study.trials] == [0.0, 1.0, 2.0]
    assert main(["best", "--study", "S", "--storage", str(journal)]) == 0


def test_a_lost_study_creation_is_repaired_as_a_study_of_its_own(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = workdir / "studies.journal"
    lines = _journal(journal)
    journal.write_bytes(b"".join(lines[1:]))
    assert main(["best", "--study", "S", "--storage", str(journal)]) == 2
    assert "line 1: not a journal record (names study 0, which no earlier line created)" in (
        capsys.readouterr().err
    )
    assert main(["storage", "repair", str(journal)]) == 0
    assert "a study named accelopt-repair-lost-study-N takes its place" in capsys.readouterr().out
    lost = optuna.load_study(
        study_name="accelopt-repair-lost-study-0", storage=open_storage(str(journal))[0]
    )
    assert [t.value for t in lost.trials] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("encoding", ["UTF-16", "Latin-1"])
def test_a_journal_in_another_encoding_is_refused_not_repaired(
    encoding: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A "repair" dropped every line it could not read as UTF-8: a whole study."""
    journal = workdir / "studies.journal"
    lines = _journal(journal)
    if encoding == "UTF-16":
        data, line = b"".join(lines).decode().encode("utf-16"), 1
    else:
        attr = b'{"op_code":2,"worker_id":"w","study_id":0,"user_attr":{"note":"\xe9t\xe9"}}\n'
        data, line = b"".join([*lines[:2], attr, *lines[2:]]), 3
    journal.write_bytes(data)
    shown = "Latin-1 (or Windows-1252)" if encoding == "Latin-1" else encoding
    said = (
        f"accelopt: error: journal file {journal}, line {line} is {shown}, not UTF-8: journal "
        f"files are UTF-8; convert it back (e.g. iconv -f {encoding} -t UTF-8) and check it "
        f"(accelopt storage repair changes no encoding)\n"
    )
    assert main(["best", "--study", "S", "--storage", str(journal)]) == 2
    assert capsys.readouterr().err == said
    assert main(["storage", "repair", str(journal)]) == 2
    assert capsys.readouterr().err == said
    assert journal.read_bytes() == data and not list(workdir.glob("*.broken-*"))


@pytest.mark.parametrize("lost", ["speedup", "accelerators"])
def test_a_trial_whose_attributes_were_lost_is_no_traceback_in_best_and_list(
    lost: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deleted line left the best trial without its speedup: `KeyError: 'speedup'`."""
    journal = workdir / "studies.journal"
    storage = optuna.storages.JournalStorage(JournalFile(str(journal)))
    study = optuna.create_study(study_name="S", storage=storage, direction="maximize")
    for speedup in (1.5, 2.5):
        trial = study.ask()
        trial.set_user_attr("accelerators", {"deepcache": {"cache_interval": 3}})
        trial.set_user_attr("speedup", speedup)
        trial.set_user_attr("feasible", True)
        study.tell(trial, speedup)
    lines = journal.read_bytes().splitlines(keepends=True)
    gone = max(i for i, line in enumerate(lines)
               if lost in json.loads(line).get("user_attr", {}))  # trial 1's  # fmt: skip
    journal.write_bytes(_without(lines, gone))
    assert main(["best", "--study", "S", "--storage", str(journal)]) == 0
    assert main(["list", "--storage", str(journal)]) == 0
    out = capsys.readouterr().out  # trial 1 is measured no more: trial 0 is the best there is
    assert "S: best trial 0: deepcache cache_interval=3\n  speedup 1.50x" in out
    assert "2/? trials  best 1.50x" in out


def test_a_storage_path_that_is_not_a_regular_file_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(workdir / "fifo")  # reading it would wait forever
    assert main(["best", "--study", "S", "--storage", "fifo"]) == 2
    assert "storage fifo is not a journal file" in capsys.readouterr().err


# SQLite: one writer process at a time.


def test_a_second_process_running_trials_on_one_sqlite_file_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four plain `accelopt run`s on the default file measured grid points twice (the lock was
    a no-op for SQLite) and raced to create its tables."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom accelopt.storage import sole_writer\n"
         "with sole_writer('sqlite:///accelopt.db'):\n    print('held', flush=True)\n"
         "    sys.stdin.read()\n"],
        cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert main(["run", "--study", "TinySD-DDIM-10", "--quiet"]) == 2
    finally:
        holder.communicate("")
    err = capsys.readouterr().err
    assert err == (
        f"accelopt: error: another accelopt process is running trials on sqlite:///accelopt.db "
        f"(the file {workdir / 'accelopt.db'}): SQLite cannot serve several workers at once (its "
        f"writers lock each other out and trials are lost); use a journal file on one host "
        f"(--storage accelopt.journal) or PostgreSQL for many hosts (--storage "
        f"postgresql://USER@HOST/DB, password in $PGPASSWORD or ~/.pgpass)\n"
    )
    assert not (workdir / "accelopt.db").exists()  # refused before a table was made


@pytest.mark.parametrize(
    "spelling",
    [
        "sqlite:///file:accelopt.db?uri=true",  # four runs on it measured points twice
        "sqlite:///file:./sub/../accelopt.db?mode=rwc&uri=true",
        "sqlite:///file:acc%2565lopt.db?uri=true",  # %65 once SQLAlchemy read %25: an "e"
        "sqlite:///file://localhost{db}?uri=true&cache=shared",
        "sqlite:///{db}?timeout=5",
        "sqlite+pysqlite:///link/accelopt.db",  # a link to the folder
        "sqlite:///alias.db",  # a link to the file
        "sqlite:///sub/hard.db",  # another name of the same file
    ],
)
def test_every_name_of_a_sqlite_file_is_refused_while_another_runs_trials_on_it(
    spelling: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lock was keyed on the URL's text: a file: URI took none, a hard link another."""
    (workdir / "sub").mkdir()
    db = workdir / "accelopt.db"
    db.write_bytes(b"")  # an empty database, as SQLite makes one
    (workdir / "link").symlink_to(workdir, target_is_directory=True)
    (workdir / "alias.db").symlink_to(db)
    os.link(db, workdir / "sub" / "hard.db")
    url = spelling.format(db=db)
    with storages.sole_writer("sqlite:///accelopt.db"):  # another run, on the plain name
        assert main(["run", "--study", "TinySD-DDIM-10", "--quiet", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"accelopt: error: another accelopt process is running trials on {url} ")
    assert err.endswith(f"{storages.SQLITE_WORKERS}\n")
    assert db.read_bytes() == b""  # refused before a table was made


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("sqlite:///file:x.db?uri=true&vfs=nope", "SQLite's vfs=nope is not one of its own"),
        ("sqlite:///file://db.example/x.db?uri=true", "SQLite takes no host in a file: URI"),
        ("sqlite://alice:s3cret@db.example/x.db", "Invalid SQLite URL"),
    ],
)
def test_a_sqlite_url_whose_file_cannot_be_told_is_refused(
    url: str, said: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--study", "TinySD-DDIM-10", "--quiet", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.splitlines()) == 1 and "s3cret" not in err
    assert list(workdir.iterdir()) == []


def test_the_writer_lock_keeps_no_descriptor_sqlite_does_not_need(workdir: Path) -> None:
    """Its descriptor stays open while SQLAlchemy has the file open (closing it would drop
    SQLite's own locks), and no longer: a fuzz of 2,000 runs had 1,100 left open."""
    import sqlalchemy

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    url, before = "sqlite:///x.db", descriptors()
    with storages.sole_writer(url):
        engine = sqlalchemy.create_engine(url)
        connection = engine.connect()  # as a run's storage keeps it
        connection.exec_driver_sql("CREATE TABLE t (x)")
    opened = descriptors()
    with storages.sole_writer(url):
        pass
    assert descriptors() == opened + 1  # the file is open in SQLAlchemy: kept
    connection.close()
    engine.dispose()
    for _ in range(5):
        with storages.sole_writer(url):
            pass
    assert descriptors() == before  # SQLAlchemy's is closed, and so is each of ours


def test_sqlite_in_memory_needs_no_writer_lock(workdir: Path) -> None:
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:m.db?uri=true&mode=memory"):
        assert storages.sqlite_database(url) is None
        with storages.sole_writer(url), storages.sole_writer(url):
            pass
    assert list(workdir.iterdir()) == []


# Trials whose worker died before it recorded its owner.


def test_an_ownerless_running_trial_is_stale_once_the_grace_is_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study = optuna.create_study()
    orphan = study.ask()  # its worker died before owner()
    assert recover_stale_trials(study) == []  # it may be a writer that takes no lock
    monkeypatch.setattr(storages, "ORPHAN_GRACE", 0.0)
    assert recover_stale_trials(study) == [orphan.number]
    frozen = study.trials[orphan.number]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["failed"] == "its worker died before it recorded its owner"
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["failed_trial"] == orphan.number
