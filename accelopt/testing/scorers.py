"""A base for stand-in scorers in tests: the embedding half of ``ClipScorer``'s interface.

A test's scorer decides its scores by hand (from the pipeline's state, a list of values);
fidelity still needs image embeddings (``Bench.score``'s CLIP image similarity). This one is
the images' pixels, flattened and unit length: equal images give 1.0, and any change moves it.
"""

from __future__ import annotations

import torch

__all__ = ["PixelEmbeddings"]


class PixelEmbeddings:
    """``embed_images`` as a unit-length pixel vector (B, 3·H·W)."""

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.detach().flatten(1).to(torch.float64)
        return torch.nn.functional.normalize(flat, dim=1).float()
