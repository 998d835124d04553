"""Break one accelerator knob at a time and check that some test fails.

    python -m bench.mutations                      # every mutant, the accelerator tests
    python -m bench.mutations tgate.sp_interval    # one

Each mutant makes one knob ignored or wrong where the accelerator's patch is built (so the
single methods and the combinations all see it), and runs the tests that pin what the knobs do
(tests/accelerators_tests/test_accelerators.py, tests/accelerators_tests/test_schedules.py),
stopping at the first failure. A mutant
no test kills is a knob the tests do not pin. This file is also the pytest plugin that plants the
mutant (``-p bench.mutations``, chosen by ``$ACCELOPT_MUTANT``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = (
    "tests/accelerators_tests/test_accelerators.py",
    "tests/accelerators_tests/test_schedules.py",
)

# knob -> how the mutant changes its value (the others keep theirs)
MUTANTS: dict[str, Callable[[Any], Any]] = {
    "deepcache.cache_interval": lambda v: 3,  # ignored: the default
    "deepcache.cache_branch_id": lambda v: 0,
    "tome.ratio": lambda v: v / 2,
    "tome.max_downsample": lambda v: 8,
    "tome.use_rand": lambda v: False,
    "tome.seed": lambda v: 0,
    "tgate.gate_step": lambda v: 10,
    "tgate.sp_interval": lambda v: 5,
    "tgate.fi_interval": lambda v: 1,
    "tgate.warm_up": lambda v: 2,
}


def plant(mutant: str) -> None:
    """Make the patches of ``mutant``'s accelerator see the changed knob."""
    from accelopt.accelerators import deepcache, tgate, tome

    name, knob = mutant.split(".")
    change = MUTANTS[mutant]

    def mutated(config: Any) -> Any:
        return dataclasses.replace(config, **{knob: change(getattr(config, knob))})

    if name == "deepcache":
        init = deepcache._DeepCachePatch.__init__
        deepcache._DeepCachePatch.__init__ = (  # type: ignore[method-assign]
            lambda self, unet, config, counted=True: init(self, unet, mutated(config), counted)
        )
    elif name == "tgate":
        init_t = tgate._TGatePatch.__init__
        tgate._TGatePatch.__init__ = (  # type: ignore[method-assign]
            lambda self, pipe, config, dc=None: init_t(self, pipe, mutated(config), dc)
        )
    else:
        apply = tome.ToMe.apply
        tome.ToMe.apply = (  # type: ignore[method-assign]
            lambda self, pipe, config, traits: apply(self, pipe, mutated(config), traits)
        )


def pytest_configure(config: Any) -> None:
    mutant = os.environ.get("ACCELOPT_MUTANT")
    if mutant:
        plant(mutant)


def run(mutant: str) -> tuple[bool, str, float]:
    """(killed, the first failing test or the tail of the output, seconds)."""
    # The checkout first: pytest imports the plugin (bench.mutations) before it reads its ini.
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "ACCELOPT_MUTANT": mutant, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "bench.mutations",
         "-p", "no:cacheprovider", *TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    tail = failed[0] if failed else result.stdout.strip().splitlines()[-1]
    return result.returncode != 0 and bool(failed), tail, time.perf_counter() - started


def main() -> int:
    chosen = sys.argv[1:] or list(MUTANTS)
    survived = 0
    for mutant in chosen:
        killed, why, seconds = run(mutant)
        survived += not killed
        print(f"{mutant:26} {'killed' if killed else 'SURVIVED'} ({seconds:.0f} s): {why}",
              flush=True)  # fmt: skip
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
