"""Commands that say what accelopt knows: pipelines, schedulers, accelerators, prompts."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from accelopt.cli._command import Command

__all__ = ["TOY_TRAINING", "Accelerators", "Pipelines", "Prompts", "Schedulers"]

# Toy pipeline -> the accelopt.toy.train subcommand that trains it (that module imports torch,
# too slow for a listing; a test keeps the two in step).
TOY_TRAINING = {"ToySD": "generator", "ToyPixArt": "dit"}


class Pipelines(Command):
    """``accelopt pipelines``: the catalogue of named pipelines."""

    name = "pipelines"
    help = "list the pipelines accelopt knows by name"

    def run(self, args: argparse.Namespace) -> int:
        from accelopt.pipelines import MODELS, TOY_PIPELINES, toy_shipped

        print(f"{'name':14} {'family':13} {'resolution':>10}  weights")
        for m in MODELS:
            source = m.hub_id or "built from config (random, offline)"
            if m.name in TOY_PIPELINES:  # a toy is named before its training run ships
                source = "trained on toy shapes, " + (
                    "shipped with accelopt"
                    if toy_shipped(m.name)
                    else f"not shipped yet (train: python -m accelopt.toy.train "
                    f"{TOY_TRAINING[m.name]} --out DIR)"
                )
            print(f"{m.name:14} {m.family:13} {m.resolution:>10}  {source}")
        print("\nAlso accepted: any diffusers hub id (org/name) or local pipeline folder.")
        return 0


class Schedulers(Command):
    """``accelopt schedulers``: the schedulers and the names they answer to."""

    name = "schedulers"
    help = "list the schedulers and their aliases"

    def run(self, args: argparse.Namespace) -> int:
        from accelopt.pipelines.schedulers import SCHEDULERS

        for s in SCHEDULERS:
            print(f"{s.name:14} {s.class_name:30} aliases: {', '.join(s.aliases)}")
        return 0


class Accelerators(Command):
    """``accelopt accelerators [--pipeline P]``: the methods, or one pipeline's search space."""

    name = "accelerators"
    help = "list accelerators, or show the search space for a pipeline and step count"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--pipeline", help="a pipeline name, e.g. SDXL or TinySD")
        parser.add_argument("--steps", type=int, default=25, help="inference steps (default: 25)")
        parser.add_argument("--targets", help="accelerators joined by '+', e.g. deepcache+tgate")

    def run(self, args: argparse.Namespace) -> int:
        return self._methods() if args.pipeline is None else self._space(args)

    def _methods(self) -> int:
        from accelopt import accelerators

        for name, accel in accelerators.ACCELERATORS.items():
            families = ", ".join(sorted(accel.families))
            print(f"{name:10} for {families}")
            for ref in accel.references:
                print(f"{'':10} {ref.title}\n{'':10} {ref.paper}  {ref.code}")
            print(f"{'':10} steps count: {accel.counts}")
            for scheduler, why in accel.refused_schedulers.items():
                print(f"{'':10} refuses {scheduler}: {why}")
        print("\nCombinations: " + ", ".join("+".join(sorted(p)) for p in accelerators.PLANS))
        _not_declared(accelerators.ACCELERATORS)
        return 0

    def _space(self, args: argparse.Namespace) -> int:
        from accelopt import accelerators
        from accelopt.accelerators import PipeTraits
        from accelopt.pipelines import TOY_PIPELINES, load_pipeline, model_info

        # A known architecture is read from its structure alone, built on "meta" in a second; a
        # toy pipeline has no random-weight build, and its shipped weights load in a second too.
        info = model_info(args.pipeline)
        known = info is not None and info.name not in TOY_PIPELINES
        pipe = load_pipeline(
            args.pipeline,
            weights="random" if known else "pretrained",
            device="meta" if known else "cpu",
        )
        traits = PipeTraits.of(pipe)
        if args.targets:
            accelerators.check_plan(accelerators.parse_targets(args.targets))
        targets = args.targets or "+".join(accelerators.applicable(traits))
        space = accelerators.search_space(traits, args.steps, targets)
        print(f"search space for {args.pipeline} ({traits.family}), {args.steps} steps:")
        width = max(map(len, space), default=0)  # taylorseer.disable_cache_before_step: 36
        for key, param in space.items():
            print(f"  {key:{width}} {', '.join(map(str, param.values))}")
        here = accelerators.applicable(traits)
        together = [p for p in accelerators.PLANS if len(p) > 1 and p <= set(here)]
        shown = ", ".join("+".join(n for n in here if n in p) for p in together) or "none"
        print(f"combinations on {args.pipeline}: {shown}")
        if not args.targets:
            from accelopt.trial.space import Space, plan_of

            groups = Space.build(traits, args.steps, None).groups
            if groups:
                tried = " | ".join(map(plan_of, groups))
                print(f"a study without targets tries one per trial (plan): {tried}")
        _not_declared(here)
        return 0


def _not_declared(names: Iterable[str]) -> None:
    """The pairs among ``names`` that no plan applies together, each with why."""
    from accelopt import accelerators

    pairs = [(accelerators.parse_targets(p), why) for p, why in accelerators.NOT_DECLARED.items()
             if p <= set(names)]  # fmt: skip
    if pairs:
        print("not combined (why):")
    for pair, why in pairs:
        print(f"- {'+'.join(pair)}: {why}")


class Prompts(Command):
    """``accelopt prompts``: a shipped prompt set."""

    name = "prompts"
    help = "print a shipped prompt set"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--set",
            choices=("accelopt", "shapes"),
            default="accelopt",
            help="accelopt (for real models, default) or shapes (ToySD's captions)",
        )
        parser.add_argument("--split", choices=("search", "heldout"), help="only this split")
        parser.add_argument("--count", type=int, help="only the first COUNT prompts")

    def run(self, args: argparse.Namespace) -> int:
        from accelopt.prompts import load_prompts

        for p in load_prompts(args.split, args.count, args.set):
            print(f"{p.id}  {p.split:7}  {p.category:12}  {p.text}")
        return 0
