"""What a hostile or unlucky store, task file or output folder does at the command line.

Every case goes through ``accelopt.cli.main`` as a user would meet it: exit codes, the lines
printed, and which files exist afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from accelopt.cli import main
from accelopt.params_store.file import FORMAT, VERSION
from accelopt.testing import make_entry

REQUEST = ["codegen", "--pipe", "SDXL", "--sched", "DDIM", "--steps", "25"]


def write_store(path: Path, entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "entries": entries}))
    return path


def good_store(tmp_path: Path) -> Path:
    entry = make_entry()
    return write_store(tmp_path / "store.json", {entry["key"]: entry})


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- task files write only inside -o --------------------------------------------------------


@pytest.mark.parametrize("output", ["../escaped.py", "/tmp/accelopt-absolute.py", "a/../../x.py"])
def test_a_task_output_outside_the_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str
) -> None:
    store = good_store(tmp_path)
    tasks = tmp_path / "tasks.json"
    first = {"pipe": "SDXL", "sched": "DDIM", "steps": 25, "output": "fine.py"}
    tasks.write_text(json.dumps([first, {**first, "output": output}]))
    out = tmp_path / "scripts"
    code, _, err = run(
        ["codegen", "--tasks", str(tasks), "--store", str(store), "-o", str(out)], capsys
    )
    assert code == 2
    assert f"task output {output} must be a relative path inside -o {out}" in err
    assert not out.exists()  # nothing written: every output is checked before the first
    assert not (tmp_path / "escaped.py").exists() and not (tmp_path / "x.py").exists()
    assert not Path("/tmp/accelopt-absolute.py").exists()


def test_a_task_output_through_a_link_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = good_store(tmp_path)
    out = tmp_path / "scripts"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"pipe": "SDXL", "sched": "DDIM", "steps": 25,
                                  "output": "link/site.pth"}]))  # fmt: skip
    code, _, err = run(
        ["codegen", "--tasks", str(tasks), "--store", str(store), "-o", str(out), "--force"],
        capsys,
    )
    assert code == 2
    assert "task output link/site.pth leads outside -o" in err
    assert list(elsewhere.iterdir()) == []


# ---- OS errors on an output: one line, exit 2, nothing written ------------------------------

LONG = "a" * 300  # over the 255 bytes a file name may have


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda d: d / f"{LONG}.py", "File name too long: give a shorter name"),
        (lambda d: d / "loop", "Too many levels of symbolic links: a symbolic link in the path "
                               "loops; fix the link or give another path"),
        (lambda d: d / "folder", "is a folder; name a file to write"),
        (lambda d: d / "file.py" / "x.py", "Not a directory: a folder in the path is a file"),
        (lambda d: _fifo(d / "fifo"), "is not a regular file (a FIFO, a socket or a device)"),
    ],
    ids=["long-name", "symlink-loop", "folder", "through-a-file", "fifo"],
)  # fmt: skip
def test_an_output_the_os_refuses_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, why: str
) -> None:
    store = good_store(tmp_path)
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.py").write_text("kept\n")
    out = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run([*REQUEST, "--store", str(store), "-o", str(out), "--force"], capsys)
    assert code == 2
    assert err.startswith("accelopt: error: ") and err.count("\n") == 1
    assert why in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "file.py").read_text() == "kept\n"


@pytest.mark.parametrize(
    ("outputs", "why"),
    [
        (["a.py", "same/a.py"], "tasks 0 and 1 both write {out}/a.py; give each its own "
                                '"output" (nothing was written)'),
        ([None, None], "tasks 0 and 1 both write {out}/SDXL-DDIM-25.py"),
        (["fine.py", f"{LONG}.py"], "cannot write task 1's output aaaa"),
        (["fine.py", "loop/x.py"], "task output loop/x.py in -o {out}: Too many levels of "
                                   "symbolic links"),
        (["fine.py", "folder"], "task 1's output folder is a folder; name a file to write"),
        (["fine.py", "\ud800.py"], "task output \\ud800.py is not a file name"),
    ],
    ids=["same-file", "same-default-name", "long-name", "symlink-loop", "folder", "surrogate"],
)  # fmt: skip
def test_task_outputs_are_checked_before_any_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], outputs: list[str | None], why: str
) -> None:
    store = good_store(tmp_path)
    out = tmp_path / "scripts"
    out.mkdir()
    (out / "same").symlink_to(".")  # inside -o: allowed, and the same folder
    (out / "loop").symlink_to("loop")
    (out / "folder").mkdir()
    tasks = tmp_path / "tasks.json"
    task = {"pipe": "SDXL", "sched": "DDIM", "steps": 25}
    tasks.write_text(json.dumps([{**task, "output": o} if o else task for o in outputs]))
    argv = ["codegen", "--tasks", str(tasks), "--store", str(store), "-o", str(out), "--force"]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("accelopt: error: ") and err.count("\n") == 1
    assert why.format(out=out) in err
    assert sorted(p.name for p in out.iterdir()) == ["folder", "loop", "same"]  # nothing new


def test_a_report_output_the_os_refuses_is_one_line_before_any_study_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "report.html"
    folder.mkdir()
    storage = f"sqlite:///{tmp_path / 'none.db'}"
    refused = [(folder, f"-o {folder} is a folder; name a file to write"),
               (tmp_path / f"{LONG}.html", "File name too long: give a shorter name")]  # fmt: skip
    for out, why in refused:
        argv = ["report", "--study", "S", "--storage", storage, "-o", str(out), "--force"]
        code, _, err = run(argv, capsys)
        assert (code, err.count("\n")) == (2, 1) and why in err
    assert not (tmp_path / "none.db").exists()  # refused before the storage was opened


# ---- stored strings on a terminal -----------------------------------------------------------


def test_stored_strings_reach_the_terminal_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = make_entry("SDXL", "DDIM", 30, key="\x1b]0;title\x07" + "k" * 3000)
    store = write_store(tmp_path / "store.json", {entry["key"]: entry})
    argv = ["codegen", "--pipe", "SDXL", "--sched", "DDIM", "--steps", "30", "--store", str(store)]
    code, out, err = run([*argv, "-o", str(tmp_path / "a.py")], capsys)
    assert code == 0
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "\\x1b]0;title\\x07kkk" in out
    assert len(out) < 1000  # the 3,000-character key is cut, saying how much is left
    assert "more characters)" in out


def test_a_task_file_cannot_forge_error_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = good_store(tmp_path)
    tasks = tmp_path / "tasks.json"
    forged = "SDXL\naccelopt: all good\x1b[2J" + "x" * 50_000
    tasks.write_text(json.dumps([{"pipe": forged, "sched": "DDIM", "steps": 25}] * 11))
    code, _, err = run(
        ["codegen", "--tasks", str(tasks), "--store", str(store), "-o", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("accelopt: error: no entry answers SDXL\\n")
    assert "\x1b" not in err
    assert len(err) < 2200  # 11 requests of 50,000 characters each, cut to one line


# ---- malformed stores -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"format": "accelopt-params-store", "version": 1, "entries": {"k": ' + "1" * 5000 + "}}",
         "not valid JSON"),
        ("[" * 2000 + "]" * 2000, "nested too deep"),
        ("\xff\xfe", "not valid JSON"),
    ],
)  # fmt: skip
def test_a_malformed_store_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, why: str
) -> None:
    store = tmp_path / "store.json"
    store.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    code, _, err = run([*REQUEST, "--store", str(store), "-o", str(tmp_path / "a.py")], capsys)
    assert code == 2
    assert why in err and err.count("\n") == 1
    assert store.read_bytes()  # left as it was


def test_one_junk_entry_is_skipped_and_the_good_one_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = make_entry(speedup=2.0)
    nested: Any = 1
    for _ in range(200):
        nested = {"k": nested}
    deep = make_entry("SDXL", "DDIM", 25, {"deepcache": {"cache_interval": nested}}, key="deep")
    fake = make_entry("TinySD", "DDIM", 25, speedup=float("inf"), key="fake")
    fake["model"] = "someone/else"
    fake["pipeline"] = "SDXL"
    store = write_store(tmp_path / "s.json", {good["key"]: good, "deep": deep, "fake": fake})
    script = tmp_path / "a.py"
    code, out, err = run([*REQUEST, "--store", str(store), "-o", str(script)], capsys)
    assert code == 0
    assert "skipped store entry deep: nested deeper than" in err
    assert "skipped store entry fake: measured.speedup: Input should be a finite number" in err
    assert f"({good['key']})" in out
    assert "read 1 usable entries of 3" in err
    compile(script.read_text(), str(script), "exec")  # the script parses


@pytest.mark.parametrize("left_out", ["score_loss", "device"])
def test_codegen_reads_only_what_the_entry_check_guarantees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], left_out: str
) -> None:
    """The check lets an entry leave out any measurement but the speedup: codegen and the
    store's queries do without it (an entry with no score loss meets no loss budget)."""
    entry = make_entry()
    del entry["measured"][left_out]
    store = write_store(tmp_path / "store.json", {entry["key"]: entry})
    script = tmp_path / "a.py"
    code, out, err = run([*REQUEST, "--store", str(store), "-o", str(script)], capsys)
    assert run(["store", "check", "--store", str(store)], capsys)[0] == 0
    if left_out == "device":
        assert code == 0 and "Measured by accelopt on a device not recorded: 2.00x" in (
            script.read_text()
        )
    else:
        assert (code, out) == (2, "")
        assert "(nearest: SDXL DDIM 25 deepcache: 2.00x, loss n/a); make one with" in err


def test_a_store_swapped_for_a_fifo_after_any_check_by_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the path says when asked by name (``stat``, ``lstat``: here always the store
    it was), what is opened is what is checked: a FIFO there is refused, never waited on."""
    import threading

    store = good_store(tmp_path)
    was = os.stat(store)
    store.unlink()
    os.mkfifo(store)  # as if swapped in just after each check by name
    real_stat, real_lstat = os.stat, os.lstat

    def stale(real: Any) -> Any:
        def answer(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            return was if os.fspath(path) == str(store) else real(path, *args, **kwargs)

        return answer

    monkeypatch.setattr(os, "stat", stale(real_stat))
    monkeypatch.setattr(os, "lstat", stale(real_lstat))
    result: list[int] = []
    argv = [*REQUEST, "--store", str(store), "-o", str(tmp_path / "a.py")]
    codegen = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    codegen.start()
    codegen.join(60)
    hung = codegen.is_alive()
    if hung:  # let the blocked open go: a writer comes, writes nothing, leaves
        os.close(os.open(store, os.O_WRONLY))
        codegen.join()
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert not hung, "codegen waited on the FIFO"
    assert result == [2] and f"{store} is not a regular file" in err


def test_a_fifo_store_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "store.json"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "accelopt", *REQUEST, "--store", str(fifo), "-o",
         str(tmp_path / "a.py")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{fifo} is not a regular file" in result.stderr


def test_a_mistyped_store_path_says_it_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "serach_params.json"
    code, _, err = run([*REQUEST, "--store", str(missing), "-o", str(tmp_path / "a.py")], capsys)
    assert code == 2
    assert f"store {missing} does not exist" in err
    assert "empty" not in err


# ---- accelopt store check -------------------------------------------------------------------


def test_store_check_lists_what_codegen_would_skip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = good_store(tmp_path)
    assert run(["store", "check", "--store", str(store)], capsys)[0] == 0
    bad = make_entry("SDXL", "DDIM", 25, {"tome": {"ratio": 0.5, "max_downsample": 1}}, key="b")
    entries = json.loads(store.read_text())["entries"]
    write_store(store, {**entries, "b": bad})
    code, out, err = run(["store", "check", "--store", str(store)], capsys)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("ok       ('SDXL', 'DDIM', '25'")
    assert lines[1].startswith("skipped  b: tome.max_downsample=1 is not valid here")
    assert err.strip().endswith("(accelopt layout): 1 usable, 1 skipped")
