"""Store entries checked before anything uses them: the one validation codegen, export and the
CLI share.

A params store is a file people share and edit, so every entry read from one is untrusted.
``check_entry`` accepts an entry only when every value codegen or a generated script uses is of
the right type and finite, its pipeline is the model it loads, and each accelerator's knobs
pass that accelerator's own ``config`` and ``check`` (the same code ``accelerators.apply``
runs) for the model's layout, steps and execution mode. ``usable_entries`` splits a store into
the entries that pass and a list of ``(key, why)`` for those that do not: those are reported
and never used, and one junk entry no longer breaks every request.

>>> entries, problems = usable_entries(read_store(path))
>>> for key, why in problems:
...     print(f"skipped {printable(key)}: {why}")
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from accelopt.errors import AccelOptError, printable
from accelopt.measure.constraints import PSNR_CAP

__all__ = ["MAX_DEPTH", "MAX_STRING", "InvalidEntry", "check_entry", "usable_entries"]

MAX_DEPTH = 12  # nesting of an entry's JSON: an exported one has 4
MAX_STRING = 4096  # characters in any string of an entry

Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Text = Annotated[str, Field(max_length=MAX_STRING)]
# A calibrated knob (MagCache's ratios, one per denoiser call): positive floats; the
# accelerator's own check bounds their count by the entry's steps.
Calibrated = Annotated[list[Positive], Field(min_length=1, max_length=2 * 1000 + 9)]
# A knob is a number or a flag, a named choice (TaylorSeer's modules, "attention"), or a
# calibrated list.
Knob = Annotated[int, Field(strict=True)] | Finite | bool | Text | Calibrated


class _Strict(BaseModel):
    """Types as JSON has them (no "3" for 3, no true for 1); keys we do not read are kept."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class _UnderLoad(_Strict):
    """A warning of a machine busy while the study measured (``accelopt.measure.load``)."""

    signal: Text | None = None
    reason: Text | None = None
    worker: Text | None = None
    load_average: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    cores: Annotated[int, Field(ge=1)] | None = None
    threads: Annotated[int, Field(ge=1)] | None = None
    cpu_share: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    before: Positive | None = None
    after: Positive | None = None
    ratio: Positive | None = None


class _Measured(_Strict):
    speedup: Positive
    time_per_image: Positive | None = None
    score: Finite | None = None
    score_loss: Finite | None = None
    peak_memory: Annotated[int, Field(ge=0)] | None = None
    device: Text | None = None
    # Fidelity to the baseline images (accelopt.measure.constraints); absent from older entries.
    psnr: Annotated[float, Field(ge=0, le=PSNR_CAP, allow_inf_nan=False)] | None = None
    ssim: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] | None = None
    clip_image: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] | None = None
    lpips: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    # A paired speedup's interval and the probability it covers the median
    # (accelopt.measure.timing).
    speedup_interval: Annotated[list[Positive], Field(min_length=2, max_length=2)] | None = None
    speedup_level: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    # How the speed was timed (accelopt.trial.objective), absent from older entries: the pairs
    # (0: unpaired), the plain pipeline's time in them, the batch size of the timed calls, the
    # quality pass's own time, and the speedup before scaling to the fastest plain pipeline.
    speedup_pairs: Annotated[int, Field(ge=0)] | None = None
    paired_baseline_time_per_image: Positive | None = None
    timing_batch_size: Annotated[int, Field(ge=1)] | None = None
    quality_pass_time_per_image: Positive | None = None
    speedup_vs_mode_baseline: Positive | None = None
    # Measured under load: the study's warnings, with their numbers; absent on a quiet machine.
    under_load: list[_UnderLoad] | None = None


class _Heldout(_Strict):
    """Held-out confirmation (``accelopt.study.confirm.Confirmation``); older ones lack the
    interval."""

    speedup: Positive
    speedups: list[Positive] | None = None
    interval: Annotated[list[Positive], Field(min_length=2, max_length=2)] | None = None
    level: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    passed: bool | None = None
    speed: Literal["faster", "slower", "undecidable"] | None = None


class _Generation(_Strict):
    resolution: Annotated[int, Field(ge=8, le=4096)] | None = None
    guidance: Annotated[float, Field(ge=0, le=50, allow_inf_nan=False)]
    dtype: Text | None = None
    prompt_set: Text | None = None


class _Requirement(_Strict):
    req_speedup: Positive | None = None
    max_score_loss: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None = None
    req_time: Positive | None = None
    psnr_min: Annotated[float, Field(gt=0, lt=PSNR_CAP, allow_inf_nan=False)] | None = None
    ssim_min: Annotated[float, Field(gt=-1, lt=1, allow_inf_nan=False)] | None = None
    clip_image_min: Annotated[float, Field(gt=-1, lt=1, allow_inf_nan=False)] | None = None
    lpips_max: Annotated[float, Field(gt=0, lt=10, allow_inf_nan=False)] | None = None


class _Execution(_Strict):
    mode: Literal["eager", "compile", "cuda-graphs"] = "eager"
    plain_baselines: dict[Text, Positive] = {}
    speedup_vs_eager: Positive | None = None


class _Study(_Strict):
    name: Text | None = None
    storage: Text | None = None
    trial: Annotated[int, Field(ge=0)] | None = None


class _Point(_Strict):
    trial: Annotated[int, Field(ge=0)] | None = None
    accelerators: dict[Text, dict[Text, Knob]]
    measured: _Measured
    heldout: _Heldout | None = None


class _Entry(_Strict):
    key: Text
    pipeline: Text
    model: Text
    scheduler: Text
    steps: Annotated[int, Field(ge=1, le=1000)]
    targets: list[Text]
    requirement: _Requirement
    accelerators: dict[Text, dict[Text, Knob]]
    params: dict[Text, Knob] = {}
    generation: _Generation
    measured: _Measured
    heldout: _Heldout | None = None
    execution: _Execution | None = None
    study: _Study | None = None
    layout: Literal["seed"] | None = None
    objective: Literal["pareto"] | None = None
    pareto_metric: Literal["score_loss", "psnr", "ssim", "clip_image", "lpips"] | None = None
    frontier: list[_Point] | None = None


class InvalidEntry(AccelOptError):
    """A store entry accelopt will not use; the message names its key and what is wrong."""

    def __init__(self, key: Any, why: str) -> None:
        super().__init__(f"store entry {printable(key)}: {why}")
        self.key = key
        self.why = why


def check_entry(key: Any, entry: Any) -> None:
    """Raise ``InvalidEntry`` unless ``entry`` (stored under ``key``) is safe to use."""
    if not isinstance(key, str):
        raise InvalidEntry(key, "its key is not a string")
    if not isinstance(entry, dict):
        raise InvalidEntry(key, f"not an object but {type(entry).__name__}")
    _check_shape(key, entry)
    try:
        parsed = _Entry.model_validate(entry)
    except ValidationError as err:
        errors = err.errors()
        first = errors[0]
        if isinstance(first.get("input"), list):  # a calibrated knob: its list member says why
            first = next((e for e in errors if _CALIBRATED in e["loc"]), first)
        where = ".".join(str(p) for p in first["loc"] if p not in _UNION_MEMBERS)
        raise InvalidEntry(key, f"{where}: {first['msg']}") from None
    if parsed.key != key:
        raise InvalidEntry(key, f"its own key is {printable(parsed.key)}, not the store's")
    _check_meaning(key, parsed)


def usable_entries(
    entries: Mapping[Any, Any],
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """The entries that pass ``check_entry``, and ``(printable key, why)`` for the others."""
    good: dict[str, dict[str, Any]] = {}
    bad: list[tuple[str, str]] = []
    for key, entry in entries.items():
        try:
            check_entry(key, entry)
        except InvalidEntry as err:
            bad.append((printable(key), err.why))
        else:
            good[key] = entry
    return good, bad


_CALIBRATED = "list[constrained-float]"  # how pydantic names the Calibrated member of Knob
_UNION_MEMBERS = {"int", "float", "bool", "str", "none", "constrained-int", "constrained-float",
                  _CALIBRATED}  # fmt: skip


def _check_shape(key: str, entry: dict[str, Any]) -> None:
    """Depth and string sizes, walked without recursion (a hostile file nests deep)."""
    stack: list[tuple[Any, int]] = [(entry, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidEntry(key, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and len(k) > MAX_STRING:
                    raise InvalidEntry(key, f"holds a key longer than {MAX_STRING} characters")
                stack.append((v, depth + 1))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str) and len(value) > MAX_STRING:
            raise InvalidEntry(key, f"holds a string longer than {MAX_STRING} characters")


def _check_meaning(key: str, entry: _Entry) -> None:
    from accelopt import accelerators, execution
    from accelopt.params_store.file import seed_pipeline
    from accelopt.pipelines.schedulers import resolve_scheduler

    try:
        resolve_scheduler(entry.scheduler)
    except AccelOptError as err:
        raise InvalidEntry(key, str(err)) from None
    if seed_pipeline(entry.model) != entry.pipeline:
        raise InvalidEntry(
            key,
            f"pipeline {printable(entry.pipeline, 60)} is not the model it loads "
            f"({printable(entry.model, 120)})",
        )
    if entry.targets != sorted(set(entry.targets)):
        raise InvalidEntry(key, "targets must be sorted, each once")
    _check_targets(key, entry)
    mode = entry.execution.mode if entry.execution is not None else "eager"
    traits = _traits(entry.model)
    configs = [entry.accelerators] + [p.accelerators for p in entry.frontier or ()]
    for config in configs:
        try:
            wrong = [n for n in config if traits and accelerators.get(n).name not in
                     accelerators.applicable(traits)]  # fmt: skip
            if wrong:
                raise AccelOptError(
                    f"{', '.join(wrong)} cannot accelerate {printable(entry.pipeline, 60)}"
                )
            if config:  # as apply refuses them
                accelerators.check_plan(config)
            built = _built(config, traits, entry.steps)
            execution.check(mode, built)
            execution.check_values(mode, built)
        except AccelOptError as err:
            raise InvalidEntry(key, str(err)) from None


def _check_targets(key: str, entry: _Entry) -> None:
    """The accelerators an entry's script applies agree with the targets it answers for:
    export writes a trial that used its targets, or some of them (a study that searched which
    to use may find fewer faster), never one outside them, and never none of them (a script
    that applies nothing). A frontier's points are checked apart (their own sets: a point
    answers for exactly the accelerators it used)."""
    outside = sorted(set(entry.accelerators) - set(entry.targets))
    if outside:
        raise InvalidEntry(key, f"accelerators {printable(', '.join(outside), 80)} are not "
                                f"among its targets ({_names(entry.targets)})")  # fmt: skip
    if entry.targets and not entry.accelerators:
        raise InvalidEntry(key, f"targets {_names(entry.targets)} but no accelerator in "
                                f"accelerators: its script would apply nothing")  # fmt: skip


def _names(targets: list[str]) -> str:
    return printable(", ".join(targets), 80) if targets else "none"


def _built(config: Mapping[str, Any], traits: Any, steps: int) -> dict[str, Any]:
    """Each accelerator's config object, through its own ``config`` and ``check``."""
    from accelopt import accelerators

    built = {}
    for name, knobs in config.items():
        accel = accelerators.get(name)
        if accel.name != name:
            raise AccelOptError(f"accelerator {printable(name, 40)} is spelled {accel.name}")
        made = accel.config(knobs)
        accel.check(made, traits or _any_layout(), steps)
        built[name] = made
    return built


@functools.cache
def _traits(model: str) -> Any:
    """A known model's layout (its architecture on the meta device: nothing is downloaded or
    allocated), or None for a model accelopt does not know."""
    from accelopt.accelerators import PipeTraits
    from accelopt.pipelines import TOY_PIPELINES, load_pipeline, model_info

    info = model_info(model)
    if info is None:
        return None
    toy = info.name in TOY_PIPELINES
    pipe = load_pipeline(
        info.name,
        weights="pretrained" if toy else "random",
        device="cpu" if toy else "meta",
    )
    return PipeTraits.of(pipe)


def _any_layout() -> Any:
    """The widest layout a supported UNet has, for a model accelopt does not know."""
    from accelopt.accelerators import PipeTraits

    return PipeTraits("sd", down_blocks=4, attention_downsamples=(1, 2, 4, 8))
