"""Type names shared across modules."""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["Pipeline"]

# A diffusers pipeline. Typed loosely on purpose: components are dynamic attributes (unet or
# transformer, tokenizer_2, ...), which the static DiffusionPipeline type does not know.
Pipeline: TypeAlias = Any
