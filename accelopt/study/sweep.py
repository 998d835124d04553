"""Run a matrix of studies in order, skipping finished ones and resuming half-done ones.

The default matrix is the seed system's: SD1.5, SD2.1, SDXL x DDIM, DPM-Solver++, UniPC x 20,
25, 50 steps x every declared accelerator combination. Every study is an ordinary ``accelopt
run``, so Ctrl-C and a restart lose nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from accelopt.errors import AccelOptError

__all__ = ["DEFAULT_PIPES", "DEFAULT_SCHEDS", "DEFAULT_STEPS", "Row", "matrix", "sweep"]

DEFAULT_PIPES = ("SD1.5", "SD2.1", "SDXL")
DEFAULT_SCHEDS = ("DDIM", "DPM-Solver++", "UniPC")
DEFAULT_STEPS = (20, 25, 50)


def default_targets() -> tuple[str, ...]:
    """Every declared combination that some default pipeline can take (the seed system's:
    MagCache, a transformer's cache, is not among them)."""
    from accelopt.accelerators import ORDER, PLANS, applicable
    from accelopt.pipelines import model_info

    families = [info.family for info in map(model_info, DEFAULT_PIPES) if info is not None]
    return tuple(
        "+".join(n for n in ORDER if n in plan)
        for plan in sorted(PLANS, key=lambda p: (len(p), sorted(p)))
        if any(plan <= set(applicable(family)) for family in families)
    )


@dataclass(frozen=True)
class Row:
    """One study of a sweep: how it ended."""

    study: str
    state: str  # finished already / ran / not applicable / error: ...
    trials: int = 0
    best_speedup: float | None = None
    score_loss: float | None = None


def matrix(
    pipes: Iterable[str], scheds: Iterable[str], steps: Iterable[int], targets: Iterable[str]
) -> list[str]:
    """Study names, pipelines outermost, in a stable order."""
    return [f"{p}-{s}-{n}-{t}" for p, s, n, t in itertools.product(pipes, scheds, steps, targets)]


def sweep(
    names: Sequence[str],
    run: Callable[[Any], Any],
    load: Callable[[str], Any],
    log: Callable[[str], None],
) -> list[Row]:
    """Run every study ``name`` with ``run(spec)``; a bad one is reported and skipped."""
    rows = []
    for i, name in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {name}")
        try:
            spec = load(name)
        except AccelOptError as err:
            rows.append(Row(name, f"not applicable: {err}" if "can take" in str(err) else
                            f"error: {err}"))  # fmt: skip
            continue
        outcome = run(spec)
        best = outcome.best
        counted = sum(t.state.name in ("COMPLETE", "PRUNED") for t in outcome.study.trials)
        rows.append(Row(
            name,
            "finished already" if outcome.already_finished else f"ran {outcome.ran}",
            counted,
            None if best is None else best.user_attrs["speedup"],
            None if best is None else best.user_attrs["score_loss"],
        ))  # fmt: skip
    return rows


def table(rows: Sequence[Row]) -> str:
    """The sweep's closing table."""
    lines = [f"{'study':48} {'trials':>6} {'best':>7} {'loss':>7}  state"]
    for r in rows:
        best = "-" if r.best_speedup is None else f"{r.best_speedup:.2f}x"
        loss = "-" if r.score_loss is None else f"{100 * r.score_loss:.2f}%"
        lines.append(f"{r.study:48} {r.trials:>6} {best:>7} {loss:>7}  {r.state}")
    return "\n".join(lines)
