"""Full-size architectures from config, with random weights, for timing where weights are absent.

The configs are those the hub repositories publish (model_index.json and each component's
config.json) for SD1.5, SD2.1, SDXL base, PixArt-alpha XL-2-1024-MS and PixArt-Sigma XL-2-1024-MS.
Speed measured on them is real; images are noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from accelopt._types import Pipeline
from accelopt.pipelines.tokenizers import clip_tokenizer, t5_tokenizer

__all__ = ["build"]

_SD_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def _vae(sample_size: int, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def _clip_text(hidden: int, layers: int, heads: int, ff: int, act: str, projection: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=ff,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection or hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _sd(
    device: torch.device, unet: dict[str, Any], text: Callable[[], Any], resolution: int
) -> Pipeline:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    scheduler = DDIMScheduler(**_SD_SCHEDULER)
    tokenizer = clip_tokenizer()
    with device:  # models initialise on the target device; schedulers keep CPU tensors
        models = {
            "vae": _vae(resolution),
            "text_encoder": text(),
            "unet": UNet2DConditionModel(**unet),
        }
    return StableDiffusionPipeline(
        **models,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sd15(device: torch.device) -> Pipeline:
    unet = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
    return _sd(device, unet, lambda: _clip_text(768, 12, 12, 3072, "quick_gelu"), 512)


def _sd21(device: torch.device) -> Pipeline:
    unet = {
        "sample_size": 96,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
        "upcast_attention": True,
    }
    return _sd(device, unet, lambda: _clip_text(1024, 23, 16, 4096, "gelu"), 768)


def _sdxl(device: torch.device) -> Pipeline:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler(
        **{k: v for k, v in _SD_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")},
        timestep_spacing="leading",
    )
    tokenizers = {"tokenizer": clip_tokenizer(), "tokenizer_2": clip_tokenizer()}
    with device:  # models initialise on the target device; schedulers keep CPU tensors
        return StableDiffusionXLPipeline(
            vae=_vae(1024, 0.13025),
            text_encoder=_clip_text(768, 12, 12, 3072, "quick_gelu"),
            text_encoder_2=_clip_text(1280, 32, 20, 5120, "gelu", projection=1280),
            unet=_sdxl_unet(),
            scheduler=scheduler,
            **tokenizers,
        )


def _sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def _pixart(device: torch.device, sigma: bool) -> Pipeline:
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from accelopt.pipelines.tiny import _word_list

    scheduler = DPMSolverMultistepScheduler(
        beta_schedule="linear", beta_start=0.0001, beta_end=0.02
    )
    tokenizer = t5_tokenizer(_word_list(), max_length=300 if sigma else 120)
    with device:  # models initialise on the target device; schedulers keep CPU tensors
        # T5-XXL v1.1 encoder (4.7B parameters); the tokenizer is our word-list stand-in.
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=32128,
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
                use_cache=False,
            )
        )
        transformer = PixArtTransformer2DModel(
            sample_size=128,
            caption_channels=4096,
            interpolation_scale=2 if sigma else None,
            use_additional_conditions=not sigma,
        )
        vae = _vae(1024)
    pipeline_cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return pipeline_cls(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )


_BUILDERS: dict[str, Callable[[torch.device], Pipeline]] = {
    "SD1.5": _sd15,
    "SD2.1": _sd21,
    "SDXL": _sdxl,
    "PixArt-alpha": lambda device: _pixart(device, sigma=False),
    "PixArt-Sigma": lambda device: _pixart(device, sigma=True),
}


def build(name: str, device: str | torch.device = "cpu") -> Pipeline:
    """Build the named architecture with random weights, its models created on ``device``.

    ``device="meta"`` builds the structure alone, instantly: enough to read its layout.
    """
    return _BUILDERS[name](torch.device(device))
