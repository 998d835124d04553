"""accelopt: search the knobs of training-free diffusion accelerators with Optuna.

The package imports nothing heavy at import time; torch and diffusers load inside the functions
that need them, so ``accelopt --help`` stays instant.

"The seed system", in comments and docs, is what accelopt replaces: ``traversal_search.py`` (a
grid search over the same accelerators, answers written into ``search_params.json``) and
``auto_code_gen_v4.py`` (code generated from that file). Its search ranges, store keys and file
layout (``accelopt.params_store.seed_layout``) are kept, so code written against it keeps working.
"""

from __future__ import annotations

# First: from here on, Ctrl-C while the command starts is one line and 130, not a traceback.
from accelopt.errors import AccelOptError

# isort: split
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

__all__ = ["AccelOptError", "__version__"]

__version__ = "0.1.0"

# Modules that moved into rooms after 0.1.0 (the layout issue), importable under their old
# names for one release with a DeprecationWarning, then removed.
MOVED = {
    "accelopt.metrics": "accelopt.measure.metrics",
    "accelopt.timing": "accelopt.measure.timing",
    "accelopt.constraints": "accelopt.measure.constraints",
    "accelopt.schedulers": "accelopt.pipelines.schedulers",
    "accelopt.schedules": "accelopt.accelerators.schedules",
    "accelopt.objective": "accelopt.trial.objective",
    "accelopt.search": "accelopt.trial.space",
    "accelopt.results": "accelopt.study.results",
    "accelopt.confirm": "accelopt.study.confirm",
    "accelopt.warmstart": "accelopt.study.warmstart",
    "accelopt.store": "accelopt.params_store.file",
    "accelopt.seed_format": "accelopt.params_store.seed_layout",
    "accelopt.entries": "accelopt.params_store.check",
}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and gives a module that forwards every attribute to the new
    one, warning once at import. Nothing is copied: the new module stays the only one."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)  # fmt: skip
        target = importlib.import_module(new)
        module.__getattr__ = lambda attr: getattr(target, attr)  # type: ignore[method-assign]
        module.__dir__ = lambda: dir(target)  # type: ignore[method-assign]


if not any(isinstance(f, _Moved) for f in sys.meta_path):
    sys.meta_path.append(_Moved())
