"""Tiny offline pipelines and helpers for tests, ours and users'."""

from __future__ import annotations

from accelopt.pipelines.tiny import TINY_PIPELINES, tiny_pipeline
from accelopt.pipelines.tokenizers import clip_tokenizer, t5_tokenizer
from accelopt.testing.entries import entry_images, make_entry
from accelopt.testing.render import ignored_knobs, render
from accelopt.testing.signals import default_signals
from accelopt.testing.work import WorkCounter

__all__ = [
    "TINY_PIPELINES",
    "WorkCounter",
    "clip_tokenizer",
    "default_signals",
    "entry_images",
    "ignored_knobs",
    "make_entry",
    "render",
    "t5_tokenizer",
    "tiny_pipeline",
]
