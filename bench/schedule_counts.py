"""How many distinct schedules each study space holds: what a full grid measures at most.

    python -m bench.schedule_counts

For each study space (a shipped study, and its single-accelerator variants), the grid points of
``Space.build`` with the pipeline's own layout (architectures are read on the "meta" device, in
seconds, with nothing downloaded) and the number of distinct schedules among them
(``accelopt.accelerators.schedules``): equal schedules compute the same images, and a study
measures one configuration per schedule. ToMe's part of a schedule is the same at every call and
independent of the other methods' parts, so the count multiplies: (distinct DeepCache x T-GATE
schedules, the plain pipeline among them) x (1 + distinct ToMe merges), less the plain pipeline.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from accelopt import accelerators
from accelopt.accelerators import PipeTraits
from accelopt.accelerators.schedules import Calls, schedule
from accelopt.pipelines import load_pipeline
from accelopt.pipelines.schedulers import set_scheduler
from accelopt.spec import load_spec
from accelopt.trial.space import Space

STUDIES = (
    "ToySD-DDIM-20-tgate",
    "ToySD-DDIM-20-deepcache",
    "SD1.5-DDIM-20-deepcache",
    "TinySD-DDIM-10",
    "TinySDXL-DDIM-10",
    "TinyPixArt-DDIM-10",
    "ToySD-DDIM-20",
    "SD1.5-DDIM-20",
)


def points(space: Space, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every grid point of ``names``' parameters, as flat params."""
    keys = [k for k in space.params if k.split(".")[0] in names]
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(space.params[k].values for k in keys))
    ]


def distinct(space: Space, calls: Calls, guided: bool, traits: PipeTraits) -> int:
    names = {k.split(".")[0] for k in space.params}
    rest = [n for n in ("deepcache", "tgate") if n in names]

    def built(params: Mapping[str, Any]) -> dict[str, Any]:
        return {n: accelerators.get(n).config(k) for n, k in space.configs(params).items()}

    found = {
        schedule(built(p), calls, guided=guided, branches=traits.branches)
        for p in points(space, rest)
    }
    if "tome" not in names:
        return len(found - {tuple(() for _ in calls.timesteps)}) if space.optional else len(found)
    merges = {schedule(built(p), calls)[0] for p in points(space, ["tome"])}
    merges.discard(())  # ToMe off
    plain = 1 if space.optional else 0
    return len(found) * (len(merges) + plain) - plain


def main() -> None:
    print("| study space | grid points | distinct schedules | repeats skipped |")
    print("|---|---|---|---|")
    for name in STUDIES:
        spec = load_spec(name)
        known = spec.pipeline not in ("ToySD",)
        pipe = load_pipeline(spec.pipeline, weights="random" if known else "pretrained",
                             device="meta" if known else "cpu")  # fmt: skip
        set_scheduler(pipe, spec.scheduler)
        traits = PipeTraits.of(pipe)
        space = Space.build(traits, spec.steps, spec.targets, "eager", spec.scheduler)
        if space.groups:  # a choice of groups: the schedules modelled here are T-GATE's group's
            group = next(g for g in space.groups if "tgate" in g)
            params = {k: p for k, p in space.params.items() if k.split(".")[0] in group}
            name = f"{name} ({'+'.join(group)}, one of {len(space.groups)} groups)"
            space = dataclasses.replace(space, params=params, groups=())
        calls = Calls.of(pipe.scheduler, spec.steps)
        count = distinct(space, calls, spec.guidance > 1, traits)
        size = space.size
        print(f"| {name} | {size:,} | {count:,} | {size - count:,} |", flush=True)


if __name__ == "__main__":
    main()
