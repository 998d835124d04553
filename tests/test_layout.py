"""The package's shape: rooms, the layer order as a lint, and the old import paths.

The layers themselves are import-linter's contract in pyproject.toml (``make lint`` runs it);
these tests show the contract can fail, and pin what the linter cannot see.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "accelopt"
LINT = Path(sys.executable).with_name("lint-imports")
MAX_TOP_LEVEL = 13  # modules beside the packages, __init__ and __main__ included
MAX_FUNCTION_LINES = 80


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # this copy's accelopt, not the installed one
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True)  # fmt: skip


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's source and pyproject.toml in a folder of its own (no weights)."""
    root = tmp_path_factory.mktemp("layout")
    shutil.copytree(
        PACKAGE, root / "accelopt", ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


def test_the_layer_contracts_hold_and_fail_on_an_import_that_points_up(copy: Path) -> None:
    kept = _lint(copy)
    assert kept.returncode == 0, kept.stdout
    assert "2 kept, 0 broken" in kept.stdout
    timing = copy / "accelopt" / "measure" / "timing.py"
    source = timing.read_text()
    try:
        timing.write_text(source + "\nfrom accelopt.study import loop  # noqa\n")
        broken = _lint(copy)
    finally:
        timing.write_text(source)
    assert broken.returncode == 1
    assert "Rooms import only from the layers below them BROKEN" in broken.stdout
    assert "accelopt.measure.timing -> accelopt.study.loop" in broken.stdout


def test_a_product_module_importing_the_test_helpers_breaks_the_lint(copy: Path) -> None:
    loading = copy / "accelopt" / "pipelines" / "loading.py"
    source = loading.read_text()
    try:
        loading.write_text(source + "\nimport accelopt.testing  # noqa\n")
        broken = _lint(copy)
    finally:
        loading.write_text(source)
    assert broken.returncode == 1
    assert "accelopt.testing is for tests only BROKEN" in broken.stdout


def test_the_top_level_holds_few_modules_and_no_function_is_long() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    assert long == []


def test_an_old_import_path_still_works_and_says_where_it_went() -> None:
    from accelopt.measure import metrics
    from accelopt.pipelines import schedulers

    sys.modules.pop("accelopt.metrics", None)
    sys.modules.pop("accelopt.schedulers", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from accelopt.metrics import ClipScorer
        from accelopt.schedulers import set_scheduler
    assert ClipScorer is metrics.ClipScorer
    assert set_scheduler is schedulers.set_scheduler
    said = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert "accelopt.metrics moved to accelopt.measure.metrics" in said[0]
    assert "accelopt.schedulers moved to accelopt.pipelines.schedulers" in said[1]
