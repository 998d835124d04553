"""Tiny pipelines built from config: random weights, fixed seed, no download.

They keep the layout that matters to accelerators (where the attention levels sit, how many down
blocks there are, SDXL's two text encoders and added time ids, PixArt's transformer) at a size that
runs 10 steps at 32 px in well under a second on two CPU cores. Use them in your own tests::

    from accelopt.testing import tiny_pipeline
    pipe = tiny_pipeline("TinySD")
    image = pipe("a red cube", num_inference_steps=4, output_type="np").images[0]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from accelopt._types import Pipeline
from accelopt.errors import AccelOptError, choices
from accelopt.pipelines.tokenizers import clip_tokenizer, t5_tokenizer

__all__ = ["TINY_PIPELINES", "eval_mode", "sd_pipeline", "tiny_pipeline"]

TINY_RESOLUTION = 32  # pixels; the tiny VAE downsamples by 2, so latents are 16 x 16


def _sd_scheduler():
    from diffusers import DDIMScheduler

    # The scheduler config Stable Diffusion ships with.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=TINY_RESOLUTION,
    )


def _clip_text(hidden: int = 32, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _tiny_sd() -> Pipeline:
    from diffusers import UNet2DConditionModel

    # SD1.5's shape in miniature: attention from the first level down, none at the last.
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return sd_pipeline(_vae(), _clip_text(), clip_tokenizer(), unet)


def sd_pipeline(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> Pipeline:
    """A StableDiffusionPipeline around these parts: SD's DDIM config, no safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_sdxl() -> Pipeline:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    # SDXL's shape: no attention at the first level, two text encoders, added time ids.
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32,
        cross_attention_dim=64,
        norm_num_groups=16,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=_clip_text(),
        text_encoder_2=_clip_text(projection=True),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=_sd_scheduler(),
    )


def _word_list() -> list[str]:
    from accelopt.prompts import load_prompts

    return sorted({w for p in load_prompts() for w in re.findall(r"[A-Za-z]+", p.text)})


def _tiny_pixart() -> Pipeline:
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer(_word_list())
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            is_encoder_decoder=False,
            use_cache=False,
        )
    )
    transformer = PixArtTransformer2DModel(
        sample_size=TINY_RESOLUTION // 2,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_vae(),
        transformer=transformer,
        scheduler=_sd_scheduler(),
    )


TINY_PIPELINES: dict[str, Callable[[], Pipeline]] = {
    "TinySD": _tiny_sd,
    "TinySDXL": _tiny_sdxl,
    "TinyPixArt": _tiny_pixart,
}


def tiny_pipeline(name: str, seed: int = 0) -> Pipeline:
    """Build a tiny pipeline by name (case-insensitive); the same seed gives the same weights."""
    by_lower = {k.lower(): k for k in TINY_PIPELINES}
    key = by_lower.get(name.lower())
    if key is None:
        raise AccelOptError(f"unknown tiny pipeline {name!r}; valid: {choices(TINY_PIPELINES)}")
    # Seed a private generator stream: building must not disturb the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = TINY_PIPELINES[key]()
    return eval_mode(pipe)


def eval_mode(pipe: Pipeline) -> Pipeline:
    """Put every module of a pipeline built from config in eval mode, as from_pretrained does.

    Models built from config start in training mode; T5's dropout then makes every call differ.
    """
    from torch import nn

    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
