"""The toy models' architectures and their tokenizers, built from config (training fills them in).

``ToySD`` is Stable Diffusion 1.5's layout in miniature at 64 px: an AutoencoderKL that
downsamples by 4, a CLIP text encoder, and a UNet2DConditionModel with cross-attention at its two
upper levels and none at the last, so DeepCache, ToMe and T-GATE apply exactly as on SD1.5. The
scorer is an open_clip CLIP of its own (a small ViT and text transformer), trained on its own
draw of the data so that it never grades its own generator.

Both use one small BPE tokenizer: the CLIP tokenizer's byte alphabet plus only the merges the
caption words need, so caption words tokenize exactly as CLIP's tokenizer would, any other text
still tokenizes (into smaller pieces), and the embedding tables hold 600 rows, not 49,408.

``ToyPixArt`` is PixArt-alpha's layout in miniature on the same 64 px world and ToySD's VAE (the
same latent space): a ``PixArtTransformer2DModel`` (patchify, adaLN-single, cross-attention to the
caption in every block) of 12 blocks, 160 wide, over 2 x 2 latent patches (64 tokens), and a small
T5 encoder with a T5 tokenizer of the caption words, in a ``PixArtAlphaPipeline`` with PixArt's
DPM-Solver++ config. Alpha rather than Sigma: the two pipelines run the same transformer class;
Alpha pads captions to 120 tokens and Sigma to 300, and with 64 image tokens 300 masked caption
tokens would make each block's cross-attention keys cost half its image work, a share no real
PixArt has (it has 4,096 image tokens).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelopt.pipelines.tokenizers import _bytes_to_unicode, _clip_vocab_and_merges
from accelopt.toy import shapes

if TYPE_CHECKING:
    from diffusers import (
        AutoencoderKL,
        PixArtAlphaPipeline,
        PixArtTransformer2DModel,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

__all__ = [
    "CONTEXT_LENGTH",
    "DIT_CONTEXT_LENGTH",
    "DIT_LAYERS",
    "RESOLUTION",
    "build_dit_pipeline",
    "build_pipeline",
    "dit_tokenizer",
    "scorer_config",
    "t5_encoder",
    "text_encoder",
    "tokenizer",
    "transformer",
    "unet",
    "vae",
]

RESOLUTION = 64
CONTEXT_LENGTH = 32  # tokens; a caption takes at most 14
LATENT_SCALE = 4  # the VAE's downsampling
# T5 tokens a caption is padded to in training (a caption takes at most 13). The pipeline pads to
# 120; its attention masks hide the padding from T5 and from cross-attention alike, so both see
# the same thing (tests/toy_tests check it).
DIT_CONTEXT_LENGTH = 16
DIT_LAYERS = 12  # DiT-S's depth; PixArt-XL has 28 blocks of 1,152
_DIT_WIDTH = 160  # 5 heads of 32
_T5_WIDTH = 128


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


def dit_tokenizer() -> T5Tokenizer:
    """ToyPixArt's tokenizer: a T5 Unigram vocabulary of the caption words (222 pieces).

    >>> dit_tokenizer()("one red circle").input_ids  # three words and </s>
    [18, 21, 10, 1]
    """
    from accelopt.pipelines.tokenizers import t5_tokenizer

    return t5_tokenizer(shapes.vocabulary(), max_length=120)  # PixArt-alpha's caption length


def t5_encoder(vocab_size: int) -> T5EncoderModel:
    """A 3-layer T5 v1.1 encoder (gated GELU, as PixArt's T5-XXL), 128 wide."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=_T5_WIDTH,
            d_kv=32,
            d_ff=512,
            num_layers=3,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,  # data is drawn afresh every step: nothing to regularise
            is_encoder_decoder=False,
            use_cache=False,
        )
    )


def transformer(layers: int = DIT_LAYERS) -> PixArtTransformer2DModel:
    """PixArt-alpha's transformer in miniature, initialised as PixArt initialises its own.

    Epsilon only (``out_channels`` 4): PixArt's own has 8 (a learned variance, trained with a
    variational bound) that its pipeline and every scheduler we use cut off and discard, so
    training it would buy nothing at inference.
    """
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel(
        sample_size=RESOLUTION // LATENT_SCALE,
        num_layers=layers,
        patch_size=2,
        num_attention_heads=5,
        attention_head_dim=_DIT_WIDTH // 5,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=_DIT_WIDTH,
        caption_channels=_T5_WIDTH,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    _init_like_pixart(model)
    return model


def _init_like_pixart(model: Any) -> None:  # diffusers' modules are untyped
    """PixArt's ``initialize_weights`` (PixArt-alpha/PixArt-alpha, diffusion/model/nets/PixArt.py)
    on diffusers' module names: Xavier linears and patch embedding, N(0, 0.02) timestep and
    caption MLPs, and zero cross-attention outputs and output layer, so every block starts as
    self-attention and MLP alone and the first prediction is 0."""
    import torch
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    patch = model.pos_embed.proj.weight
    nn.init.xavier_uniform_(patch.view(patch.shape[0], -1))
    embedder = model.adaln_single.emb.timestep_embedder
    caption = model.caption_projection
    for linear in (embedder.linear_1, embedder.linear_2, model.adaln_single.linear,
                   caption.linear_1, caption.linear_2):  # fmt: skip
        nn.init.normal_(linear.weight, std=0.02)
    with torch.no_grad():
        for block in model.transformer_blocks:
            block.attn2.to_out[0].weight.zero_()
            block.attn2.to_out[0].bias.zero_()
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()


def dit_scheduler() -> Any:
    """PixArt's scheduler config: DPM-Solver++ (order 2) on its linear training betas."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)


def build_dit_pipeline(
    vae: AutoencoderKL,
    text_encoder: T5EncoderModel,
    tokenizer: T5Tokenizer,
    transformer: PixArtTransformer2DModel,
) -> PixArtAlphaPipeline:
    """A PixArtAlphaPipeline around trained parts, with PixArt's DPM-Solver++ config."""
    from diffusers import PixArtAlphaPipeline

    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=dit_scheduler(),
    )
