"""accelopt: search the knobs of training-free diffusion accelerators with Optuna.

The package imports nothing heavy at import time; torch and diffusers load inside the functions
that need them, so ``accelopt --help`` stays instant.

"The seed system", in comments and docs, is what accelopt replaces: ``traversal_search.py`` (a
grid search over the same accelerators, answers written into ``search_params.json``) and
``auto_code_gen_v4.py`` (code generated from that file). Its search ranges, store keys and file
layout (``accelopt.seed_format``) are kept, so code written against it keeps working.
"""

from __future__ import annotations

from accelopt.errors import AccelOptError

__all__ = ["AccelOptError", "__version__"]

__version__ = "0.1.0"
