"""What gets accelerated: a diffusers pipeline from a name, and its scheduler.

- ``loading``: a known model, hub id, local folder, random full-size weights or a tiny one
- ``schedulers``: scheduler names -> diffusers classes
- ``architectures``: full-size SD1.5/SD2.1/SDXL/PixArt configs for random-weight timing
- ``tiny``: tiny offline pipelines built from config (tests and demos)
- ``tokenizers``: offline CLIP and T5 tokenizers for them

>>> from accelopt.pipelines import load_pipeline
>>> pipe = load_pipeline("TinySD")
"""

from __future__ import annotations

from accelopt.pipelines.loading import (
    FAMILIES,
    MODELS,
    TOY_PIPELINES,
    ModelInfo,
    call_defaults,
    denoiser,
    family_of,
    load_pipeline,
    model_info,
    resolve_device,
    resolve_dtype,
    toy_folder,
    toy_shipped,
)
from accelopt.pipelines.tiny import TINY_PIPELINES, tiny_pipeline

__all__ = [
    "FAMILIES",
    "MODELS",
    "TINY_PIPELINES",
    "TOY_PIPELINES",
    "ModelInfo",
    "call_defaults",
    "denoiser",
    "family_of",
    "load_pipeline",
    "model_info",
    "resolve_device",
    "resolve_dtype",
    "tiny_pipeline",
    "toy_folder",
    "toy_shipped",
]
