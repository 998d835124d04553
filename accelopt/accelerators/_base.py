"""The interface every accelerator module implements, and what they share."""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar
from weakref import WeakKeyDictionary

from accelopt._types import Pipeline
from accelopt.errors import AccelOptError, choices
from accelopt.portable.buffers import Buffers

__all__ = [
    "APPLIED",
    "HOST_TIMESTEPS",
    "Accelerator",
    "Param",
    "Patch",
    "PipeTraits",
    "Reference",
    "forget",
    "guided_by",
    "host_timesteps_of",
    "kept",
]

C = TypeVar("C")

# The accelerators applied to each pipeline (``accelopt.accelerators.apply`` fills it, ``active``
# reads it). It lives below every method's module so that a method may ask whether a pipeline is
# plain (MagCache calibrates only a plain one) without importing the package that imports it.
APPLIED: WeakKeyDictionary[Any, Any] = WeakKeyDictionary()

# What each method keeps on a denoiser for later calls, by method name: a graph captured for one
# of its structures reads and writes these addresses, so they outlive the patch that first
# filled them (the next trial of the method reuses them and its graphs), and they go only
# together with those graphs (``accelopt.execution.release``).
_KEPT: WeakKeyDictionary[Any, dict[str, Buffers]] = WeakKeyDictionary()


def kept(net: Any, name: str) -> Buffers:
    """The buffers method ``name`` keeps on denoiser ``net``, made at its first apply."""
    return _KEPT.setdefault(net, {}).setdefault(name, Buffers())


def forget(net: Any, keep: Iterable[str]) -> tuple[str, ...]:
    """Drop the buffers of every method not in ``keep`` from ``net``; the methods dropped.

    Only ``accelopt.execution.release`` calls it, with the graphs that read them."""
    held = _KEPT.get(net, {})
    dropped = tuple(sorted(set(held) - set(keep)))
    for name in dropped:
        del held[name]
    return dropped


# What the step-valued knobs of a method that reads each call's timestep on the host count
# (PAB's and FasterCache's ``Accelerator.counts``).
HOST_TIMESTEPS = (
    "denoiser calls since the generation began, as diffusers counts them (PNDM's 20 steps are 29 "
    "calls), each at its scheduler timestep, read on the host"
)


def host_timesteps_of(pipe: Pipeline, method: str) -> tuple[float, ...]:
    """``pipe``'s scheduler timesteps, one per denoiser call, read on the host
    (``accelopt.portable.pab.host_timesteps``); a pipeline that set timesteps of its own on the
    GPU is one ``AccelOptError`` naming ``method``."""
    from accelopt.portable.pab import host_timesteps

    try:
        return host_timesteps(pipe.scheduler)
    except ValueError as exc:
        raise AccelOptError(f"{method}: {exc}") from None


def guided_by(pipe: Pipeline, net: Any) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a generation called with these keyword arguments batches unconditional and
    conditional halves (``accelopt.portable.tgate.is_guided``): its ``guidance_scale``, or the
    pipeline call's default where it gives none."""
    from accelopt.portable.tgate import is_guided

    default = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    fallback = 1.0 if default is None else default.default
    return lambda call: is_guided(net, call.get("guidance_scale", fallback))


@dataclass(frozen=True)
class Reference:
    """Where a method comes from: the paper and the code we wrap."""

    title: str
    paper: str
    code: str


@dataclass(frozen=True)
class Param:
    """One searchable parameter: the values a sampler may draw, in order (grid and TPE alike)."""

    values: tuple[Any, ...]

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in self.values)


@dataclass(frozen=True)
class PipeTraits:
    """What accelerators need to know about a pipeline, read from its config, never from a run.

    ``attention_downsamples``: the downsampling factors (1, 2, 4, ...) at which the UNet has
    transformer blocks; ToMe's ``max_downsample`` only matters through them. ``branches``: the
    DeepCache branch ids whose shallow steps compute distinct images, the smallest of each (on
    a UNet with one layer per block, id 2 computes id 1's); empty when not read from a UNet,
    and then every id counts. ``transformer_blocks``: how many blocks a transformer's stack
    has (PixArt-Sigma 28), what DBCache's first and last compute blocks are cut to; 0 when not
    read from a transformer, and then any count is taken.
    """

    family: str
    down_blocks: int = 0
    attention_downsamples: tuple[int, ...] = ()
    branches: tuple[int, ...] = ()
    transformer_blocks: int = 0

    @property
    def has_unet(self) -> bool:
        return self.down_blocks > 0

    @classmethod
    def of(cls, pipe: Pipeline) -> PipeTraits:
        from accelopt.pipelines import family_of

        family = family_of(pipe)
        unet = getattr(pipe, "unet", None)
        if unet is None:
            blocks = getattr(getattr(pipe, "transformer", None), "transformer_blocks", None)
            return cls(family, transformer_blocks=len(blocks or ()))
        levels = {2**i for i, b in enumerate(unet.down_blocks) if getattr(b, "attentions", None)}
        levels |= {
            2**i for i, b in enumerate(reversed(unet.up_blocks)) if hasattr(b, "attentions")
        }
        if getattr(unet.mid_block, "attentions", None):
            levels.add(2 ** (len(unet.down_blocks) - 1))
        return cls(family, len(unet.down_blocks), tuple(sorted(levels)), _branches(unet))


def _branches(unet: Any) -> tuple[int, ...]:
    """Branch ids whose shallow steps compute distinct things, the smallest id of each.

    The downsampler of the branch's own down block feeds only skipped modules (the next down
    block, and the up block below it), so it counts as skipped whether it runs or not: on a UNet
    with one layer per block, branch 2 computes branch 1's images plus that dead downsampler.
    """
    from accelopt.portable.deepcache import skipped_modules

    seen: dict[frozenset[Any], int] = {}
    for branch in range(3 * len(unet.down_blocks)):
        block = branch // 3
        skipped = {key for key, _ in skipped_modules(unet, branch)}
        skipped |= {
            ("down", "downsampler", block, len(unet.down_blocks[block].resnets))
            for _ in unet.down_blocks[block].downsamplers or ()
        }
        seen.setdefault(frozenset(skipped), branch)
    return tuple(sorted(seen.values()))


class Patch:
    """What ``apply`` leaves on a pipeline: how to clear it between calls and how to undo it.

    Everything a method does per call happens in the denoiser's hooks; the pipeline's own call
    stays, so the objective and generated scripts never special-case a method by name.
    """

    def reset(self, call: Mapping[str, Any]) -> None:
        """Before each generation, with its keyword arguments: clear what an earlier one left,
        so every call starts clean (and read what this one asks, such as its guidance)."""

    def structure(self) -> Hashable:
        """What the next denoiser call computes, as far as that shapes a compiled graph.

        Read after the call's forward pre-hooks ran, outside any graph. Two calls with equal
        structures (and equal input shapes) run the same graph; None means the patch changes
        no graph. Per-call choices that only pick among graphs (DeepCache's interval) stay out.
        """
        return None

    def remove(self) -> None:
        """Undo through upstream's own API where it has one (the snapshot restores the rest)."""


class Accelerator(ABC, Generic[C]):
    """One training-free method: its config, search space, applicability, apply and references.

    Subclasses set the class attributes and implement ``space``, ``check`` and ``apply``.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type]
    families: ClassVar[frozenset[str]]
    references: ClassVar[tuple[Reference, ...]]
    aliases: ClassVar[Mapping[str, str]] = {}  # other spellings of parameter names
    # What the step-valued knobs count, in words, for every scheduler offered; and the
    # schedulers (by their study names) whose calls break that count, with the reason: a study
    # refuses those when named and leaves the method out of the search when not.
    counts: ClassVar[str] = "nothing: no knob depends on the step"
    refused_schedulers: ClassVar[Mapping[str, str]] = {}
    # Knobs measured on the pipeline, never searched (MagCache's ratios): a study measures
    # them once with ``calibrate`` and gives them to every trial's config.
    calibrated: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def space(self, traits: PipeTraits, steps: int) -> dict[str, Param]:
        """The seed system's search ranges, cut to what this pipeline and step count can use."""

    @abstractmethod
    def off(self, steps: int) -> C:
        """A config that changes nothing: its output is bit-identical to the baseline."""

    @abstractmethod
    def check(self, config: C, traits: PipeTraits, steps: int | None) -> None:
        """Raise ``AccelOptError`` for a value upstream would take but that is wrong here."""

    @abstractmethod
    def apply(self, pipe: Pipeline, config: C, traits: PipeTraits) -> Patch:
        """Patch ``pipe`` and return the patch."""

    def calibrate(self, pipe: Pipeline, generate: Callable[[], Any]) -> dict[str, Any]:
        """The ``calibrated`` knobs by name, measured while ``generate()`` runs ``pipe`` once
        with no accelerator (a study's calibration prompts), as JSON-safe values; ``{}`` for a
        method that has none."""
        return {}

    def config(self, params: Mapping[str, Any] | None = None, **kwargs: Any) -> C:
        """Build a config from a plain dict of upstream parameter names (aliases accepted)."""
        given = {self.aliases.get(k, k): v for k, v in {**(params or {}), **kwargs}.items()}
        fields = {f.name: f for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise AccelOptError(
                f"unknown {self.name} parameter(s) {', '.join(unknown)}; valid: {choices(fields)}"
            )
        for key, value in given.items():
            want = fields[key].type
            ok = isinstance(value, int) and not isinstance(value, bool)
            if want == "float":
                ok = ok or isinstance(value, float)
            elif want == "bool":
                ok = isinstance(value, bool)
            elif want == "tuple[float, ...]":  # a list of numbers (JSON has no tuples)
                ok = isinstance(value, list | tuple) and all(_is_real(v) for v in value)
                if ok:
                    given[key] = tuple(float(v) for v in value)
            elif want == "str":
                ok = isinstance(value, str)
            if not ok:
                raise AccelOptError(f"{self.name}.{key} must be {want}, got {value!r}")
        return self.config_cls(**given)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def in_range(accel: str, key: str, value: Any, low: Any, high: Any, why: str = "") -> None:
    """Refuse ``value`` outside ``[low, high]`` with a message that names the range."""
    if not low <= value <= high:
        hint = f" ({why})" if why else ""
        raise AccelOptError(f"{accel}.{key}={value!r} is out of range; valid: {low}..{high}{hint}")


def one_of(accel: str, key: str, value: Any, valid: tuple[Any, ...], why: str = "") -> None:
    """Refuse ``value`` not in ``valid`` with a message that lists the valid values."""
    if value not in valid:
        hint = f" ({why})" if why else ""
        raise AccelOptError(
            f"{accel}.{key}={value!r} is not valid here; valid: {choices(valid)}{hint}"
        )
