"""ToyPixArt: the toy DiT's architecture, its training recipe and its shipped weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from accelopt.measure.metrics import TOY_CLIP
from accelopt.pipelines import (
    call_defaults,
    family_of,
    load_pipeline,
    model_info,
    tiny_pipeline,
    toy_folder,
    toy_shipped,
)
from accelopt.spec import load_spec
from accelopt.toy import evaluate, models, train

BUDGET = 25e6  # bytes the whole shipped pipeline may take
CPU = torch.device("cpu")


def test_toy_pixart_fits_the_size_budget_in_float16() -> None:
    with torch.device("meta"):  # the real config, nothing allocated
        parts: list[Any] = [
            models.transformer(),
            models.t5_encoder(len(models.dit_tokenizer())),
            models.vae(),
        ]
    parameters = sum(p.numel() for part in parts for p in part.parameters())
    assert parameters * 2 < BUDGET
    assert parts[0].config.num_layers == models.DIT_LAYERS == train.DIT["layers"]


def test_toy_pixart_is_known_as_a_pixart_pipeline() -> None:
    info = model_info("toypixart")
    assert info is not None and (info.name, info.family, info.resolution) == (
        "ToyPixArt",
        "pixart-alpha",
        models.RESOLUTION,
    )
    spec = load_spec("ToyPixArt-DPM-Solver++-20")
    assert (spec.pipeline, spec.scheduler, spec.steps, spec.resolution) == (
        "ToyPixArt",
        "DPM-Solver++",
        20,
        64,
    )
    assert spec.prompts.set == "shapes" and spec.metric.model == TOY_CLIP


def test_the_shipped_toy_pixart_fits_its_budget_and_generates() -> None:
    """The trained weights ship (accelopt/data/toy/ToyPixArt) within the size budget, load
    through diffusers' own from_pretrained and draw a 64 px image."""
    assert toy_shipped("ToyPixArt")
    files = [f for f in toy_folder("ToyPixArt").rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < BUDGET
    pipe = load_pipeline("ToyPixArt", device="cpu")
    assert type(pipe).__name__ == "PixArtAlphaPipeline"
    kwargs = {**call_defaults(pipe), "num_inference_steps": 2, "output_type": "np"}
    image = pipe("two small red circles", height=64, width=64, **kwargs).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_training_captions_reach_the_transformer_as_the_pipelines_do() -> None:
    """Training pads T5 captions to 16 tokens, the pipeline to 120: the masks make it equal."""
    torch.manual_seed(0)
    tokens = train.Tokens(CPU, models.dit_tokenizer(), models.DIT_CONTEXT_LENGTH)
    text = models.t5_encoder(len(tokens.tokenizer)).eval()
    dit: Any = models.transformer(layers=1)
    dit.eval()
    with torch.no_grad():  # PixArt's zero-initialised layers would hide the captions entirely
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pipe: Any = models.build_dit_pipeline(models.vae(), text, tokens.tokenizer, dit)
    captions = ["two small red circles at the top left on a blue background", ""]
    ids = tokens(captions)
    mask = (ids != tokens.tokenizer.pad_token_id).long()
    embeds, pipe_mask, _, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
    assert pipe_mask.shape[1] == 120 and torch.equal(pipe_mask[:, :16], mask)
    latents = torch.randn(2, 4, 16, 16)
    t = torch.tensor([700, 700])
    with torch.no_grad():
        ours = dit(latents, encoder_hidden_states=text(ids, attention_mask=mask)[0],
                   encoder_attention_mask=mask, timestep=t).sample  # fmt: skip
        theirs = dit(latents, encoder_hidden_states=embeds, encoder_attention_mask=pipe_mask,
                     timestep=t).sample  # fmt: skip
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_dit_training_writes_a_folder_accelopt_loads_and_generates_from(
    tmp_path: Path, offline: None
) -> None:
    small = ["layers=1", "steps=2", "batch=4", "storage_check_prompts=1"]
    out = tmp_path / "d"
    assert train.main(["dit", "--out", str(out), "--device", "cpu", "--set", *small]) == 0
    record = json.loads((out / "train.json").read_text())
    assert record["is_recipe"] is False
    assert record["overrides"] == {"layers": 1, "steps": 2, "batch": 4, "storage_check_prompts": 1}
    assert record["dit"]["steps"] == 2 and len(record["dit"]["loss_curve"]) == 1
    assert record["vae"]["source"] == "ToySD/vae"
    assert record["folder_bytes"] < BUDGET
    # The shipped ToySD's VAE, byte for byte: the same latent space.
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert (out / "ToyPixArt" / vae).read_bytes() == (toy_folder("ToySD") / vae).read_bytes()

    pipe = load_pipeline(str(out / "ToyPixArt"), dtype="float32", device="cpu")
    assert type(pipe).__name__ == "PixArtAlphaPipeline" and family_of(pipe) == "pixart-alpha"
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    caption = "one large red circle in the center on a white background"
    images = pipe(caption, num_inference_steps=2, output_type="pt", **call_defaults(pipe)).images
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()


def test_dit_recipe_refuses_a_vae_that_does_not_ship(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["dit", "--out", str(tmp_path), "--set", "vae=SD1.5"])
    assert exit_info.value.code == 2
    assert "recipe entry vae='SD1.5': no VAE ships there; valid: ToySD" in capsys.readouterr().err


def test_evaluation_offers_a_dit_only_what_applies_to_it() -> None:
    """A DiT gets T-GATE and the block caches, a UNet DeepCache, ToMe and T-GATE; MagCache's
    rows get their ratios measured on the plain pipeline (one per call) before they run."""
    pixart = tiny_pipeline("TinyPixArt")
    dit = evaluate.configs_for(pixart)
    unet = evaluate.configs_for(tiny_pipeline("TinySD"))
    used = {name for configs in dit.values() for name in configs}
    assert used == {"tgate", "magcache", "taylorseer", "fbcache", "dbcache", "pab", "fastercache"}
    assert {name for configs in unet.values() for name in configs} == {
        "deepcache",
        "tome",
        "tgate",
    }
    assert set(dit) | set(unet) == set(evaluate.CONFIGS) and set(dit) & set(unet) == {
        "baseline",
        *(f"T-GATE gate {g}" for g in (15, 10, 5, 2)),
    }
    mag = dit["MagCache 0.02/1/0.3"]
    got = evaluate.calibrated(pixart, mag, ["a red cube"])
    ratios = got["magcache"].pop("ratios")
    assert len(ratios) == evaluate.STEPS and ratios[0] == 1.0
    assert got == mag
    assert (
        evaluate.calibrated(pixart, dit["DBCache F8B0 0.08 W8"], []) == dit["DBCache F8B0 0.08 W8"]
    )
    # --rows: the baseline and the rows named that apply
    assert list(evaluate.configs_for(pixart, ["PAB 2/6 100-800", "DeepCache 2"])) == [
        "baseline",
        "PAB 2/6 100-800",
    ]


def test_evaluation_refuses_an_unknown_row_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--pipeline", "nowhere", "--out", str(out), "--rows", "PAB 9/9"])
    assert exit_.value.code == 2
    assert "unknown row 'PAB 9/9'; valid: baseline, DeepCache 2," in capsys.readouterr().err
    assert not out.exists()
