"""Many trials and workers: one study from its spec to its answer.

- ``loop``: the run loop (``run_study``): trials until the budget, a requirement or a timeout
- ``prepare``: creating or resuming a study, old spellings, the execution mode it runs under
- ``workers``: which trial each process starts, under a lock; ``launch``: ``--workers N``
- ``warmstart``: a new study starts from its neighbours' best configurations
- ``confirm``: held-out confirmation of the top configurations before export
- ``sweep``: a matrix of studies; ``results``: best, frontier, requirement, never measured
"""

from __future__ import annotations

from typing import Any

__all__ = ["Outcome", "run_study"]


def __getattr__(name: str) -> Any:
    # ``from accelopt.study import run_study`` as before the room existed, without loading the
    # run loop (torch, diffusers) for those who import only ``accelopt.study.results``.
    if name in __all__:
        from accelopt.study import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'accelopt.study' has no attribute {name!r}")
