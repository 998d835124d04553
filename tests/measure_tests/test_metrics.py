"""Tests for accelopt/measure/metrics.py: score loss, CLIP scorer (tiny, offline), PSNR, SSIM, CLIP
image similarity and the learned metrics (LPIPS, PickScore, HPSv2), built offline with random
weights."""

from __future__ import annotations

import math
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch

from accelopt.errors import AccelOptError
from accelopt.measure.metrics import (
    LEARNED,
    ClipScorer,
    HpsV2,
    Lpips,
    PickScore,
    hps_weights_path,
    load_metric,
    lpips_weights_path,
    psnr,
    score_loss,
    ssim,
)

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


# --- ClipScorer.image_similarity --------------------------------------------------------------


def test_image_similarity_of_identical_images_is_exactly_one(
    scorer: ClipScorer, images: torch.Tensor
) -> None:
    assert scorer.image_similarity(images, images.clone()) == [1.0, 1.0, 1.0]
    assert scorer.image_similarity(images[0], images[0]) == [1.0]


def test_image_similarity_is_the_cosine_of_the_scorers_embeddings(
    scorer: ClipScorer, images: torch.Tensor
) -> None:
    other = _noisy(images, 0.3)
    u, v = scorer.embed_images(images).double(), scorer.embed_images(other).double()
    by_hand = ((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))).tolist()
    values = scorer.image_similarity(images, other)
    assert values == pytest.approx(by_hand, abs=1e-6)
    assert all(type(x) is float and -1.0 <= x < 1.0 for x in values)
    assert scorer.image_similarity(other, images) == values  # exactly, at any thread count


def test_image_similarity_treats_each_pair_alone(scorer: ClipScorer, images: torch.Tensor) -> None:
    # The first pair identical, the others not: only the first is exactly 1.
    other = images.clone()
    other[1:] = _noisy(images[1:], 0.3)
    values = scorer.image_similarity(images, other)
    assert values[0] == 1.0
    assert values[1:] == pytest.approx(scorer.image_similarity(images[1:], other[1:]), abs=1e-6)
    assert all(v < 1.0 for v in values[1:])


def test_image_similarity_refuses_mismatched_shapes(scorer: ClipScorer) -> None:
    with pytest.raises(ValueError) as info:
        scorer.image_similarity(torch.zeros(2, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    assert str(info.value) == (
        "images must have the same shape; got (2, 3, 32, 32) and (1, 3, 32, 32)"
    )


# --- learned metrics: no download, ever -------------------------------------------------------


@pytest.fixture
def no_download(offline: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every way a loader could fetch weights records the attempt and fails."""
    attempts: list[str] = []

    def refuse(name: str):  # type: ignore[no-untyped-def]
        def call(*args: object, **kwargs: object) -> None:
            attempts.append(name)
            raise AssertionError(f"{name} called in an offline test")

        return call

    for module, name in [
        (torch.hub, "load_state_dict_from_url"),
        (torch.hub, "download_url_to_file"),
        (urllib.request, "urlopen"),
        (huggingface_hub, "hf_hub_download"),
        (huggingface_hub, "snapshot_download"),
    ]:
        monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    yield attempts
    assert attempts == []


def _one_line_error(info: pytest.ExceptionInfo[AccelOptError]) -> str:
    message = str(info.value)
    assert message.startswith("metric: ")
    assert "\n" not in message
    return message


# --- LPIPS ------------------------------------------------------------------------------------

ALEX_FILE = "alexnet-owt-7be5be79.pth"
SQUEEZE_FILE = "squeezenet1_1-b8a52dc0.pth"
# Where torchmetrics' slices end: LPIPS compares the outputs of these torchvision layers.
TAPS = {"alex": (1, 4, 7, 9, 11), "squeeze": (1, 4, 7, 9, 10, 11, 12)}


def _torchvision_state(
    arch: str, seed: int, features_only: bool = False
) -> dict[str, torch.Tensor]:
    """A seeded random torchvision network's state dict; ``features_only`` drops the classifier
    (LPIPS never reads it; AlexNet's is 57M of its 61M parameters)."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = getattr(torchvision.models, arch)(weights=None).state_dict()
    return {k: v for k, v in state.items() if k.startswith("features.") or not features_only}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random torchvision AlexNet and SqueezeNet 1.1, saved under torchvision's names."""
    folder = tmp_path_factory.mktemp("torchvision")
    torch.save(_torchvision_state("alexnet", 0), folder / ALEX_FILE)
    torch.save(_torchvision_state("squeezenet1_1", 0), folder / SQUEEZE_FILE)
    return folder


@pytest.fixture(scope="module")
def pictures() -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return a, _noisy(a, 0.1)


def _lpips_by_hand(net: str, state: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor):  # type: ignore[no-untyped-def]
    """LPIPS from the paper, in float64: unit-normalise each tapped feature over channels,
    weight the squared difference with the published linear layer, average over positions,
    sum over layers."""
    import inspect

    import torchvision
    from torchmetrics.functional.image import lpips as tm_lpips

    arch = {"alex": "alexnet", "squeeze": "squeezenet1_1"}[net]
    model = getattr(torchvision.models, arch)(weights=None)
    model.load_state_dict(state)
    features = model.features.double().eval()
    lin_file = Path(inspect.getfile(tm_lpips)).parent / "lpips_models" / f"{net}.pth"
    lins = torch.load(lin_file, map_location="cpu", weights_only=True)  # saved on a GPU
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(image: torch.Tensor) -> list[torch.Tensor]:
        h, out = ((2 * image.double() - 1) - shift) / scale, []
        for index, layer in enumerate(features):
            h = layer(h.clone())  # torchvision's ReLUs work in place
            if index in TAPS[net]:
                out.append(h / torch.sqrt(1e-8 + (h * h).sum(dim=1, keepdim=True)))
        return out

    total = torch.zeros(len(a), dtype=torch.float64)
    with torch.no_grad():
        for i, (f, g) in enumerate(zip(taps(a), taps(b), strict=True)):
            w = lins[f"lin{i}.model.1.weight"].double().view(1, -1, 1, 1)
            total += (w * (f - g) ** 2).sum(dim=1).mean(dim=(1, 2))
    return total.tolist()


@pytest.mark.parametrize(("net", "file"), [("alex", ALEX_FILE), ("squeeze", SQUEEZE_FILE)])
def test_lpips_from_an_explicit_file(
    net: str,
    file: str,
    backbones: Path,
    pictures: tuple[torch.Tensor, torch.Tensor],
    no_download: list[str],
) -> None:
    a, b = pictures
    lpips = Lpips(net, backbones / file)
    assert lpips.path == backbones / file
    assert lpips(a, a.clone()) == [0.0, 0.0]
    values = lpips(a, b)
    assert all(type(v) is float and v > 0 for v in values)
    state = torch.load(backbones / file, weights_only=True)
    assert values == pytest.approx(_lpips_by_hand(net, state, a, b), rel=1e-4)
    assert lpips(a, b) == values  # deterministic
    assert Lpips(net, backbones / file)(a, b) == values  # and so is loading
    assert lpips(b, a) == pytest.approx(values, rel=1e-6)


def test_lpips_depends_on_the_backbone_weights(
    backbones: Path, pictures: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    # The file's weights are used: another seed's AlexNet gives other distances.
    torch.save(_torchvision_state("alexnet", 1, features_only=True), tmp_path / ALEX_FILE)
    a, b = pictures
    assert Lpips("alex", tmp_path / ALEX_FILE)(a, b) != Lpips("alex", backbones / ALEX_FILE)(a, b)


def test_lpips_from_torch_hubs_cache(
    backbones: Path,
    pictures: tuple[torch.Tensor, torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_download: list[str],
) -> None:
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / ALEX_FILE).symlink_to(backbones / ALEX_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    a, b = pictures
    lpips = Lpips()
    assert lpips.path == checkpoints / ALEX_FILE
    assert lpips(a, b) == Lpips("alex", backbones / ALEX_FILE)(a, b)
    assert lpips_weights_path("alex") == checkpoints / ALEX_FILE


def test_lpips_weights_may_name_the_folder(backbones: Path) -> None:
    assert lpips_weights_path("squeeze", backbones) == backbones / SQUEEZE_FILE


def test_lpips_without_weights_names_the_file_it_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: list[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / ALEX_FILE
    with pytest.raises(AccelOptError) as info:
        Lpips("alex")
    assert _one_line_error(info) == (
        f"metric: LPIPS (alex) needs torchvision's alexnet weights, not in torch hub's cache "
        f"(expected {expected}); download https://download.pytorch.org/models/{ALEX_FILE} where "
        f"there is network and put it there, or pass its path as the weights"
    )
    with pytest.raises(AccelOptError) as info:
        Lpips("vgg", tmp_path)
    assert _one_line_error(info) == (
        f"metric: LPIPS (vgg) needs torchvision's vgg16 weights, no file "
        f"{tmp_path / 'vgg16-397923af.pth'}; download "
        f"https://download.pytorch.org/models/vgg16-397923af.pth where there is network and "
        f"pass its path"
    )


def test_lpips_refuses_a_file_of_other_keys(tmp_path: Path, no_download: list[str]) -> None:
    path = tmp_path / ALEX_FILE
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(AccelOptError) as info:
        Lpips("alex", path)
    assert _one_line_error(info) == (
        f"metric: {path} is not torchvision's alexnet checkpoint: it has no features.0.weight, "
        f"features.0.bias, features.3.weight and 7 more (keys: conv.weight)"
    )


def test_lpips_refuses_tensors_of_other_shapes(tmp_path: Path) -> None:
    state = _torchvision_state("alexnet", 0, features_only=True)
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    path = tmp_path / ALEX_FILE
    torch.save(state, path)
    with pytest.raises(AccelOptError) as info:
        Lpips("alex", path)
    assert _one_line_error(info) == (
        f"metric: {path} is not torchvision's alexnet checkpoint: features.3.weight is "
        f"(192, 64, 3, 3), alexnet has (192, 64, 5, 5)"
    )


def test_lpips_refuses_another_networks_checkpoint(backbones: Path) -> None:
    with pytest.raises(AccelOptError) as info:
        Lpips("alex", backbones / SQUEEZE_FILE)
    assert _one_line_error(info).startswith(
        f"metric: {backbones / SQUEEZE_FILE} is not torchvision's alexnet checkpoint: it has no "
        f"features.3.weight, "
    )


def test_lpips_refuses_a_file_that_is_no_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / ALEX_FILE
    path.write_text("not a checkpoint\n")
    with pytest.raises(AccelOptError) as info:
        Lpips("alex", path)
    assert _one_line_error(info).startswith(
        f"metric: cannot read {path} as a torchvision alexnet checkpoint: "
    )


def test_lpips_refuses_an_unknown_network() -> None:
    with pytest.raises(AccelOptError) as info:
        Lpips("resnet")
    assert _one_line_error(info) == (
        "metric: unknown LPIPS network 'resnet'; valid: alex, vgg, squeeze"
    )


def test_lpips_leaves_the_global_rng_alone(backbones: Path) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    Lpips("alex", backbones / ALEX_FILE)
    assert torch.equal(torch.rand(3), expected)


def test_lpips_checks_its_images(backbones: Path) -> None:
    lpips = Lpips("alex", backbones / ALEX_FILE)
    with pytest.raises(ValueError) as info:
        lpips(torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64))
    assert str(info.value) == "LPIPS takes RGB images (3 channels); got 1"
    with pytest.raises(ValueError) as info:
        lpips(torch.zeros(1, 3, 64, 64), torch.full((1, 3, 64, 64), 2.0))
    assert str(info.value) == "LPIPS takes images with values in [0, 1]"


# --- PickScore --------------------------------------------------------------------------------


def _fake_hf_cache(root: Path, repo: str, files: dict[str, Path]) -> None:
    """The hub cache layout (refs/main -> snapshots/<sha>/) that try_to_load_from_cache reads."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123456789abcdef")
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())


@pytest.fixture(scope="module")
def pick_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny transformers CLIPModel and a CLIP processor (offline tokenizer), saved."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from accelopt.pipelines.tokenizers import clip_tokenizer

    root = tmp_path_factory.mktemp("pickscore")
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
        logit_scale_init_value=3.0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(root / "model")
    pixels = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=pixels, tokenizer=clip_tokenizer()).save_pretrained(
        root / "processor"
    )
    return root / "model", root / "processor"


def _pick_by_hand(model_dir: Path, images: torch.Tensor, prompts: list[str]) -> list[float]:
    """exp(logit_scale) x cosine, with the 32 px images normalised by CLIP's mean and std."""
    from transformers import CLIPModel

    from accelopt.pipelines.tokenizers import clip_tokenizer

    model = CLIPModel.from_pretrained(model_dir).eval()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=(images - mean) / std).pooler_output
        tokens = clip_tokenizer()(prompts, padding=True, return_tensors="pt")
        text = model.get_text_features(**tokens).pooler_output
    cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    return (math.exp(3.0) * cosine).tolist()


def test_pickscore_from_local_folders(
    pick_folders: tuple[Path, Path], images: torch.Tensor, no_download: list[str]
) -> None:
    model_dir, processor_dir = pick_folders
    pick = PickScore(model_dir, processor_dir)
    scores = pick(images, PROMPTS)
    assert scores == pytest.approx(_pick_by_hand(model_dir, images, PROMPTS), abs=1e-4)
    assert all(type(s) is float and abs(s) <= math.exp(3.0) for s in scores)
    assert pick(images, PROMPTS) == scores
    swapped = pick(images, PROMPTS[::-1])  # each image is scored against its own prompt
    assert swapped[1] == pytest.approx(scores[1], abs=1e-5) and swapped[0] != scores[0]


def test_pickscore_from_the_hf_cache(
    pick_folders: tuple[Path, Path],
    images: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_download: list[str],
) -> None:
    model_dir, processor_dir = pick_folders
    _fake_hf_cache(
        tmp_path, "yuvalkirstain/PickScore_v1", {p.name: p for p in model_dir.iterdir()}
    )
    _fake_hf_cache(
        tmp_path,
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        {p.name: p for p in processor_dir.iterdir()},
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    expected = PickScore(model_dir, processor_dir)(images, PROMPTS)
    assert PickScore()(images, PROMPTS) == expected
    assert load_metric("pickscore")(images, PROMPTS) == expected


def test_pickscore_takes_the_processor_from_the_weights_folder(
    pick_folders: tuple[Path, Path], images: torch.Tensor, tmp_path: Path
) -> None:
    model_dir, processor_dir = pick_folders
    for folder in (model_dir, processor_dir):
        for path in folder.iterdir():
            (tmp_path / path.name).write_bytes(path.read_bytes())
    expected = PickScore(model_dir, processor_dir)(images, PROMPTS)
    assert PickScore(tmp_path)(images, PROMPTS) == expected


def test_pickscore_without_weights_names_what_it_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: list[str]
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(AccelOptError) as info:
        PickScore()
    assert _one_line_error(info) == (
        f"metric: PickScore: yuvalkirstain/PickScore_v1 is neither a folder nor in the Hugging "
        f"Face cache (expected {tmp_path}/models--yuvalkirstain--PickScore_v1/snapshots/"
        f"<revision>/config.json); run `hf download yuvalkirstain/PickScore_v1` where there is "
        f"network, or pass a local folder"
    )
    with pytest.raises(AccelOptError) as info:
        PickScore(tmp_path)
    assert _one_line_error(info) == f"metric: PickScore: no {tmp_path / 'config.json'}"
    with pytest.raises(AccelOptError) as info:
        PickScore(tmp_path / "no such dir")
    assert _one_line_error(info) == (
        f"metric: PickScore: no folder {tmp_path / 'no such dir'} "
        f"(expected {tmp_path / 'no such dir' / 'config.json'})"
    )


def test_pickscore_refuses_a_folder_missing_weights(
    pick_folders: tuple[Path, Path], tmp_path: Path, no_download: list[str]
) -> None:
    # transformers fills missing weights with random ones and warns; we refuse.
    from safetensors.torch import load_file, save_file

    model_dir, processor_dir = pick_folders
    (tmp_path / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    state = load_file(model_dir / "model.safetensors")
    kept = {k: v for k, v in state.items() if not k.startswith("visual_projection")}
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AccelOptError) as info:
        PickScore(tmp_path, processor_dir)
    assert _one_line_error(info) == (
        f"metric: PickScore: {tmp_path} has no weights for visual_projection.weight"
    )
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(AccelOptError) as info:
        PickScore(tmp_path, processor_dir)
    assert _one_line_error(info).startswith("metric: PickScore: ")


def test_pickscore_needs_one_prompt_per_image(
    pick_folders: tuple[Path, Path], images: torch.Tensor
) -> None:
    with pytest.raises(ValueError) as info:
        PickScore(*pick_folders)(images, PROMPTS[:2])
    assert str(info.value) == "3 images but 2 prompts"


# --- HPSv2 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hps_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny open_clip model (seed 3) saved as HPSv2 saves its checkpoints."""
    path = tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt"
    state = ClipScorer(TINY_CLIP, "", CPU, seed=3).model.state_dict()
    torch.save({"state_dict": state}, path)
    return path


def test_hpsv2_is_the_cosine_of_the_checkpoints_embeddings(
    hps_file: Path, images: torch.Tensor, no_download: list[str]
) -> None:
    hps = HpsV2(hps_file, arch=TINY_CLIP)
    scores = hps(images, PROMPTS)
    # The checkpoint's model is the seed-3 scorer: its CLIP score is 100 x this cosine.
    by_hand = [s / 100 for s in ClipScorer(TINY_CLIP, "", CPU, seed=3)(images, PROMPTS)]
    assert scores == pytest.approx(by_hand, abs=1e-6)
    seed0 = [s / 100 for s in ClipScorer(TINY_CLIP, "", CPU, seed=0)(images, PROMPTS)]
    assert all(abs(a - b) > 1e-4 for a, b in zip(scores, seed0, strict=True))


def test_hpsv2_takes_a_bare_or_ddp_state_dict(
    hps_file: Path, images: torch.Tensor, tmp_path: Path
) -> None:
    expected = HpsV2(hps_file, arch=TINY_CLIP)(images, PROMPTS)
    state = torch.load(hps_file, weights_only=True)["state_dict"]
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    assert HpsV2(tmp_path / "ddp.pt", arch=TINY_CLIP)(images, PROMPTS) == expected


def test_hpsv2_from_the_hf_cache(
    hps_file: Path,
    images: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_download: list[str],
) -> None:
    _fake_hf_cache(tmp_path, "xswu/HPSv2", {"HPS_v2_compressed.pt": hps_file})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    hps = HpsV2(version="v2.0", arch=TINY_CLIP)
    assert hps.path.name == "HPS_v2_compressed.pt" and hps.path.is_relative_to(tmp_path)
    assert hps(images, PROMPTS) == HpsV2(hps_file, arch=TINY_CLIP)(images, PROMPTS)
    with pytest.raises(AccelOptError) as info:  # the cache holds v2.0 only
        hps_weights_path("v2.1")
    assert _one_line_error(info) == (
        f"metric: HPSv2 (v2.1) needs HPS_v2.1_compressed.pt, not in the Hugging Face cache "
        f"(expected {tmp_path}/models--xswu--HPSv2/snapshots/<revision>/HPS_v2.1_compressed.pt);"
        f" run `hf download xswu/HPSv2 HPS_v2.1_compressed.pt` where there is network, or pass "
        f"the file as the weights"
    )


def test_hpsv2_without_its_file_names_it(tmp_path: Path, no_download: list[str]) -> None:
    with pytest.raises(AccelOptError) as info:
        HpsV2(tmp_path, "v2.0", arch=TINY_CLIP)
    assert _one_line_error(info) == (
        f"metric: HPSv2 (v2.0) needs HPS_v2_compressed.pt and {tmp_path / 'HPS_v2_compressed.pt'}"
        f" is not a file; download it from the Hugging Face repo xswu/HPSv2 where there is network"
    )


def test_hpsv2_refuses_a_checkpoint_of_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {"head.weight": torch.zeros(2)}}, path)
    with pytest.raises(AccelOptError) as info:
        HpsV2(path, arch=TINY_CLIP)
    message = _one_line_error(info)
    assert message.startswith(f"metric: {path} does not fit open_clip {TINY_CLIP}: missing ")
    assert message.endswith("; unexpected head.weight")


def test_hpsv2_refuses_an_unknown_version() -> None:
    with pytest.raises(AccelOptError) as info:
        HpsV2(version="v3")
    assert _one_line_error(info) == "metric: unknown HPSv2 version 'v3'; valid: v2.0, v2.1"


# --- the registry -----------------------------------------------------------------------------


def test_the_registry_says_how_each_metric_is_called() -> None:
    assert {name: (m.kind, m.higher_is_better) for name, m in LEARNED.items()} == {
        "lpips": ("pair", False),
        "lpips-vgg": ("pair", False),
        "lpips-squeeze": ("pair", False),
        "pickscore": ("prompt", True),
        "hpsv2": ("prompt", True),
        "hpsv2.1": ("prompt", True),
        "imagereward": ("prompt", True),
    }


def test_load_metric_builds_lpips_from_a_file(
    backbones: Path, pictures: tuple[torch.Tensor, torch.Tensor], no_download: list[str]
) -> None:
    lpips = load_metric("lpips-squeeze", backbones / SQUEEZE_FILE, "cpu")
    assert isinstance(lpips, Lpips) and lpips.net == "squeeze"
    a, b = pictures
    assert lpips(a, b) == Lpips("squeeze", backbones / SQUEEZE_FILE)(a, b)


def test_load_metric_refuses_an_unknown_name() -> None:
    with pytest.raises(AccelOptError) as info:
        load_metric("fid")
    assert _one_line_error(info) == (
        "metric: unknown learned metric 'fid'; valid: lpips, lpips-vgg, lpips-squeeze, "
        "pickscore, hpsv2, hpsv2.1, imagereward"
    )


def test_imagereward_says_why_it_is_not_supported(no_download: list[str]) -> None:
    with pytest.raises(AccelOptError) as info:
        load_metric("imagereward")
    assert _one_line_error(info) == (
        "metric: ImageReward is not supported: its package (image-reward 1.5) pins "
        "timm==0.6.13 and fairscale==0.4.13, which conflict with accelopt's timm 1.0.31 "
        "(open_clip); use pickscore or hpsv2"
    )
