"""CLIP score (open_clip) and the relative score loss a study constrains.

CLIP score = 100 x cosine(image embedding, text embedding), per image. Not clamped at 0: with
random weights scores are often negative, and the loss below stays meaningful.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

from accelopt.errors import AccelOptError
from accelopt.spec import TINY_CLIP

__all__ = ["ClipScorer", "score_loss"]


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


@dataclass
class ClipScorer:
    """Scores images against their prompts with one open_clip model, loaded once.

    ``pretrained=""`` builds random weights from a fixed seed (no download).
    """

    model_name: str
    pretrained: str
    device: torch.device
    seed: int = 0

    def __post_init__(self) -> None:
        import open_clip

        config = resources.files("accelopt").joinpath("data/clip")
        open_clip.add_model_config(str(config))
        if self.model_name not in open_clip.list_models():
            raise AccelOptError(
                f"metric: unknown CLIP model {self.model_name!r}; see open_clip.list_models() "
                f"(e.g. ViT-B-32, ViT-H-14, {TINY_CLIP})"
            )
        try:
            with torch.random.fork_rng(devices=[]), _quiet_root_logger():
                torch.manual_seed(self.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, pretrained=self.pretrained or None, device=self.device
                )
        except RuntimeError as err:  # open_clip's word for an unknown model or tag
            raise AccelOptError(f"metric: {err}") from None
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        self.image_size = _image_size(preprocess)
        mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        """CLIP score of each image (B, 3, H, W in [0, 1]) against its prompt."""
        pixels = torch.nn.functional.interpolate(
            images.to(self.device, torch.float32),
            size=(self.image_size, self.image_size),
            mode="bicubic",
            align_corners=False,
        ).clamp(0, 1)
        pixels = (pixels - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        image = self.model.encode_image(pixels.to(dtype), normalize=True)
        text = self.model.encode_text(
            self.tokenizer(list(prompts)).to(self.device), normalize=True
        )
        return (100.0 * (image * text).sum(dim=-1)).float().tolist()


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
