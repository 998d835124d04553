"""What a study bounds: the CLIP score loss and the images' fidelity to the baseline's.

A study's ``[constraints]`` table bounds any of the metrics below; each bound is one Optuna
constraint (``trial.set_constraint``) and a trial is feasible when every bound holds::

    [constraints]
    clip_loss = 0.02       # relative CLIP score loss, at most (the default; = max_score_loss)
    psnr_min = 30          # dB against the baseline image of the same prompt and seed, at least
    ssim_min = 0.9         # structural similarity to that image, at least
    clip_image_min = 0.95  # cosine of the two images' CLIP embeddings, at least
    lpips_max = 0.1        # learned perceptual distance (needs its weights), at most

A trial's value of each metric is the mean of its per-prompt values (``mean_of``), so one
per-prompt sample serves the value, the one-sided early-stopping bound and the held-out check
alike. PSNR is pooled instead: the PSNR of the prompts' mean squared error (torchmetrics'
batch PSNR), so one unchanged image (infinite PSNR) cannot make a whole set infinite; its
bound is tested on the per-prompt squared errors, and a set of unchanged images reads as
``PSNR_CAP`` dB.

Pure data and arithmetic: no torch, no Optuna; the spec, objective, export, codegen and report
all read the bounds from here.

>>> bound = Bound("psnr_min", 30.0)
>>> bound.describe(), bound.holds(31.5), bound.violation(28.0)
('PSNR >= 30 dB', True, 2.0)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "BOUNDS",
    "LOSS_WARNING",
    "METRICS",
    "PSNR_CAP",
    "Bound",
    "Metric",
    "loss_budget_refusal",
    "loss_budget_warning",
    "mean_of",
    "pooled_psnr",
    "quality_loss",
    "quality_text",
]

PSNR_CAP = 100.0  # dB: what a set of unchanged images reads as, not infinity
# A score-loss budget above this (10%, five times the default 2%) runs, with a warning: every
# output shows the loss in percent, so 0.5 is easily taken for half a percent.
LOSS_WARNING = 0.1


def loss_budget_refusal(value: float, given: str) -> str | None:
    """Why a score-loss budget (a fraction of the baseline's CLIP score) of 1 or more is
    refused, with the fraction a percent meant; None for any other value. ``given`` is how the
    user wrote it (``--max-score-loss 2``, ``max_score_loss = 2``).

    >>> loss_budget_refusal(2, "--max-score-loss 2")
    "--max-score-loss 2 is a fraction of the baseline's score: did you mean 0.02 (2%)?"
    """
    if not 1 <= value < 100:  # 100 or more is no percent either: the range check says so
        return None
    meant = f"did you mean {value / 100:g} ({value:g}%)?"
    return f"{given} is a fraction of the baseline's score: {meant}"


def loss_budget_warning(value: float, given: str) -> str | None:
    """A warning for a score-loss budget over ``LOSS_WARNING`` (that runs); None otherwise.

    >>> loss_budget_warning(0.5, "--max-score-loss 0.5")  # doctest: +ELLIPSIS
    "a 50% loss budget: --max-score-loss 0.5 lets a trial lose 50% of ...; is that intended? ..."
    """
    if not LOSS_WARNING < value < 1:
        return None
    return (f"a {100 * value:g}% loss budget: {given} lets a trial lose {100 * value:g}% of the "
            f"baseline's CLIP score and still count; is that intended? (2% is 0.02)")  # fmt: skip


@dataclass(frozen=True)
class Metric:
    """One measured quality metric: the trial attribute it is stored as and which way is good."""

    name: str  # the trial's user attribute, the store entry's "measured" key
    label: str
    higher_is_better: bool
    percent: bool = False  # shown x100 with a percent sign (the score loss)
    unit: str = ""

    def show(self, value: float | None) -> str:
        """``value`` as a person reads it: ``1.52%``, ``31.4 dB``, ``0.912``, ``n/a``."""
        if value is None or not isinstance(value, int | float):
            return "n/a"
        if self.percent:
            return f"{100 * value:.2f}%"
        if self.unit:
            return f"{value:.1f} {self.unit}"
        return f"{value:.4f}"

    @property
    def axis(self) -> str:
        """An axis title: the label with its unit."""
        return f"{self.label} ({'%' if self.percent else self.unit or 'unitless'})"


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("score_loss", "CLIP score loss", higher_is_better=False, percent=True),
        Metric("psnr", "PSNR", higher_is_better=True, unit="dB"),
        Metric("ssim", "SSIM", higher_is_better=True),
        Metric("clip_image", "CLIP image similarity", higher_is_better=True),
        Metric("lpips", "LPIPS", higher_is_better=False),
    )
}


def quality_text(values: Mapping[str, float | None]) -> str:
    """Quality metrics as a person reads them, in ``values``' order: the CLI, the report,
    held-out confirmations and the scripts' docstrings all show them this way.

    >>> quality_text({"score_loss": 0.012, "psnr": 31.44})
    'CLIP score loss 1.20%, PSNR 31.4 dB'
    """
    return ", ".join(f"{METRICS[k].label} {METRICS[k].show(v)}" for k, v in values.items())


# The [constraints] keys and the metric each bounds: "_min" on a metric where higher is better,
# "_max" (and the score loss's budget) where lower is.
BOUNDS: dict[str, str] = {
    "clip_loss": "score_loss",
    "psnr_min": "psnr",
    "ssim_min": "ssim",
    "clip_image_min": "clip_image",
    "lpips_max": "lpips",
}
# What a bound may be: the score loss a fraction in (0, 1), as max_score_loss always was.
_RANGES: dict[str, tuple[float, float]] = {
    "clip_loss": (0.0, 1.0),
    "psnr_min": (0.0, PSNR_CAP),
    "ssim_min": (-1.0, 1.0),
    "clip_image_min": (-1.0, 1.0),
    "lpips_max": (0.0, 10.0),
}


@dataclass(frozen=True)
class Bound:
    """One constraint of a study: a ``[constraints]`` key and its limit."""

    key: str
    limit: float

    def __post_init__(self) -> None:
        if self.key not in BOUNDS:
            raise ValueError(f"unknown constraint {self.key!r}; known: {', '.join(BOUNDS)}")

    @property
    def metric(self) -> Metric:
        return METRICS[BOUNDS[self.key]]

    @property
    def name(self) -> str:
        """The trial attribute it bounds (``score_loss``, ``psnr`` ...)."""
        return self.metric.name

    def allowed(self) -> tuple[float, float]:
        """The open interval a limit must lie in."""
        return _RANGES[self.key]

    def violation(self, value: float) -> float:
        """Optuna's constraint value: zero or less when ``value`` is within the bound."""
        if self.metric.higher_is_better:
            return self.limit - value
        return value - self.limit

    def holds(self, value: float | None) -> bool:
        """Whether a measured ``value`` meets the bound; an unmeasured one (None) does not."""
        return (
            isinstance(value, int | float) and math.isfinite(value) and self.violation(value) <= 0
        )

    def describe(self) -> str:
        """``CLIP score loss <= 2%``, ``PSNR >= 30 dB``."""
        m = self.metric
        sign = ">=" if m.higher_is_better else "<="
        limit = f"{100 * self.limit:.10g}%" if m.percent else f"{self.limit:.10g}"
        return f"{m.label} {sign} {limit}{' ' + m.unit if m.unit else ''}"

    def broken(self, values: Sequence[float], z: float) -> tuple[float, float] | None:
        """Whether per-prompt ``values`` break the bound with one-sided confidence ``z``:
        ``(estimate, confidence bound)`` when the whole confidence interval is on the wrong
        side (the mean plus or minus ``z`` standard errors), else None. Needs two values.

        >>> Bound("ssim_min", 0.9).broken([0.6, 0.8], z=1.0)
        (0.7, 0.8)

        PSNR's interval is on the squared errors its pooled value comes from, read back in dB.
        """
        if len(values) < 2:
            return None
        if self.name == "psnr":  # a minimum PSNR is a maximum mean squared error
            errors = [_mse(v) for v in values]
            mean = statistics.fmean(errors)
            margin = z * statistics.stdev(errors) / math.sqrt(len(errors))
            best_case = mean - margin
            return (_db(mean), _db(best_case)) if best_case > _mse(self.limit) else None
        mean = statistics.fmean(values)
        margin = z * statistics.stdev(values) / math.sqrt(len(values))
        if self.metric.higher_is_better:
            best_case = mean + margin
            return (mean, best_case) if best_case < self.limit else None
        best_case = mean - margin
        return (mean, best_case) if best_case > self.limit else None


def pooled_psnr(values: Sequence[float]) -> float:
    """The PSNR of images taken together (dB, images in [0, 1]): of their mean squared error,
    not the mean of their PSNRs; at most ``PSNR_CAP``.

    >>> pooled_psnr([math.inf, 20.0])
    23.010299956639813
    >>> pooled_psnr([math.inf, math.inf])
    100.0
    """
    return _db(statistics.fmean(_mse(v) for v in values))


def mean_of(metric: str, values: Sequence[float]) -> float:
    """A trial's value of ``metric`` from its per-prompt values: the mean (PSNR: pooled)."""
    return pooled_psnr(values) if metric == "psnr" else statistics.fmean(values)


def _mse(db: float) -> float:
    return 0.0 if math.isinf(db) else 10 ** (-db / 10)


def _db(mse: float) -> float:
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else min(PSNR_CAP, -10 * math.log10(mse))


def quality_loss(measured: Mapping[str, object], metric: str) -> float | None:
    """A metric as a loss, lower better (the score loss as is, PSNR negated ...), for ordering
    points on a frontier whose second objective is ``metric``; None when not measured."""
    value = measured.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return -float(value) if METRICS[metric].higher_is_better else float(value)
