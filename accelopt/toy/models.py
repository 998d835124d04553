"""The toy models' architectures and their tokenizer, built from config (training fills them in).

``ToySD`` is Stable Diffusion 1.5's layout in miniature at 64 px: an AutoencoderKL that
downsamples by 4, a CLIP text encoder, and a UNet2DConditionModel with cross-attention at its two
upper levels and none at the last, so DeepCache, ToMe and T-GATE apply exactly as on SD1.5. The
scorer is an open_clip CLIP of its own (a small ViT and text transformer), trained on its own
draw of the data so that it never grades its own generator.

Both use one small BPE tokenizer: the CLIP tokenizer's byte alphabet plus only the merges the
caption words need, so caption words tokenize exactly as CLIP's tokenizer would, any other text
still tokenizes (into smaller pieces), and the embedding tables hold 600 rows, not 49,408.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelopt.pipelines.tokenizers import _bytes_to_unicode, _clip_vocab_and_merges
from accelopt.toy import shapes

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = [
    "CONTEXT_LENGTH",
    "RESOLUTION",
    "build_pipeline",
    "scorer_config",
    "text_encoder",
    "tokenizer",
    "unet",
    "vae",
]

RESOLUTION = 64
CONTEXT_LENGTH = 32  # tokens; a caption takes at most 14
LATENT_SCALE = 4  # the VAE's downsampling


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges CLIP's BPE applies to one word, in order (its SimpleTokenizer's loop)."""
    parts = [*word[:-1], word[-1] + "</w>"]
    applied = []
    while len(parts) > 1:
        pairs = set(itertools.pairwise(parts))
        best = min(pairs, key=lambda p: ranks.get(p, 1 << 30))
        if best not in ranks:
            break
        applied.append(best)
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return applied


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    _, all_merges = _clip_vocab_and_merges()
    pairs = [(m.split(" ")[0], m.split(" ")[1]) for m in all_merges]
    ranks = {p: i for i, p in enumerate(pairs)}
    used: set[tuple[str, str]] = set()
    for word in shapes.vocabulary():
        used.update(_bpe(word, ranks))
    # Kept in CLIP's rank order, so every kept word splits exactly as CLIP splits it.
    merges = [p for p in pairs if p in used]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in merges]
    # The end-of-text token gets the largest id: CLIP text towers pool at the argmax token id.
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def tokenizer() -> CLIPTokenizer:
    """The toy tokenizer: CLIP's BPE restricted to the caption words (about 600 tokens).

    >>> tok = tokenizer()
    >>> len(tok("two red circles").input_ids)  # start, three words, end (padded to 32)
    32
    """
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    pairs: Any = merges
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=CONTEXT_LENGTH)


def vae() -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=RESOLUTION,
    )


def text_encoder(vocab_size: int) -> CLIPTextModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT_LENGTH,
            projection_dim=128,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )


def unet() -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    # SD1.5's layout: attention at the first two levels, none at the last.
    return UNet2DConditionModel(
        sample_size=RESOLUTION // LATENT_SCALE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def build_pipeline(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline around trained parts, with SD's DDIM scheduler config."""
    from accelopt.pipelines.tiny import sd_pipeline

    return sd_pipeline(vae, text_encoder, tokenizer, unet)


def scorer_config(vocab_size: int) -> dict[str, Any]:
    """The scorer's open_clip config (``open_clip_config.json``'s ``model_cfg``)."""
    return {
        "embed_dim": 128,
        "vision_cfg": {
            "image_size": RESOLUTION,
            "patch_size": 8,
            "width": 192,
            "layers": 4,
            "head_width": 48,
        },
        "text_cfg": {
            "context_length": CONTEXT_LENGTH,
            "vocab_size": vocab_size,
            "width": 128,
            "heads": 4,
            "layers": 3,
            # Any name: open_clip then reads the tokenizer from the local-dir folder itself.
            "hf_tokenizer_name": "accelopt-toy",
        },
    }


def write_scorer_config(folder: Path, vocab_size: int) -> None:
    """``open_clip_config.json`` for ``open_clip.create_model_and_transforms('local-dir:...')``."""
    config = {
        "model_cfg": scorer_config(vocab_size),
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
