"""accelopt: search the knobs of training-free diffusion accelerators with Optuna.

The package imports nothing heavy at import time; torch and diffusers load inside the functions
that need them, so ``accelopt --help`` stays instant.
"""

from __future__ import annotations

from accelopt.errors import AccelOptError

__all__ = ["AccelOptError", "__version__"]

__version__ = "0.1.0"
