"""Accelerators: one module per method behind one interface, and the combinations they form.

>>> from accelopt import accelerators
>>> acc = accelerators.apply(pipe, {"deepcache": {"cache_interval": 3, "cache_branch_id": 0}})
>>> images = acc(prompt="a red cube", num_inference_steps=25).images
>>> acc.remove()          # the pipeline is exactly as before: same modules, same outputs

``apply`` validates everything first (names, applicability, parameter ranges) and raises one
``AccelOptError`` naming the valid choices; nothing is patched when it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from types import TracebackType
from typing import Any
from weakref import WeakKeyDictionary

from accelopt._types import Pipeline
from accelopt.accelerators._base import (
    APPLIED,
    Accelerator,
    Param,
    Patch,
    PipeTraits,
    Reference,
)
from accelopt.accelerators._snapshot import Snapshot
from accelopt.accelerators.dbcache import DBCache, DBCacheConfig
from accelopt.accelerators.deepcache import DeepCache, DeepCacheConfig
from accelopt.accelerators.fastercache import FasterCache, FasterCacheConfig
from accelopt.accelerators.fbcache import FBCache, FBCacheConfig
from accelopt.accelerators.magcache import MagCache, MagCacheConfig
from accelopt.accelerators.pab import PAB, PABConfig
from accelopt.accelerators.taylorseer import TaylorSeer, TaylorSeerConfig
from accelopt.accelerators.tgate import TGate, TGateConfig, apply_with_deepcache
from accelopt.accelerators.tome import ToMe, ToMeConfig
from accelopt.errors import AccelOptError, choices

__all__ = [
    "ACCELERATORS",
    "NOT_DECLARED",
    "PLANS",
    "Accelerated",
    "Accelerator",
    "DBCacheConfig",
    "DeepCacheConfig",
    "FBCacheConfig",
    "FasterCacheConfig",
    "MagCacheConfig",
    "PABConfig",
    "Param",
    "PipeTraits",
    "Reference",
    "TGateConfig",
    "TaylorSeerConfig",
    "ToMeConfig",
    "active",
    "applicable",
    "apply",
    "calibrated",
    "check_plan",
    "check_scheduler",
    "follows",
    "generate",
    "get",
    "parse_targets",
    "remove",
    "search_space",
]

ACCELERATORS: dict[str, Accelerator[Any]] = {
    a.name: a
    for a in (
        DeepCache(),
        ToMe(),
        TGate(),
        MagCache(),
        TaylorSeer(),
        FBCache(),
        DBCache(),
        PAB(),
        FasterCache(),
    )
}

Configs = Mapping[str, Any]
Step = Callable[[Pipeline, Configs, PipeTraits], Patch | tuple[Patch, ...]]


def _single(name: str) -> Step:
    return lambda pipe, cfg, traits: ACCELERATORS[name].apply(pipe, cfg[name], traits)


def _deepcache_tgate(pipe: Pipeline, cfg: Configs, traits: PipeTraits) -> tuple[Patch, ...]:
    return apply_with_deepcache(pipe, cfg["tgate"], cfg["deepcache"], traits)


# Every combination, declared: what applies it, in order. With T-GATE, DeepCache follows the
# gate (upstream's combined loaders restart it there); ToMe goes first so DeepCache and T-GATE
# wrap the merged blocks.
PLANS: dict[frozenset[str], tuple[Step, ...]] = {
    frozenset({"deepcache"}): (_single("deepcache"),),
    frozenset({"tome"}): (_single("tome"),),
    frozenset({"tgate"}): (_single("tgate"),),
    frozenset({"deepcache", "tgate"}): (_deepcache_tgate,),
    frozenset({"tome", "tgate"}): (_single("tome"), _single("tgate")),
    frozenset({"deepcache", "tome"}): (_single("tome"), _single("deepcache")),
    frozenset({"deepcache", "tome", "tgate"}): (_single("tome"), _deepcache_tgate),
    # The block caches alone: NOT_DECLARED says why each pairing is not.
    frozenset({"magcache"}): (_single("magcache"),),
    frozenset({"taylorseer"}): (_single("taylorseer"),),
    frozenset({"fbcache"}): (_single("fbcache"),),
    frozenset({"dbcache"}): (_single("dbcache"),),
    frozenset({"pab"}): (_single("pab"),),
    frozenset({"fastercache"}): (_single("fastercache"),),
}
_BLOCK_CACHES = {"magcache": "MagCache", "taylorseer": "TaylorSeer", "fbcache": "FirstBlockCache",
                 "dbcache": "DBCache"}  # fmt: skip
_SKIPS_ATTENTION = (
    "runs no attention in the calls or blocks it skips, so what T-GATE keeps there is undecided, "
    "and the halved batch after T-GATE's gate"
)
# Pairs a PixArt takes one by one but that no plan applies together, and why; check_plan and
# `accelopt accelerators` say so.
NOT_DECLARED: dict[frozenset[str], str] = {
    frozenset({"tgate", "magcache"}): f"MagCache {_SKIPS_ATTENTION} has no calibrated ratios",
    frozenset({"tgate", "taylorseer"}): (
        f"TaylorSeer {_SKIPS_ATTENTION} has no history to forecast from"
    ),
    frozenset({"tgate", "fbcache"}): f"FirstBlockCache {_SKIPS_ATTENTION} has no kept residual",
    frozenset({"tgate", "dbcache"}): f"DBCache {_SKIPS_ATTENTION} has no kept residual",
    **{
        frozenset({a, b}): "both decide which transformer calls or blocks compute: one at a time"
        for i, a in enumerate(_BLOCK_CACHES)
        for b in tuple(_BLOCK_CACHES)[i + 1 :]
    },
    frozenset({"tgate", "pab"}): "both decide what each attention computes at each call: one "
    "at a time",
    **{
        frozenset({cache, "pab"}): f"{title} runs no attention in the calls or blocks it skips "
        "or forecasts, so what PAB reuses there is undecided"
        for cache, title in _BLOCK_CACHES.items()
    },
    frozenset({"tgate", "fastercache"}): "both cut the batch of guidance to its conditional "
    "half, T-GATE for good after its gate, FasterCache at some calls: one at a time",
    frozenset({"pab", "fastercache"}): "both decide what each self-attention computes at each "
    "call: one at a time",
    **{
        frozenset({cache, "fastercache"}): f"{title} runs no self-attention in the calls or "
        "blocks it skips or forecasts, so what FasterCache extrapolates from there is undecided"
        for cache, title in _BLOCK_CACHES.items()
    },
}
# canonical order for names: deepcache, tome, tgate, magcache, taylorseer, fbcache, dbcache, pab,
# fastercache
ORDER = tuple(ACCELERATORS)


def get(name: str) -> Accelerator[Any]:
    """An accelerator by name (case-insensitive)."""
    try:
        return ACCELERATORS[name.strip().lower()]
    except KeyError:
        raise AccelOptError(f"unknown accelerator {name!r}; valid: {choices(ORDER)}") from None


def parse_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """``"tgate+deepcache"`` or ``["tgate", "deepcache"]`` -> ``("deepcache", "tgate")``."""
    names = targets.split("+") if isinstance(targets, str) else list(targets)
    found = {get(n).name for n in names if n.strip()}
    if not found:
        raise AccelOptError(f"no accelerator named; valid: {choices(ORDER)}")
    return tuple(n for n in ORDER if n in found)


def applicable(family_or_traits: str | PipeTraits) -> tuple[str, ...]:
    """The accelerators a pipeline family can take, in canonical order."""
    family = getattr(family_or_traits, "family", family_or_traits)
    return tuple(n for n, a in ACCELERATORS.items() if family in a.families)


def check_plan(names: Iterable[str]) -> None:
    """Refuse accelerators that no declared combination (``PLANS``) applies together, naming
    the combinations that are declared. Apply, the study spec, the search space, ``accelopt
    accelerators`` and the store's entry check all refuse through this one check."""
    found = frozenset(parse_targets(names))
    if found not in PLANS:
        shown = sorted((tuple(n for n in ORDER if n in p) for p in PLANS if len(p) > 1),
                       key=lambda p: (len(p), [ORDER.index(n) for n in p]))  # fmt: skip
        valid = ", ".join("+".join(p) for p in shown)
        why = [f"{'+'.join(parse_targets(pair))}: {reason}"
               for pair, reason in NOT_DECLARED.items() if pair <= found]  # fmt: skip
        named = "+".join(parse_targets(found))
        raise AccelOptError(
            f"{named} is not a declared combination; combinations: {valid}"
            + (f" (not {'; '.join(why)})" if why else "")
        )


def check_scheduler(names: Iterable[str], scheduler: str) -> None:
    """Refuse a scheduler (its study name) that breaks one of ``names``' step logic."""
    for name in names:
        why = get(name).refused_schedulers.get(scheduler)
        if why:
            raise AccelOptError(f"{name} cannot follow scheduler {scheduler}: {why}")


def follows(name: str, scheduler: str) -> bool:
    """Whether accelerator ``name`` keeps its step logic under ``scheduler``."""
    return scheduler not in get(name).refused_schedulers


def search_space(traits: PipeTraits, steps: int, targets: Iterable[str]) -> dict[str, Param]:
    """The namespaced search space (``"deepcache.cache_interval"`` ...) of some accelerators."""
    names = _check_applicable(traits, parse_targets(targets))
    return {f"{n}.{k}": p for n in names for k, p in ACCELERATORS[n].space(traits, steps).items()}


def _check_applicable(traits: PipeTraits, names: tuple[str, ...]) -> tuple[str, ...]:
    valid = applicable(traits)
    wrong = [n for n in names if n not in valid]
    if wrong:
        raise AccelOptError(
            f"{', '.join(wrong)} cannot accelerate a {traits.family} pipeline; "
            f"it can take: {choices(valid)}"
        )
    return names


class Accelerated:
    """A pipeline with accelerators applied. Call it like the pipeline; ``remove`` undoes all.

    Every call first clears what the previous call left (DeepCache's and T-GATE's step counts,
    what T-GATE has kept in this generation), so the n-th call gives the same images as the
    first.
    """

    def __init__(self, pipe: Pipeline, configs: Mapping[str, Any]) -> None:
        self.pipe = pipe
        self.configs = dict(configs)
        self._patches: list[Patch] = []
        self._snapshot = Snapshot.take(pipe)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.configs)

    def _apply(self, traits: PipeTraits) -> None:
        try:
            for step in PLANS[frozenset(self.configs)]:
                made = step(self.pipe, self.configs, traits)
                self._patches.extend(made if isinstance(made, tuple) else (made,))
        except BaseException:
            self.remove()
            raise

    def structure(self) -> tuple[Hashable, ...]:
        """What the current denoiser call computes (each patch's ``structure``), for the
        execution modes: equal structures run the same compiled or captured graph."""
        return tuple(s for s in (p.structure() for p in self._patches) if s is not None)

    def __call__(self, **kwargs: Any) -> Any:
        if _ACTIVE.get(self.pipe) is not self:
            raise RuntimeError("these accelerators were removed from the pipeline")
        for patch in self._patches:
            patch.reset(kwargs)
        return self.pipe(**kwargs)

    def remove(self) -> None:
        """Undo every patch (upstream's undo, then the snapshot) and check nothing is left."""
        for patch in reversed(self._patches):
            patch.remove()
        self._patches.clear()
        self._snapshot.restore(self.pipe)
        if _ACTIVE.get(self.pipe) is self:
            del _ACTIVE[self.pipe]
        assert self._snapshot.matches(self.pipe), "pipeline not restored exactly"

    def __enter__(self) -> Accelerated:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Accelerated({type(self.pipe).__name__}, {self.configs})"


_ACTIVE: WeakKeyDictionary[Any, Accelerated] = APPLIED


def _configs(configs: Mapping[str, Any], traits: PipeTraits, steps: int | None) -> dict[str, Any]:
    names = _check_applicable(traits, parse_targets(configs))
    check_plan(names)
    by_name = {get(k).name: v for k, v in configs.items()}
    built = {}
    for name in names:
        accel, value = ACCELERATORS[name], by_name[name]
        config = value if isinstance(value, accel.config_cls) else accel.config(value)
        accel.check(config, traits, steps)
        built[name] = config
    return built


def calibrated(
    pipe: Pipeline, configs: Mapping[str, Mapping[str, Any]], generate: Callable[[], Any]
) -> dict[str, dict[str, Any]]:
    """``configs`` (knobs by accelerator) with the calibrated knobs (``Accelerator.calibrated``:
    MagCache's ratios) measured where they are missing, on the plain ``pipe`` while
    ``generate()`` runs it once per such accelerator, as a study measures them."""
    out = {}
    for name, knobs in configs.items():
        accel = get(name)
        missing = bool(accel.calibrated) and not set(accel.calibrated) <= set(knobs)
        out[name] = {**knobs, **(accel.calibrate(pipe, generate) if missing else {})}
    return out


def apply(pipe: Pipeline, configs: Mapping[str, Any], *, steps: int | None = None) -> Accelerated:
    """Apply accelerators to ``pipe``; ``configs`` maps names to configs or parameter dicts.

    Applying again replaces what was applied before (twice equals once). ``steps``, when given,
    bounds step-valued parameters such as T-GATE's ``gate_step``.
    """
    traits = PipeTraits.of(pipe)
    built = _configs(configs, traits, steps)  # validate everything before touching the pipe
    remove(pipe)
    accelerated = Accelerated(pipe, built)
    _ACTIVE[pipe] = accelerated
    accelerated._apply(traits)
    return accelerated


def active(pipe: Pipeline) -> Accelerated | None:
    """The accelerators applied to ``pipe``, if any."""
    return _ACTIVE.get(pipe)


def remove(pipe: Pipeline) -> None:
    """Remove whatever accelerators ``pipe`` has; a plain pipeline is left as it is."""
    accelerated = _ACTIVE.get(pipe)
    if accelerated is not None:
        accelerated.remove()


def generate(pipe: Pipeline, **kwargs: Any) -> Any:
    """Generate through the applied accelerators, or plainly when none are applied."""
    accelerated = _ACTIVE.get(pipe)
    return accelerated(**kwargs) if accelerated is not None else pipe(**kwargs)
