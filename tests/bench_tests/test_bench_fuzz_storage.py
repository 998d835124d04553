"""bench/fuzz_storage.py on a few cases of each part: none fails on a journal, URLs and SQLite
names of ours, and a command that raises is counted as a failure (the fuzz can fail)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from accelopt.storage import JournalFile
from bench import fuzz_storage


def test_a_few_cases_of_each_part_find_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "study.journal"  # the study the journal part reads, as a run stores it
    storage = optuna.storages.JournalStorage(JournalFile(str(journal)))
    study = optuna.create_study(study_name=fuzz_storage.STUDY, storage=storage,
                                direction="maximize")  # fmt: skip
    for speedup in (1.5, 2.5):
        trial = study.ask()
        trial.suggest_int("deepcache.cache_interval", 2, 5)
        for key, value in {"accelerators": {"deepcache": {"cache_interval": 3}},
                           "speedup": speedup, "feasible": True}.items():  # fmt: skip
            trial.set_user_attr(key, value)
        study.tell(trial, speedup)
    argv = ["--cases", "12", "--seed", "7", "--journal", str(journal), "--timeout", "120"]
    assert fuzz_storage.main(argv) == 0
    out = capsys.readouterr().out
    for part in ("journal", "url", "sqlite"):
        assert f"{part}: 12 cases, " in out
    assert out.count(" 0 failures, seed 7") == 3


def test_a_command_that_raises_is_a_failure() -> None:
    code, out = fuzz_storage.cli(["best", "--study", "X", "--storage", "no/such/dir/x.journal",
                                  "--json", "--no-such-flag"], 60)  # fmt: skip
    assert (code, fuzz_storage._bad(code, out)) == (2, None)  # a one-line error is no failure
    assert fuzz_storage._bad("raised KeyError", "") == "raised KeyError"
    assert fuzz_storage._bad(0, "Traceback (most recent call last):") is not None
