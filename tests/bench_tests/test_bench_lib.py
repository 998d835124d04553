"""bench/_lib.py: one record header and one command line for every script; light imports."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import _lib

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_a_record_stores_reruns_the_module() -> None:
    assert (
        _lib.command("replay", ["a.json", "--seeds", "2"])
        == "python -m bench.replay a.json --seeds 2"
    )
    assert (
        _lib.command("all", ["--out", "my dir"], "python3")
        == "python3 -m bench.all --out 'my dir'"
    )


def test_a_header_has_the_keys_asked_for_in_that_order() -> None:
    head = _lib.header("torch", "date", "command", "machine", "python", script="x", argv=["--a"])
    assert list(head) == ["torch", "date", "command", "machine", "python"]
    assert head["date"] == time.strftime(_lib.DAY) and head["command"] == "python -m bench.x --a"
    assert head["machine"].endswith(" cores")
    cpu = _lib.header("device", "card", "versions", device="cpu", versions=("torch", "nope"))
    assert cpu["device"] == cpu["card"] and cpu["device"].startswith("cpu (")
    assert cpu["versions"]["torch"] and cpu["versions"]["nope"] is None


def test_a_header_refuses_an_unknown_field_and_a_device_field_without_a_device() -> None:
    with pytest.raises(ValueError, match="unknown header field 'card_name'"):
        _lib.header("date", "card_name")
    with pytest.raises(ValueError, match="needs device="):
        _lib.header("device")


def test_the_table_writers_import_no_torch() -> None:
    code = (
        "import sys; import bench.tables, bench.landscape_records, bench._lib; "
        "print(sorted(m for m in ('torch', 'diffusers', 'bench.landscape') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
