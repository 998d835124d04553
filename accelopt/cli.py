"""The ``accelopt`` command: parse, call one function, print, return an exit code.

Heavy imports (torch, diffusers) happen inside commands, so ``accelopt --help`` is instant.
Bad input prints one line saying what to fix and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from accelopt import __version__
from accelopt.errors import AccelOptError

__all__ = ["main"]


def _pipelines(args: argparse.Namespace) -> int:
    from accelopt.pipelines import MODELS

    print(f"{'name':14} {'family':13} {'resolution':>10}  weights")
    for m in MODELS:
        source = m.hub_id or "built from config (random, offline)"
        print(f"{m.name:14} {m.family:13} {m.resolution:>10}  {source}")
    print("\nAlso accepted: any diffusers hub id (org/name) or local pipeline folder.")
    return 0


def _schedulers(args: argparse.Namespace) -> int:
    from accelopt.schedulers import SCHEDULERS

    for s in SCHEDULERS:
        print(f"{s.name:14} {s.class_name:30} aliases: {', '.join(s.aliases)}")
    return 0


def _accelerators(args: argparse.Namespace) -> int:
    from accelopt import accelerators

    if args.pipeline is None:
        for name, accel in accelerators.ACCELERATORS.items():
            families = ", ".join(sorted(accel.families))
            print(f"{name:10} for {families}")
            for ref in accel.references:
                print(f"{'':10} {ref.title}\n{'':10} {ref.paper}  {ref.code}")
        print("\nCombinations: " + ", ".join("+".join(sorted(p)) for p in accelerators.PLANS))
        return 0

    from accelopt.accelerators import PipeTraits
    from accelopt.pipelines import load_pipeline, model_info

    # A known architecture is read from its structure alone, built on "meta" in a second.
    known = model_info(args.pipeline) is not None
    pipe = load_pipeline(
        args.pipeline,
        weights="random" if known else "pretrained",
        device="meta" if known else "cpu",
    )
    traits = PipeTraits.of(pipe)
    targets = args.targets or "+".join(accelerators.applicable(traits))
    space = accelerators.search_space(traits, args.steps, targets)
    print(f"search space for {args.pipeline} ({traits.family}), {args.steps} steps:")
    for key, param in space.items():
        print(f"  {key:28} {', '.join(map(str, param.values))}")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from accelopt.prompts import load_prompts

    for p in load_prompts(args.split, args.count):
        print(f"{p.id}  {p.split:7}  {p.category:12}  {p.text}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accelopt",
        description="Search the knobs of training-free diffusion accelerators with Optuna.",
    )
    parser.add_argument("--version", action="version", version=f"accelopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    command("pipelines", _pipelines, "list the pipelines accelopt knows by name")
    command("schedulers", _schedulers, "list the schedulers and their aliases")
    p = command(
        "accelerators",
        _accelerators,
        "list accelerators, or show the search space for a pipeline and step count",
    )
    p.add_argument("--pipeline", help="a pipeline name, e.g. SDXL or TinySD")
    p.add_argument("--steps", type=int, default=25, help="inference steps (default: 25)")
    p.add_argument("--targets", help="accelerators joined by '+', e.g. deepcache+tgate")
    p = command("prompts", _prompts, "print the shipped prompt set")
    p.add_argument("--split", choices=("search", "heldout"), help="only this split")
    p.add_argument("--count", type=int, help="only the first COUNT prompts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AccelOptError as err:
        print(f"accelopt: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
