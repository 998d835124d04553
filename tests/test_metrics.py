"""Tests for accelopt/metrics.py: the relative score loss and the CLIP scorer (tiny, offline)."""

from __future__ import annotations

import pytest
import torch

from accelopt.errors import AccelOptError
from accelopt.metrics import ClipScorer, score_loss

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
