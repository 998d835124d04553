"""Study specs: what one study measures, read from ``studies/<NAME>.toml`` or derived from NAME.

NAME is ``PIPE-SCHED-STEPS`` with an optional ``-TARGETS`` suffix, e.g. ``SDXL-DDIM-25`` or
``SD1.5-UniPC-20-deepcache+tgate``. Every well-formed NAME works without a file (defaults come
from the name); a file of that name overrides them. Files are looked up in ``./studies`` first,
then among those shipped with accelopt. Names are case-insensitive: every spelling of a name
is one study under its ``canonical_name`` (``toysd-ddim-20`` is ``ToySD-DDIM-20``).

>>> spec = load_spec("TinySD-DDIM-10")
>>> spec.pipeline, spec.scheduler, spec.steps, spec.targets
('TinySD', 'DDIM', 10, None)
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from accelopt.errors import AccelOptError, choices
from accelopt.measure.constraints import BOUNDS, METRICS, Bound, loss_budget_refusal

__all__ = [
    "DEFAULT_MAX_SCORE_LOSS",
    "EXECUTIONS",
    "IDENTITY",
    "OBJECTIVES",
    "ConstraintSpec",
    "MetricSpec",
    "PromptSpec",
    "SamplerSpec",
    "StudySpec",
    "TimingSpec",
    "canonical_name",
    "find_spec_file",
    "generation_defaults",
    "load_spec",
    "parse_name",
    "record_of",
    "shipped_specs",
    "spec_from_record",
]

DEFAULT_MAX_SCORE_LOSS = 0.02
SAMPLERS = ("tpe", "grid")
# speedup: the fastest trial within max_score_loss. pareto: speedup and score loss together, the
# whole frontier kept (export stores it, codegen picks any point of it).
OBJECTIVES = ("speedup", "pareto")
EXECUTIONS = ("auto", "eager", "compile", "cuda-graphs")  # accelopt.execution.MODES and auto
LPIPS_NETS = ("alex", "vgg", "squeeze")  # LPIPS backbones (torchvision's ImageNet networks)


@dataclass(frozen=True)
class PromptSpec:
    """Which prompts a trial generates: the first ``count`` of a split of a prompt set,
    ``batch_size`` per call, prompt i seeded with ``seed + i``.

    ``set`` is ``accelopt`` (the shipped prompts for real models) or ``shapes`` (captions of the
    toy shapes, for the toy pipelines)."""

    set: str = "accelopt"
    split: str = "search"
    count: int = 16
    batch_size: int = 4
    seed: int = 0


@dataclass(frozen=True)
class MetricSpec:
    """The CLIP model that scores images: an open_clip architecture and pretrained tag.

    An empty tag means random weights (for tiny and random-weight studies, where nothing can be
    downloaded): scores then rank images consistently but mean nothing about prompts.
    """

    model: str = "ViT-H-14"
    pretrained: str = "laion2b_s32b_b79k"
    # LPIPS (``accelopt.measure.metrics``): its backbone ("alex", "vgg", "squeeze"; measured
    # whenever a study bounds lpips_max, "alex" unless named) and a file of that backbone's weights
    # ("": torch hub's cache). Never downloaded: missing weights stop the study, naming the file.
    lpips: str = ""
    lpips_weights: str = ""


@dataclass(frozen=True)
class TimingSpec:
    """How a trial's speedup is timed (``accelopt.measure.timing.Paired``): ``pairs`` alternated
    calls of the plain pipeline and the configuration on the first ``prompts`` prompts (0: one
    batch), after the quality pass; the speedup is the median of the pairs' ratios, with an
    interval.
    ``pairs = 0`` divides the study's baseline time by the quality pass's instead (unpaired)."""

    pairs: int = 3
    prompts: int = 0


@dataclass(frozen=True)
class ConstraintSpec:
    """Fidelity bounds (``accelopt.measure.constraints``) beside the score-loss budget, each
    against the baseline image of the same prompt and seed; None leaves a metric unbounded (it is
    measured and recorded all the same). The table's ``clip_loss`` is the spec's
    ``max_score_loss``."""

    psnr_min: float | None = None
    ssim_min: float | None = None
    clip_image_min: float | None = None
    lpips_max: float | None = None


@dataclass(frozen=True)
class SamplerSpec:
    """``tpe`` (default) or ``grid`` (every point of the seed's ranges exactly once); seeded."""

    name: str = "tpe"
    seed: int = 0


@dataclass(frozen=True)
class StudySpec:
    """Everything one study measures. ``targets`` None searches which accelerators to use too."""

    name: str
    pipeline: str
    scheduler: str
    steps: int
    targets: tuple[str, ...] | None = None
    resolution: int | None = None
    guidance: float = 7.5
    dtype: str | None = None
    prompts: PromptSpec = field(default_factory=PromptSpec)
    metric: MetricSpec = field(default_factory=MetricSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    n_trials: int = 50
    max_score_loss: float = DEFAULT_MAX_SCORE_LOSS
    warmup: int = 1
    # Stop a trial once its score loss is over max_score_loss with this confidence (one-sided,
    # after at least two batches); 0 measures every prompt of every trial.
    early_stop: float = 0.99
    # "pareto" maximises speedup and minimises score loss together; early_stop does not apply.
    objective: str = "speedup"
    # How the denoiser runs, baseline and trials alike (accelopt.execution): eager, compile or
    # cuda-graphs; "auto" is eager on a CPU and, on CUDA, the mode whose plain baseline is fastest.
    execution: str = "auto"
    # Every bound a trial must meet besides max_score_loss ([constraints] in a spec file).
    constraints: ConstraintSpec = field(default_factory=ConstraintSpec)
    timing: TimingSpec = field(default_factory=TimingSpec)
    # A pareto study's second objective: a metric of accelopt.measure.constraints.METRICS.
    pareto_metric: str = "score_loss"
    source: str = "derived from the name"

    def bounds(self) -> tuple[Bound, ...]:
        """Every bound of the study, the score loss's first: one Optuna constraint each."""
        limits = dataclasses.asdict(self.constraints)
        chosen = [Bound(k, v) for k in BOUNDS if (v := limits.get(k)) is not None]
        return (Bound("clip_loss", self.max_score_loss), *chosen)

    @property
    def measures_lpips(self) -> bool:
        return bool(self.metric.lpips) or self.constraints.lpips_max is not None

    def replace(self, **changes: Any) -> StudySpec:
        """A copy with some fields changed, unchecked (for values already validated)."""
        return dataclasses.replace(self, **changes)

    def overridden(self, where: str, **changes: Any) -> StudySpec:
        """A copy with some fields changed by ``where`` (command-line flags), checked as a
        spec file is: a flag cannot set what the file could not."""
        spec = self.replace(**changes)
        _check_ranges(where, spec)
        return spec


# Defaults that depend on the pipeline: the guidance each family's model card uses; tiny
# pipelines get a small prompt set and the tiny CLIP so a study finishes in seconds on a CPU.
_GUIDANCE = {"sd": 7.5, "sdxl": 5.0, "pixart-alpha": 4.5, "pixart-sigma": 4.5}


def parse_name(name: str) -> dict[str, Any]:
    """Split ``PIPE-SCHED-STEPS[-TARGETS]`` into its parts, matching known names first.

    Pipeline and scheduler names contain dashes (``PixArt-Sigma``, ``DPM-Solver++``), so the
    name is matched against the known ones, longest first, not split on dashes.
    """
    from accelopt import accelerators
    from accelopt.pipelines import MODELS
    from accelopt.pipelines.schedulers import SCHEDULERS

    pipes = sorted((m.name for m in MODELS), key=len, reverse=True)
    scheds = sorted(
        ((alias, s.name) for s in SCHEDULERS for alias in (s.name, *s.aliases)),
        key=lambda pair: len(pair[0]),
        reverse=True,
    )
    lower = name.lower()
    pipe = next((p for p in pipes if lower.startswith(p.lower() + "-")), None)
    if pipe is None:
        raise AccelOptError(
            f"study name {name!r} does not start with a known pipeline; valid: "
            f"{choices(m.name for m in MODELS)} (NAME is PIPE-SCHED-STEPS[-TARGETS])"
        )
    rest = name[len(pipe) + 1 :]
    low = rest.lower()
    found = next(
        ((a, s) for a, s in scheds if low == a.lower() or low.startswith(a.lower() + "-")), None
    )
    if found is None:
        raise AccelOptError(
            f"study name {name!r}: no known scheduler after {pipe!r}; valid: "
            f"{choices(s.name for s in SCHEDULERS)}"
        )
    rest = rest[len(found[0]) + 1 :]  # empty when the name stops after the scheduler
    match = re.fullmatch(r"(\d+)(?:-(.+))?", rest)
    if match is None:
        raise AccelOptError(
            f"study name {name!r}: expected the step count after the scheduler, e.g. "
            f"{pipe}-{found[1]}-25 or {pipe}-{found[1]}-25-deepcache+tgate"
        )
    targets = accelerators.parse_targets(match[2]) if match[2] else None
    return {"pipeline": pipe, "scheduler": found[1], "steps": int(match[1]), "targets": targets}


def canonical_name(name: str) -> str:
    """NAME as accelopt spells it: the pipeline, scheduler and accelerators written as their
    known names (matched case-insensitively, aliases resolved, accelerators in canonical order),
    so that every spelling of one study is one study, in storage and in files. A name that is
    not ``PIPE-SCHED-STEPS[-TARGETS]`` (a spec file's free-form stem) comes back unchanged.

    >>> canonical_name("toysd-ddim-20"), canonical_name("SD1.5-dpm++-20-TGATE+deepcache")
    ('ToySD-DDIM-20', 'SD1.5-DPM-Solver++-20-deepcache+tgate')
    """
    try:
        parts = parse_name(name)
    except AccelOptError:
        return name
    canonical = f"{parts['pipeline']}-{parts['scheduler']}-{parts['steps']}"
    return canonical + ("-" + "+".join(parts["targets"]) if parts["targets"] else "")


def _defaults(name: str) -> dict[str, Any]:
    parts = parse_name(name)
    return {**parts, **_model_defaults(parts["pipeline"])}


def generation_defaults(pipeline: str) -> dict[str, Any] | None:
    """How a study of a known model generates by default (resolution, guidance, dtype), or None
    for a model accelopt does not know."""
    known = _model_defaults(pipeline)
    if not known:
        return None
    return {"resolution": known["resolution"], "guidance": known["guidance"], "dtype": None}


def _model_defaults(pipeline: str) -> dict[str, Any]:
    """Defaults that follow from a known model: resolution, guidance, prompts, metric, budget."""
    from accelopt.measure.metrics import TINY_CLIP, TOY_CLIP
    from accelopt.pipelines import TOY_PIPELINES, model_info

    info = model_info(pipeline)
    if info is None:
        return {}
    if info.name in TOY_PIPELINES:  # trained on shapes: their captions, their own scorer
        return {
            "resolution": info.resolution,
            # The guidance each toy was trained to be judged at (accelopt.toy.train's generator
            # checks): PixArt's own 4.5 for a toy DiT, 5.0 for ToySD (not SD's 7.5).
            "guidance": _GUIDANCE[info.family] if info.family.startswith("pixart") else 5.0,
            "prompts": PromptSpec(set="shapes", count=16, batch_size=4),
            "metric": MetricSpec(TOY_CLIP, ""),
            "n_trials": 12,
        }
    tiny = info.hub_id is None
    return {
        "resolution": info.resolution,
        "guidance": 5.0 if tiny else _GUIDANCE[info.family],
        "prompts": PromptSpec(count=4, batch_size=4) if tiny else PromptSpec(),
        "metric": MetricSpec(TINY_CLIP, "") if tiny else MetricSpec(),
        "n_trials": 8 if tiny else 50,
        # Random weights on a CPU, there to finish in seconds: one timed pair per trial (3
        # would make each trial 3.5 times as long; held-out confirmation still takes 3).
        **({"timing": TimingSpec(pairs=1)} if tiny else {}),
    }


def shipped_dir() -> Path:
    """Where the spec files shipped with accelopt live (``studies/`` in the source tree).

    Installed, they are the package ``accelopt.studies``; run from a checkout on PYTHONPATH,
    the repository's ``studies/`` beside the package.
    """
    from importlib import resources

    try:
        return Path(str(resources.files("accelopt.studies")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "studies"


def shipped_specs() -> list[Path]:
    return sorted(shipped_dir().glob("*.toml"))


def find_spec_file(name: str, cwd: Path | None = None) -> Path | None:
    """``./studies/NAME.toml`` if it exists, else the shipped one, else None.

    Any spelling of NAME finds a file spelled any other way (``toysd-ddim-20`` finds
    ``ToySD-DDIM-20.toml`` and the reverse): files are matched by their ``canonical_name``.
    """
    canonical = canonical_name(name)
    for folder in ((cwd or Path.cwd()) / "studies", shipped_dir()):
        path = folder / f"{canonical}.toml"
        if path.is_file():
            return path
        if not folder.is_dir():
            continue
        same = sorted(
            p for p in folder.glob("*.toml") if p.is_file() and canonical_name(p.stem) == canonical
        )
        if len(same) > 1:
            raise AccelOptError(
                f"{' and '.join(map(str, same))} are both study {canonical}; keep one of them"
            )
        if same:
            return same[0]
    return None


def load_spec(name: str | None = None, *, path: Path | None = None) -> StudySpec:
    """The spec for a study NAME (file if there is one, else defaults) or for a file ``path``.

    The study's name is always the ``canonical_name`` of NAME (or of the file's stem)."""
    if name is not None:
        name = canonical_name(name)
    if path is None:
        assert name is not None
        path = find_spec_file(name)
        if path is None:
            return _build(name, _defaults(name), {}, "derived from the name")
    if not path.is_file():
        raise AccelOptError(f"spec file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise AccelOptError(f"{path}: not valid TOML: {err}") from None
    name = name or canonical_name(path.stem)
    try:
        defaults = _defaults(name)
    except AccelOptError:
        # A free-form name: the file must say pipeline, scheduler and steps; a known pipeline
        # still brings its defaults.
        pipeline = data.get("pipeline")
        defaults = _model_defaults(pipeline) if isinstance(pipeline, str) else {}
    return _build(name, defaults, data, str(path))


# Spec tables and the dataclasses whose fields they set. A TOML ``[constraints]`` table sets
# ``max_score_loss`` too (its ``clip_loss``): ``_build`` reads it apart.
TABLES = {"prompts": PromptSpec, "metric": MetricSpec, "sampler": SamplerSpec,
          "timing": TimingSpec, "constraints": ConstraintSpec}  # fmt: skip


def _build(name: str, defaults: dict[str, Any], data: dict[str, Any], source: str) -> StudySpec:
    where = source if source != "derived from the name" else f"study {name}"
    fields = {f.name: f for f in dataclasses.fields(StudySpec)}
    settable = set(fields) - {"name", "source"}
    unknown = sorted(set(data) - settable)
    if unknown:
        raise AccelOptError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {choices(sorted(settable))}"
        )
    values = dict(defaults)
    for key, value in data.items():
        if key == "constraints":
            if "max_score_loss" in data and isinstance(value, dict) and "clip_loss" in value:
                raise AccelOptError(
                    f"{where}: the score-loss budget is set twice (max_score_loss and "
                    f"constraints.clip_loss); keep one"
                )
            values.update(_constraints(where, value))
        elif key in TABLES:
            values[key] = _table(where, key, value, values.get(key, TABLES[key]()))
        elif key == "targets":
            values[key] = _targets(where, value)
        else:
            values[key] = _typed(where, key, value, fields[key].type)
    missing = [k for k in ("pipeline", "scheduler", "steps") if k not in values]
    if missing:
        raise AccelOptError(
            f"{where}: missing key {missing[0]!r} (the name {name!r} is not PIPE-SCHED-STEPS)"
        )
    spec = StudySpec(name=name, source=source, **values)
    _check_ranges(where, spec)
    return spec.replace(scheduler=_canonical_scheduler(spec.scheduler))


def _canonical_scheduler(name: str) -> str:
    from accelopt.pipelines.schedulers import resolve_scheduler

    return resolve_scheduler(name).name


def _table(where: str, key: str, value: Any, base: Any) -> Any:
    if not isinstance(value, dict):
        raise AccelOptError(f"{where}: [{key}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(base)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise AccelOptError(
            f"{where}: unknown key {key}.{unknown[0]}; allowed: {choices(sorted(fields))}"
        )
    typed = {k: _typed(where, f"{key}.{k}", v, fields[k].type) for k, v in value.items()}
    return dataclasses.replace(base, **typed)


def _constraints(where: str, value: Any) -> dict[str, Any]:
    """The ``[constraints]`` table: ``clip_loss`` is ``max_score_loss``, the rest fidelity."""
    if not isinstance(value, dict):
        raise AccelOptError(f"{where}: [constraints] must be a table")
    unknown = sorted(set(value) - set(BOUNDS))
    if unknown:
        raise AccelOptError(
            f"{where}: unknown key constraints.{unknown[0]}; allowed: {choices(BOUNDS)}"
        )
    typed = {k: _typed(where, f"constraints.{k}", v, "float") for k, v in value.items()}
    out: dict[str, Any] = {"constraints": ConstraintSpec(**{k: v for k, v in typed.items()
                                                           if k != "clip_loss"})}  # fmt: skip
    if "clip_loss" in typed:
        percent = loss_budget_refusal(typed["clip_loss"], f"constraints.clip_loss = "
                                      f"{typed['clip_loss']:g}")  # fmt: skip
        if percent is not None:
            raise AccelOptError(f"{where}: {percent}")
        out["max_score_loss"] = typed["clip_loss"]
    return out


def _typed(where: str, key: str, value: Any, annotation: Any) -> Any:
    want = str(annotation)
    if want.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    elif want.startswith("float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        kind = "a number"
    else:
        ok = isinstance(value, str)
        kind = "a string"
    if not ok:
        raise AccelOptError(f"{where}: {key} must be {kind}, got {value!r}")
    return value


def _targets(where: str, value: Any) -> tuple[str, ...]:
    from accelopt import accelerators

    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        try:
            return accelerators.parse_targets(value)
        except AccelOptError as err:
            raise AccelOptError(f"{where}: targets: {err}") from None
    raise AccelOptError(f"{where}: targets must be a list of accelerator names, got {value!r}")


def _check_targets(spec: StudySpec) -> None:
    """Refuse targets no combination declares, accelerators the scheduler breaks, and for a known
    model those its family cannot take, before anything loads."""
    from accelopt import accelerators
    from accelopt.pipelines import model_info

    if spec.targets is not None:
        accelerators.check_plan(spec.targets)
        accelerators.check_scheduler(spec.targets, spec.scheduler)
    info = model_info(spec.pipeline)
    if info is None or spec.targets is None:
        return
    valid = accelerators.applicable(info.family)
    wrong = [t for t in spec.targets if t not in valid]
    if wrong:
        raise AccelOptError(
            f"{', '.join(wrong)} cannot accelerate {spec.pipeline} ({info.family}); "
            f"it can take: {choices(valid)}"
        )


def _check_ranges(where: str, spec: StudySpec) -> None:
    from accelopt.pipelines import resolve_dtype
    from accelopt.pipelines.schedulers import resolve_scheduler
    from accelopt.prompts import PROMPT_SETS, SPLITS

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            value = spec
            for part in key.split("."):
                value = getattr(value, part)
            raise AccelOptError(f"{where}: {key}={value!r} is out of range; allowed: {allowed}")

    need(1 <= spec.steps <= 1000, "steps", "1..1000")
    need(spec.resolution is None or 8 <= spec.resolution <= 4096, "resolution", "8..4096")
    need(0.0 <= spec.guidance <= 50.0, "guidance", "0..50")
    percent = loss_budget_refusal(spec.max_score_loss, f"max_score_loss = {spec.max_score_loss:g}")
    if percent is not None:
        raise AccelOptError(f"{where}: {percent}")
    need(0.0 < spec.max_score_loss < 1.0, "max_score_loss", "more than 0, less than 1")
    for bound in spec.bounds()[1:]:  # the score loss is checked above, under its own name
        low, high = bound.allowed()
        key = f"constraints.{bound.key}"
        need(low < bound.limit < high, key, f"more than {low:g}, less than {high:g}")
    need(spec.pareto_metric in METRICS, "pareto_metric", choices(METRICS))
    need(spec.metric.lpips in ("", *LPIPS_NETS), "metric.lpips", choices(LPIPS_NETS))
    need(0 <= spec.timing.pairs <= 50, "timing.pairs", "0..50")
    need(0 <= spec.timing.prompts <= 1000, "timing.prompts", "0..1000")
    need(1 <= spec.n_trials <= 100_000, "n_trials", "1..100000")
    need(0 <= spec.warmup <= 10, "warmup", "0..10")
    early = spec.early_stop == 0 or 0.5 <= spec.early_stop < 1
    need(early, "early_stop", "0 (off) or at least 0.5 and less than 1")
    need(spec.prompts.set in PROMPT_SETS, "prompts.set", choices(PROMPT_SETS))
    need(spec.prompts.split in SPLITS, "prompts.split", choices(SPLITS))
    need(1 <= spec.prompts.count <= 1000, "prompts.count", "1..1000")
    need(1 <= spec.prompts.batch_size <= 64, "prompts.batch_size", "1..64")
    need(spec.sampler.name in SAMPLERS, "sampler.name", choices(SAMPLERS))
    need(spec.objective in OBJECTIVES, "objective", choices(OBJECTIVES))
    need(spec.execution in EXECUTIONS, "execution", choices(EXECUTIONS))
    try:
        resolve_scheduler(spec.scheduler)
        _check_targets(spec)
        if spec.execution != "auto" and spec.targets is not None:
            from accelopt import execution

            execution.check(spec.execution, spec.targets)
        if spec.dtype is not None:
            import torch

            resolve_dtype(spec.dtype, torch.device("cpu"))
    except AccelOptError as err:
        raise AccelOptError(f"{where}: {err}") from None


# The record stored with a study (its ``spec`` user attribute): the fields that define what it
# measured; changing one needs a new study.
IDENTITY = (
    "pipeline",
    "scheduler",
    "steps",
    "targets",
    "resolution",
    "guidance",
    "dtype",
    "prompts",
    "metric",
    "sampler",
    "max_score_loss",
    "warmup",
    "objective",
    "execution",
    "constraints",
    "pareto_metric",
    "timing",
)
# What a stored record without a key meant: studies stored before the key existed. (A table
# stored without a newer field of its own gets the field's default: ``filled_record``.)
LEGACY = {"objective": "speedup", "execution": "eager"}


def record_of(spec: StudySpec) -> dict[str, Any]:
    """The JSON record stored with a study: what ``spec`` measures.

    >>> record_of(load_spec("TinySD-DDIM-10"))["steps"]
    10
    """
    data = dataclasses.asdict(spec)
    return json.loads(json.dumps({k: data[k] for k in IDENTITY}))


def spec_from_record(name: str, stored: dict[str, Any]) -> StudySpec:
    """The spec a stored record describes (as far as it defines what was measured)."""
    record = dict(stored)
    for key, cls in TABLES.items():
        if key in record:
            record[key] = cls(**record[key])
    if record["targets"] is not None:
        record["targets"] = tuple(record["targets"])
    return StudySpec(name=name, source="stored study", **record)


def filled_record(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored record as this version writes it: keys and table fields added since it was
    stored get what studies did before them (no fidelity bound, no LPIPS)."""
    filled = {**LEGACY, **stored}
    for key, cls in TABLES.items():
        defaults = json.loads(json.dumps(dataclasses.asdict(cls())))
        filled[key] = {**defaults, **(stored.get(key) or {})}
    filled.setdefault("pareto_metric", "score_loss")
    return filled
