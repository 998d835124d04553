"""CLIP score (open_clip), the relative score loss a study constrains, and fidelity metrics.

CLIP score = 100 x cosine(image embedding, text embedding), per image. Not clamped at 0: with
random weights scores are often negative, and the loss below stays meaningful.

PSNR and SSIM compare accelerated images with the baseline images of the same seeds and prompts:
they measure how far an accelerator moves the output, which stays meaningful with random weights.
Both are torchmetrics' (checked against the hand-written versions they replaced, see each).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

from accelopt.errors import AccelOptError
from accelopt.spec import TINY_CLIP, TOY_CLIP

__all__ = ["ClipScorer", "loss_bound", "prompt_losses", "psnr", "score_loss", "ssim"]


def score_loss(baseline: Sequence[float], scores: Sequence[float]) -> float:
    """Relative loss of the mean score: ``(mean(baseline) - mean(scores)) / |mean(baseline)|``.

    Positive when accelerated images score lower; 0.02 means 2% worse.

    >>> round(score_loss([30.0, 32.0], [29.0, 31.0]), 4)
    0.0323
    """
    if len(baseline) != len(scores) or not scores:
        raise ValueError("baseline and scores must be non-empty and of equal length")
    base = sum(baseline) / len(baseline)
    if base == 0:
        raise ValueError("the baseline's mean CLIP score is 0; a relative loss is undefined")
    return (base - sum(scores) / len(scores)) / abs(base)


def loss_bound(
    baseline: Sequence[float], scores: Sequence[float], z: float
) -> tuple[float, float]:
    """The score loss estimated from the first ``len(scores)`` prompts, and its lower bound.

    Per prompt, ``d_i = (baseline_i - score_i) / |mean(baseline)|`` (all baseline prompts in
    the mean), so with every prompt scored the estimate equals ``score_loss``. The lower bound
    is ``mean(d) - z * stdev(d) / sqrt(k)``, one-sided; with fewer than two prompts it is -inf.

    >>> loss_bound([10.0, 10.0, 10.0, 10.0], [9.0, 9.0], z=2.33)
    (0.1, 0.1)
    """
    d = prompt_losses(baseline, scores)
    estimate = sum(d) / len(d)
    if len(d) < 2:
        return estimate, -math.inf
    return estimate, estimate - z * statistics.stdev(d) / math.sqrt(len(d))


def prompt_losses(baseline: Sequence[float], scores: Sequence[float]) -> list[float]:
    """Each prompt's share of the score loss: ``(baseline_i - score_i) / |mean(baseline)|``.

    ``scores`` may cover only the first prompts; their mean is the loss on those prompts, and
    with every prompt scored it equals ``score_loss``.

    >>> prompt_losses([10.0, 30.0], [10.0, 25.0])
    [0.0, 0.25]
    """
    if not 0 < len(scores) <= len(baseline):
        raise ValueError("need between 1 and len(baseline) scores")
    base = abs(sum(baseline) / len(baseline))
    if base == 0:
        raise ValueError("the baseline's mean CLIP score is 0; a relative loss is undefined")
    return [(b - s) / base for b, s in zip(baseline, scores, strict=False)]


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> list[float]:
    """Peak signal-to-noise ratio of each image pair, in dB: ``10 log10(range² / MSE)``.

    ``a`` and ``b`` are images (B, C, H, W), or one image (C, H, W), with values in
    ``[0, data_range]``; the mean squared error runs over channels and pixels, in float64.
    Identical images give ``inf``. torchmetrics computes it; it differed from the float64
    formula it replaced by at most 2.2e-6 dB (relative 4.5e-8: it takes ``log(10)`` and
    ``log(range)`` in float32) on the ToySD pairs described under ``ssim``.

    >>> a = torch.zeros(1, 3, 4, 4)
    >>> psnr(a, a + 0.5)
    [6.020599...]
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x, y = _image_pair(a, b)
    values = peak_signal_noise_ratio(x, y, data_range=data_range, reduction="none", dim=(1, 2, 3))
    return [float(v) for v in values.tolist()]


def ssim(
    a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, *, window: int = 11
) -> list[float]:
    """Structural similarity of each image pair (Wang et al. 2004), 1.0 for identical images.

    The paper's settings: a Gaussian window of 11 pixels with sigma 1.5, K1 = 0.01, K2 = 0.03,
    averaged over the positions where the window fits inside the image and over channels.
    Shapes as for ``psnr``; computed in float64. ``window`` must be 11 (kept for callers).

    torchmetrics computes the SSIM map. Its own mean also covers a 5 px border computed on
    reflect-padded pixels, which moved SSIM by up to 1.2e-2 from the hand-written valid-region
    mean this replaced; over the valid region its map gave that mean to 2.2e-14 (float64; 18
    pairs of ToySD 64 px images, DDIM 20 steps, 6 shapes prompts, the baseline against
    DeepCache 3/0, DeepCache 5/1 and ToMe 0.5). It clamps negative rounding-error variances to
    0, which leaves flat identical windows at 1 - 1e-13: identical images are set to 1.0.

    >>> a = torch.full((1, 3, 16, 16), 0.5)
    >>> ssim(a, a)
    [1.0]
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    if window != 11:
        raise ValueError(f"the SSIM window is 11 px (sigma 1.5); got {window}")
    x, y = _image_pair(a, b)
    height, width = x.shape[2:]
    if min(height, width) < window:
        raise ValueError(f"images of {height}x{width} px are smaller than the {window} px window")
    result = structural_similarity_index_measure(
        x,
        y,
        gaussian_kernel=True,
        sigma=1.5,
        data_range=data_range,
        k1=0.01,
        k2=0.03,
        reduction="none",
        return_full_image=True,
    )
    assert isinstance(result, tuple)
    pad = window // 2
    value = result[1][..., pad:-pad, pad:-pad].flatten(1).mean(dim=1)
    same = (x == y).flatten(1).all(dim=1)
    return torch.where(same, torch.ones_like(value), value).tolist()


def _image_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(
            f"images must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dim() not in (3, 4):
        raise ValueError(f"images must be (B, C, H, W) or (C, H, W); got shape {tuple(a.shape)}")
    if a.dim() == 3:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    return a.to(torch.float64), b.to(a.device, torch.float64)


@dataclass
class ClipScorer:
    """Scores images against their prompts with one open_clip model, loaded once.

    ``model_name`` is an open_clip architecture (``ViT-H-14``; ``pretrained`` names its weights,
    ``""`` builds random weights from a fixed seed), an open_clip folder (``local-dir:PATH``,
    ``hf-hub:ORG/NAME``: config, weights and tokenizer from there), or ``accelopt-toy-clip``,
    the scorer trained on the toy shapes and shipped with accelopt.

    >>> scorer = ClipScorer("accelopt-toy-clip", "", torch.device("cpu"))
    >>> scorer(images, ["one large red circle in the center on a white background"])
    """

    model_name: str
    pretrained: str
    device: torch.device
    seed: int = 0

    def __post_init__(self) -> None:
        import open_clip

        config = resources.files("accelopt").joinpath("data/clip")
        open_clip.add_model_config(str(config))
        name = _open_clip_name(self.model_name)
        if not name.startswith(_SCHEMAS) and name not in open_clip.list_models():
            raise AccelOptError(
                f"metric: unknown CLIP model {self.model_name!r}; see open_clip.list_models() "
                f"(e.g. ViT-B-32, ViT-H-14, {TINY_CLIP}, {TOY_CLIP}, local-dir:PATH)"
            )
        pretrained = None if name.startswith(_SCHEMAS) else self.pretrained or None
        try:
            with torch.random.fork_rng(devices=[]), _quiet_root_logger():
                torch.manual_seed(self.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained, device=self.device
                )
                self.tokenizer = open_clip.get_tokenizer(name)
        except (RuntimeError, OSError, ValueError) as err:  # unknown tag, missing folder or file
            raise AccelOptError(f"metric: {err}") from None
        self.model = model.eval()
        self.image_size = _image_size(preprocess)
        mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of images (B, 3, H, W in [0, 1]) at the model's input size."""
        pixels = torch.nn.functional.interpolate(
            images.to(self.device, torch.float32),
            size=(self.image_size, self.image_size),
            mode="bicubic",
            align_corners=False,
        ).clamp(0, 1)
        pixels = (pixels - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(pixels.to(dtype), normalize=True).float()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings of texts."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float()

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """CLIP score of each image (B, 3, H, W in [0, 1]) against its prompt."""
        image, text = self.embed_images(images), self.embed_texts(prompts)
        return (100.0 * (image * text).sum(dim=-1)).tolist()


_SCHEMAS = ("local-dir:", "hf-hub:")


def _open_clip_name(name: str) -> str:
    """The name open_clip loads: the shipped toy scorer is a local-dir folder in the package."""
    if name == TOY_CLIP:
        folder = resources.files("accelopt").joinpath(f"data/toy/{TOY_CLIP}")
        return f"local-dir:{folder}"
    return name


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # open_clip logs through the root logger: that random weights are random (we asked for them)
    # and, before raising, that a tag is unknown (our error says so in one line).
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def _image_size(preprocess: Any) -> int:
    for t in getattr(preprocess, "transforms", []):
        size = getattr(t, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, tuple | list) and size:
            return int(size[0])
    raise AccelOptError("metric: cannot tell the CLIP model's input size from its transforms")
