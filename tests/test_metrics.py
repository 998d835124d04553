"""Tests for accelopt/metrics.py: score loss, CLIP scorer (tiny, offline), PSNR and SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from accelopt.errors import AccelOptError
from accelopt.metrics import ClipScorer, psnr, score_loss, ssim

CPU = torch.device("cpu")
TINY_CLIP = "accelopt-tiny-clip"

# --- score_loss -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("baseline", "scores", "loss"),
    [
        ([30.0, 32.0], [29.0, 31.0], 1.0 / 31.0),
        ([20.0], [19.0], 0.05),
        ([20.0], [21.0], -0.05),  # accelerated images scoring higher: a negative loss
        ([10.0, 30.0], [30.0, 10.0], 0.0),  # only the means count
        ([-10.0, -20.0], [-12.0, -21.0], 0.1),  # (-15 - -16.5) / |-15|
        ([-10.0, -20.0], [-9.0, -18.0], -0.1),  # (-15 - -13.5) / |-15|
        ([4.0, 2.0, 6.0], [1.0, 2.0, 3.0], 0.5),
    ],
)
def test_score_loss_values(baseline: list[float], scores: list[float], loss: float) -> None:
    assert score_loss(baseline, scores) == pytest.approx(loss, rel=1e-12, abs=1e-15)


def test_score_loss_of_identical_scores_is_zero() -> None:
    scores = [31.25, -3.5, 17.0]
    assert score_loss(scores, list(scores)) == 0.0
    assert score_loss((-2.0,), (-2.0,)) == 0.0


@pytest.mark.parametrize(
    ("baseline", "scores"),
    [([], []), ([1.0], []), ([], [1.0]), ([1.0, 2.0], [1.0]), ([1.0], [1.0, 2.0])],
)
def test_score_loss_needs_equal_non_empty_lists(
    baseline: list[float], scores: list[float]
) -> None:
    with pytest.raises(ValueError) as info:
        score_loss(baseline, scores)
    assert str(info.value) == "baseline and scores must be non-empty and of equal length"


def test_score_loss_refuses_a_zero_baseline_mean() -> None:
    with pytest.raises(ValueError) as info:
        score_loss([1.0, -1.0], [0.5, 0.5])
    assert str(info.value) == "the baseline's mean CLIP score is 0; a relative loss is undefined"


# --- ClipScorer -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer() -> ClipScorer:
    return ClipScorer(TINY_CLIP, "", CPU)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


PROMPTS = ["a red cube on a table", "a dog in the snow", "a city at night"]


def test_scores_are_one_float_per_image(scorer: ClipScorer, images: torch.Tensor) -> None:
    scores = scorer(images, PROMPTS)
    assert isinstance(scores, list)
    assert len(scores) == 3
    assert all(type(s) is float for s in scores)
    assert all(-100.0 <= s <= 100.0 for s in scores)
    assert len(set(scores)) == 3


def test_scoring_is_repeatable(scorer: ClipScorer, images: torch.Tensor) -> None:
    assert scorer(images, PROMPTS) == scorer(images, PROMPTS)


def test_same_seed_gives_identical_scores(scorer: ClipScorer, images: torch.Tensor) -> None:
    other = ClipScorer(TINY_CLIP, "", CPU, seed=0)
    assert other(images, PROMPTS) == scorer(images, PROMPTS)


def test_different_seed_gives_different_scores(scorer: ClipScorer, images: torch.Tensor) -> None:
    other = ClipScorer(TINY_CLIP, "", CPU, seed=1)
    mine, theirs = scorer(images, PROMPTS), other(images, PROMPTS)
    assert all(a != b for a, b in zip(mine, theirs, strict=True))


def test_building_a_scorer_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    ClipScorer(TINY_CLIP, "", CPU, seed=7)
    assert torch.equal(torch.rand(4), expected)


def test_the_prompt_changes_the_score(scorer: ClipScorer, images: torch.Tensor) -> None:
    image = images[:1]
    assert scorer(image, [PROMPTS[0]]) != scorer(image, [PROMPTS[1]])


def test_batch_order_does_not_change_an_image_score(
    scorer: ClipScorer, images: torch.Tensor
) -> None:
    a, b = images[:1], images[1:2]
    forward = scorer(torch.cat([a, b]), PROMPTS[:2])
    backward = scorer(torch.cat([b, a]), PROMPTS[1::-1])
    assert forward[0] == pytest.approx(backward[1], abs=1e-4)
    assert forward[1] == pytest.approx(backward[0], abs=1e-4)


def test_each_image_is_scored_against_its_own_prompt(
    scorer: ClipScorer, images: torch.Tensor
) -> None:
    batch = scorer(images, PROMPTS)
    alone = [scorer(images[i : i + 1], [p])[0] for i, p in enumerate(PROMPTS)]
    assert batch == pytest.approx(alone, abs=1e-4)


def test_images_are_resized_to_the_model_input(scorer: ClipScorer) -> None:
    # Bicubic resizing keeps a flat image flat, so its score does not depend on its size.
    small = scorer(torch.full((1, 3, 16, 16), 0.25), [PROMPTS[0]])
    large = scorer(torch.full((1, 3, 64, 64), 0.25), [PROMPTS[0]])
    assert scorer.image_size == 32
    assert small == pytest.approx(large, abs=1e-4)


def test_unknown_model_is_a_metric_error() -> None:
    with pytest.raises(AccelOptError) as info:
        ClipScorer("no-such-clip-model", "", CPU)
    message = str(info.value)
    assert message.startswith("metric:")
    assert "no-such-clip-model" in message


def test_missing_local_dir_is_a_metric_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AccelOptError) as info:
        ClipScorer(f"local-dir:{tmp_path / 'nowhere'}", "", CPU)
    assert str(info.value).startswith("metric:") and "nowhere" in str(info.value)


def test_embeddings_are_unit_length_and_give_the_score(
    scorer: ClipScorer, images: torch.Tensor
) -> None:
    prompts = ["a red cube"] * len(images)
    image, text = scorer.embed_images(images), scorer.embed_texts(prompts)
    assert torch.allclose(image.norm(dim=-1), torch.ones(len(images)), atol=1e-5)
    expected = (100 * (image * text).sum(-1)).tolist()
    assert scorer(images, prompts) == pytest.approx(expected, abs=1e-4)


# --- psnr -------------------------------------------------------------------------------------


def _noisy(images: torch.Tensor, scale: float, seed: int = 1) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + scale * noise).clamp(0, 1)


# torchmetrics takes log(10) and log(range) in float32: its dB are the float64 formula's to a
# relative 4.5e-8 (2.2e-6 dB on ToySD's images), and 0 dB comes out within 1e-5.
PSNR_TOLERANCE = {"rel": 1e-7, "abs": 1e-5}


def test_psnr_of_identical_images_is_inf(images: torch.Tensor) -> None:
    assert psnr(images, images.clone()) == [math.inf] * 3


@pytest.mark.parametrize(
    ("offset", "data_range", "expected"),
    [
        (0.5, 1.0, 10 * math.log10(4)),  # MSE 0.25
        (0.25, 1.0, 10 * math.log10(16)),  # MSE 1/16
        (1.0, 1.0, 0.0),  # MSE = range²
        (255.0, 255.0, 0.0),
        (1.0, 10.0, 20.0),  # 10 log10(100 / 1)
    ],
)
def test_psnr_of_a_constant_offset(offset: float, data_range: float, expected: float) -> None:
    a = torch.zeros(2, 3, 4, 5)
    assert psnr(a, a + offset, data_range) == pytest.approx([expected] * 2, **PSNR_TOLERANCE)


def test_psnr_averages_the_squared_error_over_channels_and_pixels() -> None:
    # One image: half the values off by 1, so MSE 0.5 -> 10 log10(2) dB. The other: identical.
    a = torch.zeros(2, 2, 2, 2)
    b = a.clone()
    b[0, 0] = 1.0
    assert psnr(a, b) == pytest.approx([10 * math.log10(2), math.inf], **PSNR_TOLERANCE)


def test_psnr_is_symmetric_and_one_float_per_image(images: torch.Tensor) -> None:
    other = _noisy(images, 0.1)
    forward = psnr(images, other)
    assert forward == psnr(other, images)
    assert len(forward) == 3
    assert all(type(v) is float and 10 < v < 40 for v in forward)


def test_psnr_falls_as_the_images_drift_apart(images: torch.Tensor) -> None:
    values = [psnr(images, _noisy(images, s))[0] for s in (0.01, 0.05, 0.2)]
    assert values == sorted(values, reverse=True)


def test_psnr_takes_a_single_image_and_half_precision(images: torch.Tensor) -> None:
    half = images.half()
    assert psnr(half[0], half[0]) == [math.inf]
    flat = torch.zeros(1, 3, 4, 4, dtype=torch.float16)
    assert psnr(flat, flat + 0.5) == pytest.approx([10 * math.log10(4)], **PSNR_TOLERANCE)


# --- ssim -------------------------------------------------------------------------------------


def test_ssim_of_identical_images_is_exactly_one(images: torch.Tensor) -> None:
    assert ssim(images, images.clone()) == [1.0, 1.0, 1.0]
    assert ssim(images.half(), images.half()) == [1.0, 1.0, 1.0]


C1, C2 = 0.01**2, 0.03**2


@pytest.mark.parametrize(
    ("x", "y"), [(0.5, 0.25), (0.0, 1.0), (0.8, 0.8), (0.0, 0.0), (0.125, 0.875)]
)
def test_ssim_of_flat_images(x: float, y: float) -> None:
    # No variance anywhere: SSIM = (2xy + C1) / (x² + y² + C1), the luminance term alone.
    a, b = torch.full((1, 3, 12, 13), x), torch.full((1, 3, 12, 13), y)
    expected = (2 * x * y + C1) / (x * x + y * y + C1)
    assert ssim(a, b) == pytest.approx([expected], rel=1e-9)


def test_ssim_scales_its_constants_with_the_data_range() -> None:
    a, b = torch.full((1, 1, 11, 11), 0.0), torch.full((1, 1, 11, 11), 255.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b, 255.0) == pytest.approx([c1 / (255.0**2 + c1)], rel=1e-9)


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (C, H, W) images, one window position at a time, straight from the paper."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    values = []
    for x, y in zip(a, b, strict=True):
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                values.append(
                    (2 * mx * my + C1) * (2 * cov + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
                )
    return float(np.mean(values))


def test_ssim_matches_the_papers_formula_window_by_window(images: torch.Tensor) -> None:
    a = images[:2, :, :14, :13]
    b = _noisy(a, 0.1)
    expected = [_ssim_reference(a[i].double().numpy(), b[i].double().numpy()) for i in range(2)]
    assert ssim(a, b) == pytest.approx(expected, rel=1e-10)


def test_ssim_is_symmetric_and_falls_as_the_images_drift_apart(images: torch.Tensor) -> None:
    values = [ssim(images, _noisy(images, s)) for s in (0.01, 0.05, 0.2)]
    assert values[1] == ssim(_noisy(images, 0.05), images)
    firsts = [v[0] for v in values]
    assert firsts == sorted(firsts, reverse=True)
    assert all(-1.0 <= v < 1.0 for row in values for v in row)


def test_ssim_of_an_inverted_image_is_negative() -> None:
    # Same mean, opposite structure: the covariance term turns negative.
    stripes = torch.zeros(1, 1, 16, 16)
    stripes[..., ::2] = 1.0
    assert ssim(stripes, 1.0 - stripes)[0] < 0


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_mismatched_shapes_are_refused(metric: object) -> None:
    with pytest.raises(ValueError) as info:
        metric(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))  # type: ignore[operator]
    assert (
        str(info.value) == "images must have the same shape; got (1, 3, 16, 16) and (1, 3, 16, 17)"
    )


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_images_need_three_or_four_dimensions(metric: object) -> None:
    with pytest.raises(ValueError) as info:
        metric(torch.zeros(16, 16), torch.zeros(16, 16))  # type: ignore[operator]
    assert str(info.value) == "images must be (B, C, H, W) or (C, H, W); got shape (16, 16)"


def test_ssim_refuses_images_smaller_than_its_window() -> None:
    with pytest.raises(ValueError) as info:
        ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))
    assert str(info.value) == "images of 10x32 px are smaller than the 11 px window"


@pytest.mark.parametrize("value", [0.3, 0.1 + 0.2, 0.7071067811865476, 1 / 3])
def test_ssim_of_identical_flat_images_is_exactly_one(value: float) -> None:
    # torchmetrics clamps the rounding-error variance of a flat window to 0 (leaving the
    # covariance unclamped): without the identical-pair rule these came out as 1 - 1e-13.
    a = torch.full((2, 3, 16, 16), value, dtype=torch.float64)
    assert ssim(a, a.clone()) == [1.0, 1.0]


def test_ssim_keeps_its_11_px_window() -> None:
    with pytest.raises(ValueError) as info:
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), window=7)
    assert str(info.value) == "the SSIM window is 11 px (sigma 1.5); got 7"
