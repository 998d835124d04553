"""Tests for accelopt/pipelines/loading.py (and the full-size configs in
accelopt/pipelines/architectures.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from accelopt.errors import AccelOptError
from accelopt.pipelines import (
    FAMILIES,
    MODELS,
    call_defaults,
    denoiser,
    family_of,
    load_pipeline,
    resolve_device,
    resolve_dtype,
)
from accelopt.pipelines import architectures as _architectures
from accelopt.testing import tiny_pipeline

SDXL_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"


class FakeFromPretrained:
    """Stands in for DiffusionPipeline.from_pretrained: records calls, returns a tiny pipeline."""

    def __init__(self, tiny: str = "TinySDXL") -> None:
        self.tiny = tiny
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.returned: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        self.returned = tiny_pipeline(self.tiny)
        return self.returned


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeFromPretrained:
    from diffusers import DiffusionPipeline

    fake = FakeFromPretrained()
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", fake)
    return fake


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import DiffusionPipeline

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"from_pretrained called with {args} {kwargs}")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", refuse)


# --- tiny pipelines ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tinysd", "TinySD", "TINYSD"])
def test_load_tiny_case_insensitive(name: str, no_hub: None) -> None:
    pipe = load_pipeline(name)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32
    assert pipe.unet.device == torch.device("cpu")
    assert pipe.text_encoder.dtype == torch.float32


def test_load_tiny_bf16() -> None:
    pipe = load_pipeline("TinySD", dtype="bf16")
    assert pipe.unet.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.bfloat16


def test_load_tiny_seed_is_passed_through() -> None:
    a, b = load_pipeline("TinySD", seed=5), tiny_pipeline("TinySD", seed=5)
    c = load_pipeline("TinySD", seed=6)
    sa, sb, sc = a.unet.state_dict(), b.unet.state_dict(), c.unet.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize(
    ("name", "family"),
    [("TinySD", "sd"), ("TinySDXL", "sdxl"), ("TinyPixArt", "pixart-alpha")],
)
def test_family_of_tiny(name: str, family: str) -> None:
    assert family_of(tiny_pipeline(name)) == family
    assert {m.name: m.family for m in MODELS}[name] == family


@pytest.mark.parametrize("thing", [object(), "TinySD", torch.nn.Linear(2, 2)], ids=type)
def test_family_of_unsupported_lists_supported_classes(thing: object) -> None:
    with pytest.raises(AccelOptError) as info:
        family_of(thing)
    message = str(info.value)
    assert type(thing).__name__ in message
    for class_name in FAMILIES:
        assert class_name in message


def test_call_defaults() -> None:
    assert call_defaults(tiny_pipeline("TinySD")) == {}
    assert call_defaults(tiny_pipeline("TinySDXL")) == {}
    assert call_defaults(tiny_pipeline("TinyPixArt")) == {
        "use_resolution_binning": False,
        "clean_caption": False,
    }


# --- devices and dtypes --------------------------------------------------------------------------


def test_resolve_dtype_default_depends_on_device() -> None:
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, torch.device("cuda:1")) == torch.float16
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("meta")) == torch.float32


@pytest.mark.parametrize(
    ("alias", "dtype"),
    [
        ("fp16", torch.float16),
        ("half", torch.float16),
        ("float16", torch.float16),
        ("FP16", torch.float16),
        ("torch.float16", torch.float16),
        (torch.float16, torch.float16),
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        ("fp32", torch.float32),
        ("float32", torch.float32),
    ],
    ids=str,
)
def test_resolve_dtype_aliases(alias: Any, dtype: torch.dtype) -> None:
    # An explicit dtype wins over the device's default, on either device.
    assert resolve_dtype(alias, torch.device("cpu")) == dtype
    assert resolve_dtype(alias, torch.device("cuda")) == dtype


@pytest.mark.parametrize("bad", ["int8", "fp8", "float", "torch.fp64"])
def test_resolve_dtype_unknown_lists_valid_names(bad: str) -> None:
    with pytest.raises(AccelOptError) as info:
        resolve_dtype(bad, torch.device("cpu"))
    message = str(info.value)
    assert repr(bad) in message
    for name in ("fp16", "half", "float16", "bf16", "bfloat16", "fp32", "float32"):
        assert name in message


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None) == torch.device(expected)


@pytest.mark.parametrize("bad", ["gpu0", "cuda:x", "banana", ""])
def test_resolve_device_bad_string(bad: str) -> None:
    with pytest.raises(AccelOptError) as info:
        resolve_device(bad)
    assert repr(bad) in str(info.value)
    assert "cpu" in str(info.value)


# --- bad names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SD9", "sdxl-turbo", "a/b/c"])
def test_unknown_name_lists_models_and_other_forms(name: str, no_hub: None) -> None:
    with pytest.raises(AccelOptError) as info:
        load_pipeline(name)
    message = str(info.value)
    assert repr(name) in message
    for model in ("SD1.5", "SDXL", "PixArt-Sigma"):
        assert model in message
    assert "hub id" in message
    assert "local folder" in message


def test_folder_without_model_index(tmp_path: Path, no_hub: None) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(AccelOptError, match=r"model_index\.json"):
        load_pipeline(str(tmp_path))


def test_missing_local_path(tmp_path: Path, no_hub: None) -> None:
    with pytest.raises(AccelOptError, match=r"model_index\.json"):
        load_pipeline(str(tmp_path / "nowhere"))


def test_random_weights_need_a_known_architecture(no_hub: None) -> None:
    with pytest.raises(AccelOptError) as info:
        load_pipeline("someorg/some-model", weights="random")
    message = str(info.value)
    assert "someorg/some-model" in message
    for model in ("SD1.5", "SD2.1", "SDXL", "PixArt-alpha", "PixArt-Sigma"):
        assert model in message


def test_bogus_weights(no_hub: None) -> None:
    with pytest.raises(AccelOptError) as info:
        load_pipeline("TinySD", weights="bogus")  # type: ignore[arg-type]
    assert "bogus" in str(info.value)
    assert "pretrained" in str(info.value)
    assert "random" in str(info.value)


def test_bad_dtype_and_device_are_refused_before_loading(no_hub: None) -> None:
    with pytest.raises(AccelOptError, match="int8"):
        load_pipeline("SDXL", dtype="int8")
    with pytest.raises(AccelOptError, match="gpu0"):
        load_pipeline("SDXL", device="gpu0")


# --- the pretrained path -------------------------------------------------------------------------


def test_sdxl_short_name_loads_from_hub_id(fake_hub: FakeFromPretrained) -> None:
    pipe = load_pipeline("SDXL", dtype="fp16", variant="fp16", device="cpu")
    assert fake_hub.calls == [
        ((SDXL_HUB_ID,), {"dtype": torch.float16, "variant": "fp16"}),
    ]
    assert pipe is fake_hub.returned
    assert pipe.unet.dtype == torch.float16


@pytest.mark.parametrize("model", [m for m in MODELS if m.hub_id], ids=lambda m: m.name)
def test_every_short_name_maps_to_its_hub_id(model, fake_hub: FakeFromPretrained) -> None:
    load_pipeline(model.name.lower(), device="cpu")
    assert fake_hub.calls == [((model.hub_id,), {"dtype": torch.float32})]


def test_hub_id_is_passed_through(fake_hub: FakeFromPretrained) -> None:
    pipe = load_pipeline("someorg/some-model", device="cpu")
    assert fake_hub.calls == [(("someorg/some-model",), {"dtype": torch.float32})]
    assert pipe.unet.dtype == torch.float32


def test_unsupported_class_from_hub_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import DiffusionPipeline

    class OtherPipeline:
        pass

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda *a, **k: OtherPipeline())
    with pytest.raises(AccelOptError, match="OtherPipeline"):
        load_pipeline("someorg/other", device="cpu")


def test_local_folder_through_real_from_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    original = tiny_pipeline("TinySD", seed=3)
    folder = tmp_path / "my-finetune"
    original.save_pretrained(folder)

    pipe = load_pipeline(str(folder), device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32
    expected, got = original.unet.state_dict(), pipe.unet.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    # A relative path that starts with "." is a folder too, never a hub id.
    monkeypatch.chdir(tmp_path)
    relative = load_pipeline("./my-finetune", device="cpu", dtype="bf16")
    assert type(relative).__name__ == "StableDiffusionPipeline"
    assert relative.unet.dtype == torch.bfloat16


# --- full-size architectures, on the meta device -------------------------------------------------

ARCHITECTURES = {
    "SD1.5": ("StableDiffusionPipeline", "sd"),
    "SD2.1": ("StableDiffusionPipeline", "sd"),
    "SDXL": ("StableDiffusionXLPipeline", "sdxl"),
    "PixArt-alpha": ("PixArtAlphaPipeline", "pixart-alpha"),
    "PixArt-Sigma": ("PixArtSigmaPipeline", "pixart-sigma"),
}

# Published parameter counts of the released checkpoints.
PUBLISHED_DENOISER = {"SD1.5": 859_520_964, "SDXL": 2_567_463_684}
PUBLISHED_VAE = {"SD1.5": 83_653_863, "SD2.1": 83_653_863}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def meta_pipelines() -> dict[str, Any]:
    return {name: _architectures.build(name, "meta") for name in ARCHITECTURES}


def test_architectures_match_catalogue() -> None:
    assert set(ARCHITECTURES) == {m.name for m in MODELS if m.hub_id}
    assert {m.name: m.family for m in MODELS if m.hub_id} == {
        name: family for name, (_, family) in ARCHITECTURES.items()
    }


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_builds_on_meta(name: str, meta_pipelines: dict[str, Any]) -> None:
    pipe = meta_pipelines[name]
    class_name, family = ARCHITECTURES[name]
    assert type(pipe).__name__ == class_name
    assert family_of(pipe) == family
    devices = {p.device.type for m in (denoiser(pipe), pipe.vae) for p in m.parameters()}
    assert devices == {"meta"}


@pytest.mark.parametrize("name", list(PUBLISHED_DENOISER))
def test_denoiser_parameter_count(name: str, meta_pipelines: dict[str, Any]) -> None:
    assert _count(denoiser(meta_pipelines[name])) == PUBLISHED_DENOISER[name]


@pytest.mark.parametrize("name", list(PUBLISHED_VAE))
def test_vae_parameter_count(name: str, meta_pipelines: dict[str, Any]) -> None:
    assert _count(meta_pipelines[name].vae) == PUBLISHED_VAE[name]


def test_pixart_additional_conditions(meta_pipelines: dict[str, Any]) -> None:
    assert meta_pipelines["PixArt-Sigma"].transformer.config.use_additional_conditions is False
    assert meta_pipelines["PixArt-alpha"].transformer.config.use_additional_conditions is True


def test_random_weights_on_meta_never_download(no_hub: None) -> None:
    pipe = load_pipeline("sdxl", weights="random", device="meta", dtype="fp16")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.device.type == "meta"
    assert pipe.unet.dtype == torch.float16
    assert _count(pipe.unet) == PUBLISHED_DENOISER["SDXL"]


def test_a_model_that_cannot_be_loaded_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import DiffusionPipeline

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError(
            "Cannot load model nobody/nothing: the model is not fully cached locally (Cannot "
            "find an appropriate cached snapshot folder ...) and an error occurred."
        )

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", offline)
    with pytest.raises(AccelOptError) as info:
        load_pipeline("nobody/nothing", device="cpu")
    message = str(info.value)
    assert message.startswith("Cannot load model nobody/nothing: the model is not fully cached")
    assert "hf download nobody/nothing" in message and "--random-weights" in message
    assert "\n" not in message


def test_loading_quiets_diffusers_float32_warning_where_it_names_no_module() -> None:
    """diffusers warns at every dtype cast that no module needs float32 (SDXL's pipeline casts
    its VAE twice per fp16 image): dropped after loading; one that names modules still shows."""
    import logging

    pipe = load_pipeline("TinySD")
    logger = logging.getLogger("diffusers.models.modeling_utils")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        pipe.vae.to(dtype=torch.float32)  # AutoencoderKL keeps no module in float32: []
        logger.warning("There are modules in X that should be kept in float32: ['norm'].")
    finally:
        logger.removeHandler(handler)
    assert seen == ["There are modules in X that should be kept in float32: ['norm']."]
