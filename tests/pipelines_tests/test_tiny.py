"""Tests for accelopt/pipelines/tiny.py: tiny pipelines built from config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from accelopt.errors import AccelOptError
from accelopt.pipelines import call_defaults, denoiser
from accelopt.pipelines.tiny import TINY_PIPELINES, TINY_RESOLUTION, tiny_pipeline

EXPECTED_CLASS = {
    "TinySD": "StableDiffusionPipeline",
    "TinySDXL": "StableDiffusionXLPipeline",
    "TinyPixArt": "PixArtAlphaPipeline",
}


def _generate(pipe) -> np.ndarray:
    return pipe(
        "a red cube",
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **call_defaults(pipe),
    ).images


def test_registry_names() -> None:
    assert set(TINY_PIPELINES) == set(EXPECTED_CLASS)


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
@pytest.mark.parametrize("spelling", [str, str.lower, str.upper])
def test_builds_with_expected_class(name: str, spelling) -> None:
    pipe = tiny_pipeline(spelling(name))
    assert type(pipe).__name__ == EXPECTED_CLASS[name]


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_every_module_in_eval_mode(name: str) -> None:
    pipe = tiny_pipeline(name)
    modules = {k: v for k, v in pipe.components.items() if isinstance(v, nn.Module)}
    assert {"vae", "text_encoder"} <= set(modules)
    for key, component in modules.items():
        assert component.training is False, key
        assert [n for n, m in component.named_modules() if m.training] == [], key


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_same_seed_same_weights_different_seed_different(name: str) -> None:
    a = denoiser(tiny_pipeline(name, seed=0)).state_dict()
    b = denoiser(tiny_pipeline(name, seed=0)).state_dict()
    c = denoiser(tiny_pipeline(name, seed=1)).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_same_seed_same_weights_in_every_component() -> None:
    a, b = tiny_pipeline("TinySDXL", seed=3), tiny_pipeline("TinySDXL", seed=3)
    for key in ("vae", "text_encoder", "text_encoder_2", "unet"):
        sa, sb = a.components[key].state_dict(), b.components[key].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), key


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_building_leaves_global_rng_alone(name: str) -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    tiny_pipeline(name, seed=7)
    assert torch.equal(torch.get_rng_state(), before)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(AccelOptError) as info:
        tiny_pipeline("TinyFlux")
    message = str(info.value)
    assert "TinyFlux" in message
    for name in ("TinySD", "TinySDXL", "TinyPixArt"):
        assert name in message


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_save_and_reload_is_bit_identical(name: str, tmp_path: Path, offline: None) -> None:
    from diffusers import DiffusionPipeline

    pipe = tiny_pipeline(name)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    # safetensors leaves tensors at unaligned addresses inside the file's mapping, and on some
    # CPUs BLAS then takes other kernels that round differently (1e-6 here, on a 32x32 image):
    # aligned copies compare what was saved, not where it landed in memory.
    for component in loaded.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in (*component.parameters(), *component.buffers()):
                tensor.data = tensor.data.clone()
    assert type(loaded) is type(pipe)
    assert loaded.tokenizer("a red cube").input_ids == pipe.tokenizer("a red cube").input_ids
    images = _generate(pipe)
    assert images.shape == (1, TINY_RESOLUTION, TINY_RESOLUTION, 3)
    assert np.isfinite(images).all()
    # Bit-identical also means no dropout left on and no state carried between calls.
    assert np.array_equal(_generate(loaded), images)
