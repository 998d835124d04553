"""Flag groups more than one command takes, each defined once, and what the CLI reads from
them (a spec with its overrides, a requirement, fidelity bounds, weights).

Only light imports at module level: the parser is built for ``accelopt --help`` too.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from accelopt.errors import AccelOptError

if TYPE_CHECKING:
    from accelopt.spec import StudySpec
    from accelopt.study.results import Requirement

__all__ = [
    "bound_args",
    "bounds",
    "check_loss_budget",
    "device",
    "export_options",
    "random_weights",
    "requirement",
    "requirement_of",
    "spec_from",
    "storage",
    "study",
    "study_or_spec",
    "trial_options",
    "warn_loss_budget",
    "weights",
]

STORAGE_HELP = "Optuna storage URL or journal file path"
DEVICE_HELP = "cpu, cuda, cuda:N (default: cuda if present)"
STORE_HELP = "params store (default: $ACCELOPT_STORE or search_params.json)"
BOUND_HELP = {
    "psnr_min": "PSNR against the baseline image, at least DB",
    "ssim_min": "SSIM against the baseline image, at least S",
    "clip_image_min": "CLIP image-embedding similarity to the baseline image, at least C",
    "lpips_max": "LPIPS distance to the baseline image, at most D (needs its weights)",
}


def storage(p: argparse.ArgumentParser, help: str = STORAGE_HELP) -> None:
    """``--storage``: where the studies are stored."""
    p.add_argument("--storage", help=help)


def study(p: argparse.ArgumentParser) -> None:
    """``--study NAME``, required: a stored study."""
    p.add_argument("--study", required=True, help="study NAME")


def study_or_spec(p: argparse.ArgumentParser, study_help: str, spec_help: str) -> None:
    """``--study NAME`` or ``--spec FILE`` (exactly one: ``spec_from`` checks)."""
    p.add_argument("--study", help=study_help)
    p.add_argument("--spec", help=spec_help)


def device(p: argparse.ArgumentParser, help: str = DEVICE_HELP) -> None:
    """``--device``: checked against this machine before anything loads (``main``)."""
    p.add_argument("--device", help=help)


def random_weights(p: argparse.ArgumentParser, help: str = "as the study was run") -> None:
    """``--random-weights``: the architecture with random weights (speed only)."""
    p.add_argument("--random-weights", action="store_true", help=help)


def weights(args: argparse.Namespace) -> str:
    """The weights ``--random-weights`` asks for."""
    return "random" if args.random_weights else "pretrained"


def requirement(p: argparse.ArgumentParser, verb: str) -> None:
    """``--req-speedup X`` / ``--req-time S``: the seed system's requirement modes."""
    p.add_argument("--req-speedup", type=float, help=f"{verb} the first feasible trial this fast")
    p.add_argument(
        "--req-time",
        type=float,
        metavar="S",
        help=f"{verb} the first feasible trial at or under S seconds per image",
    )


def requirement_of(args: argparse.Namespace) -> Requirement:
    """The requirement the flags give (at most one of the two)."""
    from accelopt.study.results import Requirement

    if args.req_speedup is not None and args.req_time is not None:
        raise AccelOptError("give at most one of --req-speedup and --req-time")
    return Requirement(args.req_speedup, args.req_time)


def bounds(p: argparse.ArgumentParser, what: str) -> None:
    """The fidelity bound flags (``--min-psnr`` ...), one per constraint key."""
    from accelopt.params_store.query import BOUND_FLAGS

    for key, flag in BOUND_FLAGS.items():
        p.add_argument(flag, dest=key, type=float, metavar=key.split("_")[0].upper(),
                       help=f"{what}: {BOUND_HELP[key]}")  # fmt: skip


def bound_args(args: argparse.Namespace) -> dict[str, Any]:
    """The fidelity bounds given on the command line, by constraint key."""
    from accelopt.params_store.query import BOUND_FLAGS

    return {k: getattr(args, k) for k in BOUND_FLAGS if getattr(args, k, None) is not None}


def check_loss_budget(value: float | None, flag: str = "--max-score-loss") -> None:
    """Refuse a score-loss budget written as a percent (``2`` for 2%), naming the fraction."""
    from accelopt.measure.constraints import loss_budget_refusal

    why = None if value is None else loss_budget_refusal(value, f"{flag} {value:g}")
    if why is not None:
        raise AccelOptError(why)


def warn_loss_budget(value: float | None, given: str) -> None:
    """Warn on stderr, once, about a score-loss budget over 10% (``given``: where it is set)."""
    import sys

    from accelopt.measure.constraints import loss_budget_warning

    why = None if value is None else loss_budget_warning(value, given)
    if why is not None:
        print(f"accelopt: warning: {why}", file=sys.stderr)


def trial_options(p: argparse.ArgumentParser) -> None:
    """What every process that runs trials of a study takes (run, worker)."""
    from accelopt.spec import EXECUTIONS, OBJECTIVES

    p.add_argument("--n-trials", type=int, help="the study's total trials (default: spec's)")
    p.add_argument("--timeout", type=float, help="stop starting trials after SECONDS")
    requirement(p, "stop at")
    device(p)
    random_weights(p, "the architecture, random weights")
    p.add_argument("--objective", choices=OBJECTIVES, type=str.lower,
                   help="speedup: the fastest within the score-loss budget (default); pareto: "
                   "speedup and score loss together, the whole frontier kept (the spec's "
                   "objective)")  # fmt: skip
    p.add_argument("--execution", choices=EXECUTIONS, type=str.lower,
                   help="how the baseline and every trial run: eager, compile (inductor), "
                   "cuda-graphs (inductor's kernels replayed as CUDA graphs, an accelerated "
                   "pipeline's compiled per block); auto (default): "
                   "eager on a CPU, on CUDA the mode whose plain baseline is fastest")  # fmt: skip
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        help="seconds between a trial's heartbeats on a database (default 30)",
    )
    p.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                   help="start a new study from its neighbours' best configurations "
                   "(default: on)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress (bars or lines)")


def export_options(p: argparse.ArgumentParser) -> None:
    """How a study is exported (export, run --export, sweep --export)."""
    from accelopt.params_store.seed_layout import LAYOUTS  # light: no torch

    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--format", choices=LAYOUTS, default="accelopt",
                   help="store layout: accelopt's (default) or seed: the flat "
                   "search_params.json that traversal_search.py wrote")  # fmt: skip
    p.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="before exporting, measure the K best again on held-out prompts "
                   "(0: skip; default 3)")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="export a configuration whose speedup the timing pairs could "
                   "not tell from the baseline's (undecidable); a failed bound never "
                   "is")  # fmt: skip


def spec_from(args: argparse.Namespace) -> StudySpec:
    """The spec ``--study`` or ``--spec`` names, with the flags' overrides (checked as the spec
    file's own values are)."""
    from pathlib import Path

    from accelopt.spec import load_spec

    if (args.study is None) == (args.spec is None):
        raise AccelOptError("give exactly one of --study NAME or --spec FILE")
    spec = load_spec(args.study) if args.spec is None else load_spec(path=Path(args.spec))
    changes: dict[str, Any] = {}
    if getattr(args, "sampler", None):
        changes["sampler"] = spec.sampler.__class__(args.sampler, spec.sampler.seed)
    if getattr(args, "seed", None) is not None:
        sampler = changes.get("sampler", spec.sampler)
        changes["sampler"] = sampler.__class__(sampler.name, args.seed)
    if getattr(args, "max_score_loss", None) is not None:
        changes["max_score_loss"] = args.max_score_loss
    if bound_args(args):
        changes["constraints"] = dataclasses.replace(spec.constraints, **bound_args(args))
    if getattr(args, "objective", None):
        changes["objective"] = args.objective
    if getattr(args, "execution", None):
        changes["execution"] = args.execution
    return spec.overridden("command line", **changes) if changes else spec
